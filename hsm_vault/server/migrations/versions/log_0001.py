"""The transparency log: entries, signed heads, the log state, and each card's log entries.

Revision ID: log_0001
Revises: recovery_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "log_0001"
down_revision = "recovery_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_entries",
        sa.Column("idx", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_log_entries_subject", "log_entries", ["subject"])
    op.create_table(
        "log_heads",
        sa.Column("size", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("signed_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "log_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("frontier", sa.Text(), nullable=False),
        sa.Column("head", sa.Text(), nullable=True),
        sa.Column("head_size", sa.Integer(), nullable=True),
        sa.Column("head_at", sa.DateTime(), nullable=True),
        sa.Column("max_age", sa.Integer(), nullable=True),
    )
    with op.batch_alter_table("cards") as batch:
        batch.add_column(sa.Column("log_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("status_index", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cards") as batch:
        batch.drop_column("status_index")
        batch.drop_column("log_index")
    op.drop_table("log_state")
    op.drop_table("log_heads")
    op.drop_table("log_entries")
