"""YubiKey PIV key attestation: verify the chain and read what it attests (pure: no I/O).

A YubiKey (firmware 4.3 and later) signs, with the device key of slot f9, a certificate for
the public key of a slot, stating the device's serial, firmware, form factor and the key's PIN
and touch policies. It answers only for keys generated on the device. The f9 certificate is
issued by Yubico's PIV root, pinned here by its SHA-256 fingerprint. So a verified attestation
says: this public key's private half was made inside YubiKey #serial and cannot leave it.

Not checked: validity dates (the attestation certificate borrows the device certificate's, and
a key stays attested after it). Not handled: firmware 5.7.4 and later, which chain to "Yubico
Attestation Root 1" through intermediates that ykcs11 2.2 does not show.

The specification of what is verified and what is recorded: docs/cards.md, "Attestation".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsm_vault.errors import AttestationError

YUBICO_PIV_ROOT_SHA256: Final = "63ece914e54dd87915f34033c85af4c0696ba1512f8add66ced738331207b546"
YUBICO_PIV_ROOT_PEM: Final = b"""-----BEGIN CERTIFICATE-----
MIIDFzCCAf+gAwIBAgIDBAZHMA0GCSqGSIb3DQEBCwUAMCsxKTAnBgNVBAMMIFl1
YmljbyBQSVYgUm9vdCBDQSBTZXJpYWwgMjYzNzUxMCAXDTE2MDMxNDAwMDAwMFoY
DzIwNTIwNDE3MDAwMDAwWjArMSkwJwYDVQQDDCBZdWJpY28gUElWIFJvb3QgQ0Eg
U2VyaWFsIDI2Mzc1MTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAMN2
cMTNR6YCdcTFRxuPy31PabRn5m6pJ+nSE0HRWpoaM8fc8wHC+Tmb98jmNvhWNE2E
ilU85uYKfEFP9d6Q2GmytqBnxZsAa3KqZiCCx2LwQ4iYEOb1llgotVr/whEpdVOq
joU0P5e1j1y7OfwOvky/+AXIN/9Xp0VFlYRk2tQ9GcdYKDmqU+db9iKwpAzid4oH
BVLIhmD3pvkWaRA2H3DA9t7H/HNq5v3OiO1jyLZeKqZoMbPObrxqDg+9fOdShzgf
wCqgT3XVmTeiwvBSTctyi9mHQfYd2DwkaqxRnLbNVyK9zl+DzjSGp9IhVPiVtGet
X02dxhQnGS7K6BO0Qe8CAwEAAaNCMEAwHQYDVR0OBBYEFMpfyvLEojGc6SJf8ez0
1d8Cv4O/MA8GA1UdEwQIMAYBAf8CAQEwDgYDVR0PAQH/BAQDAgEGMA0GCSqGSIb3
DQEBCwUAA4IBAQBc7Ih8Bc1fkC+FyN1fhjWioBCMr3vjneh7MLbA6kSoyWF70N3s
XhbXvT4eRh0hvxqvMZNjPU/VlRn6gLVtoEikDLrYFXN6Hh6Wmyy1GTnspnOvMvz2
lLKuym9KYdYLDgnj3BeAvzIhVzzYSeU77/Cupofj093OuAswW0jYvXsGTyix6B3d
bW5yWvyS9zNXaqGaUmP3U9/b6DlHdDogMLu3VLpBB9bm5bjaKWWJYgWltCVgUbFq
Fqyi4+JE014cSgR57Jcu3dZiehB6UtAPgad9L5cNvua/IWRmm+ANy3O2LH++Pyl8
SREzU8onbBsjMg9QDiSf5oJLKvd/Ren+zGY7
-----END CERTIFICATE-----
"""
"""Yubico PIV Root CA Serial 263751 (the 2018 issue, valid to 2052), as Yubico publishes it at
developers.yubico.com/PIV/Introduction/piv-attestation-ca.pem; checked against the pinned
fingerprint and its own signature whenever it is used."""

_YUBICO = "1.3.6.1.4.1.41482.3."
OID_FIRMWARE: Final = x509.ObjectIdentifier(_YUBICO + "3")
OID_SERIAL: Final = x509.ObjectIdentifier(_YUBICO + "7")
OID_POLICY: Final = x509.ObjectIdentifier(_YUBICO + "8")
OID_FORM_FACTOR: Final = x509.ObjectIdentifier(_YUBICO + "9")

PIN_POLICIES: Final = {1: "never", 2: "once", 3: "always", 4: "match-once", 5: "match-always"}
TOUCH_POLICIES: Final = {1: "never", 2: "always", 3: "cached"}
FORM_FACTORS: Final = {
    0x00: "unknown",
    0x01: "usb-a-keychain",
    0x02: "usb-a-nano",
    0x03: "usb-c-keychain",
    0x04: "usb-c-nano",
    0x05: "usb-c-lightning",
    0x06: "usb-a-bio",
    0x07: "usb-c-bio",
}
_FORM_FACTOR_FLAGS: Final = {0x80: "fips", 0x40: "cspn"}
FORM_FACTOR_PATTERN: Final = r"[a-z0-9-]{1,32}(\+(fips|cspn)){0,2}"
"""Every form factor `_form_factor` can name (cards check the one they state against it)."""


@dataclass(frozen=True)
class Attestation:
    """What a verified attestation states about a key and the device that made it."""

    serial: int
    firmware: str  # '5.4.3'
    pin_policy: str  # 'never', 'once', 'always', ...
    touch_policy: str  # 'never', 'always', 'cached'
    form_factor: str  # 'usb-a-keychain', ...; '+fips' or '+cspn' for those editions
    root: str  # the common name of the root the chain ends at

    def as_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "firmware": self.firmware,
            "pin_policy": self.pin_policy,
            "touch_policy": self.touch_policy,
            "form_factor": self.form_factor,
            "root": self.root,
        }


def _load(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise AttestationError(f"the {what} is not a DER X.509 certificate") from None


def _self_signed(cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # a name mismatch (ValueError) or a bad signature (InvalidSignature)
        return False
    return True


def yubico_roots() -> tuple[x509.Certificate, ...]:
    """Yubico's PIV attestation root, checked against its pinned fingerprint."""
    root = x509.load_pem_x509_certificate(YUBICO_PIV_ROOT_PEM)
    der = root.public_bytes(serialization.Encoding.DER)
    if hashlib.sha256(der).hexdigest() != YUBICO_PIV_ROOT_SHA256 or not _self_signed(root):
        raise AttestationError("the pinned Yubico PIV root does not match its fingerprint")
    return (root,)


