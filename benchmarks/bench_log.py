"""The transparency log's costs: appending on the approval path, proofs, and a full audit.

    .venv/bin/python benchmarks/bench_log.py [--events 100000]

Prints, on this machine:
- append: one `card-approved` entry appended and committed to a SQLite database already
  holding the log (median and 95th percentile, ms), beside the card approval's own database
  work without the log (`sign_and_publish` with a software application key);
- proofs: an inclusion and a consistency proof in a tree of `--events` leaves (median µs,
  and their length: O(log n) hashes), and the server's start-up cost to load the tree;
- audit: `hsm-vault log verify`'s work on a log of `--events` entries (60% user events, 35%
  card approvals with self and application signatures, 5% revocations): parse, recompute the
  root, check every signature (in a process pool), seconds. The target is under 10 s.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm_vault.algorithms import KeyType, SignatureAlgorithm
from hsm_vault.cards.create import build_snapshot
from hsm_vault.cards.model import Card, CardSignature, RevocationReason, TokenProvenance
from hsm_vault.cards.revocation import RevocationStatement
from hsm_vault.trust import PolicyBody, SignedPolicy
from hsm_vault.trust.log import EntryKind, LogEntry, TreeHead, audit, sign_head
from hsm_vault.trust.merkle import MerkleTree
from hsm_vault.trust.policy import sign_policy

AT = "2026-03-01T10:00:00Z"
PROVENANCE = TokenProvenance("SoftHSM project", "SoftHSM v2", "8d2f4a1c3b5e7a90", True, True, True)


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


class SoftwareAppKey:
    """Stands in for the server token's application key (same interface)."""

    def __init__(self) -> None:
        from hsm_vault.server.appkey import AppKeyInfo

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.info = AppKeyInfo(
            _spki(self.key), SignatureAlgorithm.ECDSA_SHA256, KeyType.EC_P256, "pkcs11:bench"
        )

    def sign(self, message: bytes) -> bytes:
        return _sign(self.key, message)


def _card(identity: str, key: Any, app: SoftwareAppKey) -> Card:
    spki = _spki(key)
    card = Card(
        build_snapshot(
            identity=identity,
            spki_der=spki,
            key_type=KeyType.EC_P256,
            provenance=PROVENANCE,
            created_at=AT,
        )
    )
    for signer, signing_key, key_spki in (("self", key, spki), ("app", app.key, app.info.spki_der)):
        card = card.with_signature(
            CardSignature(
                signer,
                hashlib.sha256(key_spki).digest(),
                SignatureAlgorithm.ECDSA_SHA256,
                _sign(signing_key, card.signing_message(signer)),
            )
        )
    return card


def _policy(app: SoftwareAppKey) -> str:
    body = PolicyBody(1, app.info.fingerprint, 0, (), AT, None)
    signed = sign_policy(
        SignedPolicy(body), "app", app.info.spki_der, SignatureAlgorithm.ECDSA_SHA256, app.sign
    )
    return signed.to_text()


