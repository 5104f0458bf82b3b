"""A connected centre reads its channel metadata as a delta from the copy it holds.

The hub keeps what it signed by hash (``packs/compact.py``) and answers a GET naming one of
those copies with a zstd frame against it; every other server, or a GET naming nothing the
hub keeps, gets the file. What the delta decodes to is verified like any metadata, so a
hostile hub or a proxy between gains nothing by lying in one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from caravane.node.config import UpstreamConfig
from caravane.node.errors import UpstreamError
from caravane.node.upstream import HttpUpstream
from caravane.packs import compact
from caravane.packs.layout import channel_relpath
from tests.hub.conftest import ServerThread, free_port
from tests.node.conftest import World, content


def _metered(url: str) -> tuple[HttpUpstream, list[int]]:
    up = HttpUpstream("hub", url.rstrip("/") + "/repo/")
    wire: list[int] = []
    up.meter = wire.append
    return up, wire


def _held(world: World) -> tuple[bytes, bytes]:
    """The hub's channel metadata at v1 and at v2 (one release more)."""
    world.publish(content(1, big=20_000, files=3))
    path = world.hub_repo / channel_relpath(world.channel)
    v1 = path.read_bytes()
    world.publish(content(2, big=20_000, files=3))
    return v1, path.read_bytes()


def test_the_hub_sends_new_channel_metadata_as_a_delta_from_the_centres_copy(
    world: World,
) -> None:
    v1, v2 = _held(world)
    up, wire = _metered(world.rh.url)
    rel = channel_relpath(world.channel)
    assert b"".join(up.fetch_since(rel, v1, 1 << 20)) == v2
    assert sum(wire) < len(v2) // 2, (sum(wire), len(v2))  # a new release's entry and signature
    wire.clear()
    assert b"".join(up.fetch_since(rel, v2, 1 << 20)) == v2
    assert sum(wire) < 40  # unchanged: a poll costs a few bytes of body
    wire.clear()
    assert b"".join(up.fetch_since(rel, b"a copy the hub never signed", 1 << 20)) == v2
    assert sum(wire) == len(v2)  # the file, as for any reader
    up.close()


def test_a_range_or_a_malformed_base_gets_the_file(world: World) -> None:
    v1, v2 = _held(world)
    url = world.rh.url + "/repo/" + channel_relpath(world.channel)
    sha = hashlib.sha256(v1).hexdigest()
    with httpx.Client(headers={"Accept-Encoding": "identity"}) as c:
        ranged = c.get(url, headers={compact.DELTA_BASE_HEADER: sha, "Range": "bytes=10-"})
        assert ranged.status_code == 206 and ranged.content == v2[10:]
        assert compact.DELTA_HEADER not in ranged.headers
        for bad in ("../../etc/passwd", sha[:20], sha.upper() + "zz"):
            plain = c.get(url, headers={compact.DELTA_BASE_HEADER: bad})
            assert plain.content == v2 and compact.DELTA_HEADER not in plain.headers
        delta = c.get(url, headers={compact.DELTA_BASE_HEADER: sha})
        assert delta.headers[compact.DELTA_HEADER] == sha
        assert "no-store" in delta.headers["Cache-Control"]


def test_the_hub_keeps_a_bounded_history_of_what_it_signed(tmp_path: Path) -> None:
    for i in range(compact.HISTORY_KEEP + 5):
        compact.remember(tmp_path, "lecons", b"signed %d" % i)
    kept = list((tmp_path / compact.HISTORY_DIR / "lecons").glob("*.json"))
    assert len(kept) == compact.HISTORY_KEEP
    newest = b"signed %d" % (compact.HISTORY_KEEP + 4)
    assert compact.recall(tmp_path, "lecons", hashlib.sha256(newest).hexdigest()) == newest
    assert compact.recall(tmp_path, "lecons", hashlib.sha256(b"signed 0").hexdigest()) is None
    assert compact.recall(tmp_path, "lecons", "../" * 20 + "x" * 4) is None
    (kept[0]).write_bytes(b"changed on disk")  # a copy that no longer has its hash is no base
    assert compact.recall(tmp_path, "lecons", kept[0].stem) is None


Answer = Callable[[web.Request, str], "web.Response | None"]


@pytest.fixture
def in_front(world: World) -> Iterator[Callable[[Answer], str]]:
    """A server in front of the hub: ``answer(request, base)`` may reply to a GET naming a
    copy (``base``, the hash it gives); everything else is redirected to the hub."""
    running: list[ServerThread] = []

    def start(answer: Answer) -> str:
        async def handle(request: web.Request) -> web.StreamResponse:
            base = request.headers.get(compact.DELTA_BASE_HEADER)
            reply = answer(request, base) if base else None
            if reply is not None:
                return reply
            raise web.HTTPFound(world.rh.url + request.path_qs)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        port = free_port()
        server = ServerThread(app, port)
        server.start()
        running.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in running:
        server.stop()


def _centre(world: World, url: str):
    return world.node("centre-a", upstreams=[UpstreamConfig("hub", "http", url)])


def test_a_delta_that_decodes_to_forged_metadata_is_refused_and_the_release_kept(
    world: World, in_front: Callable[[Answer], str]
) -> None:
    world.publish(content(1, big=20_000, files=3))
    answers: dict[str, bytes] = {}

    def forge(request: web.Request, base: str) -> web.Response | None:
        if not request.path.endswith(f"channels/{world.channel}.json") or not answers:
            return None
        body = compact.metadata_delta(answers["copy"], answers["forged"])
        return web.Response(body=body, headers={compact.DELTA_HEADER: base})

    n = _centre(world, in_front(forge))
    assert world.sync(n).complete
    answers["copy"] = (n.repo.path / channel_relpath(world.channel)).read_bytes()
    world.publish(content(2, big=20_000, files=3))
    real = (world.hub_repo / channel_relpath(world.channel)).read_bytes()
    answers["forged"] = real.replace(b'"version":2', b'"version":3', 1)
    result = world.sync(n)
    assert result.channels[0].active == 1
    assert any("signature" in e for e in result.errors), result.errors
    assert world.live(n) == world.versions[1]
    answers.clear()  # the same hub, honest again: the centre moves on
    assert world.sync(n, ignore_demotion=True).complete
    assert world.live(n) == world.versions[2]


def test_a_damaged_delta_is_read_again_whole_and_a_delta_from_another_copy_refused(
    world: World, in_front: Callable[[Answer], str]
) -> None:
    v1, v2 = _held(world)
    mode: dict[str, str] = {}

    def lie(request: web.Request, base: str) -> web.Response | None:
        if mode.get("as") == "garbage":
            body = b"\x28\xb5\x2f\xfd not zstd"
            return web.Response(body=body, headers={compact.DELTA_HEADER: base})
        if mode.get("as") == "other":
            return web.Response(body=b"x", headers={compact.DELTA_HEADER: "0" * 64})
        return None

    up, _ = _metered(in_front(lie))
    rel = channel_relpath(world.channel)
    mode["as"] = "garbage"
    assert b"".join(up.fetch_since(rel, v1, 1 << 20)) == v2  # the whole file instead
    mode["as"] = "other"
    with pytest.raises(UpstreamError, match="not asked for"):
        b"".join(up.fetch_since(rel, v1, 1 << 20))
    up.close()
