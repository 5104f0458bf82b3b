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


def test_node_run_syncs_on_its_own_and_serves_the_portal(world: World, tmp_path: Path) -> None:
    import signal
    import time
    import urllib.request

    from tests.hub.conftest import free_port

    v1 = world.publish(content(1))
    n = world.node("centre-run", sync_interval_minutes=0.05)
    n.config.hub_url = world.rh.url
    n.config.save()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "caravane",
            "node",
            "run",
            "-d",
            str(n.config.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and n.releases.active("lecons") != v1:
            time.sleep(0.3)
        assert n.releases.active("lecons") == v1, "the agent did not sync by itself"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200 and b"lecons" in r.read()
        v2 = world.publish(content(2))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and n.releases.active("lecons") != v2:
            time.sleep(0.3)
        assert n.releases.active("lecons") == v2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    row = next(r for r in world.rh.hub.fleet() if r["name"] == "centre-run")
    assert row["installed"].get("lecons") in (v1, v2)


def test_node_toml_kept_apart_from_the_data_as_on_a_system_install(
    world: World, tmp_path: Path
) -> None:
    """`node init --config` (the system layout's /etc/caravane/node.toml): commands take it."""
    world.publish(content(1))
    enrol = tmp_path / "enrol.json"
    enrol.write_text(json.dumps(world.enrolment("Centre Est") | {"hub_url": world.rh.url}))
    data = tmp_path / "var" / "node"
    etc = tmp_path / "etc" / "node.toml"
    out = run("node", "init", str(data), "--config", str(etc), "--enrolment", str(enrol), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config"] == str(etc)
    assert etc.is_file() and not (data / "node.toml").exists()
    out = run("node", "sync", "-d", str(etc), "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(run("node", "status", "-d", str(etc), "--json").stdout)
    assert status["channels"][0]["active"] == 1
    # a second init over the same file is refused, the first node untouched
    again = run(
        "node", "init", str(tmp_path / "other"), "--config", str(etc), "--enrolment", str(enrol)
    )
    assert again.returncode != 0 and "already set up" in again.stderr
    assert json.loads(run("node", "status", "-d", str(etc), "--json").stdout)["channels"]
