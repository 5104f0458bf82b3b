"""Reports stored once per (centre, seq) in any order; routes as they happened.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Reports reach the hub by network, through a peer centre, or on drives, in any order: the
unique (centre, seq) makes a report stored once however often it arrives, and an older
missing report is accepted instead of refused. A route now names the peer it came through
(``peer:<centre>``), so the route columns are wider, and ``contacts`` keeps the last contact
per route for the fleet view.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("node_reports") as b:
        b.alter_column("route", type_=sa.String(100), existing_nullable=False)
        b.create_unique_constraint("uq_node_reports_node_seq", ["node_id", "seq"])
    with op.batch_alter_table("nodes") as b:
        b.alter_column("last_route", type_=sa.String(100), existing_nullable=True)
        b.add_column(sa.Column("contacts", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as b:
        b.drop_column("contacts")
        b.alter_column("last_route", type_=sa.String(20), existing_nullable=True)
    with op.batch_alter_table("node_reports") as b:
        b.drop_constraint("uq_node_reports_node_seq", type_="unique")
        b.alter_column("route", type_=sa.String(20), existing_nullable=False)
