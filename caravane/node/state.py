"""The node's state database: the standard library's ``sqlite3``, schema owned by alembic.

Why not SQLAlchemy: the node runs for months on a Raspberry Pi with 2 GB shared with the
centre's desktop, and importing SQLAlchemy's core and ORM costs about 17 MB resident for
a dozen small tables (issue 14: the node at rest must stay under 80 MB). The schema is
still alembic's (``caravane/migrations/node``); alembic, and the SQLAlchemy it needs, are
imported only when the version table says the database is older than :data:`SCHEMA_HEAD`
(a new centre, or the first start after an upgrade that brings a migration).

Crash safety is the same as before: WAL journal with ``synchronous=NORMAL`` (a power cut
loses at most the last transactions, never the database), and every method is one
transaction, so a counter, a report's sequence number or a backoff is never half written.
Write transactions start with ``BEGIN IMMEDIATE``: a ``caravane node sync`` from cron and
the agent may write at once, and taking the write lock up front lets SQLite's busy
timeout (30 s) order them instead of failing one with "database is locked".

Date-times are stored as SQLAlchemy stored them (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC, no
offset), so databases written by earlier releases read back unchanged.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from caravane import migrations

from .errors import NodeError

BACKOFF_BASE = 60.0
BACKOFF_MAX = 6 * 3600.0
SCHEMA_HEAD = "n0002"  # the newest revision in migrations/node/versions (a test checks it)
BUSY_TIMEOUT_SECONDS = 30.0


def now() -> datetime:
    return datetime.now(UTC)


def _stored(when: datetime) -> str:
    """A date-time as the database holds it (UTC, SQLAlchemy's SQLite format)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _read(value: str | None) -> datetime | None:
    """A stored date-time back, aware (SQLite hands back text without an offset)."""
    if value is None:
        return None
    when = datetime.fromisoformat(value)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def upgrade(url: str, revision: str = "head") -> None:
    migrations.upgrade(url, "node", revision)


def downgrade(url: str, revision: str = "base") -> None:
    migrations.downgrade(url, "node", revision)


def upgrade_apart(url: str) -> bool:
    """Bring an old schema to the head in a short-lived child process; True if it migrated.

    For the long-running agent (`caravane node run`): migrating in its own process would
    leave alembic and SQLAlchemy loaded, about 37 MB, until the next restart. Every
    short-lived command migrates in-process (:class:`NodeState` does it when it opens).
    """
    st = NodeState(url, migrate=False)
    try:
        if st.revision() == SCHEMA_HEAD:
            return False
    finally:
        st.close()
    done = subprocess.run(
        [sys.executable, "-m", "caravane.node.state", url],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise StateError(
            f"migrating the node's state database to {SCHEMA_HEAD} failed: "
            f"{lines[-1] if lines else f'exit status {done.returncode}'}; "
            "run `caravane node status` to see the whole error"
        )
    return True


def database_path(url: str) -> str:
    """The file of a ``sqlite:///path`` URL (the form alembic takes too); ``sqlite://`` is
    a database in memory."""
    if url == "sqlite://":
        return ":memory:"
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise StateError(
            f"the node's state database must be SQLite (sqlite:///path/to/node.db), not "
            f"{url!r}: fix the node's configuration"
        )
    return url[len(prefix) :]


class StateError(NodeError):
    """The node's state database is unusable (wrong URL, or a schema this node cannot use)."""


class NodeState:
    """Two connections shared by the agent's threads, each under its own lock and held for
    one short transaction: one for writes (SQLite allows one writer at a time anyway), one
    for reads, so the portal reading the state never waits behind a write that is itself
    waiting for another process's lock (WAL readers do not block on writers). Two page
    caches rather than one per thread: the database is small and the node's memory is not.
    """

    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = url
        self.path = database_path(url)
        self._locks = {False: threading.Lock(), True: threading.Lock()}  # by "writes"
        self._conns: dict[bool, sqlite3.Connection] = {}
        if migrate and self.revision() != SCHEMA_HEAD:
            upgrade(url)  # alembic is only loaded when there is something to migrate

    def _connection(self, write: bool) -> sqlite3.Connection:
        conn = self._conns.get(write)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # transactions are ours: BEGIN ... COMMIT below
                check_same_thread=False,  # shared by threads, serialised by its lock
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conns[write] = conn
        return conn

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        side = write or self.path == ":memory:"  # a database in memory is one connection
        with self._locks[side]:
            conn = self._connection(side)
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (disk full)
                    conn.execute("ROLLBACK")
                raise

    def _one(self, sql: str, *args: Any) -> Any:
        with self._tx() as c:
            return c.execute(sql, args).fetchone()

    def _all(self, sql: str, *args: Any) -> list[Any]:
        with self._tx() as c:
            return c.execute(sql, args).fetchall()

    def revision(self) -> str | None:
        """The alembic revision the database is at; None for a new (empty) database."""
        try:
            row = self._one("SELECT version_num FROM alembic_version")
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a new node
                return None
            raise
        return str(row[0]) if row else None

    def ping(self) -> None:
        """Raise if the database does not answer (the portal's /readyz)."""
        self._one("SELECT 1")

    def close(self) -> None:
        """Close the connections; a later call opens new ones."""
        for write, lock in self._locks.items():
            with lock:
                conn = self._conns.pop(write, None)
                if conn is not None:
                    conn.close()

    # ------------------------------------------------------------------ upstreams

    def record_failure(
        self, name: str, error: str, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX
    ) -> datetime:
        """Demote an upstream for a while: exponential backoff with jitter.

        The jitter (plus or minus a quarter) keeps centres that failed together from coming
        back together, and is narrow enough that each failure waits longer than the one
        before (with plus or minus half, a second failure could be set aside for less time
        than the first, one time in sixteen)."""
        with self._tx(write=True) as c:
            row = c.execute(
                "SELECT failures FROM upstream_health WHERE name = ?", (name,)
            ).fetchone()
            failures = (row[0] or 0) + 1 if row else 1
            delay = min(cap, base * 2 ** (failures - 1)) * random.uniform(0.75, 1.25)
            until = now() + timedelta(seconds=delay)
            c.execute(
                "INSERT INTO upstream_health (name, failures, demoted_until, last_error) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "failures = excluded.failures, demoted_until = excluded.demoted_until, "
                "last_error = excluded.last_error",
                (name, failures, _stored(until), error[:2000]),
            )
            return until

    def record_ok(self, name: str) -> None:
        with self._tx(write=True) as c:
            c.execute(
                "INSERT INTO upstream_health (name, failures, demoted_until, last_ok) "
                "VALUES (?, 0, NULL, ?) ON CONFLICT (name) DO UPDATE SET "
                "failures = 0, demoted_until = NULL, last_ok = excluded.last_ok",
                (name, _stored(now())),
            )

    def demoted_until(self, name: str) -> datetime | None:
        row = self._one("SELECT demoted_until FROM upstream_health WHERE name = ?", name)
        until = _read(row[0]) if row else None
        return until if until and until > now() else None

    def upstream_health(self) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT name, failures, demoted_until, last_error, last_ok FROM upstream_health "
            "ORDER BY name"
        )
        return [
            {
                "name": name,
                "failures": failures,
                "demoted_until": _iso(_read(until)),
                "last_error": error,
                "last_ok": _iso(_read(ok)),
            }
            for name, failures, until, error, ok in rows
        ]

    # ------------------------------------------------------------------ data budgets

    def add_transfer(self, upstream: str, metered: bool, n: int) -> None:
        day = now().strftime("%Y-%m-%d")
        with self._tx(write=True) as c:
            c.execute(
                "INSERT INTO transfers (day, upstream, metered, bytes) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (day, upstream) DO UPDATE SET bytes = bytes + excluded.bytes",
                (day, upstream, int(metered), n),
            )

    def metered_bytes(self, period: str) -> int:
        """Metered bytes received today (``day``) or this calendar month (``month``)."""
        prefix = now().strftime("%Y-%m-%d" if period == "day" else "%Y-%m")
        row = self._one(
            "SELECT COALESCE(SUM(bytes), 0) FROM transfers "
            "WHERE metered = 1 AND substr(day, 1, ?) = ?",
            len(prefix),
            prefix,
        )
        return int(row[0] or 0)

    # ------------------------------------------------------------------ releases

    def record_activation(
        self, channel: str, version: int, previous: int | None, route: str
    ) -> None:
        with self._tx(write=True) as c:
            c.execute(
                "INSERT INTO activations (channel, version, previous, route, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (channel, version, previous, route, _stored(now())),
            )

    def last_activation(self, channel: str) -> dict[str, Any] | None:
        row = self._one(
            "SELECT version, route, at FROM activations WHERE channel = ? ORDER BY id DESC LIMIT 1",
            channel,
        )
        if row is None:
            return None
        return {"version": row[0], "route": row[1], "at": _iso(_read(row[2]))}

    def hold(self, channel: str, version: int | None) -> None:
        with self._tx(write=True) as c:
            if version is None:
                c.execute("DELETE FROM holds WHERE channel = ?", (channel,))
                return
            c.execute(
                "INSERT INTO holds (channel, version) VALUES (?, ?) "
                "ON CONFLICT (channel) DO UPDATE SET version = excluded.version",
                (channel, version),
            )

    def held(self, channel: str) -> int | None:
        row = self._one("SELECT version FROM holds WHERE channel = ?", channel)
        return int(row[0]) if row else None

    # ------------------------------------------------------------------ reports

    def next_seq(self) -> int:
        with self._tx(write=True) as c:
            row = c.execute("SELECT value FROM settings WHERE key = 'report_seq'").fetchone()
            seq = int(row[0] if row else 0) + 1
            _put_setting(c, "report_seq", str(seq))
            return seq

    def queue_report(self, seq: int, body: bytes) -> None:
        with self._tx(write=True) as c:
            c.execute(
                "INSERT INTO report_queue (seq, body, created_at) VALUES (?, ?, ?)",
                (seq, body, _stored(now())),
            )

    def unsent_reports(self) -> list[tuple[int, bytes]]:
        rows = self._all("SELECT seq, body FROM report_queue WHERE sent_at IS NULL ORDER BY seq")
        return [(int(seq), bytes(body)) for seq, body in rows]

    def mark_sent(self, seq: int, route: str) -> None:
        """The hub holds report ``seq`` (it said so). Only that one: an older report still
        unsent carries its own errors and usage, and the hub stores it whenever it arrives."""
        with self._tx(write=True) as c:
            c.execute(
                "UPDATE report_queue SET sent_at = ?, sent_by = ? "
                "WHERE seq = ? AND sent_at IS NULL",
                (_stored(now()), route[:32], seq),
            )

    # ------------------------------------------------------------------ relayed reports

    MAX_RELAYED = 10_000  # a peer cannot fill this centre's disk with reports

    def queue_relayed(self, centre_id: str, seq: int, body: bytes) -> bool:
        """Keep a peer centre's report until the hub holds it; False if already queued."""
        with self._tx(write=True) as c:
            known = c.execute(
                "SELECT 1 FROM relayed_reports WHERE centre_id = ? AND seq = ?",
                (centre_id, seq),
            ).fetchone()
            if known is not None:
                return False
            (waiting,) = c.execute(
                "SELECT COUNT(*) FROM relayed_reports WHERE sent_at IS NULL"
            ).fetchone()
            if (waiting or 0) >= self.MAX_RELAYED:
                raise OverflowError(
                    f"{waiting} relayed reports already wait for the hub here; the peer keeps "
                    "its report and tries again later"
                )
            c.execute(
                "INSERT INTO relayed_reports (centre_id, seq, body, received_at) "
                "VALUES (?, ?, ?, ?)",
                (centre_id, seq, body, _stored(now())),
            )
            return True

    def unsent_relayed(self) -> list[tuple[str, int, bytes]]:
        rows = self._all(
            "SELECT centre_id, seq, body FROM relayed_reports WHERE sent_at IS NULL "
            "ORDER BY centre_id, seq"
        )
        return [(str(cid), int(seq), bytes(body)) for cid, seq, body in rows]

    def mark_relayed_sent(self, centre_id: str, seq: int, route: str) -> None:
        with self._tx(write=True) as c:
            c.execute(
                "UPDATE relayed_reports SET sent_at = ?, sent_by = ? "
                "WHERE centre_id = ? AND seq = ? AND sent_at IS NULL",
                (_stored(now()), route[:100], centre_id, seq),
            )

    def max_event_id(self) -> int:
        row = self._one("SELECT COALESCE(MAX(id), 0) FROM events")
        return int(row[0] or 0)

    def errors_since(self, after_id: int, limit: int = 20) -> list[str]:
        """Error events newer than event ``after_id``, oldest first (what a report carries)."""
        rows = self._all(
            "SELECT message FROM events WHERE level = 'error' AND id > ? ORDER BY id DESC LIMIT ?",
            after_id,
            limit,
        )
        return [str(m) for (m,) in reversed(rows)]

    # ------------------------------------------------------------------ usage, events

    def add_usage(self, counts: dict[tuple[str, str], int]) -> None:
        if not counts:
            return
        with self._tx(write=True) as c:
            c.executemany(
                "INSERT INTO usage (channel, path, count) VALUES (?, ?, ?) "
                "ON CONFLICT (channel, path) DO UPDATE SET count = count + excluded.count",
                [(channel, path, n) for (channel, path), n in counts.items()],
            )

    def usage(self) -> dict[str, int]:
        rows = self._all("SELECT channel, path, count FROM usage")
        return {f"{channel}/{path}": int(n) for channel, path, n in rows}

    def event(self, level: str, message: str) -> None:
        with self._tx(write=True) as c:
            c.execute(
                "INSERT INTO events (at, level, message) VALUES (?, ?, ?)",
                (_stored(now()), level, message[:4000]),
            )

    def recent_events(self, limit: int = 20, level: str | None = None) -> list[dict[str, Any]]:
        if level:
            rows = self._all(
                "SELECT at, level, message FROM events WHERE level = ? ORDER BY id DESC LIMIT ?",
                level,
                limit,
            )
        else:
            rows = self._all(
                "SELECT at, level, message FROM events ORDER BY id DESC LIMIT ?", limit
            )
        return [{"at": _iso(_read(at)), "level": lv, "message": msg} for at, lv, msg in rows]

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self._one("SELECT value FROM settings WHERE key = ?", key)
        return str(row[0]) if row else default

    def set(self, key: str, value: str) -> None:
        with self._tx(write=True) as c:
            _put_setting(c, key, value)

    # ------------------------------------------------------------------ counters

    def add_counts(self, counts: dict[str, float], at: dict[str, float] | None = None) -> None:
        """Add to named counters (``counter.<name>``) and set timestamps, in one transaction.

        Kept in the state database, not in the process, so /metrics counts the passes of
        `caravane node sync` run from cron as well as the agent's, across restarts.
        """
        with self._tx(write=True) as c:
            for name, n in counts.items():
                key = f"counter.{name}"
                row = c.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
                _put_setting(c, key, repr(float(row[0] if row else "0") + n))
            for name, when in (at or {}).items():
                _put_setting(c, f"counter.{name}", repr(float(when)))

    def counts(self, prefix: str) -> dict[str, float]:
        """The counters whose name starts with ``prefix`` (name without the prefix)."""
        key = f"counter.{prefix}"
        rows = self._all(
            "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ?", len(key), key
        )
        return {str(k)[len(key) :]: float(v) for k, v in rows}


def _put_setting(c: sqlite3.Connection, key: str, value: str) -> None:
    c.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None


if __name__ == "__main__":  # the child of upgrade_apart
    upgrade(sys.argv[1])
