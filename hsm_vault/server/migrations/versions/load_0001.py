"""The failed-authentication limiter keeps one counter per subject; the card search index.

Revision ID: load_0001
Revises: 0002_token_last_used
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "load_0001"
down_revision = "0002_token_last_used"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Failure rows of the old limiter: counted again from zero by the new one.
    op.drop_index("ix_auth_failures_subject_at", table_name="auth_failures")
    op.drop_table("auth_failures")
    op.create_table(
        "auth_limits",
        sa.Column("subject", sa.String(400), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(), nullable=False),
        sa.Column("blocked_until", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_auth_limits_last_failure_at", "auth_limits", ["last_failure_at"])
    op.create_index(
        "ix_cards_identity_status_decided", "cards", ["identity", "status", "decided_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_cards_identity_status_decided", table_name="cards")
    op.drop_table("auth_limits")
    op.create_table(
        "auth_failures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_auth_failures_subject_at", "auth_failures", ["subject", "at"])
