"""The hub's /metrics, /healthz and /readyz, scraped over a real socket after real work."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from caravane.hub.app import JOBS
from caravane.hub.service import Principal
from tests.hub.conftest import RunningHub, ServerThread, start_hub
from tests.hub.util import http
from tests.node.conftest import World, content


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, labels): value}."""
    answer = http("GET", url + "/metrics")
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(check: Callable[[], bool], seconds: float = 20) -> None:
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


@pytest.fixture(params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[RunningHub, ServerThread]]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    rh, server = start_hub(tmp_path / "hub", url)
    yield rh, server
    server.stop()


def test_metrics_after_publishing_syncing_reporting_and_jobs(
    served: tuple[RunningHub, ServerThread], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rh, server = served
    before = scrape(rh.url)
    assert value(before, "caravane_hub_checkins_total", outcome="accepted") == 0
    assert value(before, "caravane_hub_centres", state="up_to_date") == 0

    world = World(tmp_path, rh)
    world.publish(content(1, big=120_000, files=4))
    kita = world.node("kita")
    result = world.sync(kita)
    assert result.complete
    _, body = kita.make_report()
    assert kita.send_reports() == 1
    # the same report again (replayed), and one the hub refuses
    assert http("POST", f"{rh.url}/api/v1/nodes/{kita.config.node_id}/reports", body).status == 409
    assert http("POST", f"{rh.url}/api/v1/nodes/nobody/reports", b"{}").status in (403, 422)
    rh.hub.register_centre(Principal("admin", "admin"), {"name": "nioro", "channels": "lecons"})

    m = scrape(rh.url)
    assert value(m, "caravane_hub_checkins_total", outcome="accepted") == 1
    assert value(m, "caravane_hub_checkins_total", outcome="replayed") == 1
    assert value(m, "caravane_hub_checkins_total", outcome="refused") == 1
    served = sum(
        value(m, "caravane_hub_served_bytes_total", kind=k)
        for k in ("metadata", "manifests", "objects", "packs")
    )
    got = sum(result.received.values())
    # what the centre's pass received, and the little metadata enrolment and publishing read
    assert got > 100_000 and got <= served < got + 10_000
    assert value(m, "caravane_hub_publishes_total", channel="lecons") == 1
    assert value(m, "caravane_hub_releases", channel="lecons") == 1
    assert value(m, "caravane_hub_centres", state="up_to_date") == 1
    assert value(m, "caravane_hub_centres", state="not_enrolled") == 1
    assert value(m, "caravane_hub_tokens_active") >= 2

    # scheduled jobs: a run and a failure, each counted and logged under its own name
    runner = server.app[JOBS]
    runner.start()
    try:
        caplog.set_level(logging.DEBUG, logger="caravane.hub.jobs")
        runner.scheduler.modify_job("gc", next_run_time=datetime.now(UTC))
        wait_for(lambda: value(scrape(rh.url), "caravane_hub_job_runs_total", job="gc") == 1)
        bad = rh.hub.repo.path / "metadata" / "channels" / "broken.json"
        bad.write_text("not json")
        runner.scheduler.modify_job("expiry", next_run_time=datetime.now(UTC))
        wait_for(
            lambda: value(scrape(rh.url), "caravane_hub_job_failures_total", job="expiry") == 1
        )
    finally:
        runner.stop()
    m = scrape(rh.url)
    assert value(m, "caravane_hub_job_failures_total", job="gc") == 0
    assert value(m, "caravane_hub_job_duration_seconds_count", job="gc") == 1
    assert value(m, "caravane_hub_centres", state="up_to_date") == 1  # still read
    names = {r.name for r in caplog.records}
    assert "caravane.hub.jobs.gc" in names and "caravane.hub.jobs.expiry" in names
    failed = [r for r in caplog.records if r.name == "caravane.hub.jobs.expiry"]
    assert failed[0].levelname == "ERROR" and "expiry failed" in failed[0].getMessage()
    assert not any("<locals>" in r.name or "<locals>" in r.getMessage() for r in caplog.records)


def test_liveness_and_readiness(running_hub: RunningHub) -> None:
    rh = running_hub
    assert http("GET", rh.url + "/healthz").json() == {"ok": True}
    ready = http("GET", rh.url + "/readyz")
    assert ready.status == 200, ready.body
    assert ready.json() == {
        "ready": True,
        "checks": {"database": "ok", "schema": "ok", "repository": "ok"},
    }
    # an old schema: not ready, and the answer says what to do
    with rh.hub.db.session() as s:
        head = s.execute(text("SELECT version_num FROM alembic_version")).scalar()
        s.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    try:
        ready = http("GET", rh.url + "/readyz")
        assert ready.status == 503
        assert "expects" in ready.json()["checks"]["schema"]
        assert "migrate" in ready.json()["checks"]["schema"]
    finally:
        with rh.hub.db.session() as s:
            s.execute(text("UPDATE alembic_version SET version_num = :h"), {"h": head})
    # an unreadable repository: not ready; alive all the same
    root = rh.hub.repo.path / "metadata" / "root.json"
    root.rename(root.with_suffix(".away"))
    try:
        ready = http("GET", rh.url + "/readyz")
        assert ready.status == 503 and "cannot read" in ready.json()["checks"]["repository"]
        assert http("GET", rh.url + "/healthz").status == 200
    finally:
        root.with_suffix(".away").rename(root)
    assert http("GET", rh.url + "/readyz").status == 200


def test_metrics_can_be_kept_to_the_monitoring_network(tmp_path: Path) -> None:
    rh, server = start_hub(tmp_path / "hub", metrics_allow=["10.0.0.0/8"])
    try:
        answer = http("GET", rh.url + "/metrics")
        assert answer.status == 403 and "metrics_allow" in answer.json()["error"]
        assert http("GET", rh.url + "/healthz").status == 200
    finally:
        server.stop()
