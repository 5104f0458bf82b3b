"""The node's state database (SQLite through SQLAlchemy, schema owned by alembic)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from caravane import migrations

from .models import (
    Activation,
    Event,
    Hold,
    QueuedReport,
    RelayedReport,
    Setting,
    Transfer,
    UpstreamHealth,
    Usage,
)

BACKOFF_BASE = 60.0
BACKOFF_MAX = 6 * 3600.0


def now() -> datetime:
    return datetime.now(UTC)


def _aware(when: datetime | None) -> datetime | None:
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=UTC)  # SQLite hands back naive datetimes
    return when


def upgrade(url: str, revision: str = "head") -> None:
    migrations.upgrade(url, "node", revision)


def downgrade(url: str, revision: str = "base") -> None:
    migrations.downgrade(url, "node", revision)


def _engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


SCHEMA_HEAD = "n0002"  # the newest revision in migrations/node/versions (a test checks it)


class NodeState:
    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = url
        self.engine = _engine(url)
        if migrate and self.revision() != SCHEMA_HEAD:
            upgrade(url)  # alembic is only loaded when there is something to migrate
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def revision(self) -> str | None:
        try:
            with self.engine.connect() as c:
                return c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except Exception:  # no table yet: a new node
            return None

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ upstreams

    def record_failure(
        self, name: str, error: str, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX
    ) -> datetime:
        """Demote an upstream for a while: exponential backoff with jitter."""
        with self.session() as s:
            row = s.get(UpstreamHealth, name) or UpstreamHealth(name=name, failures=0)
            row.failures = (row.failures or 0) + 1
            delay = min(cap, base * 2 ** (row.failures - 1)) * random.uniform(0.5, 1.5)
            row.demoted_until = now() + timedelta(seconds=delay)
            row.last_error = error[:2000]
            s.add(row)
            return row.demoted_until

    def record_ok(self, name: str) -> None:
        with self.session() as s:
            row = s.get(UpstreamHealth, name) or UpstreamHealth(name=name)
            row.failures = 0
            row.demoted_until = None
            row.last_ok = now()
            s.add(row)

    def demoted_until(self, name: str) -> datetime | None:
        with self.session() as s:
            row = s.get(UpstreamHealth, name)
            until = _aware(row.demoted_until) if row else None
            return until if until and until > now() else None

    def upstream_health(self) -> list[dict[str, Any]]:
        with self.session() as s:
            return [
                {
                    "name": r.name,
                    "failures": r.failures,
                    "demoted_until": _iso(_aware(r.demoted_until)),
                    "last_error": r.last_error,
                    "last_ok": _iso(_aware(r.last_ok)),
                }
                for r in s.scalars(select(UpstreamHealth).order_by(UpstreamHealth.name))
            ]

    # ------------------------------------------------------------------ data budgets

    def add_transfer(self, upstream: str, metered: bool, n: int) -> None:
        day = now().strftime("%Y-%m-%d")
        with self.session() as s:
            row = s.get(Transfer, (day, upstream)) or Transfer(
                day=day, upstream=upstream, metered=int(metered), bytes=0
            )
            row.bytes = (row.bytes or 0) + n
            s.add(row)

    def metered_bytes(self, period: str) -> int:
        """Metered bytes received today (``day``) or this calendar month (``month``)."""
        prefix = now().strftime("%Y-%m-%d" if period == "day" else "%Y-%m")
        with self.session() as s:
            total = s.scalar(
                select(func.coalesce(func.sum(Transfer.bytes), 0)).where(
                    Transfer.metered == 1, Transfer.day.like(prefix + "%")
                )
            )
            return int(total or 0)

    # ------------------------------------------------------------------ releases

    def record_activation(
        self, channel: str, version: int, previous: int | None, route: str
    ) -> None:
        with self.session() as s:
            s.add(
                Activation(
                    channel=channel, version=version, previous=previous, route=route, at=now()
                )
            )

    def last_activation(self, channel: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.scalars(
                select(Activation)
                .where(Activation.channel == channel)
                .order_by(Activation.id.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            return {"version": row.version, "route": row.route, "at": _iso(_aware(row.at))}

    def hold(self, channel: str, version: int | None) -> None:
        with self.session() as s:
            row = s.get(Hold, channel)
            if version is None:
                if row is not None:
                    s.delete(row)
                return
            row = row or Hold(channel=channel, version=version)
            row.version = version
            s.add(row)

    def held(self, channel: str) -> int | None:
        with self.session() as s:
            row = s.get(Hold, channel)
            return row.version if row else None

    # ------------------------------------------------------------------ reports

    def next_seq(self) -> int:
        with self.session() as s:
            row = s.get(Setting, "report_seq") or Setting(key="report_seq", value="0")
            seq = int(row.value) + 1
            row.value = str(seq)
            s.add(row)
            return seq

    def queue_report(self, seq: int, body: bytes) -> None:
        with self.session() as s:
            s.add(QueuedReport(seq=seq, body=body, created_at=now()))

    def unsent_reports(self) -> list[tuple[int, bytes]]:
        with self.session() as s:
            rows = s.scalars(
                select(QueuedReport)
                .where(QueuedReport.sent_at.is_(None))
                .order_by(QueuedReport.seq)
            )
            return [(r.seq, r.body) for r in rows]

    def mark_sent(self, seq: int, route: str) -> None:
        """The hub holds report ``seq`` (it said so). Only that one: an older report still
        unsent carries its own errors and usage, and the hub stores it whenever it arrives."""
        with self.session() as s:
            row = s.get(QueuedReport, seq)
            if row is not None and row.sent_at is None:
                row.sent_at = now()
                row.sent_by = route[:32]

    # ------------------------------------------------------------------ relayed reports

    MAX_RELAYED = 10_000  # a peer cannot fill this centre's disk with reports

    def queue_relayed(self, centre_id: str, seq: int, body: bytes) -> bool:
        """Keep a peer centre's report until the hub holds it; False if already queued."""
        with self.session() as s:
            if s.get(RelayedReport, (centre_id, seq)) is not None:
                return False
            waiting = s.scalar(
                select(func.count())
                .select_from(RelayedReport)
                .where(RelayedReport.sent_at.is_(None))
            )
            if (waiting or 0) >= self.MAX_RELAYED:
                raise OverflowError(
                    f"{waiting} relayed reports already wait for the hub here; the peer keeps "
                    "its report and tries again later"
                )
            s.add(RelayedReport(centre_id=centre_id, seq=seq, body=body, received_at=now()))
            return True

    def unsent_relayed(self) -> list[tuple[str, int, bytes]]:
        with self.session() as s:
            rows = s.scalars(
                select(RelayedReport)
                .where(RelayedReport.sent_at.is_(None))
                .order_by(RelayedReport.centre_id, RelayedReport.seq)
            )
            return [(r.centre_id, r.seq, r.body) for r in rows]

    def mark_relayed_sent(self, centre_id: str, seq: int, route: str) -> None:
        with self.session() as s:
            row = s.get(RelayedReport, (centre_id, seq))
            if row is not None and row.sent_at is None:
                row.sent_at = now()
                row.sent_by = route[:100]

    def max_event_id(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.coalesce(func.max(Event.id), 0))) or 0)

    def errors_since(self, after_id: int, limit: int = 20) -> list[str]:
        """Error events newer than event ``after_id``, oldest first (what a report carries)."""
        with self.session() as s:
            rows = s.scalars(
                select(Event)
                .where(Event.level == "error", Event.id > after_id)
                .order_by(Event.id.desc())
                .limit(limit)
            )
            return [e.message for e in reversed(list(rows))]

    # ------------------------------------------------------------------ usage, events

    def add_usage(self, counts: dict[tuple[str, str], int]) -> None:
        if not counts:
            return
        with self.session() as s:
            for (channel, path), n in counts.items():
                row = s.get(Usage, (channel, path)) or Usage(channel=channel, path=path, count=0)
                row.count = (row.count or 0) + n
                s.add(row)

    def usage(self) -> dict[str, int]:
        with self.session() as s:
            return {f"{u.channel}/{u.path}": u.count for u in s.scalars(select(Usage))}

    def event(self, level: str, message: str) -> None:
        with self.session() as s:
            s.add(Event(at=now(), level=level, message=message[:4000]))

    def recent_events(self, limit: int = 20, level: str | None = None) -> list[dict[str, Any]]:
        with self.session() as s:
            q = select(Event).order_by(Event.id.desc()).limit(limit)
            if level:
                q = q.where(Event.level == level)
            return [
                {"at": _iso(_aware(e.at)), "level": e.level, "message": e.message}
                for e in s.scalars(q)
            ]

    def get(self, key: str, default: str | None = None) -> str | None:
        with self.session() as s:
            row = s.get(Setting, key)
            return row.value if row else default

    def set(self, key: str, value: str) -> None:
        with self.session() as s:
            row = s.get(Setting, key) or Setting(key=key, value=value)
            row.value = value
            s.add(row)

    # ------------------------------------------------------------------ counters

    def add_counts(self, counts: dict[str, float], at: dict[str, float] | None = None) -> None:
        """Add to named counters (``counter.<name>``) and set timestamps, in one transaction.

        Kept in the state database, not in the process, so /metrics counts the passes of
        `caravane node sync` run from cron as well as the agent's, across restarts.
        """
        with self.session() as s:
            for name, n in counts.items():
                key = f"counter.{name}"
                row = s.get(Setting, key) or Setting(key=key, value="0")
                row.value = repr(float(row.value) + n)
                s.add(row)
            for name, when in (at or {}).items():
                key = f"counter.{name}"
                row = s.get(Setting, key) or Setting(key=key, value="0")
                row.value = repr(float(when))
                s.add(row)

    def counts(self, prefix: str) -> dict[str, float]:
        """The counters whose name starts with ``prefix`` (name without the prefix)."""
        key = f"counter.{prefix}"
        with self.session() as s:
            rows = s.scalars(select(Setting).where(Setting.key.startswith(key, autoescape=True)))
            return {r.key[len(key) :]: float(r.value) for r in rows}


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None
