"""Usage counts at the hub: increments from cumulative snapshots, once per (centre, seq),
the same totals for every arrival order, over the network and on a drive, and the privacy
threshold on every answer."""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, select, text

from caravane.hub.db import Database, upgrade
from caravane.hub.usage import (
    Period,
    UsageService,
    cell,
    increments,
    protect,
    record_usage,
    report_time,
    usage_centre_weeks,
    usage_file_months,
    usage_files,
    usage_metadata,
    usage_region_weeks,
    usage_reports,
    week_of,
)
from caravane.packs.bundle import BUNDLE_DIR, DESCRIPTION, write_return
from caravane.protocol.keys import PrivateKey
from caravane.protocol.report import Report
from tests.hub.conftest import RunningHub, running_hub, sqlite_hub  # noqa: F401
from tests.hub.util import cli, http, register_and_enrol

MONDAY = date(2026, 3, 2)


def stamp(day: date) -> str:
    return f"{day.isoformat()}T10:00:00Z"


def rollup(db: Database) -> dict[str, Any]:
    """Everything the rollups hold, without zero rows (what the pages can see)."""
    with db.session() as s:
        weeks = {
            (r.centre_id, r.channel, r.version, r.week, r.month): r.count
            for r in s.execute(select(usage_centre_weeks))
            if r.count
        }
        paths = dict(s.execute(select(usage_files.c.id, usage_files.c.path)).all())
        months = {
            (r.channel, paths[r.file_id], r.version, r.region, r.month): r.count
            for r in s.execute(select(usage_file_months))
            if r.count
        }
        regions = {
            (r.channel, r.version, r.region, r.week, r.month): r.count
            for r in s.execute(select(usage_region_weeks))
            if r.count
        }
    return {"weeks": weeks, "months": months, "regions": regions}


def _setup_db(url: str) -> Database:
    upgrade(url)
    db = Database(url)
    with db.session() as s:
        for cid, region in (("c1", "Kayes"), ("c2", "Sikasso")):
            s.execute(
                text(
                    "INSERT INTO nodes (id, name, region, subscriptions, created_at, installed,"
                    " last_seq, stale, public_key) VALUES (:id, :name, :region, '[]', :at, '{}',"
                    " 0, false, 'ab')"
                ),
                {"id": cid, "name": f"Centre {cid}", "region": region, "at": datetime.now(UTC)},
            )
    return db


def _clear(db: Database) -> None:
    with db.session() as s:
        for t in (usage_file_months, usage_centre_weeks, usage_region_weeks, usage_reports):
            s.execute(t.delete())


def _record(db: Database, centre: str, region: str, rep: Report) -> bool:
    with db.session() as s:
        return record_usage(s, centre, region, rep)


def _history(seed: int, n: int = 6) -> list[Report]:
    """A centre's reports: cumulative counts growing, a reset, new files, a new release."""
    rnd = random.Random(seed)
    counts: dict[str, int] = {}
    out = []
    version = 1
    for seq in range(1, n + 1):
        if seq == 4 and seed % 2 == 0:
            counts = {}  # the node was reinstalled: counters start again
        if seq == 3:
            version = 2
        for path in rnd.sample(["a.pdf", "b.html", "c.mp4", "d.txt"], k=rnd.randint(1, 3)):
            counts[f"lecons/{path}"] = counts.get(f"lecons/{path}", 0) + rnd.randint(0, 9)
        if seq % 2:
            counts["autre/x.pdf"] = counts.get("autre/x.pdf", 0) + 3
        day = MONDAY + timedelta(days=3 * seq)  # spans weeks and a month boundary
        out.append(
            Report(
                node_id="c1",
                seq=seq,
                sent_at=stamp(day),
                installed={"lecons": version, "autre": 1},
                usage=dict(counts),
            )
        )
    return out


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Database:
    path = tmp_path_factory.mktemp("usage") / "hub.db"
    return _setup_db(f"sqlite:///{path}")


# --------------------------------------------------------------------------- units


def test_increments_and_resets() -> None:
    assert increments({"1": 5, "2": 0}, None) == {"1": 5}
    assert increments({"1": 7, "2": 3}, {"1": 5}) == {"1": 2, "2": 3}
    assert increments({"1": 5}, {"1": 5}) == {}
    # a counter went down: the node lost its counts; everything it now has is new
    assert increments({"1": 2, "2": 1}, {"1": 5, "2": 0}) == {"1": 2, "2": 1}
    # a key vanished: also a reset
    assert increments({"2": 4}, {"1": 5, "2": 3}) == {"2": 4}


