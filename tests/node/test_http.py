"""The node's HTTP client on real sockets: a CDN that redirects, a redirect loop, a proxy.

A static mirror here is an aiohttp server on 127.0.0.1 serving the simulator's repository
folder (with Range, as nginx or a CDN would); the node syncs from it through the same
``HttpUpstream`` it uses for the hub.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiohttp import web

from caravane.node.errors import UpstreamError
from caravane.node.upstream import HttpUpstream
from tests.hub.conftest import ServerThread, free_port
from tests.node.test_engine import tree
from tests.support.simulator import Centre, RepositorySimulator


@pytest.fixture
def servers() -> Iterator[list[ServerThread]]:
    running: list[ServerThread] = []
    yield running
    for s in running:
        s.stop()


def _serve(app: web.Application, running: list[ServerThread]) -> str:
    port = free_port()
    server = ServerThread(app, port)
    server.start()
    running.append(server)
    return f"http://127.0.0.1:{port}"


def static_mirror(folder: Path, running: list[ServerThread]) -> str:
    app = web.Application()
    app.router.add_static("/", folder)
    return _serve(app, running)


def redirector(target: str | None, running: list[ServerThread]) -> tuple[str, list[str]]:
    """Answers every request with 302 to ``target`` + path (``None``: to itself, a loop)."""
    seen: list[str] = []
    port = free_port()
    me = f"http://127.0.0.1:{port}"

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        raise web.HTTPFound((target or me) + request.path_qs)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = ServerThread(app, port)
    server.start()
    running.append(server)
    return me, seen


def test_a_mirror_that_redirects_is_followed(
    sim: RepositorySimulator, centre: Centre, servers: list[ServerThread]
) -> None:
    v1 = sim.publish(tree(1))
    sim.build_pack(0, v1)
    origin = static_mirror(sim.repo.path, servers)
    cdn, seen = redirector(origin, servers)
    r = centre.sync([HttpUpstream("cdn", cdn, kind="mirror")])
    assert r.complete, r.to_dict()
    assert centre.live() == sim.versions[v1]
    assert "/packs/lecons/0-1.pack" in seen  # the bytes came through the redirect


def test_a_redirect_loop_is_refused_with_a_clear_error(
    sim: RepositorySimulator, centre: Centre, servers: list[ServerThread]
) -> None:
    sim.publish(tree(1))
    loop, seen = redirector(None, servers)
    up = HttpUpstream("loop", loop, kind="mirror")
    with pytest.raises(UpstreamError, match="more than 5 redirects"):
        up.read("metadata/root.json", 1 << 20)
    assert len(seen) == 6  # the first request and five redirects, then it stops
    r = centre.sync([up])
    assert not r.complete
    assert centre.releases.active(sim.channel) is None


class _Proxy(BaseHTTPRequestHandler):
    """A forward proxy: takes absolute-form requests, fetches them, relays the answer."""

    seen: list[str] = []

    def _relay(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        req = urllib.request.Request(self.path, method=self.command)
        if "Range" in self.headers:
            req.add_header("Range", self.headers["Range"])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            resp = opener.open(req, timeout=10)
            status, headers, body = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        self.send_response(status)
        for name in ("Content-Range", "Content-Type"):
            if headers.get(name):
                self.send_header(name, headers[name])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _relay

    def log_message(self, *args: object) -> None:
        pass


def test_a_proxy_from_the_environment_is_used(
    sim: RepositorySimulator,
    centre: Centre,
    servers: list[ServerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1 = sim.publish(tree(1))
    sim.build_pack(0, v1)
    origin = static_mirror(sim.repo.path, servers)
    _Proxy.seen = []
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
        r = centre.sync([HttpUpstream("mirror", origin, kind="mirror")])
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert r.complete, r.to_dict()
    assert centre.live() == sim.versions[v1]
    assert f"GET {origin}/packs/lecons/0-1.pack" in _Proxy.seen
