"""Issue 13: reports arrive once each, in any order, over the network, via a peer, by drive.

A real hub on SQLite and on PostgreSQL; reports signed by a real centre key; a drive is a
real folder. Whatever the arrival order and however often a report comes, each (centre, seq)
is stored once, the centre's state is its highest seq, and each route keeps its contact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from caravane.hub.usb import ingest
from caravane.packs.bundle import BUNDLE_DIR, DESCRIPTION, bundle_root
from caravane.protocol.report import verify_ack

from .conftest import RunningHub
from .util import http, register_and_enrol, signed_report


def _post(rh: RunningHub, nid: str, data: bytes, via: str = "") -> int:
    q = f"?via={via}" if via else ""
    return http("POST", f"{rh.url}/api/v1/nodes/{nid}/reports{q}", data).status


def test_any_order_any_route_stored_once(running_hub: RunningHub, tmp_path: Path) -> None:
    doc, key = register_and_enrol(running_hub.url, running_hub.admin, "Kita", channels=[])
    nid = doc["node_id"]
    bodies = {
        seq: signed_report(
            nid, key, seq, installed={"maths": seq}, errors=["pack cut"] if seq == 2 else []
        )
        for seq in range(1, 7)
    }
    # seqs 1-3 on a drive, 4-6 over the network and through peer "relay-a", shuffled, twice
    drive = tmp_path / "drive"
    (drive / BUNDLE_DIR / "reports").mkdir(parents=True)
    (drive / BUNDLE_DIR / DESCRIPTION).write_text(
        json.dumps({"format": "caravane-bundle", "created": "2026-11-25T00:00:00Z"})
    )
    for seq in (1, 2, 3):
        (bundle_root(drive) / "reports" / f"{nid}.{seq}.json").write_bytes(bodies[seq])
    order = [4, 5, 6, 4, 6, 5]
    random.Random(13).shuffle(order)
    statuses = [_post(running_hub, nid, bodies[s], via="relay-a" if s == 5 else "") for s in order]
    assert sorted(statuses) == [200, 200, 200, 409, 409, 409]
    back = ingest(running_hub.hub, drive)
    assert back["ok"] and back["acknowledged"] == {nid: 3}
    assert ingest(running_hub.hub, drive)["already_known"] == [nid]
    assert _post(running_hub, nid, bodies[2]) == 409

    detail = running_hub.hub.centre_detail(nid)
    seqs = sorted(r["seq"] for r in detail["reports"])
    assert seqs == [1, 2, 3, 4, 5, 6]
    routes = {r["seq"]: r["route"] for r in detail["reports"]}
    assert routes[5] == "peer:relay-a" and routes[1] == "usb" and routes[4] == "network"
    row = detail["centre"]
    assert row["installed"] == {"maths": 6} and row["last_error"] is None
    assert set(row["contacts"]) == {"usb", "network", "peer:relay-a"}
    assert row["contacts"]["usb"]["seq"] == 3 and row["contacts"]["peer:relay-a"]["seq"] == 5

    # the acknowledgement on the drive is signed by the release key the centre pins
    ack = (bundle_root(drive) / "acks" / f"{nid}.json").read_bytes()
    assert verify_ack(ack, running_hub.hub.repo.trusted.root, nid) == [1, 2, 3]


def test_an_older_report_does_not_roll_the_state_back(running_hub: RunningHub) -> None:
    doc, key = register_and_enrol(running_hub.url, running_hub.admin, "Nioro", channels=[])
    nid = doc["node_id"]
    assert _post(running_hub, nid, signed_report(nid, key, 9, installed={"maths": 3})) == 200
    old = signed_report(nid, key, 2, installed={"maths": 1}, errors=["disk full"])
    assert _post(running_hub, nid, old) == 200
    row = running_hub.hub.centre_detail(nid)["centre"]
    assert row["installed"] == {"maths": 3} and row["last_error"] is None


def test_fleet_pages_tell_the_route_and_clear_the_error(sqlite_hub: RunningHub) -> None:
    from tests.web.test_safety import Browser

    rh = sqlite_hub
    doc, key = register_and_enrol(rh.url, rh.admin, "Bafoulabé", channels=[])
    nid = doc["node_id"]
    assert _post(rh, nid, signed_report(nid, key, 1, errors=["disque plein"], route="usb")) == 200
    b = Browser(rh.url)
    b.sign_in(rh.admin)
    status, html = b.call("/ui/fleet?lang=en")
    assert status == 200 and "disque plein" in html and "USB drive" in html
    # B's next report came through peer centre "relay-a": the route says so, error cleared
    assert _post(rh, nid, signed_report(nid, key, 2, route="peer"), via="relay-a") == 200
    status, html = b.call("/ui/fleet?lang=fr")
    assert status == 200 and "disque plein" not in html
    assert "par le centre relay-a" in html
    status, html = b.call(f"/ui/fleet/{nid}?lang=en")
    assert status == 200 and "through centre relay-a" in html
    assert 'data-route="usb"' in html and 'data-route="peer:relay-a"' in html
