"""Scheduled jobs, each run once: packs, garbage, expiring metadata, silent centres; the lease."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

import caravane.hub.jobs as jobs_module
from caravane.hub.errors import PackBuildError
from caravane.hub.jobs import JobRunner
from caravane.hub.models import Centre, Lease
from caravane.hub.service import Hub, Principal, now
from caravane.packs.chunker import DEFAULT_AVG
from caravane.packs.repository import Repository, ingest_files, scan_source
from caravane.packs.store import ObjectStore
from caravane.protocol.metadata import parse_time

from .conftest import RunningHub
from .util import cli, http, noise, publish_cli, register_and_enrol, signed_report, write_tree

ADMIN = Principal("tester", "admin")


def publish(hub: Hub, tmp: Path, files: dict, channel: str = "maths", commit: bool = True):
    """Publish through the service, as the HTTP layer would: upload, objects, commit."""
    if channel not in {c["id"] for c in hub.channels()}:
        hub.create_channel(ADMIN, {"id": channel})
    src = write_tree(tmp / "src", files)
    cache = ObjectStore(tmp / "cache")
    entries, *_ = ingest_files(cache, scan_source(src), DEFAULT_AVG, None)
    up = hub.start_upload(ADMIN, {"channel": channel, "files": [e.to_dict() for e in entries]})
    for sha in up["missing"]:
        hub.put_object(ADMIN, up["upload"], sha, cache.read_frame(sha))
    if not commit:
        return up, entries
    return hub.commit_upload(ADMIN, up["upload"]), entries


def _objects(entries) -> set[str]:
    return {h for e in entries for h, _ in e.chunks}


def test_build_recent_packs_after_publishes(hub: Hub, tmp_path: Path):
    runner = JobRunner(hub)
    for v in range(1, 4):
        publish(hub, tmp_path, {"a.bin": noise(30_000, f"v{v}"), "same.txt": "x"})
    built = runner.build_recent_packs()
    # keep_last=2: version 1 is retired, so no pack starts from it.
    assert sorted(built) == ["0-3.pack", "2-3.pack"]
    for a in (0, 2):
        assert hub.repo.pack_path("maths", a, 3).is_file()
    assert not hub.repo.pack_path("maths", 1, 3).exists()
    assert runner.build_recent_packs() == []  # nothing left to do
    # The pack is usable: a centre holding nothing reaches version 3 from it alone.
    store = Repository.init(tmp_path / "store", trust_root=hub.repo.path / "metadata/root.json")
    store.apply_pack(hub.repo.pack_path("maths", 0, 3))
    assert store.verify().ok and store.verify().channels == {"maths": [3]}


def test_packs_built_ahead_of_time_come_from_a_process_of_their_own(hub: Hub, tmp_path: Path):
    """The worker's packs are built by ``caravane pack build`` in a child process (its
    memory is not the server's) and are the bytes an in-process build makes."""
    runner = JobRunner(hub)
    publish(hub, tmp_path, {"a.txt": "leçon " * 5000, "b.bin": noise(40_000, "b")})
    started: list[list[str]] = []
    real = subprocess.Popen

    def spying(cmd: list[str], **kw: object) -> subprocess.Popen[bytes]:
        started.append(list(cmd))
        return real(cmd, **kw)  # type: ignore[call-overload, no-any-return]

    jobs_module.subprocess.Popen = spying  # type: ignore[misc]
    try:
        assert runner.build_recent_packs() == ["0-1.pack"]
    finally:
        jobs_module.subprocess.Popen = real  # type: ignore[misc]
    assert [c[2:5] for c in started] == [["caravane", "pack", "build"]]
    here = tmp_path / "in-process.pack"
    hub.repo.build_pack("maths", 0, 1, here, level=runner.pack_level("maths", 0, 1))
    assert hub.repo.pack_path("maths", 0, 1).read_bytes() == here.read_bytes()


def test_a_pack_build_that_fails_in_its_process_says_why_and_leaves_nothing(
    hub: Hub, tmp_path: Path
):
    runner = JobRunner(hub)
    _, entries = publish(hub, tmp_path, {"a.bin": noise(30_000, "a")})
    hub.repo.store.remove(entries[0].chunks[0][0])  # the store lost an object
    with pytest.raises(PackBuildError, match=r"maths 0-1 .*could not be built: .*missing"):
        runner.build_recent_packs()
    folder = hub.repo.path / "packs" / "maths"
    assert not list(folder.glob("*")) if folder.is_dir() else True  # no pack, no part file


