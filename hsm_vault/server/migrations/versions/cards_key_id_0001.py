"""Each card's key id (SHA-256 of its SPKI) kept with its record, filled for existing cards.

Revision ID: cards_key_id_0001
Revises: log_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "cards_key_id_0001"
down_revision = "log_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from hsm_vault.cards import Card
    from hsm_vault.errors import HsmVaultError

    with op.batch_alter_table("cards") as batch:
        batch.add_column(sa.Column("key_id", sa.String(64), nullable=True))
        batch.create_index("ix_cards_owner_id_key_id", ["owner_id", "key_id"])
    cards = sa.table(
        "cards",
        sa.column("id", sa.String),
        sa.column("text", sa.Text),
        sa.column("key_id", sa.String),
    )
    connection = op.get_bind()
    for card_id, text in connection.execute(sa.select(cards.c.id, cards.c.text)).all():
        try:
            key_id = Card.from_text(text).key_id.hex()
        except HsmVaultError:
            continue  # validated when published; a card that no longer parses names no key
        connection.execute(cards.update().where(cards.c.id == card_id).values(key_id=key_id))


def downgrade() -> None:
    with op.batch_alter_table("cards") as batch:
        batch.drop_index("ix_cards_owner_id_key_id")
        batch.drop_column("key_id")
