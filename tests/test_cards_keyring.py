"""The local keyring: lookups, ambiguity, rotation, revocation, corrupt entries, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm_vault.algorithms import KeyType, SignatureAlgorithm
from hsm_vault.cards import (
    Card,
    Keyring,
    TokenProvenance,
    build_snapshot,
    make_revocation,
    sign_card,
)
from hsm_vault.config import data_dir
from hsm_vault.errors import (
    AmbiguousCard,
    CardNotFound,
    CardRevoked,
    CardVerificationError,
    UsageError,
)

PROVENANCE = TokenProvenance("SoftHSM project", "SoftHSM v2", "0123", True, True, True)
ES256 = SignatureAlgorithm.ECDSA_SHA256


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signer(key: ec.EllipticCurvePrivateKey):
    return lambda message: key.sign(message, ec.ECDSA(hashes.SHA256()))


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def card_for(
    key: ec.EllipticCurvePrivateKey,
    identity: str = "alice@example.org",
    *,
    previous: tuple[Card, ec.EllipticCurvePrivateKey] | None = None,
    created_at: str = "2026-03-01T10:00:00Z",
) -> Card:
    snapshot = build_snapshot(
        identity=identity,
        spki_der=spki(key),
        key_type=KeyType.EC_P256,
        provenance=PROVENANCE,
        created_at=created_at,
        previous_id=previous[0].id if previous else None,
    )
    card = sign_card(Card(snapshot), "self", spki(key), ES256, signer(key))
    if previous is not None:
        card = sign_card(card, "previous", spki(previous[1]), ES256, signer(previous[1]))
    return card


def test_default_location_is_the_data_folder(vault_home: Path) -> None:
    assert Keyring().root == data_dir() / "cards"
    assert str(Keyring().root).startswith(str(vault_home))


def test_add_get_find_resolve_remove(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "cards")
    assert ring.entries() == [] and ring.scan() == ([], [])
    alice = card_for(new_key())
    bob = card_for(new_key(), "bob", created_at="2026-03-02T10:00:00Z")
    entry = ring.add(alice, origin="own", key_uri="pkcs11:token=alice;object=k")
    ring.add(bob)
    assert entry.path.name == f"{alice.id}.json"
    assert oct(entry.path.stat().st_mode & 0o777) == "0o600"
    assert [e.card.id for e in ring.entries()] == [alice.id, bob.id]
    assert ring.get(alice.id).card == alice
    assert ring.get(alice.id[:6].upper()).card == alice
    assert ring.get(alice.id).origin == "own" and ring.get(bob.id).origin == "imported"
    assert ring.get(alice.id).key_uri == "pkcs11:token=alice;object=k"
    assert [e.card for e in ring.find("ALICE@example.org")] == [alice]
    assert ring.resolve("bob").card == bob and ring.resolve(bob.id[:8]).card == bob
    with pytest.raises(CardNotFound):
        ring.resolve("carol")
    with pytest.raises(UsageError):
        ring.get("xyz")
    with pytest.raises(CardNotFound):
        ring.get("0" * 64)
    assert ring.remove(bob.id[:10]).card == bob
    assert [e.card for e in ring.entries()] == [alice]
    # Nothing but the entries is left behind (no temp files from the atomic writes).
    assert sorted(p.name for p in ring.root.iterdir()) == [f"{alice.id}.json"]


def test_identity_with_two_valid_cards_is_ambiguous(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    first = card_for(new_key())
    second = card_for(new_key(), created_at="2026-04-01T10:00:00Z")
    ring.add(first)
    ring.add(second)
    with pytest.raises(AmbiguousCard, match="choose one by id"):
        ring.resolve("alice@example.org")
    assert ring.resolve(second.id[:12]).card == second


def test_rotation_supersedes_and_must_verify(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    old_key = new_key()
    old = card_for(old_key)
    new = card_for(new_key(), previous=(old, old_key), created_at="2026-05-01T10:00:00Z")
    ring.add(old)
    ring.add(new)
    statuses = {e.card.id: e.status for e in ring.entries()}
    assert statuses == {old.id: "superseded", new.id: "valid"}
    assert ring.resolve("alice@example.org").card == new
    # A rotation whose "previous" signature is by the wrong key is refused, nothing stored.
    other = new_key()
    forged = card_for(new_key(), previous=(old, other), created_at="2026-06-01T10:00:00Z")
    with pytest.raises(CardVerificationError):
        ring.add(forged)
    assert forged.id not in {e.card.id for e in ring.entries()}


def test_revocation(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    key = new_key()
    card = card_for(key)
    ring.add(card)
    statement = make_revocation(card.id, "key-compromise", "self", spki(key), ES256, signer(key))
    with pytest.raises(CardNotFound):
        Keyring(tmp_path / "empty").add_revocation(statement)
    stranger = new_key()
    bad = make_revocation(
        card.id, "key-compromise", "self", spki(stranger), ES256, signer(stranger)
    )
    with pytest.raises(CardVerificationError):
        ring.add_revocation(bad)
    assert ring.get(card.id).status == "valid"
    ring.add_revocation(statement)
    entry = ring.get(card.id)
    assert entry.status == "revoked" and entry.revocation == statement
    assert ring.revocation(card.id) == statement
    with pytest.raises(CardRevoked):
        ring.resolve("alice@example.org")
    with pytest.raises(CardRevoked):
        ring.resolve(card.id)
    assert ring.resolve(card.id, allow_revoked=True).card == card


def test_adding_again_merges_signatures(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    key, app = new_key(), new_key()
    card = card_for(key)
    ring.add(card, origin="own", key_uri="pkcs11:object=a")
    app_signed = sign_card(card, "app", spki(app), ES256, signer(app))
    entry = ring.add(app_signed)
    assert entry.origin == "own" and entry.key_uri == "pkcs11:object=a"
    assert ring.get(card.id).card.signers == ("app", "self")
    ring.add(card)  # an older copy without the app signature does not lose it
    assert ring.get(card.id).card.signers == ("app", "self")


def test_corrupt_entries_are_reported_not_fatal(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    good = card_for(new_key())
    ring.add(good)
    other = card_for(new_key(), "bob")
    (tmp_path / ("1" * 64 + ".json")).write_text("{not json")
    (tmp_path / ("2" * 64 + ".json")).write_text(
        json.dumps(
            {
                "version": 1,
                "card": "hsmv-card-1:AAAA",
                "origin": "own",
                "added_at": "x",
                "key_uri": None,
            }
        )
    )
    # The right card under another card's name.
    misnamed = tmp_path / ("3" * 64 + ".json")
    misnamed.write_text((tmp_path / f"{good.id}.json").read_text())
    (tmp_path / "notes.txt").write_text("hello")
    # A card whose stored text was altered after it was added.
    ring.add(other)
    stored = tmp_path / f"{other.id}.json"
    body = json.loads(stored.read_text())
    body["card"] = body["card"][:-6] + (
        "AAAAAA" if not body["card"].endswith("AAAAAA") else "BBBBBB"
    )
    stored.write_text(json.dumps(body))
    (tmp_path / "revocations").mkdir()
    (tmp_path / "revocations" / (good.id + ".txt")).write_text("garbage")

    entries, problems = ring.scan()
    assert [e.card for e in entries] == [good]
    assert entries[0].status == "valid"  # the unreadable revocation is reported, not applied
    names = sorted(p.path.name for p in problems)
    assert names == sorted(
        [
            "1" * 64 + ".json",
            "2" * 64 + ".json",
            "3" * 64 + ".json",
            "notes.txt",
            f"{other.id}.json",
            f"{good.id}.txt",
        ]
    )
    assert all(p.message for p in problems)
    assert ring.resolve("alice@example.org").card == good
    # A corrupt entry is replaced when the good card is added again.
    ring.add(other)
    assert other.id in {e.card.id for e in ring.entries()}


def test_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    ring = Keyring(tmp_path)
    card = card_for(new_key())
    entry = ring.add(card)
    entry.path.chmod(0)
    entries, problems = ring.scan()
    assert entries == [] and len(problems) == 1
