"""Alembic environment of the hub's database (the URL comes from hub/db.py; no alembic.ini)."""

from __future__ import annotations

from hub.models import Base
from migrations import run_environment

run_environment(Base.metadata)
