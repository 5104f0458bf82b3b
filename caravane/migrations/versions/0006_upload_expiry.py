"""Uploads expire: when each one was last active, and when it expired.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

An upload a curator gave up on stayed open forever, and collection kept its objects for it.
The scheduled job ``uploads`` now expires one idle for ``upload_expiry_days`` since
``active_at`` (its creation, or the last chunk, object or file list it received).

Uploads still open at the upgrade count as active at the upgrade, not at their creation:
the database never recorded when they last received an object, and a long publish that is
still sending must not be cut by an upgrade. Those the curator forgot expire one
``upload_expiry_days`` after the upgrade. The others (committed, abandoned) take their
creation time, which nothing reads.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
STILL_OPEN = ("open", "receiving")


def upgrade() -> None:
    with op.batch_alter_table("uploads") as b:
        b.add_column(sa.Column("active_at", TS, nullable=True))
        b.add_column(sa.Column("expired_at", TS, nullable=True))
    uploads = sa.table(
        "uploads",
        sa.column("state", sa.String),
        sa.column("created_at", TS),
        sa.column("active_at", TS),
    )
    op.execute(
        uploads.update()
        .where(uploads.c.state.in_(STILL_OPEN))
        .values(active_at=sa.literal(datetime.now(UTC), TS))
    )
    op.execute(
        uploads.update().where(uploads.c.active_at.is_(None)).values(active_at=uploads.c.created_at)
    )
    with op.batch_alter_table("uploads") as b:
        b.alter_column("active_at", existing_type=TS, nullable=False)
    op.create_index("ix_uploads_state_active_at", "uploads", ["state", "active_at"])


def downgrade() -> None:
    op.drop_index("ix_uploads_state_active_at", table_name="uploads")
    with op.batch_alter_table("uploads") as b:
        b.drop_column("expired_at")
        b.drop_column("active_at")
