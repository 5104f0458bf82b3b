"""The objects of each upload, one row each, so an object PUT looks up only itself.

Before, every PUT read the upload's whole file list (a JSON column) to learn whether the
object belonged to it and its size: a cost that grew with objects x files (issue 10). Open
uploads are filled in from their file list, so a publish cut before the upgrade resumes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "upload_objects",
        sa.Column(
            "upload_id",
            sa.String(40),
            sa.ForeignKey("uploads.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sha", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
    )
    conn = op.get_bind()
    uploads = sa.table(
        "uploads",
        sa.column("id", sa.String),
        sa.column("state", sa.String),
        sa.column("files", sa.JSON),
    )
    for uid, files in conn.execute(
        sa.select(uploads.c.id, uploads.c.files).where(uploads.c.state == "open")
    ):
        sizes = {h: n for f in files or [] for h, n in f.get("chunks", [])}
        if sizes:
            op.bulk_insert(
                table, [{"upload_id": uid, "sha": h, "size": n} for h, n in sizes.items()]
            )


def downgrade() -> None:
    op.drop_table("upload_objects")
