"""The hub's pages without a browser: archive unpacking, sessions, CSRF, roles, escaping."""

from __future__ import annotations

import http.cookiejar
import io
import re
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest

from caravane.hub.service import Principal
from caravane.hub.web import unpack_archive
from caravane.protocol.errors import PathError
from tests.hub.conftest import RunningHub, sqlite_hub  # noqa: F401
from tests.node.conftest import World, world  # noqa: F401


def _zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            data = b"x" * m.size
            tf.addfile(m, io.BytesIO(data) if m.isreg() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = ""):
    m = tarfile.TarInfo(name)
    m.type, m.size, m.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return m


def test_unpack_a_zipped_folder_and_a_tarball(tmp_path: Path) -> None:
    z = _zip(
        tmp_path / "a.zip",
        [("site/", b"", stat.S_IFDIR | 0o755), ("site/index.html", b"<h1>", 0o644)],
    )
    root = unpack_archive(z, "zip", tmp_path / "z")
    assert root.name == "site" and (root / "index.html").read_bytes() == b"<h1>"
    t = _tar(tmp_path / "a.tar.gz", [_member("./a.txt"), _member("b/c.txt", size=3)])
    root = unpack_archive(t, "tar", tmp_path / "t")
    assert sorted(p.name for p in root.iterdir()) == ["a.txt", "b"]


