"""The token layer against real SoftHSM tokens: every key type made, found, used and deleted."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from hsm_vault.algorithms import KeyType, verify_signature
from hsm_vault.errors import (
    AmbiguousKey,
    DuplicateLabel,
    InvalidSignature,
    KeyNotFound,
    ModuleNotFound,
    PinIncorrect,
    PinUnavailable,
    TokenNotFound,
)
from hsm_vault.token import PinSource, list_tokens, open_session, resolve_module
from hsm_vault.token.pin import Pin


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("key_type", list(KeyType))
def test_every_key_type_is_generated_protected_used_and_deleted(softhsm, key_type: KeyType) -> None:
    label = unique(f"t-{key_type}")
    with open_session("carol") as ts:
        key = ts.generate_key(label, key_type)
        assert key.key_type is key_type
        assert key.local and key.never_extractable and key.always_sensitive
        assert key.sensitive and not key.extractable
        assert len(key.key_id) == 16
        assert key in ts.keys()
        assert ts.find_key(label) == key
        assert ts.find_key(key.uri) == key

        message = b"a card snapshot, say"
        signature = ts.sign(key, message)
        verify_signature(key.spki_der, key_type.signature_algorithm, message, signature)
        with pytest.raises(InvalidSignature):
            verify_signature(key.spki_der, key_type.signature_algorithm, b"other", signature)

        public = serialization.load_der_public_key(key.spki_der)
        if key_type.is_ec:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            ephemeral = ec.generate_private_key(public.curve)
            point = ephemeral.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            assert ts.ecdh(key, point) == ephemeral.exchange(ec.ECDH(), public)
        else:
            assert ts.oaep_hash(key) in ("sha1", "sha256")
            chosen = hashes.SHA1() if ts.oaep_hash(key) == "sha1" else hashes.SHA256()
            file_key = os.urandom(32)
            wrapped = public.encrypt(  # type: ignore[union-attr]
                file_key, padding.OAEP(mgf=padding.MGF1(chosen), algorithm=chosen, label=None)
            )
            assert ts.rsa_oaep_decrypt(key, wrapped, ts.oaep_hash(key)) == file_key

        ts.delete_key(key)
        with pytest.raises(KeyNotFound):
            ts.find_key(label)


def test_softhsm_oaep_probe_finds_sha1(softhsm, token_keys) -> None:
    with open_session("alice") as ts:
        assert ts.oaep_hash(token_keys["alice-rsa2048"]) == "sha1"  # SoftHSM 2.6: SHA-1 only


def test_duplicate_label_is_refused(softhsm, token_keys) -> None:
    with open_session("alice") as ts, pytest.raises(DuplicateLabel):
        ts.generate_key("alice-p256", KeyType.EC_P256)


def test_ambiguous_key_is_refused(softhsm) -> None:
    # Another tool may put two keys with one label on a token; lookup must refuse to guess.
    label = unique("twin")
    with open_session("carol") as ts:
        first = ts.generate_key(label, KeyType.EC_P256)
    subprocess.run(
        # pkcs11-tool takes a PIN only from a terminal or argv; this is the test token's PIN.
        [
            "pkcs11-tool",
            "--module",
            softhsm.module,
            "--token-label",
            "carol",
            "--login",
            "--pin",
            softhsm.pin,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            label,
            "--id",
            "0badf00d",
        ],
        env=softhsm.env(),
        check=True,
        capture_output=True,
    )
    with open_session("carol") as ts:
        with pytest.raises(AmbiguousKey):
            ts.find_key(label)
        assert ts.find_key(first.uri).key_id == first.key_id  # the id tells them apart
        second = ts.find_key(f"pkcs11:object={label};id=%0B%AD%F0%0D")
        ts.delete_key(first)
        ts.delete_key(second)


def test_unknown_key_and_unknown_token(softhsm) -> None:
    with open_session("bob") as ts, pytest.raises(KeyNotFound) as err:
        ts.find_key("no-such-key")
    assert "bob" in str(err.value)
    with pytest.raises(TokenNotFound), open_session("no-such-token"):
        pass


def test_wrong_pin_says_what_the_token_reports_and_hides_the_pin(softhsm, monkeypatch) -> None:
    monkeypatch.setenv("HSM_VAULT_PIN", "wrong-pin-123456")
    with pytest.raises(PinIncorrect) as err, open_session("carol"):
        pass
    message = str(err.value)
    assert "wrong PIN" in message and "tries" in message
    assert "wrong-pin-123456" not in message + repr(err.value) + err.value.hint
    # The right PIN still works afterwards (SoftHSM does not lock).
    monkeypatch.setenv("HSM_VAULT_PIN", softhsm.pin)
    with open_session("carol") as ts:
        assert ts.info.label == "carol"


def test_no_pin_anywhere_is_a_clear_error(softhsm, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("HSM_VAULT_PIN")
    with pytest.raises(PinUnavailable), open_session("carol", pin=PinSource(interactive=False)):
        pass
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin + "\n")
    with open_session("carol", pin=PinSource(pin_file=pin_file)) as ts:
        assert ts.info.label == "carol"


def test_pin_never_prints_itself() -> None:
    pin = Pin("123456")
    assert "123456" not in repr(pin) + str(pin) + f"{pin}"
    assert pin.reveal() == "123456"


def test_module_resolution_order_and_missing_module(softhsm, monkeypatch) -> None:
    assert resolve_module(None, None).source == "HSM_VAULT_PKCS11_MODULE"
    assert resolve_module(softhsm.module, "/nope.so").source == "--module"
    monkeypatch.delenv("HSM_VAULT_PKCS11_MODULE")
    assert resolve_module(None, softhsm.module).source == "config file"
    with pytest.raises(ModuleNotFound) as err:
        resolve_module("/no/such/module.so", None)
    assert "/no/such/module.so" in str(err.value)


def test_tokens_are_listed_with_serials(softhsm) -> None:
    tokens = {t.label: t for t in list_tokens()[0]}
    assert set(softhsm.tokens) <= set(tokens)
    assert all(tokens[label].serial for label in softhsm.tokens)
    assert tokens["alice"].manufacturer == "SoftHSM project"


def test_session_is_refused_in_a_forked_child(softhsm) -> None:
    with open_session("alice") as ts:
        pid = os.fork()
        if pid == 0:  # child: the parent's session must not be used
            try:
                ts.keys()
            except Exception as exc:
                os._exit(0 if "forked child" in str(exc) else 1)
            os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert ts.keys() is not None  # the parent's session still works
