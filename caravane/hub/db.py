"""Database engine, sessions and migrations (alembic owns every schema change)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from caravane import migrations


def require_driver(url: str) -> None:
    """Refuse a PostgreSQL URL, in words, when the driver (the ``hub`` extra) is missing.

    psycopg is not a core dependency, so a centre installs without it; a hub operator who
    forgot the extra gets the command to run rather than SQLAlchemy's ModuleNotFoundError.
    """
    if not url.startswith("postgres"):
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        from .errors import HubError

        raise HubError(
            "the database URL is PostgreSQL but its driver is not installed: "
            "run `pip install 'caravane[hub]'` (psycopg) in caravane's environment"
        ) from None


def upgrade(url: str, revision: str = "head") -> None:
    require_driver(url)
    migrations.upgrade(url, "hub", revision)


def downgrade(url: str, revision: str = "base") -> None:
    migrations.downgrade(url, "hub", revision)


def make_engine(url: str) -> Engine:
    require_driver(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        # WAL: readers never wait for the writer
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()