@pytest.mark.parametrize(
    "name, mode",
    [
        ("../evil.txt", 0o644),
        ("/etc/evil", 0o644),
        ("a/../../evil", 0o644),
        ("a\\..\\evil", 0o644),
        ("link", stat.S_IFLNK | 0o777),
    ],
)
def test_zip_traversal_and_links_are_refused(tmp_path: Path, name: str, mode: int) -> None:
    z = _zip(tmp_path / "bad.zip", [("ok.txt", b"fine", 0o644), (name, b"../../etc", mode)])
    with pytest.raises(PathError):
        unpack_archive(z, "zip", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    "member",
    [
        _member("../evil"),
        _member("/abs/evil"),
        _member("sym", tarfile.SYMTYPE, link="/etc/passwd"),
        _member("hard", tarfile.LNKTYPE, link="../x"),
        _member("dev", tarfile.CHRTYPE),
    ],
)
def test_tar_traversal_links_and_devices_are_refused(tmp_path: Path, member) -> None:
    t = _tar(tmp_path / "bad.tar.gz", [_member("ok.txt"), member])
    with pytest.raises(PathError):
        unpack_archive(t, "tar", tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(PathError):
        unpack_archive(junk, "zip", tmp_path / "out")


class Browser:
    """A cookie-keeping HTTP client, enough for forms."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def call(self, path: str, form: dict | None = None) -> tuple[int, str]:
        data = urllib.parse.urlencode(form, doseq=True).encode() if form is not None else None
        try:
            with self.opener.open(self.base + path, data, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def sign_in(self, token: str) -> str:
        _, body = self.call("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
        status, body = self.call("/ui/login", {"csrf": csrf, "token": token})
        assert status == 200, body
        return re.search(r'name="csrf" value="([^"]+)"', body).group(1)


def test_sessions_csrf_roles_and_escaping(sqlite_hub: RunningHub) -> None:  # noqa: F811
    hub = sqlite_hub.hub
    hub.register_centre(
        Principal("admin", "admin"), {"name": "<script>alert(1)</script>", "region": "Kayes"}
    )
    b = Browser(sqlite_hub.url)
    # signed out: pages send to the sign-in page, POSTs are refused
    status, body = b.call("/ui/fleet")
    assert status == 200 and 'name="token"' in body
    assert b.call("/ui/register", {"name": "x"})[0] == 401
    # the sign-in form needs its CSRF cookie and field
    assert b.call("/ui/login", {"csrf": "forged", "token": sqlite_hub.admin})[0] == 403
    csrf = b.sign_in(sqlite_hub.admin)
    cookie = next(c for c in b.jar if c.name == "caravane_hub_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/ui/"
    # output is escaped
    status, body = b.call("/ui/fleet")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>alert" not in body
    # a POST without the session's CSRF token does nothing
    assert b.call("/ui/register", {"name": "x", "csrf": "forged"})[0] == 403
    status, body = b.call("/ui/register", {"name": "Centre C", "region": "Ségou", "csrf": csrf})
    assert status == 200 and 'id="enrolment-download"' in body  # the confirmation page
    assert {n["name"] for n in hub.fleet("Ségou")} == {"Centre C"}
    # a curator can neither register nor plan routes; a field agent cannot publish
    curator = Browser(sqlite_hub.url)
    ccsrf = curator.sign_in(sqlite_hub.token("curator"))
    assert curator.call("/ui/register", {"name": "y", "csrf": ccsrf})[0] == 403
    assert curator.call("/ui/routes?region=Kayes")[0] == 403
    agent = Browser(sqlite_hub.url)
    agent.sign_in(sqlite_hub.token("field_agent"))
    assert agent.call("/ui/publish")[0] == 403
    assert agent.call("/ui/register")[0] == 403
    # a revoked token ends its sessions at once
    from sqlalchemy import update

    from caravane.hub.models import Token

    with hub.db.session() as s:
        s.execute(update(Token).where(Token.name == "test-field_agent").values(revoked=True))
    status, body = agent.call("/ui/fleet")
    assert 'name="token"' in body


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "caravane-test-boundary"
    out = []
    for name, value in fields.items():
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    for name, (filename, data) in files.items():
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        out.append(data)  # type: ignore[arg-type]
        out.append("\r\n")
    out.append(f"--{boundary}--\r\n")
    body = b"".join(p.encode() if isinstance(p, str) else p for p in out)
    return body, f"multipart/form-data; boundary={boundary}"


def _post_multipart(b: Browser, path: str, fields: dict, files: dict | None = None):
    body, ctype = _multipart(fields, files or {})
    req = urllib.request.Request(b.base + path, body, {"Content-Type": ctype})
    try:
        with b.opener.open(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_csrf_on_every_encoding_multipart_and_logout_included(
    sqlite_hub: RunningHub,  # noqa: F811
    tmp_path: Path,
) -> None:
    b = Browser(sqlite_hub.url)
    csrf = b.sign_in(sqlite_hub.admin)
    # a multipart logout without the token does not sign out
    assert _post_multipart(b, "/ui/logout", {})[0] == 403
    # ... nor with a forged one in the query
    assert _post_multipart(b, "/ui/logout?csrf=forged", {})[0] == 403
    status, body = b.call("/ui/fleet")
    assert status == 200 and 'name="token"' not in body
    # a page that takes no uploads refuses multipart even with the right token in the body
    assert _post_multipart(b, "/ui/register", {"name": "Z", "csrf": csrf})[0] == 403
    assert not [n for n in sqlite_hub.hub.fleet() if n["name"] == "Z"]
    # text/plain bodies carry no form field: refused
    req = urllib.request.Request(
        b.base + "/ui/register", b"name=Z&csrf=" + csrf.encode(), {"Content-Type": "text/plain"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        b.opener.open(req, timeout=10)
    assert err.value.code == 403
    # publishing: the token travels in the action URL and is checked before the upload
    zipped = _zip(tmp_path / "site.zip", [("index.html", b"<h1>ok</h1>", 0o644)])
    files = {"archive": ("site.zip", zipped.read_bytes())}
    fields = {"channel": "lecons", "csrf": csrf}
    assert _post_multipart(b, "/ui/publish", fields, files)[0] == 403
    assert not sqlite_hub.hub.repo.channels()
    sqlite_hub.hub.create_channel(Principal("c", "curator"), {"id": "lecons"})
    status, body = _post_multipart(b, f"/ui/publish?csrf={csrf}", fields, files)
    assert status == 200, body  # accepted: the publish job runs (tests/web/test_browser.py)
    # the sign-out form carries its token and works
    assert b.call("/ui/logout", {"csrf": csrf})[0] == 200
    assert 'name="token"' in b.call("/ui/fleet")[1]


def _login_page(url: str):
    """Open the sign-in page: the connection, its CSRF field and its cookie."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/ui/login")
    r = conn.getresponse()
    body = r.read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    cookie = r.getheader("Set-Cookie").split(";")[0]
    return conn, csrf, cookie


