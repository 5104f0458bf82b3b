"""Locks that hold across hub processes: PostgreSQL advisory locks and file locks.

Several ``hub serve`` processes, on one host or several, may share one database and one
data folder. A file lock (``flock``) holds among the processes of one host, which is enough
with SQLite (one host by nature); on PostgreSQL an advisory lock holds for every host that
reaches the database, and is released by the server if the process holding it dies (its
connection closes), so a crashed process never leaves a lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

log = logging.getLogger("caravane.hub.locks")

#: names of the advisory locks the hub takes (one key each, the same on every host)
REPOSITORY = "repository"
MIGRATE = "migrate"


def lock_key(name: str) -> int:
    """The signed 64-bit key of an advisory lock: stable across hosts and versions."""
    digest = hashlib.sha256(f"caravane.hub:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


@contextmanager
def advisory_lock(
    engine: Engine, name: str, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock ``name``, waiting for it as long as it takes.

    The lock lives on one connection taken from the pool for the duration; ``on_wait`` is
    called once if another holder makes us wait (to say so to the person waiting).
    """
    key = lock_key(name)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        if not conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}):
            if on_wait is not None:
                on_wait()
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            except DBAPIError:
                # the connection broke: the server released the lock with it; never put
                # this connection back in the pool
                log.warning("advisory lock %s: connection lost while held", name)
                with contextlib.suppress(DBAPIError):
                    conn.invalidate()


@contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing), among this host's processes."""
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
