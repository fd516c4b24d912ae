"""Recovery approvals: one signed share per holder and request.

Revision ID: recovery_0001
Revises: load_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "recovery_0001"
down_revision = "load_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recovery_approvals",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("header_sha256", sa.String(64), nullable=False),
        sa.Column("share_index", sa.Integer(), nullable=False),
        sa.Column("holder_card_id", sa.String(64), nullable=False),
        sa.Column("requester_card_id", sa.String(64), nullable=False),
        sa.Column("approved_by", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("request_id", "share_index"),
    )
    op.create_index("ix_recovery_approvals_request_id", "recovery_approvals", ["request_id"])
    op.create_index("ix_recovery_approvals_header_sha256", "recovery_approvals", ["header_sha256"])
    op.create_index(
        "ix_recovery_approvals_requester_card_id", "recovery_approvals", ["requester_card_id"]
    )


def downgrade() -> None:
    op.drop_table("recovery_approvals")