def _sign_in_headers(rh: RunningHub, forwarded: str | None) -> str:
    """Sign in with the admin token; the session's Set-Cookie header."""
    conn, csrf, cookie = _login_page(rh.url)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
    if forwarded:
        headers["X-Forwarded-Proto"] = forwarded
    body = urllib.parse.urlencode({"csrf": csrf, "token": rh.admin})
    conn.request("POST", "/ui/login", body, headers)
    r = conn.getresponse()
    r.read()
    assert r.status == 302
    return next(v for k, v in r.getheaders() if k == "Set-Cookie" and "session" in v)


def test_secure_cookies_only_through_a_trusted_https_proxy(tmp_path: Path) -> None:
    from tests.hub.conftest import start_hub

    proxied, server = start_hub(tmp_path / "proxied", trusted_proxies=["127.0.0.1"])
    try:
        assert "Secure" in _sign_in_headers(proxied, "https")
        assert "Secure" not in _sign_in_headers(proxied, None)
        assert "Secure" not in _sign_in_headers(proxied, "http")
    finally:
        server.stop()
    direct, server = start_hub(tmp_path / "direct")
    try:  # anyone may send the header: without a trusted proxy it is ignored
        assert "Secure" not in _sign_in_headers(direct, "https")
    finally:
        server.stop()


def _dropped_after(port: int, head: bytes, trickle: bytes, limit: float) -> float:
    """Send ``head``, then ``trickle`` one byte a second; seconds until the server hangs up."""
    import socket
    import time

    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    start = time.monotonic()
    try:
        s.sendall(head)
        for byte in trickle:
            if time.monotonic() - start > limit:
                break
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return time.monotonic() - start
            s.settimeout(1.0)
            try:
                if s.recv(4096) == b"":
                    return time.monotonic() - start
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - start
        return float("inf")
    finally:
        s.close()


def test_slow_header_and_slow_body_clients_are_dropped(tmp_path: Path) -> None:
    """`caravane hub serve` with 2-second limits; raw sockets send one byte per second."""
    import subprocess
    import sys

    from caravane.hub.config import HubConfig
    from tests.hub.conftest import free_port

    port = free_port()
    data = tmp_path / "hub"
    run = [sys.executable, "-m", "caravane", "hub"]
    out = subprocess.run(
        [*run, "init", "--data", str(data), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    cfg = HubConfig.load(data / "hub.toml")
    cfg.header_timeout_seconds = 2
    cfg.body_timeout_seconds = 2
    (data / "hub.toml").write_text(cfg.to_toml())
    proc = subprocess.Popen(
        [*run, "serve", "--config", str(data / "hub.toml"), "--no-scheduler"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        head = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: "
        assert _dropped_after(port, b"", head + b"a" * 60, 20) < 6
        post = (
            b"POST /ui/login HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n"
        )
        assert _dropped_after(port, post, b"a" * 60, 20) < 8
        # a normal client is served
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=10) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_portal_drops_a_slow_header_client(world: World) -> None:  # noqa: F811
    """`caravane node serve` with a 2-second head deadline; a raw socket sends a byte a second."""
    import subprocess
    import sys

    from tests.hub.conftest import free_port

    n = world.node("tombouctou", header_timeout_seconds=2)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "caravane", "node", "serve", "-d", str(n.config.data_dir)]
        + ["--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
        assert _dropped_after(port, b"", head + b"a" * 60, 20) < 6
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for_port(port: int) -> None:
    """Until a server started in another process accepts connections (20 s at most)."""
    import socket
    import time

    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