def test_report_time_trusts_the_centre_unless_in_the_future() -> None:
    received = datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert report_time("2026-03-02T10:00:00Z", received).date() == date(2026, 3, 2)
    assert report_time("2031-01-01T00:00:00Z", received) == received
    assert report_time("not a date", received) == received
    assert week_of(date(2026, 3, 8)) == date(2026, 3, 2)


def test_protect_merges_every_small_count() -> None:
    rows = [{"path": "a", "count": 50}, {"path": "b", "count": 4}, {"path": "c", "count": 3}]
    out = protect(rows, 5)
    assert out[0] == {"path": "a", "count": 50, "suppressed": False}
    assert out[1] == {"other": True, "items": 2, "count": 7, "suppressed": False}
    out = protect([{"path": "a", "count": 9}, {"path": "b", "count": 2}], 5)
    assert out[1] == {"other": True, "items": 1, "count": None, "suppressed": True}
    assert all(r["count"] is None or r["count"] >= 5 for r in out)
    assert protect([{"x": 1, "count": 0}], 5) == []
    assert [cell(n, 5) for n in (0, 1, 4, 5, 9)] == [0, None, None, 5, 9]


# --------------------------------------------------------------------------- arrival order


def test_migration_matches_the_usage_tables(sqlite_db: Database) -> None:
    insp = inspect(sqlite_db.engine)
    for name, tbl in usage_metadata.tables.items():
        have = {c["name"] for c in insp.get_columns(name)}
        assert have == {c.name for c in tbl.columns}, name


def test_replayed_report_counts_once(sqlite_db: Database) -> None:
    _clear(sqlite_db)
    reps = _history(1, 3)
    for r in reps:
        assert _record(sqlite_db, "c1", "Kayes", r)
    once = rollup(sqlite_db)
    for r in reps:
        assert not _record(sqlite_db, "c1", "Kayes", r)
    assert rollup(sqlite_db) == once
    total = sum(once["weeks"].values())
    last = reps[-1].usage
    assert total == sum(last.values())  # no reset in an odd history: total = last snapshot


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 1000), order=st.randoms(use_true_random=False))
def test_every_arrival_order_gives_the_same_totals(
    sqlite_db: Database, seed: int, order: random.Random
) -> None:
    reps = _history(seed)
    _clear(sqlite_db)
    for r in reps:
        _record(sqlite_db, "c1", "Kayes", r)
    expected = rollup(sqlite_db)
    _clear(sqlite_db)
    shuffled = reps + order.sample(reps, k=3)  # some arrive twice (a retry, a second drive)
    order.shuffle(shuffled)
    for r in shuffled:
        _record(sqlite_db, "c1", "Kayes", r)
    assert rollup(sqlite_db) == expected


def test_only_real_channels_and_paths_are_booked(sqlite_db: Database) -> None:
    _clear(sqlite_db)
    usage = {"lecons/ok.pdf": 6, "lecons/../x": 2, "BAD CHANNEL/x": 3, "noslash": 4,
             "lecons/neg.pdf": -5, "/abs": 1}  # fmt: skip
    _record(sqlite_db, "c1", "Kayes", Report("c1", 1, stamp(MONDAY), {"lecons": 1}, usage=usage))
    months = rollup(sqlite_db)["months"]
    assert {k[1] for k in months} == {"ok.pdf"}
    with sqlite_db.session() as s:
        counts = s.execute(select(usage_reports.c.counts)).scalar_one()
    assert list(counts.values()) == [6]


def test_reset_is_booked_as_new_openings(sqlite_db: Database) -> None:
    _clear(sqlite_db)
    d = MONDAY
    rs = [
        Report("c1", 1, stamp(d), {"lecons": 1}, usage={"lecons/a.pdf": 10}),
        Report("c1", 2, stamp(d + timedelta(7)), {"lecons": 1}, usage={"lecons/a.pdf": 12}),
        Report("c1", 3, stamp(d + timedelta(14)), {"lecons": 1}, usage={"lecons/a.pdf": 4}),
    ]
    for r in (rs[2], rs[0], rs[1]):
        _record(sqlite_db, "c1", "Kayes", r)
    weeks = rollup(sqlite_db)["weeks"]
    per_week = {k[3]: v for k, v in weeks.items()}
    assert per_week == {d: 10, d + timedelta(7): 2, d + timedelta(14): 4}


