"""`caravane hub backup` / `caravane hub restore`: a hub with releases, centres and reports
is backed up while it serves, restored into a fresh data folder and database (SQLite or
PostgreSQL), started, and a centre syncs from it; a damaged backup is refused."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from caravane.hub.app import make_app
from caravane.hub.client import HubClient
from caravane.hub.config import HubConfig
from caravane.hub.service import Hub
from caravane.node.agent import NodeAgent
from caravane.node.config import UpstreamConfig
from tests.hub.conftest import RunningHub, ServerThread, free_port, fresh_database
from tests.hub.conftest import start_hub as start_test_hub
from tests.hub.test_tokens import write_config
from tests.hub.util import CARAVANE, cli, http, read_tree, write_tree
from tests.node.conftest import World, content


@contextmanager
def database(kind: str) -> Iterator[str]:
    """ "" (SQLite in the data folder) or a fresh PostgreSQL database, dropped after."""
    if kind == "sqlite":
        yield ""
        return
    with fresh_database() as url:
        yield url


def serve_config(path: Path) -> tuple[Hub, ServerThread, str]:
    """Start `hub serve` on a restored hub.toml (on a free port)."""
    cfg = HubConfig.load(path)
    cfg.port, cfg.scheduler = free_port(), False
    hub = Hub(cfg)
    server = ServerThread(make_app(cfg, hub, scheduler=False), cfg.port)
    server.start()
    return hub, server, f"http://127.0.0.1:{cfg.port}"


def run_json(*args: str) -> dict:
    r = cli(*args, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def small(version: int) -> dict[str, bytes]:
    return content(version, big=150_000, files=4)


@pytest.mark.parametrize(
    "source, target",
    [("sqlite", "sqlite"), ("postgresql", "postgresql"), ("sqlite", "postgresql")],
)
def test_backup_restore_start_and_a_centre_syncs(tmp_path: Path, source: str, target: str) -> None:
    with database(source) as src_url, database(target) as dst_url:
        rh, server = start_test_hub(tmp_path / "hub", src_url or None)
        try:
            config = write_config(rh)
            world = World(tmp_path, rh)
            world.publish(small(1))
            world.publish(small(2))
            kita = world.node("kita")
            assert world.sync(kita).complete
            kita.make_report()
            assert kita.send_reports() == 1
            kita.close()
            # while the hub serves
            made = run_json("hub", "backup", str(tmp_path / "backup"), "--config", str(config))
        finally:
            server.stop()
            rh.hub.close()
        assert made["tables"]["releases"] == 2 and made["tables"]["nodes"] == 1
        assert made["tables"]["node_reports"] == 1 and made["tables"]["tokens"] >= 2
        assert made["linked"] > 0  # objects hard-linked: same file system
        key = tmp_path / "backup" / "keys" / "release.pem"
        assert key.stat().st_mode & 0o777 == 0o600

        args = ["hub", "restore", str(tmp_path / "backup"), "--data", str(tmp_path / "hub2")]
        if dst_url:
            args += ["--database-url", dst_url]
        restored = run_json(*args)
        assert restored["verify_ok"] is True and restored["tables"] == made["tables"]
        assert (tmp_path / "hub2" / "repo-keys" / "release.pem").stat().st_mode & 0o777 == 0o600

        hub, server, url = serve_config(tmp_path / "hub2" / "hub.toml")
        try:
            # the old admin token, centres, reports and releases came back
            fleet = http("GET", url + "/api/v1/nodes", token=rh.admin).json()["nodes"]
            assert [(c["name"], c["installed"]) for c in fleet] == [("kita", {"lecons": 2})]
            # the restored hub publishes (new rows after the restored ids) ...
            src = write_tree(tmp_path / "src-3", small(3))
            out = asyncio.run(
                HubClient(url, rh.admin).publish("lecons", src, cache=tmp_path / "cache-b")
            )
            assert out["version"] == 3
            # ... and the centre, pointed at it, syncs, activates and reports
            kita = NodeAgent.open(tmp_path / "kita")
            kita.config.upstreams = [UpstreamConfig("hub", "http", url)]
            kita.config.hub_url = url
            kita.config.save()
            kita.close()
            kita = NodeAgent.open(tmp_path / "kita")
            result = world.sync(kita)
            assert result.complete, result.to_dict()
            assert kita.releases.active("lecons") == 3
            assert read_tree(kita.releases.live_link("lecons")) == small(3)
            kita.make_report()
            assert kita.send_reports() == 1
            fleet = http("GET", url + "/api/v1/nodes", token=rh.admin).json()["nodes"]
            assert fleet[0]["installed"] == {"lecons": 3}
            kita.close()
        finally:
            server.stop()
            hub.close()


@pytest.fixture
def backed_up(sqlite_hub: RunningHub, tmp_path: Path) -> Path:
    """A small hub's backup, every file copied (so damaging it leaves the hub alone)."""
    world = World(tmp_path, sqlite_hub)
    world.publish(small(1))
    config = write_config(sqlite_hub)
    out = run_json("hub", "backup", str(tmp_path / "b"), "--config", str(config), "--copy")
    assert out["linked"] == 0
    return tmp_path / "b"


def restore_fails(backup: Path, data: Path, *more: str) -> str:
    r = cli("hub", "restore", str(backup), "--data", str(data), *more)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr


