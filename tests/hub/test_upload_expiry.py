"""Uploads a curator gave up on expire: the job, collection after it, 410 to the client.

An upload that receives nothing for ``upload_expiry_days`` (7 by default) is expired by the
``uploads`` job: its object rows go, so the next collection takes the objects nothing else
uses, and a client that comes back is told to publish again (410 Gone). Time passing is
played by moving an upload's times and its objects' freshness back, as a week of idleness
would leave them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import create_engine, select, text, update

from caravane.hub.config import HubConfig
from caravane.hub.db import upgrade
from caravane.hub.errors import Gone
from caravane.hub.jobs import JobRunner
from caravane.hub.models import AuditEntry, Upload, UploadObject
from caravane.hub.service import Hub, Principal, now
from caravane.packs.chunker import DEFAULT_AVG
from caravane.packs.repository import Repository, ingest_files, scan_source
from caravane.packs.store import ObjectStore
from caravane.protocol.metadata import FileEntry

from .conftest import RunningHub
from .test_upload_batch import _batch, _local_release
from .util import CARAVANE, cli, http, noise, publish_cli, write_tree

ADMIN = Principal("amina", "curator")


def _open(
    hub: Hub, tmp: Path, files: dict[str, object], hold: int = 0
) -> tuple[str, list[FileEntry], list[tuple[str, bytes]]]:
    """An upload opened through the service with all its missing objects sent but ``hold``:
    (upload, its files, the objects held back as (sha, frame))."""
    if "maths" not in {c["id"] for c in hub.channels()}:
        hub.create_channel(Principal("admin", "admin"), {"id": "maths"})
    src = write_tree(tmp / "src", files)
    cache = ObjectStore(tmp / "cache")
    entries, *_ = ingest_files(cache, scan_source(src), DEFAULT_AVG, None)
    up = hub.start_upload(ADMIN, {"channel": "maths", "files": [e.to_dict() for e in entries]})
    uid, missing = up["upload"], up["missing"]
    cut = len(missing) - hold
    for sha in missing[:cut]:
        hub.put_object(ADMIN, uid, sha, cache.read_frame(sha))
    return uid, entries, [(sha, cache.read_frame(sha)) for sha in missing[cut:]]


def _idle(hub: Hub, uid: str, days: float) -> None:
    """As a week without news leaves an upload: opened and last active ``days`` ago, and
    its objects last written then."""
    then = now() - timedelta(days=days)
    with hub.db.session() as s:
        s.execute(update(Upload).where(Upload.id == uid).values(created_at=then, active_at=then))
        shas = list(s.scalars(select(UploadObject.sha).where(UploadObject.upload_id == uid)))
    hub.repo.store.freshen_many(shas, at=then.timestamp())


def _objects(entries: list[FileEntry]) -> set[str]:
    return {h for e in entries for h, _ in e.chunks}


def _expired_message(uid: str, days: int = 8) -> str:
    return f"upload {uid} expired after {days} days without activity; publish again"


def test_an_idle_upload_expires_and_the_next_gc_takes_its_objects(hub: Hub, tmp_path: Path):
    runner = JobRunner(hub)
    shared = noise(9000, "shared")
    forgotten, e_forgotten, _ = _open(
        hub, tmp_path / "a", {"a.bin": noise(20_000, "a"), "shared.bin": shared}
    )
    resumed, e_resumed, held = _open(
        hub,
        tmp_path / "b",
        {"b.bin": noise(20_000, "b"), "b2.bin": noise(20_000, "b2"), "shared.bin": shared},
        hold=1,
    )
    fresh, e_fresh, _ = _open(hub, tmp_path / "c", {"c.bin": noise(20_000, "c")})
    for uid in (forgotten, resumed):
        _idle(hub, uid, 8)
    # the curator of `resumed` comes back after the week: its last object arrives now
    (sha, frame), *_ = held
    assert hub.put_object(ADMIN, resumed, sha, frame)

    assert runner.expire_uploads() == [forgotten]
    assert runner.expire_uploads() == []  # once
    with hub.db.session() as s:
        row = s.get(Upload, forgotten)
        assert row is not None and row.state == "expired" and row.files == []
        assert (
            s.scalars(select(UploadObject).where(UploadObject.upload_id == forgotten)).all() == []
        )
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "upload.expire")).all()
    assert [a.detail["upload"] for a in audit] == [forgotten]
    assert audit[0].detail["idle_days"] == 8 and audit[0].detail["channel"] == "maths"
    assert audit[0].detail["objects"] == len(_objects(e_forgotten))
    assert {u["upload"] for u in hub.open_uploads()} == {resumed, fresh}

    only_forgotten = _objects(e_forgotten) - _objects(e_resumed) - _objects(e_fresh)
    kept = _objects(e_resumed) | _objects(e_fresh)
    assert only_forgotten and all(hub.repo.store.has(h) for h in only_forgotten)
    count, freed = runner.collect_garbage()
    assert count == len(only_forgotten) and freed > 0
    assert not any(hub.repo.store.has(h) for h in only_forgotten)
    # the resumed upload's objects are a week old too: kept because it is still open
    assert all(hub.repo.store.has(h) for h in kept)

    assert hub.commit_upload(ADMIN, resumed)["version"] == 1
    assert hub.commit_upload(ADMIN, fresh)["version"] == 2
    with pytest.raises(Gone) as refused:
        hub.commit_upload(ADMIN, forgotten)
    assert refused.value.status == 410
    assert _expired_message(forgotten) in str(refused.value)
    assert hub.repo.verify().ok


def test_expiry_zero_keeps_every_upload(hub: Hub, tmp_path: Path):
    hub.config.upload_expiry_days = 0
    runner = JobRunner(hub)
    uid, entries, _ = _open(hub, tmp_path, {"a.bin": noise(20_000, "zero")})
    _idle(hub, uid, 400)
    assert runner.expire_uploads() == []
    assert runner.collect_garbage() == (0, 0)
    assert all(hub.repo.store.has(h) for h in _objects(entries))
    assert [u["expires"] for u in hub.open_uploads()] == [None]
    assert hub.commit_upload(ADMIN, uid)["version"] == 1


def test_hub_processes_expiring_at_once_expire_each_upload_once(hub: Hub, tmp_path: Path):
    """Several processes run the job together (the CLI beside `hub serve`, a lease handed
    over): each idle upload is expired and audited exactly once."""
    idle = []
    for i in range(6):
        uid, _, _ = _open(hub, tmp_path / f"u{i}", {"f.bin": noise(3000, f"race-{i}")})
        _idle(hub, uid, 10)
        idle.append(uid)
    hubs = [Hub(hub.config) for _ in range(3)]
    barrier = threading.Barrier(len(hubs))
    results: list[object] = [None] * len(hubs)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = JobRunner(hubs[i], f"proc-{i}").expire_uploads()
        except Exception as exc:  # a crash here is what this test is about
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(hubs))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for h in hubs:
            h.db.dispose()
    assert all(isinstance(r, list) for r in results), results
    done = [uid for r in results for uid in r]  # type: ignore[union-attr]
    assert sorted(done) == sorted(idle), results
    with hub.db.session() as s:
        audited = s.scalars(select(AuditEntry).where(AuditEntry.action == "upload.expire")).all()
    assert sorted(a.detail["upload"] for a in audited) == sorted(idle)


def test_resuming_or_committing_an_expired_upload_is_gone(running_hub: RunningHub, tmp_path: Path):
    rh = running_hub
    local = _local_release(tmp_path)
    entries = local.manifest("tmp", 1).files
    files = [e.to_dict() for e in entries]
    chunks = [[h, n] for e in entries for h, n in e.chunks]
    assert http("POST", f"{rh.url}/api/v1/channels", {"id": "maths"}, rh.admin).status == 201
    listed = http(
        "POST", f"{rh.url}/api/v1/uploads", {"channel": "maths", "files": files}, rh.admin
    )
    streamed = http(
        "POST", f"{rh.url}/api/v1/uploads", {"channel": "maths", "stream": True}, rh.admin
    )
    lid, sid = listed.json()["upload"], streamed.json()["upload"]
    missing = listed.json()["missing"]
    part = http(
        "POST", f"{rh.url}/api/v1/uploads/{lid}/objects", _batch(local, missing[:2]), rh.admin
    )
    assert part.status == 200
    declared = http(
        "POST", f"{rh.url}/api/v1/uploads/{sid}/chunks", {"chunks": chunks[:2]}, rh.admin
    )
    assert declared.status == 200
    for uid in (lid, sid):
        _idle(rh.hub, uid, 8)
    assert sorted(JobRunner(rh.hub).expire_uploads()) == sorted([lid, sid])

    def gone(method: str, uid: str, tail: str, body: bytes | dict | None = None) -> None:
        ans = http(method, f"{rh.url}/api/v1/uploads/{uid}{tail}", body, rh.admin)
        assert ans.status == 410, (method, tail, ans.status, ans.body)
        assert ans.json()["status"] == 410
        assert _expired_message(uid) in ans.json()["error"], ans.json()

    sha = missing[2]
    gone("PUT", lid, f"/objects/{sha}", local.store.read_frame(sha))
    gone("POST", lid, "/objects", _batch(local, missing[2:]))
    gone("POST", lid, "/commit")
    gone("GET", lid, "")
    gone("POST", sid, "/chunks", {"chunks": chunks})
    gone("PUT", sid, "/files", {"files": files, "commit": True})
    gone("POST", sid, "/commit")
    assert rh.hub.channel("maths")["latest"] is None  # nothing was published


def _wait_for_upload(hub: Hub, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with hub.db.session() as s:
            uid = s.scalar(select(Upload.id).where(Upload.state.in_(("open", "receiving"))))
        if uid is not None:
            return uid
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the publish never opened an upload")


def test_a_publish_stopped_past_the_expiry_exits_non_zero_saying_publish_again(
    running_hub: RunningHub, tmp_path: Path
):
    """The laptop is closed in the middle of `caravane publish` (SIGSTOP) and opened again
    (SIGCONT) after the upload expired: the command says why and what to do, exit 1; the
    same command then publishes."""
    rh = running_hub
    folder = write_tree(
        tmp_path / "src", {f"video-{i}.bin": noise(3 * 1024 * 1024, f"v{i}") for i in range(8)}
    )
    args = [CARAVANE, "publish", "maths", str(folder), "--hub", rh.url, "--token", rh.admin]
    proc = subprocess.Popen(
        [*args, "--cache", str(tmp_path / "cache")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        uid = _wait_for_upload(rh.hub, proc)
        os.kill(proc.pid, signal.SIGSTOP)
        expired: list[str] = []
        for _ in range(5):
            time.sleep(0.5)  # requests already on their way land before the week passes
            _idle(rh.hub, uid, 8)
            expired = JobRunner(rh.hub).expire_uploads()  # [] if one landed just now
            if expired:
                break
        assert expired == [uid]
    except BaseException:
        proc.kill()
        raise
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and _expired_message(uid) in lines[0], err
    assert "Traceback" not in err
    assert rh.hub.channel("maths")["latest"] is None

    again = publish_cli(rh, "maths", folder, tmp_path / "cache")
    assert again["version"] == 1


def test_cli_lists_open_uploads_and_runs_the_uploads_job(tmp_path: Path):
    r = cli("hub", "init", "--data", str(tmp_path / "h"), "--json")
    assert r.returncode == 0, r.stderr
    config = Path(json.loads(r.stdout)["config"])
    cfg = HubConfig.load(config)
    hub = Hub(cfg)
    try:
        uid, _, _ = _open(hub, tmp_path / "u", {"a.bin": noise(5000, "cli")})
        _idle(hub, uid, 3)
    finally:
        hub.close()

    r = cli("hub", "uploads", "--config", str(config), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["upload_expiry_days"] == 7
    (row,) = doc["uploads"]
    assert row["upload"] == uid and row["channel"] == "maths" and row["by"] == "amina"
    assert row["objects"] == 1 and 3 * 86400 - 60 < row["idle_seconds"] < 3 * 86400 + 60
    expires = datetime.fromisoformat(row["expires"])
    assert abs(expires - (now() + timedelta(days=4))) < timedelta(minutes=1)
    r = cli("hub", "uploads", "--config", str(config))
    assert r.returncode == 0 and uid in r.stdout and "3 d 0 h" in r.stdout, r.stdout
    assert "in 3 d 23 h" in r.stdout, r.stdout  # 4 days left, less the seconds since
    assert "1 open uploads; an upload idle for 7 days expires" in r.stdout

    # 0 in hub.toml: nothing expires, however old
    cfg.upload_expiry_days = 0
    config.write_text(cfg.to_toml(), encoding="utf-8")
    hub = Hub(cfg)
    try:
        _idle(hub, uid, 30)
    finally:
        hub.close()
    r = cli("hub", "jobs", "uploads", "--config", str(config), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"] == {"uploads": []}
    assert "never expire" in cli("hub", "uploads", "--config", str(config)).stdout

    cfg.upload_expiry_days = 7
    config.write_text(cfg.to_toml(), encoding="utf-8")
    r = cli("hub", "jobs", "uploads", "gc", "--config", str(config), "--json")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert results["uploads"] == [uid] and results["gc"][0] == 1  # its object, collected
    assert f"upload {uid} of channel maths, opened by amina" in r.stderr
    assert "expired after 30 days without activity" in r.stderr
    assert "amina must publish again" in r.stderr
    r = cli("hub", "uploads", "--config", str(config), "--json")
    assert json.loads(r.stdout)["uploads"] == []


def test_a_negative_expiry_is_refused(tmp_path: Path):
    path = tmp_path / "hub.toml"
    path.write_text("[hub]\nupload_expiry_days = -1\n", encoding="utf-8")
    with pytest.raises(Exception, match="upload_expiry_days must be a whole number of days"):
        HubConfig.load(path)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'hub.db'}"


def test_migration_gives_uploads_open_at_the_upgrade_a_full_expiry(db_url: str, tmp_path: Path):
    """A database from before expiry (0005): uploads open then count as active at the
    upgrade (a publish still sending is not cut by it), and expire a week later."""
    upgrade(db_url, "0005")
    engine = create_engine(db_url)
    files = json.dumps([{"path": "a", "size": 30, "chunks": [["a" * 64, 10], ["b" * 64, 20]]}])
    long_ago = "2026-01-01 00:00:00"
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO channels (id, title, language, description, keep_last, created_at)"
                f" VALUES ('maths', 'maths', 'fr', '', 5, '{long_ago}')"
            )
        )
        for uid, state in (("open1", "open"), ("recv1", "receiving"), ("done1", "committed")):
            c.execute(
                text(
                    "INSERT INTO uploads (id, channel_id, created_by, created_at, notes, files,"
                    f" state) VALUES (:id, 'maths', 'amina', '{long_ago}', '', :files, :state)"
                ),
                {"id": uid, "files": files, "state": state},
            )
        for sha, size in (("a" * 64, 10), ("b" * 64, 20)):
            c.execute(
                text("INSERT INTO upload_objects (upload_id, sha, size) VALUES ('open1', :s, :n)"),
                {"s": sha, "n": size},
            )
    before = datetime.now(UTC)
    upgrade(db_url)
    after = datetime.now(UTC)
    ts = sa.DateTime(timezone=True)
    uploads = sa.table(
        "uploads", sa.column("id"), sa.column("created_at", ts), sa.column("active_at", ts)
    )
    with engine.connect() as c:
        active = {
            uid: (at if at.tzinfo else at.replace(tzinfo=UTC), created)
            for uid, at, created in c.execute(
                sa.select(uploads.c.id, uploads.c.active_at, uploads.c.created_at)
            )
        }
    engine.dispose()
    for uid in ("open1", "recv1"):
        assert before - timedelta(seconds=1) <= active[uid][0] <= after, active
    assert active["done1"][0].replace(tzinfo=None) == active["done1"][1].replace(tzinfo=None)

    cfg = HubConfig(data_dir=tmp_path / "hub", database_url=db_url, scheduler=False)
    cfg.data_dir.mkdir()
    Repository.init(cfg.repo_dir)
    hub = Hub(cfg)
    try:
        assert hub.expire_uploads() == []
        kept = hub.open_upload_objects()
        assert "a" * 64 in kept and "b" * 64 in kept and len(kept) == 2
        assert {u["upload"] for u in hub.open_uploads()} == {"open1", "recv1"}
        _idle(hub, "open1", 8)
        assert [u["upload"] for u in hub.expire_uploads()] == ["open1"]
        assert len(hub.open_upload_objects()) == 0
    finally:
        hub.close()
