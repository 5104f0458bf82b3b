"""The hub's HTTP surface: Range, ETag, caching, packs, hostile paths, JSON errors, limits."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from caravane.packs.layout import channel_relpath, manifest_relpath, object_relpath, pack_relpath

from .conftest import RunningHub, start_hub
from .util import http, noise, publish_cli, write_tree


@pytest.fixture
def published(running_hub: RunningHub, tmp_path: Path) -> RunningHub:
    src = write_tree(tmp_path / "src", {"big.bin": noise(400_000, "big"), "a.txt": "hello\n"})
    publish_cli(running_hub, "maths", src, tmp_path / "cache")
    return running_hub


@pytest.fixture
def published_sqlite(sqlite_hub: RunningHub, tmp_path: Path) -> RunningHub:
    """Content straight into the repository (serving files does not involve the database)."""
    src = write_tree(tmp_path / "src", {"big.bin": noise(400_000, "big"), "a.txt": "hello\n"})
    sqlite_hub.hub.repo.publish("maths", src)
    (sqlite_hub.hub.repo.path / "metadata/.lock").write_text("lock")
    return sqlite_hub


@pytest.fixture
def small_limits(tmp_path: Path) -> Iterator[RunningHub]:
    rh, server = start_hub(tmp_path / "hub", max_json_bytes=2000, max_object_bytes=4000)
    yield rh
    server.stop()


def _object_path(rh: RunningHub) -> str:
    man = rh.hub.repo.manifest("maths", 1)
    big = next(f for f in man.files if f.path == "big.bin")
    return object_relpath(big.chunks[0][0])


def test_range_request_returns_partial_content(published: RunningHub):
    rel = _object_path(published)
    whole = http("GET", f"{published.url}/repo/{rel}")
    assert whole.status == 200
    assert len(whole.body) > 1000
    part = http("GET", f"{published.url}/repo/{rel}", headers={"Range": "bytes=100-599"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 100-599/{len(whole.body)}"
    assert part.body == whole.body[100:600]
    tail = http("GET", f"{published.url}/repo/{rel}", headers={"Range": "bytes=-50"})
    assert tail.status == 206 and tail.body == whole.body[-50:]


def test_etag_and_if_none_match_gives_304(published: RunningHub):
    for rel in (_object_path(published), channel_relpath("maths")):
        first = http("GET", f"{published.url}/repo/{rel}")
        etag = first.headers["ETag"]
        assert etag
        again = http("GET", f"{published.url}/repo/{rel}", headers={"If-None-Match": etag})
        assert again.status == 304 and again.body == b""
        other = http("GET", f"{published.url}/repo/{rel}", headers={"If-None-Match": '"nope"'})
        assert other.status == 200 and other.body == first.body


def test_cache_control_immutable_content_short_lived_metadata(published: RunningHub):
    base = f"{published.url}/repo"
    for rel in (_object_path(published), manifest_relpath("maths", 1)):
        cc = http("GET", f"{base}/{rel}").headers["Cache-Control"]
        assert "immutable" in cc and "max-age=31536000" in cc
    for rel in (channel_relpath("maths"), "metadata/root.json"):
        cc = http("GET", f"{base}/{rel}").headers["Cache-Control"]
        assert "immutable" not in cc
        assert "max-age=60" in cc


def test_pack_built_on_demand_and_resumable_with_range(running_hub: RunningHub, tmp_path: Path):
    # Published straight into the repository: no background worker pre-builds the pack.
    published = running_hub
    src = write_tree(tmp_path / "src", {"big.bin": noise(400_000, "big"), "a.txt": "hello\n"})
    published.hub.repo.publish("maths", src)
    rel = pack_relpath("maths", 0, 1)
    assert not (published.hub.repo.path / rel).exists()
    whole = http("GET", f"{published.url}/repo/{rel}")
    assert whole.status == 200
    assert (published.hub.repo.path / rel).is_file()
    assert "immutable" in whole.headers["Cache-Control"]
    # A client cut mid-pack asks for the rest and ends up with the same bytes.
    half = len(whole.body) // 2
    rest = http("GET", f"{published.url}/repo/{rel}", headers={"Range": f"bytes={half}-"})
    assert rest.status == 206
    assert whole.body[:half] + rest.body == whole.body
    # ... which a centre pinned to the hub's root accepts.
    from caravane.packs.repository import Repository

    store = Repository.init(
        tmp_path / "store", trust_root=published.hub.repo.path / "metadata/root.json"
    )
    pack = tmp_path / "got.pack"
    pack.write_bytes(whole.body[:half] + rest.body)
    store.apply_pack(pack)
    assert store.verify().ok and store.verify().channels == {"maths": [1]}


def test_pack_for_unknown_versions_is_404(published: RunningHub):
    for rel in ("packs/maths/0-9.pack", "packs/maths/1-1.pack", "packs/nochannel/0-1.pack"):
        assert http("GET", f"{published.url}/repo/{rel}").status == 404, rel


def _raw_get(url: str, target: str) -> int:
    """Send a request line exactly as written (no client-side normalisation)."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


