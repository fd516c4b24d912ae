"""A database from before the transparency log gets its log written at start-up (`backfill`),
in the order things happened, and that log passes the audit clients run (`log verify`)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, update

from hsm_vault.algorithms import KeyType, SignatureAlgorithm
from hsm_vault.cards.create import build_snapshot
from hsm_vault.cards.model import Card, CardSignature, TokenProvenance, now_utc
from hsm_vault.server import log
from hsm_vault.server.appkey import AppKeyInfo
from hsm_vault.server.approvals import init_policy, sign_and_publish
from hsm_vault.server.db import (
    CardRecord,
    CardStatus,
    Role,
    User,
    make_engine,
    make_sessionmaker,
    migrate_to_head,
    utcnow,
)
from hsm_vault.trust.log import LogEntry, SignedTreeHead, audit

PROVENANCE = TokenProvenance("SoftHSM project", "SoftHSM v2", "8d2f4a1c3b5e7a90", True, True, True)


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class SoftwareAppKey:
    """The application key's interface over a software key (the database is what is tested)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.info = AppKeyInfo(
            _spki(self.key), SignatureAlgorithm.ECDSA_SHA256, KeyType.EC_P256, "pkcs11:test"
        )

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message, ec.ECDSA(hashes.SHA256()))


def _self_signed(identity: str) -> Card:
    key = ec.generate_private_key(ec.SECP256R1())
    card = Card(
        build_snapshot(
            identity=identity, spki_der=_spki(key), key_type=KeyType.EC_P256, provenance=PROVENANCE
        )
    )
    signature = key.sign(card.signing_message("self"), ec.ECDSA(hashes.SHA256()))
    return card.with_signature(CardSignature("self", _kid(key), "ecdsa-sha256", signature))


def _kid(key: ec.EllipticCurvePrivateKey) -> bytes:
    import hashlib

    return hashlib.sha256(_spki(key)).digest()


def test_a_database_from_before_the_log_is_backfilled_and_verifies(tmp_path: Path) -> None:
    app = SoftwareAppKey()
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate_to_head(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as db:
        init_policy(db, app, 0)  # type: ignore[arg-type]
        users = [User(name=n, identity=f"{n}@example.org", role=Role.USER.value,
                      created_at=utcnow()) for n in ("alice", "bob")]  # fmt: skip
        db.add_all(users)
        db.flush()
        for user in users:
            card = _self_signed(user.identity)
            record = CardRecord(
                id=card.id,
                owner_id=user.id,
                identity=user.identity,
                text=card.to_text(),
                status=CardStatus.PENDING.value,
                published_at=utcnow(),
            )
            db.add(record)
            sign_and_publish(db, record, app, "olga")  # type: ignore[arg-type]
        db.commit()
        expected = [e.body for e in db.query(log.LogEntryRecord).order_by(log.LogEntryRecord.index)]
        # What a database of the previous release holds: no log at all.
        for table in (log.LogEntryRecord, log.LogHeadRecord, log.LogStateRecord):
            db.execute(delete(table))
        db.execute(update(CardRecord).values(log_index=None, status_index=None))
        db.commit()
    with sessions() as db:
        assert log.backfill(db) == 5  # policy 1, two users, two approvals
        db.commit()
        assert log.backfill(db) == 0  # once
    with sessions() as db:
        entries = [
            LogEntry.from_text(r.body)
            for r in db.query(log.LogEntryRecord).order_by(log.LogEntryRecord.index)
        ]
        text = log.current_head(db, sessions, app, 24 * 3600)  # type: ignore[arg-type]
        head = SignedTreeHead.from_text(text)
        assert all(r.log_index is not None for r in db.query(CardRecord))
    engine.dispose()
    kinds = [e.kind.value for e in entries]
    assert kinds[0] == "policy-adopted" and kinds.count("user-added") == 2
    assert kinds.count("card-approved") == 2 and kinds.index("user-added") < kinds.index(
        "card-approved"
    )
    # The approvals as logged then are the approvals as backfilled (the same card texts).
    assert {LogEntry.from_text(b).data.get("card") for b in expected} >= {
        e.data.get("card") for e in entries if e.kind.value == "card-approved"
    }
    report = audit(entries, head, app.info.spki_der)
    assert len(report.cards) == 2 and set(report.users) == {"alice", "bob"}
    assert now_utc() >= head.head.timestamp
