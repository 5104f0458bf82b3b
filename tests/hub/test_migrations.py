"""Alembic owns the schema: an empty database goes to head and back to base, on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from caravane.hub.db import downgrade, upgrade
from caravane.hub.models import Base

TABLES = {
    "channels",
    "releases",
    "tokens",
    "nodes",
    "node_reports",
    "deliveries",
    "audit_log",
    "uploads",
    "upload_objects",
    "leases",
    "web_sessions",
    "publish_jobs",
}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return set(inspect(c).get_table_names())
    finally:
        engine.dispose()


def _version(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return c.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'hub.db'}"


def test_upgrade_to_head_then_downgrade_to_base(db_url: str):
    assert _tables(db_url) == set()
    upgrade(db_url)
    tables = _tables(db_url)
    assert tables >= TABLES
    assert "alembic_version" in tables
    assert _version(db_url)
    # Upgrading again is a no-op.
    upgrade(db_url)
    assert _tables(db_url) == tables
    downgrade(db_url, "base")
    assert _tables(db_url) - {"alembic_version"} == set()
    # And back up again: the migrations are repeatable.
    upgrade(db_url)
    assert _tables(db_url) >= TABLES


def test_migrated_schema_matches_the_models(db_url: str):
    """Every model column exists after the migrations (no drift between the two)."""
    upgrade(db_url)
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            insp = inspect(c)
            assert set(Base.metadata.tables) == TABLES
            for name, table in Base.metadata.tables.items():
                have = {col["name"] for col in insp.get_columns(name)}
                want = {col.name for col in table.columns}
                assert want == have, (name, want ^ have)
    finally:
        engine.dispose()
