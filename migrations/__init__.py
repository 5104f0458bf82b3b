"""Alembic migrations: the hub's database (``versions/``) and each node's (``node/``).

Every schema change lives here; the services build alembic's configuration in code (no
alembic.ini), so ``upgrade``/``downgrade`` work from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

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
