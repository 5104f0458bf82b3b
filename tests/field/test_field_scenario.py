"""Issue 13 as one scenario: three centres, every route, kill -9 at seeded instants.

A syncs from the hub through a proxy that cuts the link; B sees only A (content from A's
peer server, reports relayed by A); C is never online and lives on drives. Each command
(`node sync` at A and B, `usb import` at C) is killed with SIGKILL at a seeded instant, then
run again. After every kill: each centre serves exactly one whole release, the hub holds
each report once, and the fleet row is the centre's newest report the hub holds. At the end,
after clean passes and one drive round trip: every report every centre made is at the hub
exactly once, nothing waits in any queue, and the fleet view tells each route.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

from caravane.hub.usb import ingest, prepare_for_route
from caravane.node.agent import NodeAgent
from caravane.node.config import UpstreamConfig
from tests.foundation.conftest import read_tree
from tests.node.conftest import World, content
from tests.support.faultproxy import Faults

SEED = 20261126
KILLS_PER_CENTRE = 3


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "caravane", *args]


def _killed(cmd: list[str], at: float) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(at)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _queue(d: Path) -> dict[int, dict]:
    """The reports a centre made: seq -> signed body (from its own queue)."""
    n = NodeAgent.open(d)  # opening migrates, as any node command does
    try:
        with closing(sqlite3.connect(n.state.path)) as db:
            rows = db.execute("SELECT seq, body FROM report_queue").fetchall()
        return {seq: json.loads(body)["signed"] for seq, body in rows}
    finally:
        n.close()


def _check(world: World, dirs: dict[str, Path], ids: dict[str, str], when: str) -> None:
    releases = list(world.versions.values())
    for name, d in dirs.items():
        live = d / "live" / "lecons"
        if live.exists():
            assert read_tree(live) in releases, f"{when}: {name} serves a mix"
        made = _queue(d)
        detail = world.rh.hub.centre_detail(ids[name])
        held = [r["seq"] for r in detail["reports"]]
        assert len(held) == len(set(held)), f"{when}: {name}: a report stored twice"
        assert set(held) <= set(made), f"{when}: {name}: the hub holds a report never made"
        if held:
            newest = made[max(held)]
            row = detail["centre"]
            assert row["installed"] == newest["installed"], f"{when}: {name}: fleet not newest"
            assert row["last_error"] == (newest["errors"][-1] if newest["errors"] else None)


def _lost(
    name: str,
    d: Path,
    held: list[int],
    made: dict[int, dict],
    last: subprocess.CompletedProcess[str] | None,
) -> str:
    """What a failure of the final report check needs to be understood from CI's log alone:
    which reports are where, what the centre still queues and what its last pass said."""
    n = NodeAgent.open(d)
    try:
        with closing(sqlite3.connect(n.state.path)) as db:
            queue = db.execute("SELECT seq, sent_at, sent_by FROM report_queue").fetchall()
    finally:
        n.close()
    said = ""
    if last is not None:
        said = f"\nlast sync's stdout:\n{last.stdout[-4000:]}\nstderr:\n{last.stderr[-4000:]}"
    return (
        f"{name}: reports lost or doubled: hub holds {held}, centre made {sorted(made)}, "
        f"its queue (seq, sent_at, sent_by) {queue}{said}"
    )


def test_three_centres_every_route_kill_9(world_any_db: World, tmp_path: Path) -> None:
    world = world_any_db  # the hub on SQLite, then on PostgreSQL
    rng = random.Random(SEED)
    world.publish(content(1, big=1_500_000, files=4))
    proxy = world.proxy()
    proxy.faults = Faults(cut_every=400_000)
    a = world.node(
        "centre-a",
        upstreams=[UpstreamConfig("hub", "http", proxy.url, 10)],
        hub_url=proxy.url,
        bandwidth_kbit=16_000,
    )
    a_url = world.serve_node(a)  # A's portal: peer store and report relay for B
    b = world.node("centre-b", upstreams=[UpstreamConfig("peer-a", "peer", a_url, 10)])
    b.config.hub_url = world.rh.url  # B's registration went once by network...
    assert b.complete_enrolment()
    b.config.hub_url = "http://127.0.0.1:9"  # ...since then B only ever sees A
    b.config.save()
    doc = world.enrolment("centre-c")
    c = NodeAgent.init(tmp_path / "centre-c", doc, upstreams=[], offline=True)
    c.config.durable = False
    c.config.save()
    dirs = {"A": a.config.data_dir, "B": b.config.data_dir, "C": c.config.data_dir}
    ids = {"A": a.config.node_id, "B": b.config.node_id, "C": c.config.node_id}
    b.close()
    c.close()

    def sync(name: str) -> list[str]:
        return _cmd("node", "sync", "-d", str(dirs[name]))

    def drive_for_c(i: int) -> Path:
        drive = tmp_path / f"drive-{i}"
        drive.mkdir()
        prepare_for_route(world.rh.hub, drive, names=["centre-c"])
        return drive

    for round_ in range(2):
        if round_ == 1:
            world.publish(content(2, big=1_500_000, files=4))
        for k in range(KILLS_PER_CENTRE):
            for name in ("A", "B"):
                _killed(sync(name), rng.uniform(0.3, 2.5))
                _check(world, dirs, ids, f"round {round_} kill {k} at {name}")
                _run(sync(name))  # the next pass resumes (it may end early on a cut)
            drive = drive_for_c(round_ * 10 + k)
            _killed(_cmd("usb", "import", str(drive), "-d", str(dirs["C"])), rng.uniform(0.3, 2))
            _check(world, dirs, ids, f"round {round_} kill {k} at C")
            _run(_cmd("usb", "import", str(drive), "-d", str(dirs["C"])))
            ingest(world.rh.hub, drive)
            _check(world, dirs, ids, f"round {round_} after drive {k}")

    # clean passes: A whole, B from A, A forwards B's reports; C's drive goes there and back
    proxy.faults = Faults()
    latest = max(world.versions)
    last: dict[str, subprocess.CompletedProcess[str]] = {}
    for name in ("A", "B", "A"):
        done = last[name] = _run(sync(name))
        assert done.returncode == 0, (name, done.stdout, done.stderr)
    drive = drive_for_c(99)
    assert _run(_cmd("usb", "import", str(drive), "-d", str(dirs["C"]))).returncode == 0
    ingest(world.rh.hub, drive)
    _run(_cmd("usb", "import", str(drive), "-d", str(dirs["C"])))  # brings the acknowledgement
    ingest(world.rh.hub, drive)
    _check(world, dirs, ids, "end")

    rows = {r["id"]: r for r in world.rh.hub.fleet()}
    for name, d in dirs.items():
        assert read_tree(d / "live" / "lecons") == world.versions[latest], name
        made = _queue(d)
        held = sorted(r["seq"] for r in world.rh.hub.centre_detail(ids[name])["reports"])
        assert held == sorted(made), _lost(name, d, held, made, last.get(name))
        row = rows[ids[name]]
        assert row["installed"] == {"lecons": latest} and row["last_error"] is None, row
    assert rows[ids["A"]]["last_route"] == "network"
    assert rows[ids["B"]]["last_route"] == f"peer:{ids['A']}"
    assert rows[ids["C"]]["last_route"] == "usb"
    for name in ("A", "B"):
        n = NodeAgent.open(dirs[name])
        assert n.state.unsent_reports() == [] and n.state.unsent_relayed() == [], name
        n.close()
    n = NodeAgent.open(dirs["C"])
    # C's last report (made by the import that read the acknowledgement) rides the next drive
    assert len(n.state.unsent_reports()) == 1
    n.close()
