"""`caravane usb prepare | verify | import | ingest` as a field agent types them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from caravane.hub.auth import Principal
from caravane.node.agent import NodeAgent
from tests.foundation.conftest import read_tree
from tests.node.conftest import World, content


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "caravane", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_route_through_the_command_line(world: World, tmp_path: Path) -> None:
    latest = world.publish(content(1))
    config = world.rh.hub.config
    hub_toml = config.data_dir / "hub.toml"
    hub_toml.write_text(config.to_toml())
    centre = NodeAgent.init(
        tmp_path / "centre", world.enrolment("Kita"), upstreams=[], offline=True
    )
    centre.close()
    drive = tmp_path / "drive"
    drive.mkdir()

    out = run("usb", "prepare", drive, "--nodes", "Kita", "--hub-config", hub_toml, "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["written"]) == 1
    out = run("usb", "verify", drive, "--repo", config.repo_dir)
    assert out.returncode == 0 and "drive OK" in out.stdout

    out = run("usb", "import", drive, "-d", tmp_path / "centre", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["channels"][0]["status"] == "activated"
    assert read_tree(tmp_path / "centre" / "live" / "lecons") == world.versions[latest]

    out = run("usb", "ingest", drive, "--hub-config", hub_toml, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["enrolled"]) == 1 and len(doc["reports"]) == 1
    row = next(r for r in world.rh.hub.fleet() if r["name"] == "Kita")
    assert row["installed"] == {"lecons": latest} and row["last_route"] == "usb"


def test_nothing_to_carry_and_unknown_centre(world: World, tmp_path: Path) -> None:
    world.publish(content(1))
    config = world.rh.hub.config
    hub_toml = config.data_dir / "hub.toml"
    hub_toml.write_text(config.to_toml())
    drive = tmp_path / "drive"
    drive.mkdir()
    out = run("usb", "prepare", drive, "--nodes", "Nowhere", "--hub-config", hub_toml)
    assert out.returncode != 0 and "unknown centres: Nowhere" in out.stderr
    out = run("usb", "prepare", drive, "--hub-config", hub_toml)
    assert out.returncode != 0 and "--nodes" in out.stderr


def test_region_drive_plans_each_centre_its_own_subscriptions(world: World, tmp_path: Path) -> None:
    """Two centres of one region, each subscribed to one channel of two: no channel is
    carried for a centre that never subscribed to it, and the drive's plans say so."""
    world.publish({"a.txt": b"lecons " * 100})
    world.channel = "sante"
    world.publish({"b.txt": b"sante " * 100_000})
    admin = Principal("admin", "admin")
    hub = world.rh.hub
    kita = hub.register_centre(admin, {"name": "Kita", "region": "Kayes", "channels": ["lecons"]})
    nioro = hub.register_centre(admin, {"name": "Nioro", "region": "Kayes", "channels": ["sante"]})
    hub_toml = hub.config.data_dir / "hub.toml"
    hub_toml.write_text(hub.config.to_toml())
    drive = tmp_path / "drive"
    drive.mkdir()

    out = run("usb", "prepare", drive, "--region", "Kayes", "--hub-config", hub_toml, "--json")
    assert out.returncode == 0, out.stderr
    carried = {p["channel"]: p["for_centres"] for p in json.loads(out.stdout)["written"]}
    assert carried == {"lecons": [kita["node_id"]], "sante": [nioro["node_id"]]}
    plan = json.loads((drive / "caravane" / "plans" / f"{kita['node_id']}.json").read_text())
    assert [s["channel"] for s in plan["steps"]] == ["lecons"]
