"""The whole sneakernet route with a real hub and real node agents that are never online.

A drive is prepared from the hub's fleet state for three centres; A imports it; B's import
is cut half-way (files truncated) and the drive is re-inserted; C gets a tampered drive,
refuses it, then a good one works; the drive comes back and is ingested, and the hub shows
all three centres on the latest release with the route "usb".
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from caravane.hub.usb import ingest, prepare_for_route
from caravane.node.agent import NodeAgent, import_drive_into_centre
from caravane.packs.bundle import DriveError, bundle_root
from tests.foundation.conftest import read_tree
from tests.node.conftest import World, content


def offline_centre(world: World, name: str) -> NodeAgent:
    doc = world.enrolment(name)
    n = NodeAgent.init(world.tmp / name, doc, upstreams=[], offline=True)
    n.config.durable = False
    return n


def packs_on(drive: Path) -> list[Path]:
    return sorted((bundle_root(drive) / "repo" / "packs").rglob("*.pack*"))


def test_route_of_three_centres_never_online(world: World) -> None:
    world.publish(content(1))
    latest = world.publish(content(2))
    a, b, c = (offline_centre(world, n) for n in ("centre-a", "centre-b", "centre-c"))
    drive = world.tmp / "drive"
    drive.mkdir()
    res = prepare_for_route(world.rh.hub, drive, names=["centre-a", "centre-b", "centre-c"])
    assert res.written and not res.skipped
    # the three centres hold nothing: one deduplicated pack serves them all
    assert len(packs_on(drive)) == 1

    out_a = import_drive_into_centre(a, drive)
    assert out_a["ok"], out_a
    assert read_tree(a.releases.live_link("lecons")) == world.versions[latest]
    assert "can be removed" in out_a["receipt"]

    # B: the drive is pulled out mid-copy, so B sees truncated files
    cut = world.tmp / "drive-cut"
    shutil.copytree(drive, cut)
    for p in packs_on(cut):
        with open(p, "r+b") as fh:
            fh.truncate(p.stat().st_size // 2)
    out_b = import_drive_into_centre(b, cut)
    assert not out_b["ok"]
    assert any("incomplete" in e for e in out_b["errors"])
    assert b.releases.active("lecons") is None  # nothing half-activated
    out_b = import_drive_into_centre(b, drive)  # re-inserted, whole this time
    assert out_b["ok"], out_b
    assert read_tree(b.releases.live_link("lecons")) == world.versions[latest]

    # C: a tampered drive is refused, then a good drive works
    bad = world.tmp / "drive-bad"
    shutil.copytree(drive, bad)
    pack = packs_on(bad)[0]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    out_c = import_drive_into_centre(c, bad)
    assert not out_c["ok"] and any("refused" in e for e in out_c["errors"])
    assert c.releases.active("lecons") is None
    out_c = import_drive_into_centre(c, drive)
    assert out_c["ok"], out_c

    # the drive comes back to the hub
    summary = ingest(world.rh.hub, drive)
    assert summary["ok"], summary
    assert sorted(summary["enrolled"]) == sorted(n.config.node_id for n in (a, b, c))
    assert len(summary["reports"]) == 3
    rows = {r["name"]: r for r in world.rh.hub.fleet()}
    for name in ("centre-a", "centre-b", "centre-c"):
        assert rows[name]["installed"] == {"lecons": latest}
        assert rows[name]["behind"] == {}
        assert rows[name]["last_route"] == "usb"
    # ingesting the same drive twice changes nothing
    again = ingest(world.rh.hub, drive)
    assert again["reports"] == [] and len(again["already_known"]) == 3


def test_drive_prepared_for_centres_at_different_versions(world: World) -> None:
    world.publish(content(1))
    a = world.node("centre-a")  # online once, at version 1, and reported it
    a.config.hub_url = world.rh.url
    world.sync(a)
    a.make_report()
    a.send_reports()
    latest = world.publish(content(2))
    b = offline_centre(world, "centre-b")
    drive = world.tmp / "drive"
    drive.mkdir()
    prepare_for_route(world.rh.hub, drive, names=["centre-a", "centre-b"])
    sizes = {p.name: p.stat().st_size for p in packs_on(drive)}
    assert set(sizes) == {"1-2.pack", "0-2.pack"}
    assert sizes["1-2.pack"] < sizes["0-2.pack"] / 5  # A only needs the delta
    for n in (a, b):
        out = import_drive_into_centre(n, drive)
        assert out["ok"], out
        assert read_tree(n.releases.live_link("lecons")) == world.versions[latest]


def test_a_transfer_begun_on_a_drive_finishes_over_the_network(world: World) -> None:
    latest = world.publish(content(1, big=4_000_000))
    n = world.node("centre-a")
    drive = world.tmp / "drive"
    drive.mkdir()
    prepare_for_route(world.rh.hub, drive, names=["centre-a"])
    for p in packs_on(drive):
        with open(p, "r+b") as fh:
            fh.truncate(int(p.stat().st_size * 0.7))
    full = sum(p.stat().st_size for p in packs_on(drive)) / 0.7
    out = import_drive_into_centre(n, drive)
    assert not out["ok"]
    r = world.sync(n)
    assert r.complete, r.to_dict()
    assert read_tree(n.releases.live_link("lecons")) == world.versions[latest]
    assert r.received["hub"] < full * 0.6  # the drive's part was kept


def test_drive_from_another_hub_is_refused_with_a_clear_message(world: World) -> None:
    from tests.hub.conftest import start_hub

    other, server = start_hub(world.tmp / "other-hub")
    try:
        other.hub.repo.publish("lecons", _folder(world.tmp / "x", {"a.txt": b"other"}))
        drive = world.tmp / "drive"
        drive.mkdir()
        prepare_for_route(other.hub, drive, channels=["lecons"])
    finally:
        server.stop()
    world.publish(content(1))
    n = offline_centre(world, "centre-a")
    with pytest.raises(DriveError, match="another hub"):
        import_drive_into_centre(n, drive)
    assert n.releases.active("lecons") is None


def _folder(path: Path, files: dict[str, bytes]) -> Path:
    from tests.foundation.conftest import write_tree

    return write_tree(path, files)


def test_agent_notices_an_inserted_drive_by_itself(world: World) -> None:
    from caravane.node.service import AgentService

    latest = world.publish(content(1))
    n = offline_centre(world, "centre-a")
    media = world.tmp / "media"
    n.config.usb_mounts = [str(media)]
    service = AgentService(n)  # not started: the test runs the drive job by hand
    service.drive_job()  # nothing plugged in yet
    assert n.releases.active("lecons") is None
    drive = media / "agent" / "CLE-USB"
    drive.mkdir(parents=True)
    prepare_for_route(world.rh.hub, drive, names=["centre-a"])
    service.drive_job()
    assert read_tree(n.releases.live_link("lecons")) == world.versions[latest]
    # one file per report, named by centre and seq (issue 13: none overwrites another)
    assert (bundle_root(drive) / "reports" / f"{n.config.node_id}.1.json").is_file()
    receipts = list((bundle_root(drive) / "receipts").glob("*.txt"))
    assert receipts and "La clé peut être retirée" in receipts[0].read_text()
    service.drive_job()  # the same insertion is not imported twice
    assert len(n.state.unsent_reports()) == 1