def load_roots(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Extra roots from a PEM bundle (tests, or a private attestation CA); each self-signed."""
    try:
        roots = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        raise AttestationError("the attestation roots file holds no PEM certificates") from None
    for root in roots:
        if not _self_signed(root):
            raise AttestationError(
                f"attestation root {root.subject.rfc4514_string()} is not self-signed"
            )
    return roots


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes:
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        raise AttestationError(
            f"the attestation certificate lacks Yubico's extension {oid.dotted_string}"
        ) from None
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AttestationError(f"extension {oid.dotted_string} is not Yubico's")
    return value.value


def _der_integer(data: bytes) -> int:
    # A short DER INTEGER: tag 02, one length byte, big-endian value.
    if len(data) < 3 or data[0] != 0x02 or data[1] != len(data) - 2 or data[1] > 8:
        raise AttestationError("the attested serial is not a DER INTEGER")
    return int.from_bytes(data[2:], "big", signed=True)


def _form_factor(value: int) -> str:
    name = FORM_FACTORS.get(value & 0x3F, f"0x{value & 0x3F:02x}")
    flags = [flag for bit, flag in _FORM_FACTOR_FLAGS.items() if value & bit]
    return "+".join([name, *flags])


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # a name mismatch (ValueError) or a bad signature (InvalidSignature)
        return False
    return True


def verify_attestation(
    attestation_der: bytes,
    device_der: bytes,
    spki_der: bytes,
    roots: Iterable[x509.Certificate],
) -> Attestation:
    """Verify that `attestation_der` attests the key `spki_der`, was signed by the device
    certificate `device_der`, which one of `roots` issued; return what it attests.

    Raises `AttestationError` on any failure; returns only a fully verified result.
    """
    attestation = _load(attestation_der, "attestation certificate")
    device = _load(device_der, "device (slot f9) certificate")
    if not _issued_by(attestation, device):
        raise AttestationError("the attestation certificate was not signed by the device key")
    root = next((r for r in roots if _issued_by(device, r)), None)
    if root is None:
        raise AttestationError(
            f"the device certificate (issued by {device.issuer.rfc4514_string()}) does not "
            "chain to a trusted attestation root"
        )
    attested = attestation.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if attested != spki_der:
        raise AttestationError("the attestation is for another public key than this key's")
    firmware = _extension(attestation, OID_FIRMWARE)
    policy = _extension(attestation, OID_POLICY)
    form = _extension(attestation, OID_FORM_FACTOR)
    if len(firmware) != 3 or len(policy) != 2 or len(form) != 1:
        raise AttestationError("a Yubico extension of the attestation has the wrong length")
    if policy[0] not in PIN_POLICIES or policy[1] not in TOUCH_POLICIES:
        raise AttestationError(f"unknown PIN or touch policy {policy.hex()} in the attestation")
    names = root.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return Attestation(
        serial=_der_integer(_extension(attestation, OID_SERIAL)),
        firmware=".".join(str(b) for b in firmware),
        pin_policy=PIN_POLICIES[policy[0]],
        touch_policy=TOUCH_POLICIES[policy[1]],
        form_factor=_form_factor(form[0]),
        root=str(names[0].value) if names else root.subject.rfc4514_string(),
    )
