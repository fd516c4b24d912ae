"""PIV tokens (YubiKey and other PIV cards) behind a PKCS#11 module: what differs from a
token that stores keys by label.

A PIV card holds at most one key pair per slot. Modules (Yubico's ykcs11, OpenSC's PIV driver)
name a slot by a one-byte CKA_ID; labels are fixed by the module. Generating or destroying a
key needs the card's management key, given to C_Login as the security officer's PIN (ykcs11).
The slot's attestation certificate and the device certificate (slot f9) are certificate
objects, read here and verified by the pure `hsm_vault.attestation`.

Everything here is driven by `Capabilities.piv` (from the profile), never by a module's name.
Measured facts: docs/yubikey.md.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hsm_vault.errors import (
    ManagementKeyRefused,
    SlotOccupied,
    UsageError,
)
from hsm_vault.token.pin import Pin, PinSource

MANAGEMENT_KEY_ENV: Final = "HSM_VAULT_MANAGEMENT_KEY"
DEFAULT_MANAGEMENT_KEY: Final = "010203040506070801020304050607080102030405060708"
"""The factory default of every YubiKey (and of the virtual one): anyone can use it."""
MANAGEMENT_KEY_HEX_DIGITS: Final = 48
"""ykcs11 2.2 takes a 24-byte (3DES or AES-192) key as 48 hex digits; other lengths are
refused with CKR_ARGUMENTS_BAD."""

PIN_POLICIES: Final = ("default", "never", "once", "always", "match-once", "match-always")
TOUCH_POLICIES: Final = ("default", "never", "always", "cached")


@dataclass(frozen=True)
class PivSlot:
    """One PIV key slot and the CKA_ID byte the modules give it."""

    name: str  # '9d', as yubico-piv-tool and ykman name it
    key_id: int  # CKA_ID (only the first byte counts for ykcs11)
    purpose: str

    @property
    def id_bytes(self) -> bytes:
        return bytes([self.key_id])

    @property
    def uri_id(self) -> str:
        """The id attribute of a PKCS#11 URI for this slot: '%03'."""
        return f"%{self.key_id:02X}"


SLOTS: Final[tuple[PivSlot, ...]] = (
    PivSlot("9a", 0x01, "authentication"),
    PivSlot("9c", 0x02, "digital signature (a PIN for every signature)"),
    PivSlot("9d", 0x03, "key management (decryption)"),
    PivSlot("9e", 0x04, "card authentication (no PIN)"),
    *(PivSlot(f"{0x82 + n:x}", 0x05 + n, "retired key management") for n in range(20)),
    PivSlot("f9", 0x19, "attestation (the device's own key)"),
)
ATTESTATION_SLOT: Final = SLOTS[-1]

DECRYPTION_SLOTS: Final = tuple(s for s in SLOTS if s.name == "9d" or s.purpose.startswith("ret"))
"""Where `key generate` puts a key that decrypts, in order: 9d, then the retired slots."""


def slot_named(name: str) -> PivSlot:
    """The slot called `name` ('9d', '0x9d', '82'); `UsageError` for any other text."""
    wanted = name.strip().lower().removeprefix("0x")
    for slot in SLOTS:
        if slot.name == wanted:
            return slot
    raise UsageError(
        f"{name!r} is not a PIV key slot",
        hint="PIV slots: 9a, 9c, 9d, 9e and the retired 82 to 95 (9d holds decryption keys).",
    )


def slot_of(key_id: bytes) -> PivSlot | None:
    """The slot a key's CKA_ID names on a PIV token, or None."""
    if len(key_id) != 1:
        return None
    return next((s for s in SLOTS if s.key_id == key_id[0]), None)


