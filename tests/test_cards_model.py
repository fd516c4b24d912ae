"""The pure card model: export, parsing, damage of every kind, policies, rotation, revocation.

Software keys stand in for token keys here (the model never sees a token); signing through
SoftHSM is covered by test_cards_token.py and test_cards_cli.py.
"""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm_vault.algorithms import KeyType, SignatureAlgorithm
from hsm_vault.cards import (
    Card,
    CardSignature,
    RevocationStatement,
    TokenProvenance,
    build_snapshot,
    key_id_of,
    make_revocation,
    sign_card,
)
from hsm_vault.cards.canonical import b64url_decode, b64url_encode
from hsm_vault.errors import CardError, CardFormatError, CardVerificationError
from hsm_vault.trust import TrustPolicy, verify_card, verify_revocation, verify_rotation

PROVENANCE = TokenProvenance("SoftHSM project", "SoftHSM v2", "0123", True, True, True)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_with(key: ec.EllipticCurvePrivateKey):
    return lambda message: key.sign(message, ec.ECDSA(hashes.SHA256()))


def make(key: ec.EllipticCurvePrivateKey, identity: str = "alice@example.org", **kw) -> Card:
    snapshot = build_snapshot(
        identity=identity,
        spki_der=spki(key),
        key_type=KeyType.EC_P256,
        provenance=kw.pop("provenance", PROVENANCE),
        created_at="2026-03-01T10:00:00Z",
        **kw,
    )
    return sign_card(
        Card(snapshot), "self", spki(key), SignatureAlgorithm.ECDSA_SHA256, sign_with(key)
    )


@pytest.fixture(scope="module")
def alice_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def app_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def alice(alice_key) -> Card:
    return make(alice_key, data={"team": "ops", "room": "4.12"})


def test_round_trip_and_one_line(alice: Card) -> None:
    text = alice.to_text()
    assert text.startswith("hsmv-card-1:")
    assert not any(c.isspace() for c in text)
    again = Card.from_text(text)
    assert again == alice and again.id == alice.id and again.to_text() == text
    verify_card(again, TrustPolicy.self_only())
    # What chat and tickets do to a pasted line: surrounding blanks and line breaks.
    assert Card.from_text(f"  {text}\r\n").id == alice.id


def test_public_api_properties(alice: Card, alice_key) -> None:
    assert len(alice.id) == 64 and alice.id == alice.snapshot.id
    assert alice.key_id == key_id_of(spki(alice_key)) and len(alice.key_id) == 32
    assert alice.fingerprint == alice.key_id.hex()
    assert alice.spki_der == spki(alice_key)
    assert alice.key_type is KeyType.EC_P256 and alice.oaep_hash is None
    assert alice.previous_id is None and alice.identity == "alice@example.org"
    assert alice.short_id == " ".join(alice.id[i : i + 4].upper() for i in range(0, 24, 4))
    assert "team" in alice.snapshot.data
    with pytest.raises(dataclasses.FrozenInstanceError):
        alice.snapshot = alice.snapshot  # type: ignore[misc]


def test_signing_message_is_domain_separated(alice: Card) -> None:
    self_message = alice.signing_message("self")
    app_message = alice.signing_message("app")
    assert self_message != app_message
    assert self_message.startswith(b"hsmv-card-sig-v1\n") and bytes.fromhex(alice.id) in app_message
    with pytest.raises(CardFormatError):
        alice.signing_message("App\n")


def test_with_signature_keeps_the_id(alice: Card, app_key) -> None:
    signed = sign_card(
        alice, "app", spki(app_key), SignatureAlgorithm.ECDSA_SHA256, sign_with(app_key)
    )
    assert signed.id == alice.id and signed.signers == ("app", "self")
    verify_card(signed, TrustPolicy.with_app_key(spki(app_key)))
    with pytest.raises(CardVerificationError, match="required 'app'"):
        verify_card(alice, TrustPolicy.with_app_key(spki(app_key)))
    # Replaced, not duplicated, when the same signer signs again.
    assert signed.with_signature(signed.signatures[0]).signers == ("app", "self")


def test_every_signature_byte_flipped_is_rejected(alice: Card) -> None:
    sig = alice.signature_by("self")
    assert sig is not None
    for index in range(len(sig.signature)):
        damaged = bytearray(sig.signature)
        damaged[index] ^= 0x80
        card = alice.with_signature(dataclasses.replace(sig, signature=bytes(damaged)))
        with pytest.raises(CardVerificationError):
            verify_card(Card.from_text(card.to_text()), TrustPolicy.self_only())


def test_every_truncation_is_rejected(alice: Card) -> None:
    text = alice.to_text()
    for cut in range(len(text) - 1, 0, -1):
        with pytest.raises(CardError):
            Card.from_text(text[:cut])


def _damage_outcome(text: str) -> str:
    try:
        card = Card.from_text(text)
        verify_card(card, TrustPolicy.self_only())
    except CardFormatError:
        return "format"
    except CardVerificationError:
        return "verification"
    return "accepted"


def test_every_base64_character_changed_is_rejected(alice: Card) -> None:
    text = alice.to_text()
    head = len("hsmv-card-1:")
    outcomes = set()
    for index in range(head, len(text)):
        replacement = ALPHABET[(ALPHABET.index(text[index]) + 17) % 64]
        outcomes.add(_damage_outcome(text[:index] + replacement + text[index + 1 :]))
    assert outcomes <= {"format", "verification"}


