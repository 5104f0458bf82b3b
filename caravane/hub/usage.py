"""What the centres' visitors use: usage counts from signed reports, rolled up for curators.

A centre's portal counts each opening of a file; the node keeps CUMULATIVE counts per
``channel/path`` since it was installed and every signed report carries them. The hub turns
them into increments here, once per (centre, seq), whatever the route and however often a
report is retried:

* ``usage_reports`` keeps each report's cumulative snapshot (counts keyed by a small file id),
  keyed by (centre, seq): a report seen before is a no-op, so replays cost nothing and count
  nothing.
* The increment a report brings is its snapshot minus the snapshot of the centre's report
  just before it *by seq* (not by arrival). When any counter went down the node was reset
  (reinstalled, state lost): the whole new snapshot is then the increment.
* A report that arrives out of order (a drive brings old reports after newer ones came over
  the network) lands between two stored snapshots: its own increment is taken against the
  one before, and the increment already booked for the one after is taken back and booked
  again against the newcomer. Only those two neighbours are touched, and the totals are the
  same for every arrival order (tests/hub/test_usage.py checks all orders of a sequence).
* Increments go into three rollup tables the pages read: ``usage_centre_weeks`` (centre,
  channel, release, week, month), ``usage_region_weeks`` (channel, release, region, week,
  month) and ``usage_file_months`` (channel, file, release, region, month); the last two
  also hold an all-regions row (region ``*``) so that a fleet-wide question reads one row
  per file or week instead of adding up every region. They stay small enough for a fleet of
  5,000 centres reporting weekly for a year to answer every page in well under a second
  (bench/usage.py, docs/USAGE.md).

An increment is booked in the week and month of the report's ``sent_at`` (when the counts
were taken, not when a drive brought them), to the release the centre had installed for
that channel in that report, and to the centre's region at the time the report arrived.

Privacy: only counts ever reach the hub (the node sends no address, identity or sequence of
pages) and :func:`protect` merges every shown count under a threshold (5 by default) into an
"other" bucket, or shows it as "< 5", in pages, CSV and JSON alike. See docs/USAGE.md.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    column,
    func,
    select,
    table,
)
from sqlalchemy.orm import Session

from caravane.packs import sql_in
from caravane.protocol.errors import FormatError, PathError
from caravane.protocol.metadata import check_channel
from caravane.protocol.paths import check_path
from caravane.protocol.report import Report

from .db import Database, insert_or_ignore, pads_in_lists, values_by_key

DEFAULT_MIN_COUNT = 5
MIN_COUNT_ENV = "CARAVANE_USAGE_MIN_COUNT"
ALL_REGIONS = "*"  # the rollups' all-regions rows (a centre's region "*" is booked as "(*)")

usage_metadata = MetaData()

# one row per (channel, path) ever reported: rollups and snapshots hold the small id
usage_files = Table(
    "usage_files",
    usage_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel", String(64), nullable=False),
    Column("path", Text, nullable=False),
    UniqueConstraint("channel", "path", name="uq_usage_files_channel_path"),
)

# each report's cumulative counts, once per (centre, seq): the source of every increment
usage_reports = Table(
    "usage_reports",
    usage_metadata,
    Column("centre_id", String(40), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("day", Date, nullable=False),
    Column("region", String(100), nullable=False),
    Column("installed", JSON, nullable=False),
    Column("counts", JSON, nullable=False),
    Index("ix_usage_reports_day", "day", "centre_id"),  # "who reported": index only
)

usage_centre_weeks = Table(
    "usage_centre_weeks",
    usage_metadata,
    Column("centre_id", String(40), primary_key=True),
    Column("channel", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("week", Date, primary_key=True),
    Column("month", Date, primary_key=True),
    Column("region", String(100), nullable=False),
    Column("count", BigInteger, nullable=False),
    Index("ix_usage_centre_weeks_channel_week", "channel", "week"),
    Index("ix_usage_centre_weeks_week", "week", "centre_id", postgresql_include=["count"]),
)

usage_region_weeks = Table(
    "usage_region_weeks",
    usage_metadata,
    Column("channel", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("region", String(100), primary_key=True),
    Column("week", Date, primary_key=True),
    Column("month", Date, primary_key=True),
    Column("count", BigInteger, nullable=False),
    Index("ix_usage_region_weeks_channel_region_week", "channel", "region", "week"),
)

usage_file_months = Table(
    "usage_file_months",
    usage_metadata,
    Column("channel", String(64), primary_key=True),
    Column("file_id", Integer, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("region", String(100), primary_key=True),
    Column("month", Date, primary_key=True),
    Column("count", BigInteger, nullable=False),
    Index("ix_usage_file_months_channel_region_month", "channel", "region", "month"),
)

# the hub's own tables, read only (named here, not imported: the models are being renamed)
_centres = table(
    "nodes",
    column("id", String),
    column("name", String),
    column("region", String),
    column("public_key", String),
    column("last_contact", DateTime(timezone=True)),
)
_releases = table(
    "releases",
    column("channel_id", String),
    column("version", Integer),
    column("published_at", DateTime(timezone=True)),
)


def week_of(day: date) -> date:
    """The Monday of ``day``'s ISO week (weeks are named by their first day)."""
    return day - timedelta(days=day.weekday())