TRAVERSALS = [
    "/repo/../../etc/passwd",
    "/repo/objects/../../../etc/passwd",
    "/repo/%2e%2e/%2e%2e/etc/passwd",
    "/repo/objects/%2e%2e/keys/release.pem",
    "/repo/objects/..%2fkeys%2frelease.pem",
    "/repo/objects/%2e%2e%2f%2e%2e%2fhub.db",
    "/repo/manifests/%2e%2e/keys/root.pem",
    "/repo//etc/passwd",
    "/repo/keys/release.pem",
    "/repo/keys/root.pem",
    "/repo/metadata/.lock",
    "/repo/repo.json/../keys/release.pem",
]


def test_path_traversal_and_private_files_refused(published_sqlite: RunningHub):
    for target in TRAVERSALS:
        status, data = _raw_get(published_sqlite.url, target)
        assert status in (400, 404), (target, data[:300])
        assert b"PRIVATE KEY" not in data and b"root:" not in data, target
        assert b"SQLite format" not in data, target
    # Sanity: the same server does serve the public files next to them.
    assert _raw_get(published_sqlite.url, "/repo/metadata/root.json")[0] == 200


async def test_malformed_json_is_400_with_json_body(running_hub: RunningHub):
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {running_hub.admin}"}) as s:
        for body in (b"{not json", b"\xff\xfe", b"[1, 2]"):
            async with s.post(f"{running_hub.url}/api/v1/channels", data=body) as r:
                assert r.status == 400
                doc = await r.json()
                assert doc["status"] == 400 and doc["error"]
        # The hub keeps serving afterwards.
        async with s.get(f"{running_hub.url}/api/v1/health") as r:
            assert r.status == 200 and (await r.json())["ok"] is True


def test_oversized_bodies_are_413(small_limits: RunningHub):
    tok = small_limits.admin
    big = http(
        "POST",
        f"{small_limits.url}/api/v1/channels",
        {"id": "maths", "description": "x" * 5000},
        tok,
    )
    assert big.status == 413 and "error" in big.json()
    up = http("POST", f"{small_limits.url}/api/v1/channels", {"id": "maths"}, tok)
    assert up.status == 201
    obj = http("PUT", f"{small_limits.url}/api/v1/uploads/u/objects/{'a' * 64}", b"z" * 5000, tok)
    assert obj.status == 413 and obj.json()["status"] == 413


async def test_body_beyond_server_limit_without_length_is_413(small_limits: RunningHub):
    async def gen():
        for _ in range(20):
            yield b"z" * 1000

    url = f"{small_limits.url}/api/v1/channels"
    headers = {"Authorization": f"Bearer {small_limits.admin}"}
    async with aiohttp.ClientSession() as s, s.post(url, data=gen(), headers=headers) as r:
        assert r.status == 413
        assert (await r.json())["status"] == 413


@pytest.mark.parametrize("path", ["/nope", "/api/v1/nope", "/api/v2/health"])
def test_unknown_route_is_404_json(running_hub: RunningHub, path: str):
    ans = http("GET", running_hub.url + path)
    assert ans.status == 404
    assert ans.json()["status"] == 404


def test_wrong_method_is_405_json(running_hub: RunningHub):
    ans = http("DELETE", f"{running_hub.url}/api/v1/channels", token=running_hub.admin)
    assert ans.status == 405 and ans.json()["status"] == 405


def test_missing_repo_file_is_404(running_hub: RunningHub):
    assert http("GET", f"{running_hub.url}/repo/{object_relpath('0' * 64)}").status == 404
    assert http("GET", f"{running_hub.url}/repo/manifests/maths/7.json").status == 404
