"""YubiKey PIV attestation verification (pure): the pinned root, and one chain per rule.

Each case builds a chain the way a YubiKey does (root -> device certificate of slot f9 ->
attestation certificate with Yubico's extensions) and says what must happen. The chains on the
virtual YubiKey are checked in test_piv.py.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hsm_vault.attestation import (
    OID_FIRMWARE,
    OID_FORM_FACTOR,
    OID_POLICY,
    OID_SERIAL,
    YUBICO_PIV_ROOT_SHA256,
    load_roots,
    verify_attestation,
    yubico_roots,
)
from hsm_vault.errors import AttestationError

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def _cert(
    subject: str, issuer: str, public: Any, signer: Any, extensions: list[tuple[Any, bytes]] = ()
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=365))
    )
    for oid, value in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(signer, hashes.SHA256())


YUBICO_EXTENSIONS = [
    (OID_FIRMWARE, bytes([5, 7, 1])),
    (OID_SERIAL, bytes([0x02, 0x04, 0x01, 0xE5, 0x3B, 0x9F])),  # INTEGER 31800223
    (OID_POLICY, bytes([2, 3])),  # PIN once, touch cached
    (OID_FORM_FACTOR, bytes([0x84])),  # USB-C nano, FIPS edition
]


def chain(
    extensions: list[tuple[Any, bytes]] = YUBICO_EXTENSIONS,
    attest_key: Any = None,
    device_signer: Any = None,
) -> dict[str, Any]:
    """A root, a device certificate and an attestation of a new P-256 key."""
    root_key, device_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Test Attestation Root", "Test Attestation Root", root_key.public_key(), root_key)
    device = _cert(
        "Yubico PIV Attestation", "Test Attestation Root", device_key.public_key(), root_key
    )
    attestation = _cert(
        "YubiKey PIV Attestation 9d",
        "Yubico PIV Attestation",
        (attest_key or key).public_key(),
        device_signer or device_key,
        extensions,
    )
    return {
        "attestation": attestation.public_bytes(DER),
        "device": device.public_bytes(DER),
        "spki": key.public_key().public_bytes(DER, SPKI),
        "root": root,
    }


def test_the_pinned_yubico_root() -> None:
    (root,) = yubico_roots()
    assert root.subject.rfc4514_string() == "CN=Yubico PIV Root CA Serial 263751"
    assert hashlib.sha256(root.public_bytes(DER)).hexdigest() == YUBICO_PIV_ROOT_SHA256
    assert root.not_valid_after_utc.year == 2052


def test_a_good_chain_says_what_it_attests() -> None:
    c = chain()
    found = verify_attestation(c["attestation"], c["device"], c["spki"], (c["root"],))
    assert found.as_json() == {
        "serial": 31800223,
        "firmware": "5.7.1",
        "pin_policy": "once",
        "touch_policy": "cached",
        "form_factor": "usb-c-nano+fips",
        "root": "Test Attestation Root",
    }


def _without(oid: Any) -> list[tuple[Any, bytes]]:
    return [(o, v) for o, v in YUBICO_EXTENSIONS if o != oid]


def _replace(oid: Any, value: bytes) -> list[tuple[Any, bytes]]:
    return [(o, value if o == oid else v) for o, v in YUBICO_EXTENSIONS]


MUST_REJECT: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "root not trusted": (lambda: {**chain(), "root": yubico_roots()[0]}, "does not chain"),
    "another key attested": (
        lambda: chain(attest_key=ec.generate_private_key(ec.SECP256R1())),
        "another public key",
    ),
    "attestation not signed by the device": (
        lambda: chain(device_signer=ec.generate_private_key(ec.SECP256R1())),
        "not signed by the device key",
    ),
    "no serial": (lambda: chain(_without(OID_SERIAL)), "lacks Yubico's extension"),
    "no policy": (lambda: chain(_without(OID_POLICY)), "lacks Yubico's extension"),
    "unknown PIN policy": (lambda: chain(_replace(OID_POLICY, bytes([9, 1]))), "unknown PIN"),
    "short firmware": (lambda: chain(_replace(OID_FIRMWARE, bytes([5, 7]))), "wrong length"),
    "serial not an INTEGER": (
        lambda: chain(_replace(OID_SERIAL, bytes([0x04, 0x01, 0x01]))),
        "not a DER INTEGER",
    ),
}


@pytest.mark.parametrize("case", sorted(MUST_REJECT))
def test_must_reject(case: str) -> None:
    make, message = MUST_REJECT[case]
    c = make()
    with pytest.raises(AttestationError, match=message):
        verify_attestation(c["attestation"], c["device"], c["spki"], (c["root"],))


def test_garbage_and_roots_that_are_not_roots() -> None:
    c = chain()
    with pytest.raises(AttestationError, match="not a DER X"):
        verify_attestation(b"\x30\x00", c["device"], c["spki"], (c["root"],))
    device_pem = x509.load_der_x509_certificate(c["device"]).public_bytes(
        serialization.Encoding.PEM
    )
    with pytest.raises(AttestationError, match="not self-signed"):
        load_roots(device_pem)
    with pytest.raises(AttestationError, match="no PEM"):
        load_roots(b"nothing here")
    assert load_roots(c["root"].public_bytes(serialization.Encoding.PEM)) == (c["root"],)