def test_padded_and_extended_exports_are_rejected(alice: Card) -> None:
    text = alice.to_text()
    for bad in (text + "=", text + "==", text + "A", text + "AAAA", text + " x", text + text):
        assert _damage_outcome(bad) == "format", bad[-8:]
    raw = b64url_decode(text.split(":", 1)[1], "card")
    assert _damage_outcome("hsmv-card-1:" + b64url_encode(raw + b" ")) == "format"


def test_unknown_versions(alice: Card) -> None:
    body = alice.to_text().split(":", 1)[1]
    for prefix in ("hsmv-card-0:", "hsmv-card-2:", "hsmv-card-:", "HSMV-CARD-1:"):
        with pytest.raises(CardFormatError):
            Card.from_text(prefix + body)


def test_unprotected_provenance_needs_a_waiver(alice_key) -> None:
    loose = make(alice_key, provenance=dataclasses.replace(PROVENANCE, local=False))
    with pytest.raises(CardVerificationError, match="not generated on the token"):
        verify_card(loose, TrustPolicy())
    verify_card(loose, TrustPolicy(require_token_protection=False))


def test_local_not_reported_by_the_token(alice: Card, alice_key) -> None:
    # NSS reports CKA_LOCAL false for its own keys; an officer-allowed model says so instead.
    unreported = dataclasses.replace(PROVENANCE, local=False, local_not_reported=True)
    card = Card.from_text(make(alice_key, provenance=unreported).to_text())
    assert card.snapshot.provenance.local_text == "not reported by the token"
    verify_card(card, TrustPolicy())
    # Cards without it keep their canonical bytes: the key is absent, not false.
    assert "local_not_reported" not in PROVENANCE.to_json()
    body = PROVENANCE.to_json()
    for bad in ({**body, "local_not_reported": False}, {**body, "local_not_reported": True}):
        with pytest.raises(CardFormatError):
            TokenProvenance.from_json(bad)  # present as false; or with local true


def test_policy_is_validated(app_key) -> None:
    with pytest.raises(CardFormatError, match="no trusted key"):
        TrustPolicy(required=frozenset({"app"}))
    with pytest.raises(CardFormatError):
        TrustPolicy(trusted={"app": (b"not a key",)})
    with pytest.raises(CardFormatError):
        TrustPolicy(trusted={"self": (spki(app_key),)})


def test_invalid_snapshots_cannot_be_built(alice_key) -> None:
    with pytest.raises(CardFormatError):
        make(alice_key, identity="not an email@x.org")
    with pytest.raises(CardFormatError):
        make(alice_key, data={"BAD": "x"})
    with pytest.raises(CardFormatError):
        make(alice_key, identity="bob", identity_type="hostname-ish")
    with pytest.raises(CardFormatError):
        CardSignature("self", b"short", SignatureAlgorithm.ECDSA_SHA256, b"x")


def test_rotation(alice: Card, alice_key) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    rotated = make(new_key, previous_id=alice.id, data={"team": "ops"})
    with pytest.raises(CardVerificationError, match="not signed by the earlier card's key"):
        verify_card(rotated, TrustPolicy.self_only())
    rotated = sign_card(
        rotated, "previous", spki(alice_key), SignatureAlgorithm.ECDSA_SHA256, sign_with(alice_key)
    )
    verify_card(rotated, TrustPolicy.self_only(), previous=alice)
    verify_rotation(rotated, alice)
    # Signed "previous" by the new key itself: rejected against the real previous card.
    forged = sign_card(
        rotated, "previous", spki(new_key), SignatureAlgorithm.ECDSA_SHA256, sign_with(new_key)
    )
    with pytest.raises(CardVerificationError):
        verify_rotation(forged, alice)
    with pytest.raises(CardVerificationError):
        verify_rotation(alice, rotated)


def test_revocation_round_trip(alice: Card, alice_key, app_key) -> None:
    statement = make_revocation(
        alice.id,
        "key-compromise",
        "self",
        spki(alice_key),
        SignatureAlgorithm.ECDSA_SHA256,
        sign_with(alice_key),
    )
    text = statement.to_text()
    assert text.startswith("hsmv-revocation-1:") and " " not in text
    again = RevocationStatement.from_text(text)
    assert again == statement
    verify_revocation(again, alice)
    by_app = make_revocation(
        alice.id,
        "superseded",
        "app",
        spki(app_key),
        SignatureAlgorithm.ECDSA_SHA256,
        sign_with(app_key),
    )
    with pytest.raises(CardVerificationError, match="does not trust"):
        verify_revocation(by_app, alice)
    verify_revocation(by_app, alice, TrustPolicy.with_app_key(spki(app_key), required=False))
    # A revocation signature is not a card signature and vice versa (domain separation).
    sig = alice.signature_by("self")
    assert sig is not None
    replayed = dataclasses.replace(statement, signature=sig)
    with pytest.raises(CardVerificationError):
        verify_revocation(replayed, alice)


def test_cards_are_hashable(alice: Card) -> None:
    assert len({alice, Card.from_text(alice.to_text())}) == 1


def test_reprs_are_short(alice: Card) -> None:
    assert "signature=" not in repr(alice.signatures[0])
    assert alice.id[:16] in repr(alice)