def test_stopping_the_runner_stops_a_pack_build_in_progress(hub: Hub, tmp_path: Path):
    """A hub that stops does not wait for a long build: the child is interrupted, its part
    file removed, and the worker told why."""
    runner = JobRunner(hub)
    text = "".join(f"ligne {i} de la leçon {i * 7 % 13}\n" for i in range(800_000))
    publish(hub, tmp_path, {"long.txt": text, "b.bin": noise(3_000_000, "b")})
    failed: list[BaseException] = []

    def build() -> None:
        try:
            runner.build_pack_once("maths", 0, 1, 22, isolated=True)
        except PackBuildError as exc:
            failed.append(exc)

    worker = threading.Thread(target=build)
    worker.start()
    deadline = time.monotonic() + 30
    while not runner._children and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner._children, "the build did not start"
    folder = hub.repo.path / "packs" / "maths"
    while not list(folder.glob(".*.part")) and time.monotonic() < deadline:
        time.sleep(0.01)  # into the build: its part file is being written
    assert list(folder.glob(".*.part")), "the build wrote nothing"
    runner.stop()
    worker.join(20)
    assert not worker.is_alive()
    assert failed and "could not be built" in str(failed[0])
    assert not hub.repo.pack_path("maths", 0, 1).exists()
    assert not list(folder.glob(".*.part"))


def test_background_worker_builds_packs_after_http_publish(running_hub: RunningHub, tmp_path):
    publish_cli(running_hub, "maths", write_tree(tmp_path / "s", {"a": "1"}), tmp_path / "c")
    publish_cli(running_hub, "maths", write_tree(tmp_path / "s", {"a": "2"}), tmp_path / "c")
    want = [running_hub.hub.repo.pack_path("maths", a, 2) for a in (0, 1)]
    deadline = time.monotonic() + 20
    while not all(p.is_file() for p in want) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(p.is_file() for p in want)


def test_garbage_collection_after_retention(hub: Hub, tmp_path: Path):
    runner = JobRunner(hub)
    hub.config.gc_grace_hours = 0  # every object here is seconds old; the race test covers grace
    _, e1 = publish(hub, tmp_path, {"one.bin": noise(20_000, "one"), "common.txt": "c"})
    _, e2 = publish(hub, tmp_path, {"two.bin": noise(20_000, "two"), "common.txt": "c"})
    _, e3 = publish(hub, tmp_path, {"three.bin": noise(20_000, "three"), "common.txt": "c"})
    # keep_last=2: version 1 is retired from the signed metadata and the database.
    assert sorted(hub.repo.channel_meta("maths").releases) == [2, 3]
    assert [r["retired"] for r in hub.channel("maths")["releases"]] == [True, False, False]
    only_v1 = _objects(e1) - _objects(e2) - _objects(e3)
    assert only_v1 and all(hub.repo.store.has(h) for h in only_v1)

    # An upload in progress keeps its objects even though no release uses them yet.
    up, e4 = publish(hub, tmp_path, {"four.bin": noise(20_000, "four")}, commit=False)
    pending = _objects(e4)

    count, freed = runner.collect_garbage()
    assert count == len(only_v1) + 1 and freed > 0  # and release 1's file list (one piece)
    assert not any(hub.repo.store.has(h) for h in only_v1)
    assert all(hub.repo.store.has(h) for h in _objects(e2) | _objects(e3) | pending)
    assert hub.repo.verify().ok
    assert runner.collect_garbage() == (0, 0)
    # The pending upload still commits after the collection.
    assert hub.commit_upload(ADMIN, up["upload"])["version"] == 4


def test_refresh_expiring_metadata(hub: Hub, tmp_path: Path):
    runner = JobRunner(hub)
    hub.config.expires_days = 10  # published with a short life...
    publish(hub, tmp_path, {"a": "a"})
    before = parse_time(hub.repo.channel_meta("maths").expires, "expires")
    assert before - now() < timedelta(days=11)
    hub.config.expires_days = 365  # ...and the job renews anything expiring within 30 days
    assert runner.refresh_expiring() == ["maths"]
    meta = hub.repo.channel_meta("maths")
    after = parse_time(meta.expires, "expires")
    assert after - now() > timedelta(days=360)
    assert sorted(meta.releases) == [1]
    assert runner.refresh_expiring() == []  # far from expiry now: left alone


def _set_last_contact(hub: Hub, node_id: str, days_ago: int) -> None:
    with hub.db.session() as s:
        centre = s.get(Centre, node_id)
        centre.last_contact = now() - timedelta(days=days_ago)
        centre.enrolled_at = now() - timedelta(days=days_ago)


