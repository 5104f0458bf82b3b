"""Alembic migrations: the hub's database (``versions/``) and each node's (``node/``).

Every schema change lives here; the services build alembic's configuration in code (no
alembic.ini), so ``upgrade``/``downgrade`` work from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import MetaData
    from sqlalchemy.engine import Connection

HERE = Path(__file__).parent
LOCATIONS = {"hub": HERE, "node": HERE / "node"}


def alembic_config(url: str, which: str = "hub") -> Config:
    from alembic.config import Config  # loaded only when migrating

    cfg = Config()
    cfg.set_main_option("script_location", str(LOCATIONS[which]))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, which: str = "hub", revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url, which), revision)


def downgrade(url: str, which: str = "hub", revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url, which), revision)


def run_environment(target_metadata: MetaData | None) -> None:
    """What each ``env.py`` does: run the migrations offline (SQL) or on a connection.

    A caller may hand its own connection in ``config.attributes["connection"]``.
    """
    from alembic import context
    from sqlalchemy import engine_from_config, pool

    def run(connection: Connection | None) -> None:
        if connection is None:
            context.configure(
                url=context.config.get_main_option("sqlalchemy.url"),
                target_metadata=target_metadata,
                literal_binds=True,
                render_as_batch=True,
            )
        else:
            context.configure(
                connection=connection, target_metadata=target_metadata, render_as_batch=True
            )
        with context.begin_transaction():
            context.run_migrations()

    if context.is_offline_mode():
        run(None)
        return
    given = context.config.attributes.get("connection")
    if given is not None:
        run(given)
        return
    engine = engine_from_config(
        context.config.get_section(context.config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        run(connection)
