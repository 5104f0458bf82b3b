"""Issue 13, "nothing lost": every report reaches the hub once, by drive, network or peer.

Real hub (SQLite) on 127.0.0.1, real centres, real folders as drives, the real peer server.
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing

import pytest

from caravane.hub.errors import Conflict
from caravane.hub.usb import ingest, prepare_for_route
from caravane.node.agent import import_drive_into_centre
from caravane.node.config import UpstreamConfig
from caravane.packs.bundle import bundle_root
from caravane.protocol.keys import PrivateKey
from caravane.protocol.report import make_ack
from tests.node.conftest import World, content
from tests.usb.test_route import offline_centre, packs_on


def _hub_seqs(world: World, centre: str) -> list[int]:
    return sorted(r["seq"] for r in world.rh.hub.centre_detail(centre)["reports"])


def _row(world: World, centre: str) -> dict:
    return next(r for r in world.rh.hub.fleet() if r["id"] == centre)


def test_failed_import_error_reaches_the_hub_and_the_ack_round_trip(world: World) -> None:
    latest = world.publish(content(1))
    c = offline_centre(world, "centre-c")
    cid = c.config.node_id
    drive = world.tmp / "drive"
    drive.mkdir()
    prepare_for_route(world.rh.hub, drive, names=["centre-c"])
    bad = world.tmp / "drive-bad"
    shutil.copytree(drive, bad)
    for p in packs_on(bad):
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    # first a damaged drive: the import fails and its report says why
    assert not import_drive_into_centre(c, bad)["ok"]
    # then a good drive: both reports travel on it, none overwrites the other
    out = import_drive_into_centre(c, drive)
    assert out["ok"] and out["reports_on_drive"] == 2, out
    files = sorted(p.name for p in (bundle_root(drive) / "reports").glob("*.json"))
    assert files == [f"{cid}.1.json", f"{cid}.2.json"]

    back = ingest(world.rh.hub, drive)
    assert back["ok"] and back["acknowledged"] == {cid: 2}, back
    assert _hub_seqs(world, cid) == [1, 2]
    first = world.rh.hub.centre_detail(cid)["reports"][-1]
    assert first["seq"] == 1 and any("bad" in e or "checksum" in e for e in first["errors"])
    row = _row(world, cid)
    # the newest report is clean: the fleet view shows no error any more
    assert row["installed"] == {"lecons": latest} and row["last_error"] is None
    assert row["last_route"] == "usb" and "usb" in row["contacts"]

    # the next visit brings the acknowledgement: both are delivered, only report 3 waits
    assert len(c.state.unsent_reports()) == 2
    out = import_drive_into_centre(c, drive)
    assert out["acknowledged"] == 2
    assert [seq for seq, _ in c.state.unsent_reports()] == [3]
    # ingesting again stores nothing twice and acknowledges the new one
    again = ingest(world.rh.hub, drive)
    assert again["acknowledged"] == {cid: 3} and _hub_seqs(world, cid) == [1, 2, 3]


def test_a_forged_acknowledgement_marks_nothing(world: World) -> None:
    world.publish(content(1))
    c = offline_centre(world, "centre-c")
    cid = c.config.node_id
    drive = world.tmp / "drive"
    drive.mkdir()
    prepare_for_route(world.rh.hub, drive, names=["centre-c"])
    import_drive_into_centre(c, drive)
    acks = bundle_root(drive) / "acks"
    acks.mkdir()
    (acks / f"{cid}.json").write_bytes(make_ack(cid, [1, 2, 3], "now", PrivateKey.generate()))
    out = import_drive_into_centre(c, drive)
    assert out["acknowledged"] == 0
    assert [seq for seq, _ in c.state.unsent_reports()] == [1, 2]
    assert any("not signed by the hub" in e["message"] for e in c.state.recent_events(5))
    # an acknowledgement for another centre, even genuine, does not touch this one's queue
    key = world.rh.hub.repo.signing_key("release")
    (acks / f"{cid}.json").write_bytes(make_ack("someone-else", [1, 2], "now", key))
    assert import_drive_into_centre(c, drive)["acknowledged"] == 0
    assert len(c.state.unsent_reports()) == 3


def test_reports_relayed_by_a_peer_reach_the_hub_once(world: World) -> None:
    world.publish(content(1))
    a = world.node("centre-a")
    a.config.hub_url = world.rh.url
    assert world.sync(a).complete
    peer_url = world.serve_node(a)
    b = world.node("centre-b", upstreams=[UpstreamConfig("peer-a", "peer", peer_url, 10)])
    # B's registration went to the hub once (by drive or network); then B only sees A
    b.config.hub_url = world.rh.url
    assert b.complete_enrolment()
    b.config.hub_url = "http://127.0.0.1:9"
    assert world.sync(b).complete
    b.make_report()
    b.make_report()
    assert b.send_reports() == 2  # taken by A
    assert b.state.unsent_reports() == []
    assert len(a.state.unsent_relayed()) == 2
    # B sends report 1 again (a retry after a cut): A keeps it once
    with closing(sqlite3.connect(b.state.path)) as db:  # B's own queue keeps sent reports too
        row = db.execute("SELECT body FROM report_queue WHERE seq = 1").fetchone()
    assert row is not None
    again = row[0]
    assert a.relay_report(again)["queued"] is False

    a.make_report()
    assert a.send_reports() == 3  # A's own report and B's two
    bid, aid = b.config.node_id, a.config.node_id
    assert _hub_seqs(world, bid) == [1, 2]
    row = _row(world, bid)
    assert row["last_route"] == f"peer:{aid}" and row["installed"] == {"lecons": 1}
    assert _row(world, aid)["last_route"] == "network"
    # the hub holds them once; a second forward is a no-op
    assert a.send_reports() == 0 and a.state.unsent_relayed() == []
    with pytest.raises(Conflict, match="replayed"):
        world.rh.hub.accept_report(again, "usb")  # the same report on a drive: stored once
    assert _hub_seqs(world, bid) == [1, 2]


def test_a_centre_that_recovered_reports_no_error(world: World) -> None:
    world.publish(content(1))
    n = world.node("centre-a")
    n.config.hub_url = world.rh.url
    good = n.config.upstreams
    n.config.upstreams = [UpstreamConfig("dead", "http", "http://127.0.0.1:9", 10)]
    world.sync(n)
    n.state.event("error", "disk scan failed")
    n.make_report()
    n.send_reports()
    assert _row(world, n.config.node_id)["last_error"] == "disk scan failed"
    n.config.upstreams = good
    assert world.sync(n).complete
    n.make_report()
    n.send_reports()
    row = _row(world, n.config.node_id)
    assert row["last_error"] is None and row["installed"] == {"lecons": 1}


def test_relay_keeps_a_not_yet_enrolled_centre_and_drops_a_forgery(world: World) -> None:
    from caravane.protocol.keys import PrivateKey as Key
    from caravane.protocol.report import Report

    world.publish(content(1, big=50_000, files=1))
    a = world.node("centre-a")
    a.config.hub_url = world.rh.url
    waiting = world.enrolment("centre-w")["node_id"]  # registered, its key not yet at the hub
    enrolled = world.node("centre-e")
    enrolled.config.hub_url = world.rh.url
    assert enrolled.complete_enrolment()
    forged = Report(enrolled.config.node_id, 1, "2026-11-25T00:00:00Z").sign(Key.generate())
    early = Report(waiting, 1, "2026-11-25T00:00:00Z").sign(Key.generate())
    assert a.relay_report(forged)["queued"] and a.relay_report(early)["queued"]
    a.send_reports()
    left = [(cid, seq) for cid, seq, _ in a.state.unsent_relayed()]
    assert left == [(waiting, 1)]  # kept until its registration reaches the hub
    assert any("refused a report relayed" in e["message"] for e in a.state.recent_events(5))
    assert _hub_seqs(world, enrolled.config.node_id) == []


def test_a_centre_never_online_queues_its_report_without_error(world: World) -> None:
    c = offline_centre(world, "centre-c")
    c.config.hub_url = ""  # no hub address, no peer: drives only
    c.make_report()
    assert c.send_reports() == 0 and len(c.state.unsent_reports()) == 1
