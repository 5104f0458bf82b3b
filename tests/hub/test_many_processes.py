"""Two `caravane hub serve` processes on one database and one data folder, as behind a proxy.

Real processes, real sockets: a curator signs in on process A, publishes an archive through
A's page and follows the job on B's page; the session cookie works on both, and signing out
on one ends it on the other. Two requests at once, one per process, for a pack nobody built
get the same pack, built once. On PostgreSQL (the recommended set-up for several processes,
on one host or several) and on SQLite (several processes on one host).
"""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.hub.conftest import free_port, fresh_database
from tests.hub.util import CARAVANE, cli


@dataclass
class Process:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@dataclass
class TwoHubs:
    a: Process
    b: Process
    config: Path
    data: Path
    curator: str


def _wait_healthy(p: Process) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if p.proc.poll() is not None:
            raise AssertionError(f"hub exited with {p.proc.returncode}: {p.log_text()}")
        try:
            if httpx.get(f"{p.url}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"hub did not answer in 60 s: {p.log_text()}")


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def two_hubs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoHubs]:
    """One hub (made by `hub init`), two `hub serve` processes; shared by this module's tests."""
    tmp_path = tmp_path_factory.mktemp(f"two-hubs-{request.param}")
    data = tmp_path / "hub"
    with ExitStack() as stack:
        extra = []
        if request.param == "postgresql":
            extra = ["--database-url", stack.enter_context(fresh_database())]
        r = cli("hub", "init", "--data", str(data), *extra, "--json")
        assert r.returncode == 0, r.stderr
        config = data / "hub.toml"
        r = cli(
            "hub", "token", "create", "--config", str(config),
            "--name", "amina", "--role", "curator", "--json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        curator = json.loads(r.stdout)["token"]
        procs = []
        for name in ("a", "b"):
            port = free_port()
            log = tmp_path / f"hub-{name}.log"
            proc = subprocess.Popen(
                [CARAVANE, "hub", "serve", "--config", str(config), "--port", str(port),
                 "--no-scheduler"],
                stdout=subprocess.DEVNULL,
                stderr=stack.enter_context(log.open("wb")),
            )  # fmt: skip
            procs.append(Process(f"http://127.0.0.1:{port}", log, proc))
        try:
            for p in procs:
                _wait_healthy(p)
            yield TwoHubs(procs[0], procs[1], config, data, curator)
        finally:
            for p in procs:
                p.proc.terminate()
            for p in procs:
                p.proc.wait(timeout=30)


def _field(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no {name} field in the page"
    return m.group(1)


def _sign_in(client: httpx.Client, base: str, token: str) -> None:
    page = client.get(f"{base}/ui/login")
    assert page.status_code == 200
    r = client.post(
        f"{base}/ui/login",
        data={"csrf": _field(page.text, "csrf"), "token": token, "next": "/ui/fleet"},
    )
    assert r.status_code == 302 and r.headers["location"] == "/ui/fleet", r.text


def _archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in files.items():
            zf.writestr(f"lecons/{name}", body)
    return buf.getvalue()


def _job_state(html: str) -> str:
    m = re.search(r'id="job-state" data-state="([a-z]+)"', html)
    assert m, html
    return m.group(1)


def test_sign_in_on_a_publish_on_a_follow_the_job_on_b(two_hubs: TwoHubs) -> None:
    a, b = two_hubs.a.url, two_hubs.b.url
    client = httpx.Client(timeout=30, headers={"Accept-Language": "en"})
    _sign_in(client, a, two_hubs.curator)
    # the session made by A is known to B
    fleet = client.get(f"{b}/ui/fleet")
    assert fleet.status_code == 200 and "amina" in fleet.text

    made = client.post(
        f"{a}/api/v1/channels",
        json={"id": "lecons", "title": "Leçons"},
        headers={"Authorization": f"Bearer {two_hubs.curator}"},
    )
    assert made.status_code in (200, 201), made.text
    form = client.get(f"{a}/ui/publish")
    assert form.status_code == 200
    csrf = _field(form.text, "csrf")
    rng = random.Random(3)
    files = {f"page-{i}.html": rng.randbytes(300_000) for i in range(8)}
    r = client.post(
        f"{a}/ui/publish",
        params={"csrf": csrf},
        data={"csrf": csrf, "channel": "lecons", "notes": "from process A"},
        files={"archive": ("lecons.zip", _archive(files), "application/zip")},
    )
    assert r.status_code == 303, r.text
    job_path = r.headers["location"]
    assert job_path.startswith("/ui/jobs/")

    def follow(until: tuple[str, ...]) -> httpx.Response:
        states: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            page = client.get(f"{b}{job_path}")  # followed on the other process
            assert page.status_code == 200, page.text
            states.append(_job_state(page.text))
            if states[-1] in (*until, "failed"):
                break
            time.sleep(0.2)
        assert states[-1] in until, page.text
        return page

    # stored by A, reviewed on B: the curator signs it from B's page
    review = follow(("review",))
    r = client.post(
        f"{b}{job_path}", data={"csrf": _field(review.text, "csrf"), "decision": "publish"}
    )
    assert r.status_code in (302, 303), r.text
    page = follow(("done",))
    assert "Leçons version 1 is published (8 files)" in page.text
    # A shows the same job, and B's channel page the release A signed
    assert _job_state(client.get(f"{a}{job_path}").text) == "done"
    channels = client.get(f"{b}/ui/channels")
    assert "from process A" in channels.text and "amina" in channels.text

    # signing out on B ends the session on A too
    r = client.post(f"{b}/ui/logout", data={"csrf": _field(fleet.text, "csrf")})
    assert r.status_code == 302 and r.headers["location"] == "/ui/login"
    again = client.get(f"{a}/ui/fleet")
    assert again.status_code == 302 and again.headers["location"].startswith("/ui/login")


def _text(seed: str, words: int) -> bytes:
    """Compressible text (so a strong pack takes a moment to build)."""
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(3000)
    ]
    return " ".join(rng.choice(vocab) for _ in range(words)).encode()


def test_two_processes_asked_for_one_pack_at_once_build_it_once(
    two_hubs: TwoHubs, tmp_path: Path
) -> None:
    repo = two_hubs.data / "repo"
    for v in (1, 2):
        folder = tmp_path / f"v{v}"
        folder.mkdir()
        for i in range(3):
            (folder / f"t{i}.txt").write_bytes(_text(f"{v}-{i}", 50_000))
        r = cli("repo", "publish", str(repo), "cours", str(folder), "--json")
        assert r.returncode == 0, r.stderr
    assert not (repo / "packs/cours/1-2.pack").exists()

    answers: dict[str, httpx.Response] = {}
    start = threading.Barrier(2)

    def fetch(name: str, base: str) -> None:
        start.wait()
        answers[name] = httpx.get(f"{base}/repo/packs/cours/1-2.pack", timeout=120)

    threads = [
        threading.Thread(target=fetch, args=(n, p.url))
        for n, p in (("a", two_hubs.a), ("b", two_hubs.b))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert answers["a"].status_code == answers["b"].status_code == 200
    assert answers["a"].content == answers["b"].content
    assert answers["a"].content == (repo / "packs/cours/1-2.pack").read_bytes()

    logs = two_hubs.a.log_text() + two_hubs.b.log_text()
    assert logs.count("built pack cours 1-2") == 1, logs
    # the other request waited for the build rather than building its own
    assert logs.count("pack cours 1-2 is being built by") == 1, logs
