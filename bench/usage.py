"""Usage at fleet scale: 5,000 centres reporting weekly for a year, on PostgreSQL.

What it does, on a fresh database (created and dropped here, like the tests' ``pg_url``):

1. Generates a year of weekly reports for every centre (13 regions, 3 channels of 2,000
   files with Zipf-like popularity, a release of each channel every 13 weeks that centres
   install after a lag, 4 % of centres whose portal nobody opens) and loads what the per-report
   path would have written straight into the tables (COPY): the cumulative snapshots
   (``usage_reports``) and both rollups. Feeding 260,000 reports through the per-report code
   would take the same rows about an hour on this machine, so:
2. Times the per-report path itself (``hub.usage.record_usage``, one transaction per report as
   in ``Hub.accept_report``) on extra centres, against the full database: in order, and with
   a quarter of the centres' reports arriving shuffled (drives bringing old reports late).
3. Times each page's queries (median of several runs) and prints the table sizes.

    python -m bench.usage [--centres 5000] [--weeks 52] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import statistics
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from typing import Any

from sqlalchemy import create_engine, text

from caravane.hub.db import Database, upgrade
from caravane.hub.usage import (
    ALL_REGIONS,
    Period,
    UsageService,
    month_of,
    record_usage,
    week_of,
)
from caravane.protocol.report import Report

from .common import table

PG_URL = os.environ.get(
    "CARAVANE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REGIONS = [
    "Boucle du Mouhoun", "Cascades", "Centre", "Centre-Est", "Centre-Nord", "Centre-Ouest",
    "Centre-Sud", "Est", "Hauts-Bassins", "Nord", "Plateau-Central", "Sahel", "Sud-Ouest",
]  # fmt: skip
CHANNELS = ["lecons", "sante", "agriculture"]
RELEASE_EVERY_WEEKS = 13


@dataclass
class Manifest:
    """What ``UsageService.never_used`` reads from the repository (a channel's file list)."""

    version: int
    files: list[Any]


@dataclass
class Entry:
    path: str


class FakeRepo:
    """The channel file lists, without signing 6,000 files: only paths are read."""

    def __init__(self, files: int, versions: int) -> None:
        self.files, self.versions = files, versions

    def manifest(self, channel: str) -> Manifest:
        return Manifest(self.versions, [Entry(_path(i)) for i in range(self.files)])


def _path(i: int) -> str:
    return f"module-{i // 100:02d}/lecon-{i:04d}.html"


def fresh_database(admin_url: str) -> tuple[str, Any]:
    name = f"caravane_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


def generate(
    db: Database, centres: int, weeks: int, files: int, today: date, seed: int = 1
) -> dict[str, Any]:
    """Every centre's year of weekly reports, loaded as the per-report path would leave it."""
    rnd = random.Random(seed)
    first_week = week_of(today) - timedelta(weeks=weeks - 1)
    cum_weights = list(accumulate(1.0 / (i + 1) ** 1.1 for i in range(files)))
    total_w = cum_weights[-1]
    file_id = {(ch, i): n * files + i + 1 for n, ch in enumerate(CHANNELS) for i in range(files)}
    releases = max(1, (weeks + RELEASE_EVERY_WEEKS - 1) // RELEASE_EVERY_WEEKS)

    centre_weeks: dict[tuple[str, str, int, date, date], list[Any]] = {}
    file_months: dict[tuple[str, int, int, str, date], int] = defaultdict(int)
    region_weeks: dict[tuple[str, int, str, date, date], int] = defaultdict(int)
    snapshots: list[tuple[Any, ...]] = []
    now = datetime.now(UTC)

    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(
            "COPY nodes (id, name, region, subscriptions, public_key, created_at, installed,"
            " last_seq, stale) FROM STDIN"
        ) as cp:
            for c in range(centres):
                cp.write_row(
                    (f"c{c:05d}", f"Centre {c:05d}", REGIONS[c % len(REGIONS)],
                     json.dumps(CHANNELS), "00" * 32, now, "{}", weeks, False)
                )  # fmt: skip
        with cur.copy("COPY channels (id, title, language, description, keep_last, created_at)"
                      " FROM STDIN") as cp:  # fmt: skip
            for ch in CHANNELS:
                cp.write_row((ch, ch, "fr", "", 5, now))
        with cur.copy(
            "COPY releases (channel_id, version, notes, published_by, published_at, size,"
            " files, retired) FROM STDIN"
        ) as cp:
            for ch in CHANNELS:
                for v in range(1, releases + 1):
                    day = first_week + timedelta(weeks=(v - 1) * RELEASE_EVERY_WEEKS)
                    at = datetime(day.year, day.month, day.day, 9, tzinfo=UTC)
                    cp.write_row((ch, v, "", "bench", at, 0, files, False))
        with cur.copy("COPY usage_files (id, channel, path) FROM STDIN") as cp:
            for (ch, i), fid in file_id.items():
                cp.write_row((fid, ch, _path(i)))
        cur.execute(
            "SELECT setval(pg_get_serial_sequence('usage_files', 'id'), %s)", (len(file_id),)
        )

        reports = 0
        for c in range(centres):
            cid, region = f"c{c:05d}", REGIONS[c % len(REGIONS)]
            activity = 0.0 if rnd.random() < 0.04 else rnd.lognormvariate(1.0, 0.8)
            lag = rnd.randint(0, 6)  # weeks before a new release reaches this centre
            cumulative: dict[str, int] = {}
            for w in range(weeks):
                day = first_week + timedelta(weeks=w, days=rnd.randint(0, 6))
                if day > today:
                    day = today
                wk, mo = week_of(day), month_of(day)
                installed = {
                    ch: max(1, min(releases, (w - lag) // RELEASE_EVERY_WEEKS + 1))
                    for ch in CHANNELS
                }
                for ch in CHANNELS:
                    k = min(files, int(rnd.expovariate(1.0) * activity * 4))
                    if not k:
                        continue
                    v = installed[ch]
                    picks = {
                        bisect.bisect_left(cum_weights, rnd.random() * total_w) for _ in range(k)
                    }
                    n_total = 0
                    for i in picks:
                        n = 1 + int(rnd.expovariate(0.4))
                        fid = file_id[(ch, min(i, files - 1))]
                        cumulative[str(fid)] = cumulative.get(str(fid), 0) + n
                        file_months[(ch, fid, v, region, mo)] += n
                        file_months[(ch, fid, v, ALL_REGIONS, mo)] += n
                        n_total += n
                    row = centre_weeks.setdefault((cid, ch, v, wk, mo), [region, 0])
                    row[1] += n_total
                    region_weeks[(ch, v, region, wk, mo)] += n_total
                    region_weeks[(ch, v, ALL_REGIONS, wk, mo)] += n_total
                at = datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
                snapshots.append(
                    (cid, w + 1, at, day, region, json.dumps(installed), json.dumps(cumulative))
                )
                reports += 1
            if len(snapshots) >= 20_000:
                _copy_snapshots(cur, snapshots)
                snapshots.clear()
        _copy_snapshots(cur, snapshots)
        with cur.copy(
            "COPY usage_centre_weeks (centre_id, channel, version, week, month, region, count)"
            " FROM STDIN"
        ) as cp:
            for (cid, ch, v, wk, mo), (region, n) in centre_weeks.items():
                cp.write_row((cid, ch, v, wk, mo, region, n))
        with cur.copy(
            "COPY usage_file_months (channel, file_id, version, region, month, count) FROM STDIN"
        ) as cp:
            for (ch, fid, v, region, mo), n in file_months.items():
                cp.write_row((ch, fid, v, region, mo, n))
        with cur.copy(
            "COPY usage_region_weeks (channel, version, region, week, month, count) FROM STDIN"
        ) as cp:
            for (ch, v, region, wk, mo), n in region_weeks.items():
                cp.write_row((ch, v, region, wk, mo, n))
        raw.commit()
    finally:
        raw.close()
    vacuum = create_engine(db.url, isolation_level="AUTOCOMMIT")  # outside a transaction
    with vacuum.connect() as conn:
        conn.execute(text("VACUUM ANALYZE"))
    vacuum.dispose()
    return {
        "reports": reports,
        "centre_week_rows": len(centre_weeks),
        "file_month_rows": len(file_months),
        "region_week_rows": len(region_weeks),
        "releases_per_channel": releases,
    }


def _copy_snapshots(cur: Any, rows: list[tuple[Any, ...]]) -> None:
    with cur.copy(
        "COPY usage_reports (centre_id, seq, sent_at, day, region, installed, counts) FROM STDIN"
    ) as cp:
        for r in rows:
            cp.write_row(r)


def per_report_path(
    db: Database, centres: int, weeks: int, files: int, today: date, seed: int = 2
) -> dict[str, float]:
    """Reports through ``record_usage``, one transaction each, against the full database."""
    rnd = random.Random(seed)
    first_week = week_of(today) - timedelta(weeks=weeks - 1)
    with db.session() as s:
        for c in range(centres):
            s.execute(
                text(
                    "INSERT INTO nodes (id, name, region, subscriptions, public_key, created_at,"
                    " installed, last_seq, stale) VALUES (:id, :name, :region, '[]', :k, :at,"
                    " '{}', 0, false)"
                ),
                {"id": f"live{c:04d}", "name": f"Live {c}", "region": REGIONS[c % len(REGIONS)],
                 "k": "00" * 32, "at": datetime.now(UTC)},
            )  # fmt: skip
    in_order: list[tuple[str, Report]] = []
    shuffled: list[tuple[str, Report]] = []
    for c in range(centres):
        cid = f"live{c:04d}"
        cumulative: dict[str, int] = {}
        reps = []
        for w in range(weeks):
            for _ in range(rnd.randint(5, 30)):
                ch = rnd.choice(CHANNELS)
                key = f"{ch}/{_path(min(files - 1, int(rnd.paretovariate(1.2)) - 1))}"
                cumulative[key] = cumulative.get(key, 0) + 1
            day = min(today, first_week + timedelta(weeks=w, days=3))
            reps.append(
                Report(cid, w + 1, f"{day.isoformat()}T10:00:00Z", {ch: 1 for ch in CHANNELS},
                       usage=dict(cumulative))
            )  # fmt: skip
        if c % 4 == 3:  # a drive brings this centre's reports back in any order
            rnd.shuffle(reps)
            shuffled.extend((cid, r) for r in reps)
        else:
            in_order.extend((cid, r) for r in reps)
    out: dict[str, float] = {}
    for label, batch in (("in order", in_order), ("shuffled", shuffled)):
        times = []
        for cid, rep in batch:
            t0 = time.perf_counter()
            with db.session() as s:
                record_usage(s, cid, REGIONS[int(cid[4:]) % len(REGIONS)], rep)
            times.append(time.perf_counter() - t0)
        times.sort()
        out[f"{label}: reports"] = len(times)
        out[f"{label}: median ms"] = 1000 * statistics.median(times) if times else 0.0
        out[f"{label}: p95 ms"] = 1000 * times[int(0.95 * (len(times) - 1))] if times else 0.0
        out[f"{label}: reports/s"] = len(times) / sum(times) if times else 0.0
    return out


def time_queries(svc: UsageService, today: date, runs: int) -> list[list[Any]]:
    year, quarter = Period.last_weeks(52, today), Period.last_weeks(12, today)
    region = REGIONS[8]
    cases: list[tuple[str, Any]] = [
        ("content page, 12 weeks, all regions", lambda: _content(svc, quarter, None, "week")),
        ("content page, 52 weeks by month, all", lambda: _content(svc, year, None, "month")),
        ("content page, 52 weeks, one region", lambda: _content(svc, year, region, "week")),
        ("trend only, 52 weeks, all regions", lambda: svc.trend("lecons", year, None, "week")),
        ("top files only, 52 weeks, all regions", lambda: svc.files("lecons", year, None, 500)),
        ("centres page, 12 weeks, all channels", lambda: _centres(svc, quarter, None)),
        ("centres page, 52 weeks, all channels", lambda: _centres(svc, year, None)),
        ("centres page, 52 weeks, one region", lambda: _centres(svc, year, region)),
        ("JSON API trend+files (CSV: same call)", lambda: _api(svc, year)),
    ]
    rows = []
    for label, fn in cases:
        fn()  # warm the cache once, as a page in use would be
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rows.append([label, 1000 * statistics.median(times), 1000 * max(times)])
    return rows


def _content(svc: UsageService, period: Period, region: str | None, by: str) -> None:
    svc.content("lecons", period, region, by)


def _api(svc: UsageService, period: Period) -> None:
    from caravane.hub.usage_web import answer, to_csv

    q = {"channel": "lecons", "weeks": "52"}
    to_csv("files", answer(svc, "files", q))
    to_csv("trend", answer(svc, "trend", q))


def _centres(svc: UsageService, period: Period, region: str | None) -> None:
    svc.centres(period, region, None)
    svc.by_region(period, None)


def sizes(db: Database) -> list[list[Any]]:
    with db.session() as s:
        rows = [
            [name, int(s.execute(text(f"SELECT count(*) FROM {name}")).scalar() or 0),
             int(s.execute(text(f"SELECT pg_total_relation_size('{name}')")).scalar() or 0)
             / 1e6]
            for name in ("usage_reports", "usage_centre_weeks", "usage_region_weeks",
                         "usage_file_months", "usage_files")
        ]  # fmt: skip
        rows.append(
            ["(whole database)", "", int(s.execute(text(
                "SELECT pg_database_size(current_database())")).scalar() or 0) / 1e6]
        )  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--centres", type=int, default=5000)
    ap.add_argument("--weeks", type=int, default=52)
    ap.add_argument("--files", type=int, default=2000, help="files per channel")
    ap.add_argument("--live-centres", type=int, default=60, help="centres for the per-report path")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="500 centres, fewer runs")
    ap.add_argument("--postgres", default=PG_URL)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    if args.quick:
        args.centres, args.live_centres, args.runs = 500, 12, 3
    today = datetime.now(UTC).date()
    url, drop = fresh_database(args.postgres)
    try:
        upgrade(url)
        db = Database(url)
        t0 = time.perf_counter()
        gen = generate(db, args.centres, args.weeks, args.files, today)
        load_s = time.perf_counter() - t0
        print(f"generated and loaded {gen['reports']:,} reports of {args.centres:,} centres "
              f"x {args.weeks} weeks in {load_s:.0f} s ({gen})")  # fmt: skip
        svc = UsageService(db, FakeRepo(args.files, gen["releases_per_channel"]), 5)
        q = time_queries(svc, today, args.runs)
        print(table(f"\nPage queries (ms, median and worst of {args.runs})",
                    ["query", "median ms", "max ms"], q))  # fmt: skip
        size_rows = sizes(db)
        print(table("\nTables", ["table", "rows", "MB"], size_rows))
        live = per_report_path(db, args.live_centres, args.weeks, args.files, today)
        print(table("\nPer-report path (record_usage, one transaction per report)",
                    ["measure", "value"], [[k, v] for k, v in live.items()]))  # fmt: skip
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump({"args": vars(args), "generated": gen, "load_seconds": load_s,
                           "queries": q, "sizes": size_rows, "per_report": live}, fh, indent=2,
                          default=str)  # fmt: skip
        db.dispose()
    finally:
        drop()


if __name__ == "__main__":
    main()