def make_log(events: int, app: SoftwareAppKey) -> list[LogEntry]:
    """A log of `events` entries: policy 1, then users, approvals and revocations."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(64)]
    entries = [LogEntry(0, EntryKind.POLICY_ADOPTED, AT, "server", {"policy": _policy(app)})]
    cards: list[Card] = []
    revoked = 0
    while len(entries) < events:
        i = len(entries)
        slot = i % 20
        if slot < 12:
            data: dict[str, Any] = {"username": f"user{i}", "identity": f"u{i}@x", "role": "user"}
            entries.append(LogEntry(i, EntryKind.USER_ADDED, AT, "admin", data))
        elif slot < 19 or revoked >= len(cards):
            card = _card(f"u{i}@example.org", keys[i % len(keys)], app)
            cards.append(card)
            data = {"card": card.to_text(), "owner": f"user{i}"}
            entries.append(LogEntry(i, EntryKind.CARD_APPROVED, AT, "olga", data))
        else:
            card = cards[revoked]
            revoked += 1
            reason = RevocationReason.SUPERSEDED
            message = RevocationStatement.signing_message(card.id, reason, AT, "app")
            statement = RevocationStatement(
                card.id,
                reason,
                AT,
                CardSignature(
                    "app",
                    hashlib.sha256(app.info.spki_der).digest(),
                    SignatureAlgorithm.ECDSA_SHA256,
                    app.sign(message),
                ),
            )
            data = {"card_id": card.id, "revocation": statement.to_text()}
            entries.append(LogEntry(i, EntryKind.CARD_REVOKED, AT, "olga", data))
    return entries


def bench_append(app: SoftwareAppKey, rounds: int = 200) -> None:
    from hsm_vault.server import log
    from hsm_vault.server.approvals import sign_and_publish
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

    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        migrate_to_head(engine)
        sessions = make_sessionmaker(engine)
        key = ec.generate_private_key(ec.SECP256R1())
        with sessions() as db:
            owner = User(name="u", identity="u", role=Role.USER.value, created_at=utcnow())
            db.add(owner)
            db.commit()
            owner_id = owner.id
        with_log: list[float] = []
        without: list[float] = []
        append_only: list[float] = []
        for i in range(rounds):
            card = _card(f"u{i}@example.org", key, app)
            unsigned = Card(card.snapshot, (card.signature_by("self"),))  # type: ignore[arg-type]
            for target in (with_log, without):
                with sessions() as db:
                    record = CardRecord(
                        id=card.id if target is with_log else card.id[:-8] + "00000000",
                        owner_id=owner_id,
                        identity=card.identity,
                        text=unsigned.to_text(),
                        status=CardStatus.PENDING.value,
                        published_at=utcnow(),
                    )
                    db.add(record)
                    db.commit()
                    started = time.perf_counter()
                    if target is with_log:
                        sign_and_publish(db, record, app, "olga")  # type: ignore[arg-type]
                    else:
                        _publish_without_log(db, record, app)
                    db.commit()
                    target.append(time.perf_counter() - started)
            with sessions() as db:
                started = time.perf_counter()
                log.append(db, EntryKind.USER_DISABLED, "bench", {"username": "u"}, subject="u")
                db.commit()
                append_only.append(time.perf_counter() - started)
        engine.dispose()
    print(f"append (SQLite, {rounds} rounds, the log holding up to {3 * rounds} entries):")
    for name, times in (
        ("card approval with its log entry", with_log),
        ("card approval without the log", without),
        ("one log entry alone, with commit", append_only),
    ):
        times.sort()
        print(
            f"  {name:<36} median {statistics.median(times) * 1000:6.2f} ms, "
            f"p95 {times[int(len(times) * 0.95)] * 1000:6.2f} ms"
        )


def _publish_without_log(db: Any, record: Any, app: SoftwareAppKey) -> None:
    """sign_and_publish as it was before the log (the comparison)."""
    from hsm_vault.server.db import CardStatus, utcnow
    from hsm_vault.trust import TrustPolicy, verify_card

    card = Card.from_text(record.text)
    verify_card(card, TrustPolicy.self_only())
    signature = CardSignature(
        "app",
        bytes.fromhex(app.info.fingerprint),
        app.info.algorithm,
        app.sign(card.signing_message("app")),
    )
    signed = card.with_signature(signature)
    verify_card(signed, TrustPolicy.with_app_key(app.info.spki_der))
    record.text = signed.to_text()
    record.status = CardStatus.APPROVED.value
    record.decided_at = utcnow()
    record.decided_by = "olga"


def bench_proofs(entries: list[LogEntry]) -> None:
    started = time.perf_counter()
    tree = MerkleTree(e.leaf_hash for e in entries)
    load = time.perf_counter() - started
    n = tree.size
    samples = [(i * 7919) % n for i in range(2000)]
    started = time.perf_counter()
    lengths = [len(tree.inclusion_proof(i)) for i in samples]
    inclusion = (time.perf_counter() - started) / len(samples)
    started = time.perf_counter()
    consistency = [len(tree.consistency_proof(max(1, i))) for i in samples]
    consistent = (time.perf_counter() - started) / len(samples)
    print(f"proofs in a tree of {n} entries (hash and load all leaves: {load:.2f} s):")
    print(f"  inclusion   {inclusion * 1e6:6.1f} µs, {max(lengths)} hashes at most")
    print(f"  consistency {consistent * 1e6:6.1f} µs, {max(consistency)} hashes at most")


def bench_audit(entries: list[LogEntry], app: SoftwareAppKey) -> float:
    import os
    from concurrent.futures import ProcessPoolExecutor

    tree = MerkleTree(e.leaf_hash for e in entries)
    head = sign_head(TreeHead(app.info.fingerprint, tree.size, tree.root(), AT), app.sign)
    texts = [e.to_bytes().decode() for e in entries]
    workers = min(os.cpu_count() or 1, 8)
    started, cpu = time.perf_counter(), _cpu()
    parsed = [LogEntry.from_text(t) for t in texts]  # as downloaded
    with ProcessPoolExecutor(workers) as pool:
        report = audit(parsed, head, app.info.spki_der, executor=pool)
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    print(
        f"audit of {len(entries)} entries ({report.counts}) with {workers} processes: "
        f"{seconds:.2f} s, {cpu:.1f} CPU s (target < 10 s; load average now "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    return seconds


def _cpu() -> float:
    """CPU seconds of this process and its finished children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    app = SoftwareAppKey()
    bench_append(app)
    started = time.perf_counter()
    entries = make_log(args.events, app)
    print(f"(made a log of {len(entries)} entries in {time.perf_counter() - started:.1f} s)")
    bench_proofs(entries)
    seconds = bench_audit(entries, app)
    sys.exit(0 if seconds < 10 else 1)


if __name__ == "__main__":
    main()