def test_a_damaged_backup_is_refused_and_nothing_is_written(
    backed_up: Path, tmp_path: Path
) -> None:
    # the objects' bytes: segment files (or loose objects of an older store)
    store = backed_up / "repo"
    objects = sorted(
        p
        for p in [*(store / "segments").glob("*.seg"), *(store / "objects").rglob("*")]
        if p.is_file() and p.stat().st_size
    )
    victim = objects[len(objects) // 2]
    good = victim.read_bytes()
    victim.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    err = restore_fails(backed_up, tmp_path / "new")
    assert "backup damaged" in err and victim.name in err and "nothing was restored" in err
    assert not (tmp_path / "new").exists()

    victim.write_bytes(good)
    rows = backed_up / "database" / "releases.jsonl"
    rows.write_text(rows.read_text().replace('"version": 1', '"version": 7'))
    err = restore_fails(backed_up, tmp_path / "new")
    assert "releases.jsonl does not match its checksum" in err

    (backed_up / "manifest.json").unlink()
    err = restore_fails(backed_up, tmp_path / "new")
    assert "no manifest.json" in err and "did not finish" in err
    assert not (tmp_path / "new").exists()


def test_restore_refuses_a_hub_already_there_unless_forced(backed_up: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    assert run_json("hub", "restore", str(backed_up), "--data", str(target))["verify_ok"]
    marker = target / "repo" / "metadata" / "root.json"
    before = marker.read_bytes()
    err = restore_fails(backed_up, target)
    assert "already holds a hub" in err and "--force" in err
    assert marker.read_bytes() == before
    out = run_json("hub", "restore", str(backed_up), "--data", str(target), "--force")
    assert out["verify_ok"] and out["tables"]["releases"] == 1
    # a backup never lands in a folder that already holds something
    r = cli("hub", "backup", str(backed_up), "--config", str(target / "hub.toml"))
    assert r.returncode == 1 and "not empty" in r.stderr
    assert os.listdir(backed_up)  # untouched


def test_backup_waits_for_the_writer_lock_and_restore_records_a_release_caught_between(
    sqlite_hub: RunningHub, tmp_path: Path
) -> None:
    rh = sqlite_hub
    world = World(tmp_path, rh)
    world.publish(small(1))
    world.publish(small(2))
    # a publish caught between its signature (under the lock) and its database row
    with rh.hub.db.session() as s:
        s.execute(text("DELETE FROM releases WHERE version = 2"))
    config = write_config(rh)
    dest = tmp_path / "b"
    with rh.hub.repo.lock():  # a publish is signing: the backup must wait for it
        proc = subprocess.Popen(
            [CARAVANE, "hub", "backup", str(dest), "--config", str(config), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(4)
        assert proc.poll() is None and not dest.exists()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert json.loads(out)["tables"]["releases"] == 1

    restored = run_json("hub", "restore", str(dest), "--data", str(tmp_path / "new"))
    assert restored["recorded_releases"] == {"lecons": [2]}
    hub, server, url = serve_config(tmp_path / "new" / "hub.toml")
    try:
        channel = http("GET", url + "/api/v1/channels/lecons", token=rh.admin).json()
        assert sorted(r["version"] for r in channel["releases"]) == [1, 2]
    finally:
        server.stop()
        hub.close()


def test_sqlite_files_and_growing_files_in_the_repository(
    sqlite_hub: RunningHub, tmp_path: Path
) -> None:
    """Whatever the store keeps: a live SQLite index (WAL not yet checkpointed) comes out
    whole; a file that grows (a segment) is copied, never hard-linked; objects are linked."""
    world = World(tmp_path, sqlite_hub)
    world.publish(small(1))
    repo = sqlite_hub.hub.repo.path
    live = sqlite3.connect(repo / "objects" / "index.sqlite")
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("PRAGMA wal_autocheckpoint=0")
    live.execute("CREATE TABLE segments (name TEXT, length INTEGER)")
    live.executemany("INSERT INTO segments VALUES (?, ?)", [("seg-1", 10), ("seg-2", 20)])
    live.commit()  # in the -wal file, not yet in the main file
    segment = repo / "objects" / "seg-1"
    segment.write_bytes(b"0123456789")
    try:
        config = write_config(sqlite_hub)
        run_json("hub", "backup", str(tmp_path / "b"), "--config", str(config))
    finally:
        live.close()
    copied = tmp_path / "b" / "repo" / "objects"
    assert not (copied / "index.sqlite-wal").exists()
    rows = sqlite3.connect(copied / "index.sqlite").execute("SELECT * FROM segments").fetchall()
    assert rows == [("seg-1", 10), ("seg-2", 20)]
    assert (copied / "seg-1").stat().st_ino != segment.stat().st_ino
    segment.write_bytes(b"0123456789abcdef")  # the hub appends: the backup keeps its bytes
    assert (copied / "seg-1").read_bytes() == b"0123456789"
    # what never changes is linked: a manifest (objects now live in growing segment files)
    manifest = next((repo / "manifests").rglob("*.json"))
    linked = tmp_path / "b" / "repo" / manifest.relative_to(repo)
    assert linked.stat().st_ino == manifest.stat().st_ino
    out = run_json("hub", "restore", str(tmp_path / "b"), "--data", str(tmp_path / "new"))
    assert out["verify_ok"]
    restored = tmp_path / "new" / "repo" / "objects" / "index.sqlite"
    assert sqlite3.connect(restored).execute("SELECT count(*) FROM segments").fetchone() == (2,)
