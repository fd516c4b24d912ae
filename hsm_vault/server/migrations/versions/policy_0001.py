"""The signed server policy: adopted policies by serial, and the open proposal.

Revision ID: policy_0001
Revises: blobs_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "policy_0001"
down_revision = "blobs_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("serial", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "policy_proposals",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("serial", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("proposed_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_index("ix_policy_proposals_serial", "policy_proposals", ["serial"])
    op.create_index("ix_policy_proposals_status", "policy_proposals", ["status"])


def downgrade() -> None:
    op.drop_table("policy_proposals")
    op.drop_table("policies")
