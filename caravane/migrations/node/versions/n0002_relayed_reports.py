"""Reports relayed for peer centres, kept until the hub holds them.

Revision ID: n0002
Revises: n0001
Create Date: 2026-11-25

A centre that syncs from this one posts its signed reports here; they wait in this table
and go upstream on this centre's own routes (network, drive), like its own reports.
"""

import sqlalchemy as sa
from alembic import op

revision = "n0002"
down_revision = "n0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "relayed_reports",
        sa.Column("centre_id", sa.String(40), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.Column("sent_by", sa.String(100)),
    )


def downgrade() -> None:
    op.drop_table("relayed_reports")