def test_flag_stale_centres(running_hub: RunningHub):
    hub = running_hub.hub
    runner = JobRunner(hub)
    quiet, qkey = register_and_enrol(running_hub.url, running_hub.admin, "Quiet")
    fresh, _ = register_and_enrol(running_hub.url, running_hub.admin, "Fresh")
    http("POST", f"{running_hub.url}/api/v1/nodes", {"name": "Never enrolled"}, running_hub.admin)
    _set_last_contact(hub, quiet["node_id"], 30)
    assert runner.flag_stale_centres() == ["Quiet"]
    fleet = {n["name"]: n for n in hub.fleet()}
    assert fleet["Quiet"]["stale"] is True
    assert fleet["Fresh"]["stale"] is False and fleet["Never enrolled"]["stale"] is False
    assert runner.flag_stale_centres() == []  # flagged once, not again
    assert any(e["action"] == "node.stale" for e in hub.audit_log())
    # A report from the centre clears the flag.
    nid = quiet["node_id"]
    ans = http("POST", f"{running_hub.url}/api/v1/nodes/{nid}/reports", signed_report(nid, qkey, 1))
    assert ans.status == 200
    assert {n["name"]: n for n in hub.fleet()}["Quiet"]["stale"] is False


def test_only_one_holder_takes_the_lease(hub: Hub):
    other = Hub(hub.config)  # a second process on the same database
    try:
        r1, r2 = JobRunner(hub, "proc-1"), JobRunner(other, "proc-2")
        assert hub.take_lease("jobs", r1.holder, 300) is True
        assert other.take_lease("jobs", r2.holder, 300) is False
        assert hub.take_lease("jobs", r1.holder, 300) is True  # the holder renews

        ran = []

        def job() -> None:
            ran.append(1)

        r2._guarded(job)()
        assert ran == []  # the second process does not run the job
        r1._guarded(job)()
        assert ran == [1]

        # The holder goes away: once the lease expires, the other process takes over.
        with hub.db.session() as s:
            s.get(Lease, "jobs").expires_at = now() - timedelta(seconds=1)
        assert other.take_lease("jobs", r2.holder, 300) is True
        assert hub.take_lease("jobs", r1.holder, 300) is False
    finally:
        other.db.dispose()


def test_lease_race_on_an_empty_table_has_one_winner(hub: Hub):
    """Two processes starting together: exactly one takes the lease, the other is refused."""
    hubs = [Hub(hub.config) for _ in range(2)]
    try:
        for round_ in range(5):
            name = f"race-{round_}"
            barrier = threading.Barrier(2)
            results: list[object] = [None, None]

            def attempt(i: int, name: str = name, barrier=barrier, results=results) -> None:
                barrier.wait()
                try:
                    results[i] = hubs[i].take_lease(name, f"proc-{i}", 300)
                except Exception as exc:  # a crash here is what this test is about
                    results[i] = exc

            threads = [threading.Thread(target=attempt, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(map(repr, results)) == ["False", "True"], results
    finally:
        for h in hubs:
            h.db.dispose()


def test_cli_runs_all_jobs_once(tmp_path: Path):
    r = cli("hub", "init", "--data", str(tmp_path / "h"), "--json")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)["config"]
    r = cli("hub", "jobs", "--config", cfg, "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["results"]) == {"packs", "uploads", "gc", "expiry", "stale"}
    r = cli("hub", "jobs", "nope", "--config", cfg)
    assert r.returncode != 0 and "unknown job" in r.stderr


def test_a_centre_far_behind_keeps_its_release_and_gets_one_direct_pack(hub: Hub, tmp_path: Path):
    """Issue 10: the hub keeps the releases centres still hold and direct packs from them,
    whatever keep_last says (2 here); releases nobody holds, and packs they replace, go."""
    runner = JobRunner(hub)
    publish(hub, tmp_path, {"a.bin": noise(30_000, "v1"), "same.txt": "x"})
    store = Repository.init(tmp_path / "store", trust_root=hub.repo.path / "metadata/root.json")
    first = tmp_path / "0-1.pack"
    hub.repo.build_pack("maths", 0, 1, first)
    store.apply_pack(first)
    with hub.db.session() as s:
        s.add(
            Centre(
                id="far", name="Loin", created_at=now(), last_contact=now(), installed={"maths": 1}
            )
        )
        s.add(
            Centre(
                id="gone",
                name="Partie",
                created_at=now(),
                last_contact=now() - timedelta(days=hub.config.hold_days + 1),
                installed={"maths": 2},
            )
        )
    for v in range(2, 5):
        publish(hub, tmp_path, {"a.bin": noise(30_000, f"v{v}"), "same.txt": "x"})
    assert "1-4.pack" in runner.build_recent_packs()
    old = hub.repo.pack_path("maths", 1, 4)
    stale = time.time() - 2 * 24 * 3600
    os.utime(old, (stale, stale))
    publish(hub, tmp_path, {"a.bin": noise(30_000, "v5"), "same.txt": "x"})
    assert sorted(hub.repo.channel_meta("maths").releases) == [1, 4, 5]  # 1: held; 2: silent
    built = runner.build_recent_packs()
    assert "1-5.pack" in built and "4-5.pack" in built
    assert not old.exists()  # replaced by 1-5 a day ago
    store.apply_pack(hub.repo.pack_path("maths", 1, 5))
    assert store.verify().ok and store.latest_local_version("maths") == 5
