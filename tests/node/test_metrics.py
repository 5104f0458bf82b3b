"""The centre portal's /metrics, /healthz and /readyz, scraped over a real socket after syncs
run by the agent in this process and by `caravane node sync` in another one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from caravane.node.config import UpstreamConfig
from tests.hub.conftest import free_port
from tests.hub.test_metrics import scrape, value
from tests.hub.util import CARAVANE, http
from tests.node.conftest import World, content, env_without_proxy


def test_node_metrics_count_passes_bytes_versions_and_disk(world: World, tmp_path: Path) -> None:
    world.publish(content(1, big=200_000, files=4))
    kita = world.node("kita")
    portal = world.serve_node(kita)
    m = scrape(portal)
    for outcome in ("complete", "incomplete", "error", "offline"):
        assert value(m, "caravane_node_sync_passes_total", outcome=outcome) == 0
    assert value(m, "caravane_node_active_version", channel="lecons") == 0
    assert value(m, "caravane_node_disk_free_bytes") > 0
    assert value(m, "caravane_node_disk_total_bytes") >= value(m, "caravane_node_disk_free_bytes")

    result = world.sync(kita)
    assert result.complete
    m = scrape(portal)
    assert value(m, "caravane_node_sync_passes_total", outcome="complete") == 1
    assert value(m, "caravane_node_received_bytes_total", route="network") == sum(
        result.received.values()
    )
    assert value(m, "caravane_node_active_version", channel="lecons") == 1
    assert value(m, "caravane_node_latest_known_version", channel="lecons") == 1
    assert value(m, "caravane_node_last_sync_timestamp_seconds", outcome="complete") > 0

    # a pass run by cron in another process counts the same (kept in the state database)
    world.publish(content(2, big=200_000, files=4))
    r = subprocess.run(
        [CARAVANE, "node", "sync", "-d", str(kita.config.data_dir), "--no-report", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env_without_proxy(),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    second = sum(json.loads(r.stdout)["received"].values())
    m = scrape(portal)
    assert value(m, "caravane_node_sync_passes_total", outcome="complete") == 2
    assert (
        value(m, "caravane_node_received_bytes_total", route="network")
        == sum(result.received.values()) + second
    )
    assert value(m, "caravane_node_active_version", channel="lecons") == 2
    assert value(m, "caravane_node_reports_waiting") == 0


def test_an_offline_pass_is_counted_as_offline(world: World) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    nioro = world.node("nioro", upstreams=[UpstreamConfig("hub", "http", dead)])
    portal = world.serve_node(nioro)
    result = world.sync(nioro, retries=0)
    assert result.skipped
    m = scrape(portal)
    assert value(m, "caravane_node_sync_passes_total", outcome="offline") == 1
    assert value(m, "caravane_node_sync_passes_total", outcome="complete") == 0
    assert value(m, "caravane_node_received_bytes_total", route="network") == 0


def test_node_liveness_and_readiness(world: World) -> None:
    kita = world.node("kita")
    portal = world.serve_node(kita)
    assert http("GET", portal + "/healthz").json() == {"ok": True}
    ready = http("GET", portal + "/readyz")
    assert ready.status == 200, ready.body
    assert ready.json()["checks"] == {"database": "ok", "schema": "ok", "store": "ok"}
    root = kita.repo.path / "metadata" / "root.json"
    root.rename(root.with_suffix(".away"))
    try:
        ready = http("GET", portal + "/readyz")
        assert ready.status == 503 and "cannot read" in ready.json()["checks"]["store"]
        assert http("GET", portal + "/healthz").status == 200
    finally:
        root.with_suffix(".away").rename(root)
    assert http("GET", portal + "/readyz").status == 200
