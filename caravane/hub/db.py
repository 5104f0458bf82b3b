"""Database engine, sessions and migrations (alembic owns every schema change).

Migrations run only when asked (``caravane hub migrate``, ``hub init``), under a lock, never
as a side effect of another command: with several hub processes on one database, the
schema changes once, at a moment an operator chose. Every other command checks the schema
first and refuses one older (or newer) than the code, naming the command to run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, bindparam, create_engine, event, func, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import QueryableAttribute, Session, sessionmaker

from caravane import migrations
from caravane.packs import sql_in

from .errors import SchemaError
from .locks import MIGRATE, advisory_lock, file_lock, is_postgresql

#: alembic's table of the schema revision (its default name)
VERSION_TABLE = "alembic_version"


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
    """Alembic's upgrade, unlocked: for tests and the demo; operators use :func:`migrate`."""
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


def insert_or_ignore(session: Session, target: Any) -> Any:
    """The dialect's INSERT, which takes ON CONFLICT (SQLite and PostgreSQL both have it)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(target)
    return sqlite.insert(target)


def pads_in_lists(session: Session) -> bool:
    """Whether IN lists are padded to a few sizes: on SQLite only (packs/sql_in.py)."""
    return session.get_bind().dialect.name == "sqlite"


#: keys per IN (...) list on SQLite, padded to a power of two (packs/sql_in.py)
IN_KEYS = 1024


def values_by_key(
    session: Session,
    key: ColumnElement[Any] | QueryableAttribute[Any],
    keys: Sequence[Any],
    value: ColumnElement[Any] | QueryableAttribute[Any],
    *where: ColumnElement[bool],
) -> Iterator[tuple[Any, Any]]:
    """``(key, value)`` of the rows under ``where`` whose ``key`` is one of ``keys``; the
    key and ``where`` together must name at most one row (a primary or unique key whose
    last column is ``key``).

    On PostgreSQL one probe of that index per key (a scalar subquery over the array of
    keys). With ``key IN (...)``, before the table's statistics knew the rows just
    written (a new hub's first publish: the ministry's first job), the planner used the
    index for ``where`` alone and filtered the list: every batch of 700 of an upload's
    objects read all 100,000 of its rows (4.6 s of the server's CPU against 0.75 s). On
    SQLite, ``IN`` lists of a few padded sizes (:mod:`caravane.packs.sql_in`).
    """
    if not keys:
        return
    if is_postgresql(session.get_bind().engine):
        wanted = func.unnest(bindparam(None, list(keys), type_=ARRAY(key.type))).column_valued(
            "wanted"
        )
        found = select(value).where(*where, key == wanted).scalar_subquery()
        for k, v in session.execute(select(wanted, found)):
            if v is not None:
                yield k, v
        return
    for part in sql_in.parts(list(keys), IN_KEYS, True):
        for k, v in session.execute(select(key, value).where(*where, key.in_(part))):
            yield k, v


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


def head_revision() -> str:
    """The schema revision this version of Caravane is written for."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(migrations.alembic_config("", "hub")).get_current_head()
    assert head is not None  # the hub always has migrations
    return head


def known_revision(revision: str) -> bool:
    """Whether this version's migrations know ``revision`` (an unknown one is newer)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(migrations.alembic_config("", "hub"))
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision; None for a database alembic never touched.

    Read straight from alembic's version table (one query, no alembic context that would
    log its set-up on every command).
    """
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        found = conn.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}"))
        return None if found is None else str(found)


def check_schema(engine: Engine, config_path: Path | str) -> None:
    """Refuse a database whose schema is not this code's, with the command that fixes it."""
    have, want = current_revision(engine), head_revision()
    if have == want:
        return
    if have is not None and not known_revision(have):
        raise SchemaError(
            f"{config_path}: the database is at schema revision {have}, newer than this "
            f"version of caravane knows (it needs {want}); run the newer caravane that "
            "migrated it"
        )
    raise SchemaError(
        f"{config_path}: the database schema is at revision {have or 'none (empty)'}, this "
        f"caravane needs {want}; run `caravane hub migrate --config {config_path}`"
    )


@contextmanager
def migration_lock(engine: Engine, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """One migration at a time: an advisory lock on PostgreSQL, a file lock beside SQLite."""
    if is_postgresql(engine):
        with advisory_lock(engine, MIGRATE, on_wait):
            yield
        return
    database = make_url(str(engine.url)).database
    if not database or database == ":memory:":
        yield  # a private in-memory database: nobody else can migrate it
        return
    with file_lock(Path(database + ".migrate.lock"), on_wait):
        yield


def migrate(url: str, on_wait: Callable[[], None] | None = None) -> tuple[str | None, str]:
    """Bring the database to this code's schema under the migration lock: (from, to).

    Two at once are safe: the second waits, then finds the schema already current. A
    database newer than the code is refused, never downgraded.
    """
    engine = make_engine(url)
    try:
        with migration_lock(engine, on_wait):
            before = current_revision(engine)
            if before is not None and not known_revision(before):
                raise SchemaError(
                    f"the database is at schema revision {before}, newer than this version "
                    f"of caravane knows (it needs {head_revision()}); nothing was changed"
                )
            if before != head_revision():
                upgrade(url)
            after = current_revision(engine)
    finally:
        engine.dispose()
    assert after is not None
    return before, after
