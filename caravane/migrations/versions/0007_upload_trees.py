"""Uploads may name their file list as a tree of manifest pieces.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

A curator's client used to send the whole file list as one JSON body, kept in the upload's
``files`` column: about 220 bytes a file, past the hub's JSON limit near 35,000 files and
hundreds of MB of Python objects at a million. The client now uploads the list's pieces as
objects, like chunks, and names only the root (``PUT /api/v1/uploads/{uid}/tree``); the
new nullable ``tree`` column keeps that reference and its counts. Rows from before keep
``tree`` NULL and their ``files``, and commit as they always did.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as b:
        b.add_column(sa.Column("tree", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as b:
        b.drop_column("tree")