def test_out_of_order_on_postgresql(pg_url: str) -> None:
    db = _setup_db(pg_url)
    try:
        reps = _history(4)
        for r in reps:
            _record(db, "c1", "Kayes", r)
        expected = rollup(db)
        for perm in itertools.islice(itertools.permutations(reps), 0, 720, 97):
            _clear(db)
            for r in perm:
                _record(db, "c1", "Kayes", r)
            assert rollup(db) == expected
    finally:
        db.dispose()


# --------------------------------------------------------------------------- queries


def _fill(db: Database) -> UsageService:
    _clear(db)
    d = MONDAY
    # c1 (Kayes): a.pdf opened 40 times over two weeks, b.html twice, c.mp4 six times
    _record(
        db,
        "c1",
        "Kayes",
        Report("c1", 1, stamp(d), {"lecons": 1}, usage={"lecons/a.pdf": 25, "lecons/b.html": 2}),
    )
    _record(
        db,
        "c1",
        "Kayes",
        Report(
            "c1",
            2,
            stamp(d + timedelta(7)),
            {"lecons": 2},
            usage={"lecons/a.pdf": 40, "lecons/b.html": 2, "lecons/c.mp4": 6},
        ),
    )
    # c2 (Sikasso): reported, nobody opened anything
    _record(db, "c2", "Sikasso", Report("c2", 1, stamp(d + timedelta(8)), {"lecons": 2}))
    return UsageService(db, min_count=5)


def test_files_trend_centres_regions_protected(sqlite_db: Database) -> None:
    svc = _fill(sqlite_db)
    period = Period(MONDAY - timedelta(days=20), MONDAY + timedelta(days=20))
    files = svc.files("lecons", period)
    assert [(f["path"], f["count"]) for f in files["files"]] == [("a.pdf", 40), ("c.mp4", 6)]
    assert files["other"] == {"other": True, "items": 1, "count": None, "suppressed": True}
    assert svc.files("lecons", period, region="Sikasso")["files"] == []

    trend = svc.trend("lecons", period)
    by_start = {p["start"]: p for p in trend["points"]}
    first = by_start[MONDAY.isoformat()]
    assert first["versions"] == [{"version": 1, "count": 27, "suppressed": False}]
    assert first["other"] is None and first["total"] == 27 and not first["partial"]
    second = by_start[(MONDAY + timedelta(7)).isoformat()]
    assert second["versions"] == [{"version": 2, "count": 21, "suppressed": False}]
    assert not second["partial"]

    centres = svc.centres(period)
    assert [(c["name"], c["count"]) for c in centres["centres"]] == [("Centre c1", 48)]
    assert [c["name"] for c in centres["nobody_opened"]] == ["Centre c2"]
    assert centres["no_report"] == []
    quiet_period = Period(MONDAY + timedelta(days=60), MONDAY + timedelta(days=70))
    assert [c["name"] for c in svc.centres(quiet_period)["no_report"]] == [
        "Centre c1",
        "Centre c2",
    ]
    regions = svc.by_region(period)
    assert regions["regions"] == [{"region": "Kayes", "count": 48, "suppressed": False}]

    strict = UsageService(sqlite_db, min_count=25)
    point = strict.trend("lecons", period)["points"][4]
    assert point["start"] == (MONDAY + timedelta(7)).isoformat()
    assert point["versions"] == [] and point["total"] == 0 and point["partial"]
    assert point["other"] == {"other": True, "items": 1, "count": None, "suppressed": True}
    strict = UsageService(sqlite_db, min_count=50)
    assert strict.files("lecons", period)["files"] == []
    assert strict.files("lecons", period)["other"] == {
        "other": True,
        "items": 3,
        "count": None,
        "suppressed": True,
    }
    assert strict.centres(period)["centres"] == []


# --------------------------------------------------------------------------- routes


def _service(rh: RunningHub) -> UsageService:
    return UsageService(rh.hub.db, rh.hub.repo, min_count=1)


