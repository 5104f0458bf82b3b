"""Alembic environment of the node's own database (the URL comes from node/state.py).

The node has no SQLAlchemy models (its state is plain ``sqlite3``, node/state.py, to keep
the node small in memory), so there is no metadata to autogenerate from: node migrations
are written by hand, and the node tests run every query of state.py on the migrated schema.
"""

from __future__ import annotations

from caravane.migrations import run_environment

run_environment(None)
