"""What `caravane publish` says when the hub cannot be reached: the hub's URL, what happened
in plain words, and what to do next, as one `error:` line; never a library's exception."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from caravane.hub.client import MAX_REDIRECTS, HubClient, HubClientError

from .conftest import RunningHub, ServerThread, free_port
from .util import cli, write_tree


def _publish(url: str, tmp_path: Path, env: dict[str, str] | None = None):
    src = write_tree(tmp_path / "src", {"a.txt": "bonjour"})
    return cli(
        "publish",
        "maths",
        str(src),
        "--hub",
        url,
        "--token",
        "crv_whatever",
        "--cache",
        str(tmp_path / "cache"),
        env=env,
        timeout=60,
    )


def _no_proxy_env() -> dict[str, str]:
    return {k: "" for k in os.environ if "proxy" in k.lower()}


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and "httpx" not in stderr and "Error:" not in stderr
    return lines[0]


def test_nothing_listening(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = _publish(url, tmp_path, _no_proxy_env())
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert f"cannot reach the hub at {url}: connection refused" in line
    assert "is the hub running" in line


def test_unknown_host(tmp_path: Path) -> None:
    r = _publish("http://no-such-hub.invalid:8470", tmp_path, _no_proxy_env())
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert "'no-such-hub.invalid' does not resolve" in line and "check the --hub URL" in line


def test_https_to_a_plain_http_hub(sqlite_hub: RunningHub, tmp_path: Path) -> None:
    url = sqlite_hub.url.replace("http://", "https://")
    r = _publish(url, tmp_path, _no_proxy_env())
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert f"cannot reach the hub at {url}: the TLS handshake failed" in line
    assert "http:// or https://" in line


def test_not_a_web_address(tmp_path: Path) -> None:
    r = _publish("ftp://hub.example.org", tmp_path, _no_proxy_env())
    assert r.returncode == 1
    assert "is not an http:// or https:// address" in _one_error_line(r.stderr)


def test_a_dead_proxy_from_the_environment_is_named(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**_no_proxy_env(), "HTTP_PROXY": dead, "http_proxy": dead}
    r = _publish("http://hub.example.org:8470", tmp_path, env)
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert f"through the proxy {dead}" in line and "NO_PROXY" in line


@pytest.fixture
def redirect_loop() -> Iterator[str]:
    async def again(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path + "x")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", again)
    port = free_port()
    server = ServerThread(app, port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_redirects_are_bounded(redirect_loop: str, tmp_path: Path) -> None:
    r = _publish(redirect_loop, tmp_path, _no_proxy_env())
    assert r.returncode == 1
    assert f"more than {MAX_REDIRECTS} redirects" in _one_error_line(r.stderr)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers (a hub hung, or a link that black-holes)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    t.join(5)
    for c in held:
        c.close()
    sock.close()


def test_a_hub_that_never_answers_times_out_with_a_next_step(
    silent_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(k)
    src = write_tree(tmp_path / "src", {"a.txt": "x"})
    client = HubClient(silent_server, "crv_x", timeout=0.5, retries=2, backoff=0.01)
    with pytest.raises(HubClientError) as err:
        asyncio.run(client.publish("maths", src, cache=tmp_path / "cache"))
    msg = str(err.value)
    assert msg.startswith(f"cannot reach the hub at {silent_server}: the hub stopped answering")
    assert "run the same command again later: what was uploaded is kept" in msg
    assert err.value.status == 503