def test_usage_over_the_network_counts_once(running_hub: RunningHub) -> None:  # noqa: F811
    doc, key = register_and_enrol(running_hub.url, running_hub.admin, "Kita", region="Kayes")
    nid = doc["node_id"]
    today = datetime.now(UTC).date()

    def send(seq: int, usage: dict[str, int]) -> int:
        body = Report(nid, seq, stamp(today), {"lecons": 1}, usage=usage).sign(key)
        return http("POST", f"{running_hub.url}/api/v1/nodes/{nid}/reports", body).status

    assert send(1, {"lecons/a.pdf": 3}) == 200
    assert send(2, {"lecons/a.pdf": 7, "lecons/b.pdf": 1}) == 200
    assert send(2, {"lecons/a.pdf": 7, "lecons/b.pdf": 1}) == 409  # a retry after a timeout
    files = _service(running_hub).files("lecons", Period.last_weeks(4))["files"]
    assert {f["path"]: f["count"] for f in files} == {"a.pdf": 7, "b.pdf": 1}


def test_usage_on_a_drive_counts_once(sqlite_hub: RunningHub, tmp_path: Path) -> None:  # noqa: F811
    doc, key = register_and_enrol(sqlite_hub.url, sqlite_hub.admin, "Nioro", region="Kayes")
    nid = doc["node_id"]
    drive = tmp_path / "drive"
    (drive / BUNDLE_DIR).mkdir(parents=True)
    (drive / BUNDLE_DIR / DESCRIPTION).write_text(
        json.dumps({"format": "caravane-bundle", "created": "2026-03-01T00:00:00Z"})
    )
    sent = stamp(datetime.now(UTC).date())
    report = Report(nid, 1, sent, {"lecons": 1}, usage={"lecons/a.pdf": 9}, route="usb")
    write_return(drive, nid, report.sign(key), "reçu")
    config = sqlite_hub.hub.config
    hub_toml = config.data_dir / "hub.toml"
    hub_toml.write_text(config.to_toml())
    for _ in range(2):  # the same drive ingested twice
        out = cli("usb", "ingest", str(drive), "--hub-config", str(hub_toml), "--json")
        assert out.returncode == 0, out.stderr
    files = _service(sqlite_hub).files("lecons", Period.last_weeks(4))["files"]
    assert [(f["path"], f["count"]) for f in files] == [("a.pdf", 9)]
    db_url = sqlite_hub.hub.config.url
    engine = create_engine(db_url)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM usage_reports")).scalar() == 1
    engine.dispose()


# --------------------------------------------------------------------------- HTTP: API, CSV


def seed_usage(rh: RunningHub, tmp: Path) -> dict[str, str]:
    """A channel in two releases and four centres, reports sent over HTTP.

    Kita (Kayes) opened a.pdf 50 times, c.mp4 8 times and b.html 4 times (under the
    threshold); Nioro (Kayes) reported and nobody opened anything; Sikasso's one centre
    opened a.pdf twice (under the threshold, and alone in its region); Bobo never reported.
    """
    from tests.hub.util import publish_cli, write_tree

    files = {"a.pdf": b"%PDF a", "b.html": b"<h1>b</h1>", "c.mp4": b"mp4", "d.txt": b"d"}
    publish_cli(rh, "lecons", write_tree(tmp / "v1", files), tmp / "cache")
    publish_cli(rh, "lecons", write_tree(tmp / "v2", dict(files, **{"e.pdf": b"e"})), tmp / "cache")
    today = datetime.now(UTC).date()
    ids = {}

    def send(nid: str, key: PrivateKey, seq: int, ago: int, v: int, usage: dict[str, int]) -> None:
        rep = Report(nid, seq, stamp(today - timedelta(days=ago)), {"lecons": v}, usage=usage)
        ans = http("POST", f"{rh.url}/api/v1/nodes/{nid}/reports", rep.sign(key))
        assert ans.status == 200, ans.body

    for name, region in (("Kita", "Kayes"), ("Nioro", "Kayes"), ("Sikasso", "Sikasso")):
        doc, key = register_and_enrol(rh.url, rh.admin, name, region=region, channels="lecons")
        ids[name] = nid = doc["node_id"]
        if name == "Kita":
            send(nid, key, 1, 21, 1, {"lecons/a.pdf": 30, "lecons/b.html": 3})
            send(nid, key, 2, 7, 2, {"lecons/a.pdf": 50, "lecons/b.html": 4, "lecons/c.mp4": 8})
        elif name == "Nioro":
            send(nid, key, 1, 7, 2, {})
        else:
            send(nid, key, 1, 7, 2, {"lecons/a.pdf": 2})
    doc, _ = register_and_enrol(rh.url, rh.admin, "Bobo", region="Hauts-Bassins")
    ids["Bobo"] = doc["node_id"]
    return ids