def month_of(day: date) -> date:
    return day.replace(day=1)


def report_time(sent_at: str, received: datetime) -> datetime:
    """When a report's counts were taken: its ``sent_at``, unless unreadable or future.

    A centre's clock may be wrong; a time more than a day after the hub received the report
    cannot be right, so the hub's own time is used instead.
    """
    try:
        when = datetime.fromisoformat(sent_at)
    except ValueError:
        return received
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when > received + timedelta(days=1):
        return received
    return when.astimezone(UTC)


def increments(current: Mapping[str, int], previous: Mapping[str, int] | None) -> dict[str, int]:
    """What happened between two cumulative snapshots of one centre (keys: file ids).

    A counter that went down (or vanished) means the node lost its counts (reinstalled):
    the whole current snapshot is then new.
    """
    if previous is None:
        return {k: v for k, v in current.items() if v > 0}
    if any(current.get(k, 0) < v for k, v in previous.items()):
        return {k: v for k, v in current.items() if v > 0}
    out = {}
    for k, v in current.items():
        d = v - previous.get(k, 0)
        if d > 0:
            out[k] = d
    return out


@dataclass
class _Snap:
    seq: int
    day: date
    region: str
    installed: dict[str, int]
    counts: dict[str, int]


@dataclass
class _Batch:
    """Increments to add (or take back) in the rollups, summed by row key."""

    weeks: dict[tuple[str, str, int, date, date, str], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    months: dict[tuple[str, int, int, str, date], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    regions: dict[tuple[str, int, str, date, date], int] = field(
        default_factory=lambda: defaultdict(int)
    )

    def book(
        self,
        centre: str,
        snap: _Snap,
        incs: Mapping[str, int],
        channel_of: Mapping[int, str],
        sign: int,
    ) -> None:
        week, month = week_of(snap.day), month_of(snap.day)
        for key, n in incs.items():
            fid = int(key)
            channel = channel_of[fid]
            version = int(snap.installed.get(channel, 0))
            self.weeks[(centre, channel, version, week, month, snap.region)] += sign * n
            for region in (snap.region, ALL_REGIONS):
                self.months[(channel, fid, version, region, month)] += sign * n
                self.regions[(channel, version, region, week, month)] += sign * n


# (database URL) -> (channel, path) -> file id: ids never change once committed, and nearly
# every key of a report was seen before, so a report usually costs no lookup at all
_FILE_IDS: dict[str, dict[tuple[str, str], int]] = {}
FILE_ID_CACHE = 500_000


def _file_ids(session: Session, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
    """``channel/path`` -> (file id, channel), creating ids for paths never seen.

    Known paths (nearly all, after a centre's first reports) cost one SELECT per channel;
    only new ones are inserted (ON CONFLICT: two centres may bring the same new path at once).
    """
    wanted: dict[tuple[str, str], str] = {}
    for key in keys:
        channel, _, path = key.partition("/")
        try:  # a centre names only real channels and paths; anything else is not booked
            wanted[(check_channel(channel), check_path(path))] = key
        except (FormatError, PathError):
            continue
    out: dict[str, tuple[int, str]] = {}
    cache = _FILE_IDS.setdefault(str(session.get_bind().engine.url), {})
    for cp, key in list(wanted.items()):
        fid = cache.get(cp)
        if fid is not None:
            out[key] = (fid, cp[0])
    if len(out) == len(wanted):
        return out

    def lookup(pairs: Iterable[tuple[str, str]], remember: bool) -> None:
        by_channel: dict[str, list[str]] = defaultdict(list)
        for c, p in pairs:
            by_channel[c].append(p)
        for c, paths in sorted(by_channel.items()):
            f = usage_files.c
            for p, fid in values_by_key(session, f.path, paths, f.id, f.channel == c):
                out[wanted[(c, p)]] = (int(fid), c)
                if remember:
                    cache[(c, p)] = int(fid)

    if len(cache) > FILE_ID_CACHE:
        cache.clear()
    # rows found before this transaction inserts any are committed: safe to remember
    lookup([cp for cp, key in wanted.items() if key not in out], remember=True)
    missing = sorted(cp for cp, key in wanted.items() if key not in out)
    if missing:
        ins = insert_or_ignore(session, usage_files)
        for i in range(0, len(missing), 1000):
            rows = [{"channel": c, "path": p} for c, p in missing[i : i + 1000]]
            session.execute(
                ins.values(rows).on_conflict_do_nothing(index_elements=["channel", "path"])
            )
        lookup(missing, remember=False)  # ours until commit: not remembered
    return out


def _snapshot(row: Any) -> _Snap:
    return _Snap(
        int(row.seq),
        row.day,
        row.region,
        {str(k): int(v) for k, v in dict(row.installed).items()},
        {str(k): int(v) for k, v in dict(row.counts).items()},
    )


def _neighbour(session: Session, centre: str, seq: int, after: bool) -> _Snap | None:
    r = usage_reports.c
    q = select(usage_reports).where(r.centre_id == centre)
    q = q.where(r.seq > seq).order_by(r.seq) if after else q.where(r.seq < seq)
    if not after:
        q = q.order_by(r.seq.desc())
    row = session.execute(q.limit(1)).first()
    return _snapshot(row) if row is not None else None


def _channels_of(session: Session, snaps: Iterable[_Snap]) -> dict[int, str]:
    ids = {int(k) for s in snaps for k in s.counts}
    out: dict[int, str] = {}
    id_list = sorted(ids)
    for part in sql_in.parts(id_list, 1024, pads_in_lists(session)):
        for fid, ch in session.execute(
            select(usage_files.c.id, usage_files.c.channel).where(usage_files.c.id.in_(part))
        ):
            out[int(fid)] = str(ch)
    return out


def _apply(session: Session, batch: _Batch) -> None:
    """Add the batch to the rollups (rows in a fixed order: no deadlock between centres)."""
    weeks = [
        {
            "centre_id": c,
            "channel": ch,
            "version": v,
            "week": w,
            "month": m,
            "region": rg,
            "count": n,
        }
        for (c, ch, v, w, m, rg), n in sorted(batch.weeks.items())
        if n
    ]
    months = [
        {"channel": ch, "file_id": f, "version": v, "region": rg, "month": m, "count": n}
        for (ch, f, v, rg, m), n in sorted(batch.months.items())
        if n
    ]
    regions = [
        {"channel": ch, "version": v, "region": rg, "week": w, "month": m, "count": n}
        for (ch, v, rg, w, m), n in sorted(batch.regions.items())
        if n
    ]
    _add_counts(
        session, usage_region_weeks, ["channel", "version", "region", "week", "month"], regions
    )
    _add_counts(
        session, usage_centre_weeks, ["centre_id", "channel", "version", "week", "month"], weeks
    )
    _add_counts(
        session, usage_file_months, ["channel", "file_id", "version", "region", "month"], months
    )


def _add_counts(session: Session, tbl: Table, key: list[str], rows: list[dict[str, Any]]) -> None:
    """Insert rows, or add their counts to the rows with the same ``key`` (one statement)."""
    if not rows:
        return
    ins = insert_or_ignore(session, tbl)
    session.execute(
        ins.on_conflict_do_update(
            index_elements=key, set_={"count": tbl.c.count + ins.excluded.count}
        ),
        rows,
    )


def record_usage(
    session: Session,
    centre_id: str,
    region: str,
    report: Report,
    received: datetime | None = None,
) -> bool:
    """Book a verified report's usage in the caller's transaction; False if already booked.

    Called by ``Hub.accept_report`` in the session that stores the report, so the usage and
    the report are committed together or not at all. The caller holds the centre's row lock
    (``with_for_update``): two reports of one centre are never booked at once, so the
    neighbours read here are the ones the new report sits between.
    """
    r = usage_reports.c
    seen = session.execute(
        select(r.seq).where(r.centre_id == centre_id, r.seq == report.seq)
    ).first()
    if seen is not None:
        return False
    when = report_time(report.sent_at, received or datetime.now(UTC))
    ids = _file_ids(session, (k for k, v in report.usage.items() if v > 0))
    counts = {str(ids[k][0]): int(v) for k, v in report.usage.items() if k in ids and v > 0}
    snap = _Snap(
        report.seq,
        when.date(),
        "(*)" if region == ALL_REGIONS else region or "",
        {str(k): int(v) for k, v in report.installed.items()},
        counts,
    )
    before = _neighbour(session, centre_id, report.seq, after=False)
    after = _neighbour(session, centre_id, report.seq, after=True)
    session.execute(
        usage_reports.insert().values(
            centre_id=centre_id,
            seq=snap.seq,
            sent_at=when,
            day=snap.day,
            region=snap.region,
            installed=snap.installed,
            counts=snap.counts,
        )
    )
    channel_of = _channels_of(session, [s for s in (snap, before, after) if s is not None])
    batch = _Batch()
    prev_counts = before.counts if before else None
    batch.book(centre_id, snap, increments(snap.counts, prev_counts), channel_of, +1)
    if after is not None:  # arrived late: the next report's increment was taken against before
        batch.book(centre_id, after, increments(after.counts, prev_counts), channel_of, -1)
        batch.book(centre_id, after, increments(after.counts, snap.counts), channel_of, +1)
    _apply(session, batch)
    return True


# --------------------------------------------------------------------------- privacy


def protect(
    rows: list[dict[str, Any]], min_count: int, label: str = "other"
) -> list[dict[str, Any]]:
    """Merge every row whose count is under ``min_count`` into one "other" row.

    Rows keep their order; the "other" row comes last with ``items`` (how many rows were
    merged) and its summed count, itself shown as ``None`` with ``suppressed`` when still
    under the threshold. Zero rows are left out (they are listed as "never used" or "nobody
    opened" where that is the question). Nothing under the threshold leaves this function.
    """
    shown = [dict(r, suppressed=False) for r in rows if r["count"] >= min_count]
    small = [r for r in rows if 0 < r["count"] < min_count]
    if small:
        total = sum(r["count"] for r in small)
        shown.append(
            {
                label: True,
                "items": len(small),
                "count": total if total >= min_count else None,
                "suppressed": total < min_count,
            }
        )
    return shown


def cell(n: int, min_count: int) -> int | None:
    """One count in a table or a chart: itself, 0, or ``None`` (shown "< min") when small."""
    return n if n == 0 or n >= min_count else None


# --------------------------------------------------------------------------- queries


@dataclass
class Period:
    """Days ``since`` to ``until`` inclusive (the file lists count whole months)."""

    since: date
    until: date

    @classmethod
    def last_weeks(cls, weeks: int, today: date | None = None) -> Period:
        today = today or datetime.now(UTC).date()
        if weeks <= 0:
            return cls(date(2000, 1, 3), today)
        return cls(week_of(today) - timedelta(weeks=weeks - 1), today)

    def to_dict(self) -> dict[str, str]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat()}


def min_count_setting(config: Any = None) -> int:
    """The privacy threshold: ``CARAVANE_USAGE_MIN_COUNT``, else the hub config's
    ``extra["usage_min_count"]``, else 5 (never below 1)."""
    raw: Any = os.environ.get(MIN_COUNT_ENV)
    if raw is None and config is not None:
        raw = getattr(config, "extra", {}).get("usage_min_count")
    try:
        return max(1, int(raw)) if raw is not None else DEFAULT_MIN_COUNT
    except ValueError:
        return DEFAULT_MIN_COUNT


class UsageService:
    """The curators' questions, answered from the rollups with the privacy rule applied.

    Every method returns plain data (lists and dicts) that the pages, the CSV export and the
    JSON API share, so the three always show the same, protected, numbers.
    """

    def __init__(self, db: Database, repo: Any = None, min_count: int = DEFAULT_MIN_COUNT):
        self.db = db
        self.repo = repo
        self.min_count = max(1, int(min_count))

    # ------------------------------------------------------------------ filters

    def regions(self) -> list[str]:
        with self.db.session() as s:
            rows = s.execute(select(_centres.c.region).distinct()).scalars()
            return sorted(r for r in rows if r)

    def channels(self) -> list[str]:
        with self.db.session() as s:
            a = set(s.execute(select(usage_files.c.channel).distinct()).scalars())
            b = set(s.execute(select(_releases.c.channel_id).distinct()).scalars())
        return sorted(a | b)

    # ------------------------------------------------------------------ files

    def _file_counts(
        self, channel: str, period: Period, region: str | None
    ) -> list[dict[str, Any]]:
        fm = usage_file_months.c
        sums = (
            select(fm.file_id, func.sum(fm.count).label("n"))
            .where(
                fm.channel == channel,
                fm.region == (region or ALL_REGIONS),
                fm.month >= month_of(period.since),
                fm.month <= month_of(period.until),
            )
            .group_by(fm.file_id)
            .subquery()
        )
        q = (
            select(usage_files.c.path, sums.c.n)
            .join(usage_files, usage_files.c.id == sums.c.file_id)
            .where(sums.c.n > 0)
            .order_by(sums.c.n.desc(), usage_files.c.path)
        )
        with self.db.session() as s:
            return [{"path": p, "count": int(n)} for p, n in s.execute(q)]

    def content(
        self, channel: str, period: Period, region: str | None = None, by: str = "week"
    ) -> dict[str, Any]:
        """What the content page shows: trend, most used and never used (one file count)."""
        counts = self._file_counts(channel, period, region)
        return {
            "trend": self.trend(channel, period, region, by),
            "files": self.files(channel, period, region, 50, counts),
            "never": self.never_used(channel, period, region, 200, counts),
        }

    def files(
        self,
        channel: str,
        period: Period,
        region: str | None = None,
        limit: int = 50,
        counts: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Most used files of a channel (whole months of the period), protected."""
        if counts is None:
            counts = self._file_counts(channel, period, region)
        protected = protect(counts, self.min_count)
        top = [r for r in protected if "other" not in r]
        other = [r for r in protected if "other" in r]
        return {
            "channel": channel,
            "region": region or "",
            "period": period.to_dict(),
            "min_count": self.min_count,
            "files": top[:limit],
            "more": max(0, len(top) - limit),
            "other": other[0] if other else None,
        }

    def never_used(
        self,
        channel: str,
        period: Period,
        region: str | None = None,
        limit: int = 200,
        counts: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Files of the channel's latest release that nobody opened in the period."""
        if counts is None:
            counts = self._file_counts(channel, period, region)
        used = {r["path"] for r in counts}
        latest, paths = None, []
        if self.repo is not None:
            try:
                manifest = self.repo.manifest(channel)
                latest = int(manifest.version)
                paths = [e.path for e in manifest.files]
            except Exception:  # no release yet, or unreadable: nothing to list
                paths = []
        unused = sorted(p for p in paths if p not in used)
        return {
            "channel": channel,
            "region": region or "",
            "version": latest,
            "period": period.to_dict(),
            "files_in_release": len(paths),
            "never_used": unused[:limit],
            "never_used_count": len(unused),
        }

    # ------------------------------------------------------------------ trends

    def trend(
        self,
        channel: str,
        period: Period,
        region: str | None = None,
        by: str = "week",
    ) -> dict[str, Any]:
        """Openings per week (or month) and per release, with the releases' dates."""
        rw = usage_region_weeks.c
        if by == "month":
            bucket, first = rw.month, month_of(period.since)
        else:
            bucket, first = rw.week, week_of(period.since)
        q = (
            select(bucket.label("b"), rw.version, func.sum(rw.count))
            .where(
                rw.channel == channel,
                rw.region == (region or ALL_REGIONS),
                bucket >= first,
                bucket <= period.until,
            )
            .group_by(bucket, rw.version)
            .order_by(bucket, rw.version)
        )
        rel = _releases.c
        rq = (
            select(rel.version, rel.published_at)
            .where(rel.channel_id == channel)
            .order_by(rel.version)
        )
        with self.db.session() as s:
            raw = [(b, int(v), int(n)) for b, v, n in s.execute(q)]
            releases = [{"version": int(v), "published": _day(at)} for v, at in s.execute(rq)]
        by_bucket: dict[date, list[dict[str, Any]]] = defaultdict(list)
        for b, v, n in raw:
            if n > 0:
                by_bucket[b].append({"version": v, "count": n})
        points = []
        for b in _buckets(period, by):
            rows = protect(by_bucket.get(b, []), self.min_count)
            # the total is the sum of what is shown: a hidden count cannot be worked out
            # by taking the shown ones from it
            shown = sum(r["count"] or 0 for r in rows)
            points.append(
                {
                    "start": b.isoformat(),
                    "total": shown,
                    "partial": any(r["suppressed"] for r in rows),
                    "versions": [r for r in rows if "other" not in r],
                    "other": next((r for r in rows if "other" in r), None),
                }
            )
        return {
            "channel": channel,
            "region": region or "",
            "by": by,
            "period": period.to_dict(),
            "min_count": self.min_count,
            "points": points,
            "releases": releases,
        }

    # ------------------------------------------------------------------ centres, regions

    def centres(
        self, period: Period, region: str | None = None, channel: str | None = None
    ) -> dict[str, Any]:
        """Openings per centre, and the centres whose portal nobody opened.

        "Nobody opened" lists enrolled centres that sent at least one report in the period
        and none of whose reports counted an opening; centres with no report in the period
        are listed apart ("no news"): for them the hub cannot know.
        """
        cw, c, ur = usage_centre_weeks.c, _centres.c, usage_reports.c
        q = (
            select(cw.centre_id, func.sum(cw.count))
            .where(cw.week >= week_of(period.since), cw.week <= period.until)
            .group_by(cw.centre_id)
        )
        if channel:
            q = q.where(cw.channel == channel)
        cq = select(c.id, c.name, c.region, c.last_contact).where(c.public_key.is_not(None))
        if region:
            cq = cq.where(c.region == region)
            # the centres of the region now (a centre that moved keeps its earlier counts)
            q = q.where(cw.centre_id.in_(select(c.id).where(c.region == region)))
        rq = select(ur.centre_id).where(ur.day >= period.since, ur.day <= period.until).distinct()
        with self.db.session() as s:
            counts = {str(i): int(n) for i, n in s.execute(q)}
            centres = list(s.execute(cq.order_by(c.region, c.name)))
            reported = set(s.execute(rq).scalars())
        rows, quiet, silent = [], [], []
        for cid, name, reg, last in centres:
            n = counts.get(cid, 0)
            info = {"id": cid, "name": name, "region": reg or "", "count": n}
            if n > 0:
                rows.append(info)
            elif cid in reported:
                quiet.append(dict(info, last_contact=_iso(last)))
            else:
                silent.append(dict(info, last_contact=_iso(last)))
        rows.sort(key=lambda r: (-r["count"], r["name"]))
        protected = protect(rows, self.min_count)
        return {
            "region": region or "",
            "channel": channel or "",
            "period": period.to_dict(),
            "min_count": self.min_count,
            "centres": [r for r in protected if "other" not in r],
            "other": next((r for r in protected if "other" in r), None),
            "nobody_opened": quiet,
            "no_report": silent,
        }

    def by_region(self, period: Period, channel: str | None = None) -> dict[str, Any]:
        rw = usage_region_weeks.c
        q = (
            select(rw.region, func.sum(rw.count))
            .where(
                rw.region != ALL_REGIONS,
                rw.week >= week_of(period.since),
                rw.week <= period.until,
            )
            .group_by(rw.region)
            .order_by(func.sum(rw.count).desc(), rw.region)
        )
        if channel:
            q = q.where(rw.channel == channel)
        with self.db.session() as s:
            rows = [{"region": r or "", "count": int(n)} for r, n in s.execute(q) if n]
        protected = protect(rows, self.min_count)
        return {
            "channel": channel or "",
            "period": period.to_dict(),
            "min_count": self.min_count,
            "regions": [r for r in protected if "other" not in r],
            "other": next((r for r in protected if "other" in r), None),
        }


def _buckets(period: Period, by: str) -> list[date]:
    out = []
    if by == "month":
        m = month_of(period.since)
        while m <= period.until:
            out.append(m)
            m = (m + timedelta(days=32)).replace(day=1)
    else:
        w = week_of(period.since)
        while w <= period.until:
            out.append(w)
            w += timedelta(weeks=1)
    return out[-520:]


def _day(when: datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).date().isoformat()


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat()
