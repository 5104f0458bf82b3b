"""Mirror push: to a folder and to an rsync daemon; a centre pinned to the hub's root verifies."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from caravane.node.upstream import RsyncUpstream

from .conftest import RunningHub, free_port
from .util import cli, fetch_release, node_store, noise, publish_cli, read_tree, write_tree

needs_rsync = pytest.mark.skipif(
    shutil.which("rsync") is None, reason="the rsync program is not installed"
)


def _config(rh: RunningHub) -> str:
    path = rh.data / "hub.toml"
    path.write_text(rh.hub.config.to_toml(), encoding="utf-8")
    return str(path)


def _publish_two(rh: RunningHub, tmp: Path) -> Path:
    publish_cli(rh, "maths", write_tree(tmp / "src", {"a.bin": noise(50_000, "a")}), tmp / "c")
    src = write_tree(tmp / "src", {"a.bin": noise(50_000, "a"), "b/c.txt": "deux\n"})
    publish_cli(rh, "maths", src, tmp / "c")
    return src


def _root(rh: RunningHub) -> bytes:
    return (rh.hub.repo.path / "metadata/root.json").read_bytes()


@needs_rsync
def test_mirror_push_to_folder_verifies_against_pinned_root(sqlite_hub: RunningHub, tmp_path: Path):
    src = _publish_two(sqlite_hub, tmp_path)
    dest = tmp_path / "mirror"
    r = cli("hub", "mirror", "push", str(dest), "--config", _config(sqlite_hub), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["copied"][-2:] == ["metadata", "repo.json"]
    # Private keys and the hub's database never leave the hub.
    assert not (dest / "keys").exists()
    assert not list(dest.rglob("*.pem")) and not list(dest.rglob("*.db"))
    # The mirror is a complete repository folder: `caravane repo verify` accepts it...
    r = cli("repo", "verify", str(dest), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["channels"] == {"maths": [1, 2]}
    # ...and, more to the point, a centre that trusts only the hub's root accepts it.
    store = node_store(tmp_path / "store", _root(sqlite_hub))
    assert fetch_release(lambda rel: (dest / rel).read_bytes(), store, "maths") == 2
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


@needs_rsync
def test_tampered_mirror_is_refused_by_a_centre(sqlite_hub: RunningHub, tmp_path: Path):
    from caravane.packs.repository import Repository
    from caravane.protocol.errors import CaravaneError

    _publish_two(sqlite_hub, tmp_path)
    dest = tmp_path / "mirror"
    r = cli("hub", "mirror", "push", str(dest), "--config", _config(sqlite_hub))
    assert r.returncode == 0, r.stderr

    def read(rel: str) -> bytes:
        return (dest / rel).read_bytes()

    # A damaged (or swapped) object: refused, nothing checked out.
    obj = next(p for p in (dest / "objects").rglob("*") if p.is_file())
    good = obj.read_bytes()
    obj.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    store = node_store(tmp_path / "store", _root(sqlite_hub))
    with pytest.raises(CaravaneError):
        fetch_release(read, store, "maths")
    obj.write_bytes(good)

    # Channel metadata signed by someone else's keys (a mirror operator's own repository).
    fake = Repository.init(tmp_path / "fake")
    fake.publish("maths", write_tree(tmp_path / "evil", {"a.bin": "evil"}))
    for _ in range(3):
        fake.publish("maths", write_tree(tmp_path / "evil", {"a.bin": f"evil{_}"}))
    shutil.copy(fake.path / "metadata/channels/maths.json", dest / "metadata/channels/maths.json")
    store = node_store(tmp_path / "store2", _root(sqlite_hub))
    with pytest.raises(CaravaneError):
        fetch_release(read, store, "maths")
    assert store.channels() == []


@needs_rsync
def test_mirror_push_delete_drops_collected_objects(sqlite_hub: RunningHub, tmp_path: Path):
    from caravane.hub.jobs import JobRunner

    cfg = _config(sqlite_hub)
    http_channel = {"id": "tiny", "keep_last": 1}
    from .util import http

    assert (
        http("POST", f"{sqlite_hub.url}/api/v1/channels", http_channel, sqlite_hub.admin).status
        == 201
    )
    publish_cli(
        sqlite_hub, "tiny", write_tree(tmp_path / "s", {"x": noise(9000, "old")}), tmp_path / "c"
    )
    dest = tmp_path / "mirror"
    assert cli("hub", "mirror", "push", str(dest), "--config", cfg).returncode == 0
    before = {p.name for p in (dest / "objects").rglob("*") if p.is_file()}
    publish_cli(
        sqlite_hub, "tiny", write_tree(tmp_path / "s", {"x": noise(9000, "new")}), tmp_path / "c"
    )
    sqlite_hub.hub.config.gc_grace_hours = 0  # the old objects are only seconds old
    JobRunner(sqlite_hub.hub).collect_garbage()
    assert cli("hub", "mirror", "push", str(dest), "--delete", "--config", cfg).returncode == 0
    after = {p.name for p in (dest / "objects").rglob("*") if p.is_file()}
    hub_objs = set(sqlite_hub.hub.repo.store.iter_ids())
    assert after == hub_objs and before - after
    r = cli("repo", "verify", str(dest), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["channels"] == {"tiny": [2]}


@pytest.fixture
def rsync_daemon(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if shutil.which("rsync") is None:
        pytest.skip("the rsync program is not installed")
    module = tmp_path / "rsync-module"
    module.mkdir()
    port = free_port()
    conf = tmp_path / "rsyncd.conf"
    lines = [
        f"pid file = {tmp_path / 'rsyncd.pid'}",
        "use chroot = no",
        f"log file = {tmp_path / 'rsyncd.log'}",
        "[mirror]",
        f"path = {module}",
        "read only = no",
        f"uid = {os.getuid()}",
        f"gid = {os.getgid()}",
    ]
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [
            "rsync",
            "--daemon",
            "--no-detach",
            f"--config={conf}",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"rsync daemon did not start: {proc.stderr.read().decode()}")
            time.sleep(0.05)
    try:
        yield f"rsync://127.0.0.1:{port}/mirror", module
    finally:
        proc.terminate()
        proc.wait(10)


def test_mirror_push_through_rsync_daemon_then_fetch(
    sqlite_hub: RunningHub, rsync_daemon: tuple[str, Path], tmp_path: Path
):
    url, module = rsync_daemon
    src = _publish_two(sqlite_hub, tmp_path)
    r = cli("hub", "mirror", "push", url, "--config", _config(sqlite_hub), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (module / "repo.json").is_file() and not (module / "keys").exists()

    # A centre fetches from the rsync mirror the way its rsync upstream does.
    up = RsyncUpstream("mirror", url, tmp_path / "rsync-cache", timeout=20)
    store = node_store(tmp_path / "store", _root(sqlite_hub))
    assert fetch_release(lambda rel: up.read(rel, 1 << 24), store, "maths") == 2
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)
    assert store.verify().ok

    # And a plain `rsync` copy of the whole mirror is a repository that verifies.
    copy = tmp_path / "copy"
    subprocess.run(["rsync", "-rt", f"{url}/", f"{copy}/"], check=True, timeout=60)
    r = cli("repo", "verify", str(copy), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["channels"] == {"maths": [1, 2]}


def test_mirror_push_to_unreachable_rsync_fails_clearly(sqlite_hub: RunningHub):
    if shutil.which("rsync") is None:
        pytest.skip("the rsync program is not installed")
    port = free_port()
    r = cli(
        "hub",
        "mirror",
        "push",
        f"rsync://127.0.0.1:{port}/nothing",
        "--config",
        _config(sqlite_hub),
        timeout=60,
    )
    assert r.returncode != 0
    assert "rsync" in r.stderr and "Traceback" not in r.stderr
