"""Alembic environment of the hub's database (the URL comes from hub/db.py; no alembic.ini)."""

from __future__ import annotations

from caravane.hub.models import Base
from caravane.migrations import run_environment

run_environment(Base.metadata)
