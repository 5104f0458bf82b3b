"""Usage counts from the centres' reports: snapshots per (centre, seq) and two rollups.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

See hub/usage.py for how the tables are filled and docs/USAGE.md for what they answer.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.UniqueConstraint("channel", "path", name="uq_usage_files_channel_path"),
    )
    op.create_table(
        "usage_reports",
        sa.Column(
            "centre_id",
            sa.String(40),
            sa.ForeignKey("nodes.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("region", sa.String(100), nullable=False),
        sa.Column("installed", sa.JSON, nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
    )
    op.create_index("ix_usage_reports_day", "usage_reports", ["day", "centre_id"])
    op.create_table(
        "usage_centre_weeks",
        sa.Column(
            "centre_id",
            sa.String(40),
            sa.ForeignKey("nodes.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("week", sa.Date, primary_key=True),
        sa.Column("month", sa.Date, primary_key=True),
        sa.Column("region", sa.String(100), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_usage_centre_weeks_channel_week", "usage_centre_weeks", ["channel", "week"])
    op.create_index(
        "ix_usage_centre_weeks_week",
        "usage_centre_weeks",
        ["week", "centre_id"],
        postgresql_include=["count"],
    )
    op.create_table(
        "usage_region_weeks",
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("region", sa.String(100), primary_key=True),
        sa.Column("week", sa.Date, primary_key=True),
        sa.Column("month", sa.Date, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_usage_region_weeks_channel_region_week",
        "usage_region_weeks",
        ["channel", "region", "week"],
    )
    op.create_table(
        "usage_file_months",
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("file_id", sa.Integer, sa.ForeignKey("usage_files.id"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("region", sa.String(100), primary_key=True),
        sa.Column("month", sa.Date, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_usage_file_months_channel_region_month",
        "usage_file_months",
        ["channel", "region", "month"],
    )


def downgrade() -> None:
    op.drop_table("usage_file_months")
    op.drop_table("usage_region_weeks")
    op.drop_table("usage_centre_weeks")
    op.drop_table("usage_reports")
    op.drop_table("usage_files")