def test_json_api_and_csv_with_the_threshold(sqlite_hub: RunningHub, tmp_path: Path) -> None:  # noqa: F811
    seed_usage(sqlite_hub, tmp_path)
    base = f"{sqlite_hub.url}/api/v1/usage"
    curator = sqlite_hub.token("curator")
    # who may ask
    assert http("GET", f"{base}/files?channel=lecons").status == 401
    assert (
        http("GET", f"{base}/files?channel=lecons", token=sqlite_hub.token("field_agent")).status
        == 403
    )
    # clear errors for bad filters
    bad = http("GET", f"{base}/files?channel=lecons&weeks=many", token=curator)
    assert bad.status == 400 and "weeks" in bad.json()["error"]
    bad = http("GET", f"{base}/files?channel=nope", token=curator)
    assert bad.status == 404 and "nope" in bad.json()["error"]
    assert http("GET", f"{base}/sideways", token=curator).status == 404

    files = http("GET", f"{base}/files?channel=lecons", token=curator).json()
    assert [(f["path"], f["count"]) for f in files["files"]] == [("a.pdf", 52), ("c.mp4", 8)]
    assert files["other"] == {"other": True, "items": 1, "count": None, "suppressed": True}
    assert files["min_count"] == 5
    never = http("GET", f"{base}/never-used?channel=lecons", token=curator).json()
    assert never["version"] == 2 and never["never_used"] == ["d.txt", "e.pdf"]
    centres = http("GET", f"{base}/centres", token=curator).json()
    assert [(c["name"], c["count"]) for c in centres["centres"]] == [("Kita", 62)]
    assert centres["other"]["items"] == 1 and centres["other"]["suppressed"]
    assert [c["name"] for c in centres["nobody_opened"]] == ["Nioro"]
    assert [c["name"] for c in centres["no_report"]] == ["Bobo"]
    regions = http("GET", f"{base}/regions", token=curator).json()
    assert [(r["region"], r["count"]) for r in regions["regions"]] == [("Kayes", 62)]
    trend = http("GET", f"{base}/trend?channel=lecons&by=month&weeks=52", token=curator).json()
    assert sum(p["total"] for p in trend["points"]) == 64  # all regions together
    assert [r["version"] for r in trend["releases"]] == [1, 2]

    # the same answers as CSV: a header row, UTF-8, small counts as "<5", nothing under 5
    ans = http("GET", f"{base}/files?channel=lecons&format=csv", token=curator)
    assert ans.status == 200 and ans.headers["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(ans.body.decode("utf-8"))))
    assert rows[0] == ["channel", "region", "since", "until", "kind", "path", "items", "count"]
    assert [(r[4], r[5], r[6], r[7]) for r in rows[1:]] == [
        ("file", "a.pdf", "1", "52"),
        ("file", "c.mp4", "1", "8"),
        ("other", "", "1", "<5"),
    ]
    for kind in (
        "centres.csv",
        "regions.csv",
        "trend.csv?channel=lecons",
        "never-used.csv?channel=lecons",
    ):
        ans = http("GET", f"{base}/{kind}", token=curator)
        assert ans.status == 200, (kind, ans.body)
        body = ans.body.decode("utf-8")
        for r in csv.DictReader(io.StringIO(body)):
            n = r.get("count", "")
            assert n in ("", "0", "<5") or int(n) >= 5, (kind, r)
    centres_csv = http("GET", f"{base}/centres.csv", token=curator).body.decode()
    assert ",Kita,Kayes,1,62," in centres_csv and ",nobody_opened," in centres_csv
    assert "Sikasso" not in centres_csv  # one centre under the threshold: not named


def test_threshold_is_configurable(tmp_path: Path) -> None:
    from tests.hub.conftest import start_hub

    rh, server = start_hub(tmp_path / "hub", extra={"usage_min_count": 2})
    try:
        seed_usage(rh, tmp_path)
        curator = rh.token("curator")
        files = http("GET", f"{rh.url}/api/v1/usage/files?channel=lecons", token=curator).json()
        assert files["min_count"] == 2
        assert [(f["path"], f["count"]) for f in files["files"]] == [
            ("a.pdf", 52),
            ("c.mp4", 8),
            ("b.html", 4),
        ]
        regions = http("GET", f"{rh.url}/api/v1/usage/regions", token=curator).json()
        assert ("Sikasso", 2) in [(r["region"], r["count"]) for r in regions["regions"]]
    finally:
        server.stop()
