"""Alembic environment of the node's own database (the URL comes from node/state.py)."""

from __future__ import annotations

from caravane.migrations import run_environment
from caravane.node.models import Base

run_environment(Base.metadata)
