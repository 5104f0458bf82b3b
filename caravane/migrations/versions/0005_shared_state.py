"""State every hub process shares: web sessions, web publish jobs, per-pack build leases.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Several ``hub serve`` processes behind one address serve one database: a curator signed in
on one must be signed in on the next, and a publish started on one must be followed from
any. Sessions are kept by the hash of their cookie (a copy of the database gives no live
session). Lease names grow to name a pack (``pack:<channel>:<from>-<to>``).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("expires_at", TS, nullable=False, index=True),
    )
    op.create_table(
        "publish_jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("archive", sa.String(255), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("done", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("files", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        # the curator's review step: notes typed, the open upload holding the file list,
        # the release compared with, and what the archive adds, changes and removes
        sa.Column("notes", sa.Text, nullable=False, server_default=""),
        sa.Column("upload", sa.String(40), nullable=False, server_default=""),
        sa.Column("latest", sa.Integer, nullable=True),
        sa.Column("review", sa.JSON, nullable=True),
        sa.Column("started_at", TS, nullable=False, index=True),
        sa.Column("updated_at", TS, nullable=False),
    )
    with op.batch_alter_table("leases") as b:
        b.alter_column("name", type_=sa.String(200), existing_nullable=False)


def downgrade() -> None:
    op.execute("DELETE FROM leases WHERE name LIKE 'pack:%'")  # leases last seconds
    with op.batch_alter_table("leases") as b:
        b.alter_column("name", type_=sa.String(50), existing_nullable=False)
    op.drop_table("publish_jobs")
    op.drop_table("web_sessions")
