"""Cards signed through real SoftHSM tokens, and interoperability with openssl and pkcs11-tool."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from hsm_vault.algorithms import KeyType, SignatureAlgorithm
from hsm_vault.cards import (
    Card,
    create_card,
    revoke_card,
)
from hsm_vault.errors import CardVerificationError, KeyPolicyError, UsageError
from hsm_vault.token import open_session
from hsm_vault.trust import TrustPolicy, verify_card, verify_revocation, verify_rotation


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(
    ("label", "key_type", "algorithm", "oaep"),
    [
        ("alice-p256", KeyType.EC_P256, SignatureAlgorithm.ECDSA_SHA256, None),
        ("alice-p384", KeyType.EC_P384, SignatureAlgorithm.ECDSA_SHA384, None),
        # SoftHSM 2.6 decrypts RSA-OAEP with SHA-1 only: the probe must find that.
        ("alice-rsa2048", KeyType.RSA_2048, SignatureAlgorithm.RSA_PSS_SHA256, "sha1"),
    ],
)
def test_card_made_on_the_token(token_keys, label, key_type, algorithm, oaep) -> None:
    with open_session("alice") as ts:
        key = ts.find_key(label)
        card = create_card(ts, key, "alice@example.org", data={"team": "ops"})
        info = ts.info
    assert card.spki_der == key.spki_der and card.key_type is key_type
    assert card.oaep_hash == oaep
    assert card.fingerprint == key.fingerprint
    prov = card.snapshot.provenance
    assert (prov.manufacturer, prov.model, prov.serial) == (
        info.manufacturer.strip(),
        info.model.strip(),
        info.serial.strip(),
    )
    assert prov.local and prov.never_extractable and prov.always_sensitive
    (sig,) = card.signatures
    assert sig.signer == "self" and sig.algorithm is algorithm and sig.key_id == card.key_id
    again = Card.from_text(card.to_text())
    verify_card(again, TrustPolicy())
    # bob, who has only the text, verifies it too; a flipped byte anywhere in the signature fails.
    for index in (0, len(sig.signature) // 2, len(sig.signature) - 1):
        damaged = bytearray(sig.signature)
        damaged[index] ^= 1
        bad = again.with_signature(type(sig)(sig.signer, sig.key_id, sig.algorithm, bytes(damaged)))
        with pytest.raises(CardVerificationError):
            verify_card(Card.from_text(bad.to_text()), TrustPolicy())


def test_app_signature_made_on_the_server_token(token_keys) -> None:
    with open_session("alice") as ts:
        card = create_card(ts, ts.find_key("alice-p256"), "alice@example.org")
    with open_session("server") as server:
        app_key = server.generate_key(unique("app"), KeyType.EC_P256)
        from hsm_vault.cards import CardSignature, key_id_of

        app_sig = CardSignature(
            "app",
            key_id_of(app_key.spki_der),
            app_key.key_type.signature_algorithm,
            server.sign(app_key, card.signing_message("app")),
        )
        server.delete_key(app_key)
    signed = card.with_signature(app_sig)
    assert signed.id == card.id
    verify_card(Card.from_text(signed.to_text()), TrustPolicy.with_app_key(app_key.spki_der))
    with open_session("bob") as bob:
        other = bob.find_key("bob-p256")
    with pytest.raises(CardVerificationError):
        verify_card(signed, TrustPolicy.with_app_key(other.spki_der))


def test_rotation_on_one_token(token_keys) -> None:
    with open_session("bob") as ts:
        old_key = ts.find_key("bob-p256")
        old = create_card(ts, old_key, "bob", created_at="2026-01-01T00:00:00Z")
        new_key = ts.generate_key(unique("bob-next"), KeyType.EC_P256)
        try:
            new = create_card(ts, new_key, "bob", previous=(old, old_key))
            with pytest.raises(UsageError):  # the old key must be the previous card's key
                create_card(ts, new_key, "bob", previous=(old, new_key))
        finally:
            ts.delete_key(new_key)
    assert new.previous_id == old.id and new.signers == ("previous", "self")
    assert new.identity_type == old.identity_type
    verify_rotation(Card.from_text(new.to_text()), old)
    verify_card(new, TrustPolicy(), previous=old)
    # Without the old key's signature the rotation is rejected.
    unsigned = Card(new.snapshot, tuple(s for s in new.signatures if s.signer == "self"))
    with pytest.raises(CardVerificationError, match="earlier card's key"):
        verify_card(Card.from_text(unsigned.to_text()), TrustPolicy())
    with pytest.raises(CardVerificationError):
        verify_rotation(unsigned, old)


def test_revocation_signed_on_the_token(token_keys) -> None:
    with open_session("bob") as ts:
        key = ts.find_key("bob-rsa3072")
        card = create_card(ts, key, "bob")
        statement = revoke_card(ts, key, card, "superseded")
        with pytest.raises(UsageError):
            revoke_card(ts, ts.find_key("bob-p256"), card, "superseded")
    verify_revocation(type(statement).from_text(statement.to_text()), card)


def _pkcs11_tool(softhsm, token: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    # pkcs11-tool takes a PIN only from a terminal or argv; this is the test token's PIN.
    return subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            softhsm.module,
            "--token-label",
            token,
            "--login",
            "--pin",
            softhsm.pin,
            *args,
        ],
        env=softhsm.env(),
        check=True,
        capture_output=True,
    )


def test_card_key_matches_openssl_and_pkcs11_tool(softhsm, token_keys, tmp_path: Path) -> None:
    with open_session("alice") as ts:
        card = create_card(ts, ts.find_key("alice-p256"), "alice@example.org")
    exported = tmp_path / "card-key.der"
    exported.write_bytes(Card.from_text(card.to_text()).spki_der)
    # openssl accepts the card's public key as it is and writes back the same DER.
    again = subprocess.run(
        ["openssl", "pkey", "-pubin", "-inform", "DER", "-in", str(exported), "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    assert again == card.spki_der
    text = subprocess.run(
        ["openssl", "pkey", "-pubin", "-inform", "DER", "-in", str(exported), "-noout", "-text"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "prime256v1" in text or "P-256" in text
    # pkcs11-tool, an independent PKCS#11 client, reads the same public key from the token.
    from_token = tmp_path / "token-key.der"
    _pkcs11_tool(
        softhsm,
        "alice",
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        "alice-p256",
        "--output-file",
        str(from_token),
    )
    as_der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-inform", "DER", "-in", str(from_token), "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    assert as_der == card.spki_der


def test_card_refused_for_an_imported_key(softhsm, tmp_path: Path) -> None:
    """A key written to the token from outside is not CKA_LOCAL: no card for it."""
    label = unique("imported")
    private, public = tmp_path / "priv.der", tmp_path / "pub.der"
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-outform",
            "DER",
            "-out",
            str(private),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "pkey",
            "-inform",
            "DER",
            "-in",
            str(private),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            str(public),
        ],
        check=True,
        capture_output=True,
    )
    for path, kind in ((private, "privkey"), (public, "pubkey")):
        _pkcs11_tool(
            softhsm,
            "carol",
            "--write-object",
            str(path),
            "--type",
            kind,
            "--label",
            label,
            "--id",
            "0badc0de",
        )
    from typer.testing import CliRunner

    from hsm_vault.cli.main import app

    refused = CliRunner().invoke(app, ["card", "create", "carol", "--key", label, "-t", "carol"])
    assert refused.exit_code == 1 and "not protected by the token" in refused.output
    assert "hint:" in refused.output
    with open_session("carol") as ts:
        key = ts.find_key(label)
        try:
            assert not key.local
            with pytest.raises(KeyPolicyError, match="not protected by the token"):
                create_card(ts, key, "carol")
        finally:
            ts.delete_key(key)