def choose_slot(
    requested: PivSlot | None, occupied: Iterable[int], *, force: bool, token: str
) -> PivSlot:
    """The slot a new key goes to: the one asked for, else the first free decryption slot.

    The module overwrites an occupied slot without a word, so an occupied slot is refused here
    unless `force` says the old key may be destroyed.
    """
    taken = set(occupied)
    if requested is not None:
        if requested == ATTESTATION_SLOT:
            raise UsageError(
                "slot f9 holds the device's attestation key; hsm-vault does not replace it",
                hint="Choose a key slot: 9d, 9a, 9c, 9e or 82 to 95.",
            )
        if requested.key_id in taken and not force:
            raise SlotOccupied(f"slot {requested.name} of token {token!r} already holds a key")
        return requested
    for slot in DECRYPTION_SLOTS:
        if slot.key_id not in taken:
            return slot
    raise SlotOccupied(
        f"every decryption slot of token {token!r} (9d, 82 to 95) holds a key",
        hint="Name a slot to overwrite with --slot and --force (its old key is destroyed), or "
        "delete an unused key with 'hsm-vault key delete --slot SLOT'.",
    )


def management_key_source(key_file: Path | None = None) -> PinSource:
    """Where the management key comes from: a file, $HSM_VAULT_MANAGEMENT_KEY, or a prompt."""
    return PinSource(
        pin_file=key_file,
        env_var=MANAGEMENT_KEY_ENV,
        prompt="PIV management key for token {token} (48 hex digits): ",
        what="PIV management key",
        hint=f"Set {MANAGEMENT_KEY_ENV}, pass --management-key-file FILE, or run the command "
        "on a terminal. The management key is never taken on the command line.",
    )


def check_management_key(key: Pin, *, allow_default: bool) -> bool:
    """Check the form of a management key; return True if it is the factory default.

    The factory default is refused unless `allow_default`: a card that still has it lets
    anyone who holds it replace its keys.
    """
    value = key.reveal().strip()
    if len(value) != MANAGEMENT_KEY_HEX_DIGITS or not set(value) <= set(string.hexdigits):
        raise ManagementKeyRefused(
            f"a PIV management key is {MANAGEMENT_KEY_HEX_DIGITS} hexadecimal digits "
            "(24 bytes, 3DES or AES-192)",
            hint="Check the key you were given; 'yubico-piv-tool -a set-mgm-key' sets a new one.",
        )
    if value.lower() != DEFAULT_MANAGEMENT_KEY:
        return False
    if not allow_default:
        raise ManagementKeyRefused(
            "the token still has the factory default management key, which anyone can use",
            hint="Set a new one first: yubico-piv-tool -a set-mgm-key -n NEW_KEY (see "
            "docs/yubikey.md), or pass --allow-default-management-key for a test card.",
        )
    return True


def locked_pin_hint() -> str:
    return (
        "Unblock the PIN with the PUK: yubico-piv-tool -a unblock-pin (or ykman piv access "
        "unblock-pin). After three wrong PUKs only a reset of the PIV applet helps, which "
        "destroys every key on it."
    )


def policy_hint(slot: str) -> str:
    return (
        "yubico-piv-tool sets both when it generates the key: yubico-piv-tool -k -a generate "
        f"-s {slot} -A ECCP256 --pin-policy=once --touch-policy=always; then use the key by "
        f"slot (--slot {slot}); docs/yubikey.md shows every step."
    )


# --- attestation objects (python-pkcs11 objects from the session) ----------------------------


def attestation_certificates(session: Any, key_id: bytes) -> tuple[bytes, bytes] | None:
    """(slot attestation certificate, device certificate of slot f9), both DER, or None.

    ykcs11 shows both as certificate objects: f9's with the f9 id, and the slot's with the key's
    own id beside the slot's ordinary certificate; the attestation one is the one f9 issued.
    """
    from asn1crypto import x509 as asn1_x509
    from pkcs11 import Attribute, ObjectClass

    def certificates(cka_id: bytes) -> list[bytes]:
        template = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: cka_id}
        return [bytes(o[Attribute.VALUE]) for o in session.get_objects(template)]

    devices = certificates(ATTESTATION_SLOT.id_bytes)
    if len(devices) != 1:
        return None
    device = devices[0]
    issuer = asn1_x509.Certificate.load(device).subject
    for der in certificates(key_id):
        if asn1_x509.Certificate.load(der).issuer == issuer:
            return der, device
    return None
