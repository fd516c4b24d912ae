"""Blob store records: blobs and their recipients' key ids.

Revision ID: blobs_0001
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "blobs_0001"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("storage_key", sa.String(64), nullable=False, unique=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("envelope_version", sa.Integer(), nullable=True),
        sa.UniqueConstraint("owner_id", "name", name="uq_blobs_owner_name"),
    )
    op.create_index("ix_blobs_owner_id", "blobs", ["owner_id"])
    op.create_table(
        "blob_recipients",
        sa.Column(
            "blob_id",
            sa.Integer(),
            sa.ForeignKey("blobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key_id", sa.String(128), primary_key=True),
    )
    op.create_index("ix_blob_recipients_key_id", "blob_recipients", ["key_id"])


def downgrade() -> None:
    op.drop_table("blob_recipients")
    op.drop_table("blobs")
