"""Alembic migrations of the hub's database (every schema change lives here)."""
