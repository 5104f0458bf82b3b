"""`caravane node ...` as an operator types it: init from the enrolment file, sync, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.node.conftest import World, content


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "caravane", *args], capture_output=True, text=True, timeout=120
    )


def test_operator_round_trip(world: World, tmp_path: Path) -> None:
    world.publish(content(1))
    enrol = tmp_path / "enrol.json"
    enrol.write_text(json.dumps(world.enrolment("Centre Nord") | {"hub_url": world.rh.url}))
    d = tmp_path / "centre"
    out = run("node", "init", str(d), "--enrolment", str(enrol), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["registered"] is True

    out = run("node", "sync", "-d", str(d), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["channels"][0]["status"] == "activated" and "sent" in doc["report"]

    world.publish(content(2))
    assert run("node", "sync", "-d", str(d)).returncode == 0
    status = json.loads(run("node", "status", "-d", str(d), "--json").stdout)
    assert status["channels"][0]["active"] == 2 and status["channels"][0]["previous"] == 1

    out = run("node", "rollback", "lecons", "-d", str(d))
    assert out.returncode == 0 and "version 1 is served again" in out.stdout
    row = next(r for r in world.rh.hub.fleet() if r["name"] == "Centre Nord")
    assert row["installed"] == {"lecons": 2} and row["last_route"] == "network"


def test_clear_errors_and_exit_codes(tmp_path: Path) -> None:
    out = run("node", "status", "-d", str(tmp_path / "nowhere"))
    assert out.returncode != 0 and "caravane node init" in out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    out = run("node", "init", str(tmp_path / "n"), "--enrolment", str(bad))
    assert out.returncode != 0 and "not a Caravane enrolment file" in out.stderr
    for sub in ("init", "sync", "status", "rollback", "serve", "run", "report"):
        assert run("node", sub, "--help").returncode == 0


def test_sync_with_hub_down_exits_non_zero_and_says_why(world: World, tmp_path: Path) -> None:
    world.publish(content(1))
    enrol = tmp_path / "enrol.json"
    enrol.write_text(json.dumps(world.enrolment("Centre Sud") | {"hub_url": "http://127.0.0.1:9"}))
    d = tmp_path / "centre"
    assert run("node", "init", str(d), "--enrolment", str(enrol), "--offline").returncode == 0
    out = run("node", "sync", "-d", str(d))
    assert out.returncode != 0
    assert "no upstream is reachable" in out.stdout
