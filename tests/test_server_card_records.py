"""A card's key id is kept with its record: blob reads find a user's key ids without parsing
a card, and a database from before the column gets the key ids of the cards it holds."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from test_cards_vectors import VECTORS, read_vector

from hsm_vault.cards import Card
from hsm_vault.server.db import (
    CardRecord,
    CardStatus,
    User,
    _alembic_config,
    make_engine,
    make_sessionmaker,
    migrate_to_head,
    utcnow,
)
from hsm_vault.server.routes_blobs import key_ids_of_user


def _card() -> Card:
    return Card.from_text(read_vector(VECTORS / "ok-ec-p256.txt")["card"][0])


def _user(name: str) -> User:
    return User(name=name, identity=f"{name}@example.org", role="user", created_at=utcnow())


def test_blob_reads_take_key_ids_from_the_records_not_the_cards(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        migrate_to_head(engine)
        with make_sessionmaker(engine)() as db:
            alice = _user("alice")
            db.add(alice)
            db.flush()
            # The text is not parsed on a read: a record whose text would not parse still
            # answers with the key id stored when it was published.
            for n, status in enumerate(CardStatus):
                db.add(
                    CardRecord(
                        id=f"{n:064x}",
                        owner_id=alice.id,
                        identity=alice.identity,
                        text="not a card",
                        status=status.value,
                        published_at=utcnow(),
                        key_id=f"{n:02x}" * 32,
                    )
                )
            db.commit()
            statuses = list(CardStatus)
            expected = {
                f"{statuses.index(s):02x}" * 32
                for s in (CardStatus.APPROVED, CardStatus.SUPERSEDED)
            }
            assert key_ids_of_user(db, alice) == expected
    finally:
        engine.dispose()


def test_a_database_from_before_gets_the_key_ids_of_its_cards(tmp_path: Path) -> None:
    from alembic import command

    card = _card()
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        command.upgrade(_alembic_config(engine), "recovery_0001")
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO users (id, name, identity, role, disabled, created_at)"
                    " VALUES (1, 'alice', 'alice@example.org', 'user', 0, '2026-01-01')"
                )
            )
            for card_id, text in ((card.id, card.to_text()), ("0" * 64, "not a card")):
                connection.execute(
                    sa.text(
                        "INSERT INTO cards (id, owner_id, identity, text, status, published_at)"
                        " VALUES (:id, 1, 'alice@example.org', :text, 'approved', '2026-01-01')"
                    ),
                    {"id": card_id, "text": text},
                )
        migrate_to_head(engine)
        with make_sessionmaker(engine)() as db:
            assert db.get(CardRecord, card.id).key_id == card.key_id.hex()
            assert db.get(CardRecord, "0" * 64).key_id is None
            assert key_ids_of_user(db, db.get(User, 1)) == {card.key_id.hex()}
    finally:
        engine.dispose()
