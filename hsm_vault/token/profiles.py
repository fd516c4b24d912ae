"""What each known PKCS#11 implementation does, as data (pure: no I/O, no pkcs11).

The capability probe (`capabilities.py`) measures most of what a token can do; a profile holds
what cannot be measured safely or cheaply, or what a token reports wrongly, each fact with the
reason it is there. As in python-pkcs11's `defaults.py`: correctness should not be assumed;
these are the behaviours measured on the versions named in docs/tokens.md. Nothing outside
this module decides anything by an implementation's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final


@dataclass(frozen=True)
class Profile:
    """One PKCS#11 implementation: how to recognise it and what to know about it."""

    name: str
    """Shown to users: 'token alice (tpm2-pkcs11 1.9.0) cannot ...'."""

    library: tuple[str, ...] = ()
    """Prefixes of the module's library description or manufacturer (C_GetInfo)."""

    token_manufacturer: tuple[str, ...] = ()
    """Prefixes of a token's manufacturerID (C_GetTokenInfo), for tokens behind a proxy."""

    module_files: tuple[str, ...] = ()
    """File names of the module, for discovery through p11-kit's registry."""

    discover_when: tuple[str, ...] = ()
    """Discovery loads the module only if one of these environment variables or paths exists
    (a TPM module without a TPM writes errors to stderr and files to $HOME when loaded)."""

    session_keys: bool = True
    """The probe may generate temporary session key pairs (PIV tokens store keys in slots)."""

    facts: Mapping[str, Any] = field(default_factory=dict)
    """Capabilities fields fixed by the profile, overriding the probe, with `reasons` below."""

    reasons: Mapping[str, str] = field(default_factory=dict)
    """Why an operation is unavailable, for error messages: operation -> reason."""

    @property
    def piv(self) -> bool:
        """A PIV card: keys in slots, made with the management key (see `token/piv.py`)."""
        return bool(self.facts.get("piv"))

    def discoverable(self) -> bool:
        return not self.discover_when or any(
            os.environ.get(item) or (item.startswith("/") and os.path.exists(item))
            for item in self.discover_when
        )


GENERIC: Final = Profile(name="PKCS#11 token")

PROFILES: Final[tuple[Profile, ...]] = (
    Profile(
        name="SoftHSM",
        library=("SoftHSM",),
        token_manufacturer=("SoftHSM",),
        module_files=("libsofthsm2.so",),
    ),
    Profile(
        name="tpm2-pkcs11",
        library=("TPM2.0 Cryptoki", "tpm2-software"),
        # Token strings come from the TPM's vendor fields: "IBM" "SW   TPM" on swtpm.
        token_manufacturer=("TPM",),
        module_files=("libtpm2_pkcs11.so",),
        discover_when=("TPM2_PKCS11_TCTI", "TPM2_PKCS11_STORE", "/dev/tpmrm0"),
        # The TPM generates RSA up to 3072 bits; 4096 fails with AttributeValueInvalid.
        facts={"max_rsa_bits": 3072},
        reasons={
            "rsa-4096": "the TPM generates RSA keys of at most 3072 bits",
        },
    ),
    Profile(
        name="NSS softokn",
        library=("NSS Internal", "Mozilla Foundation"),
        # Reached through p11-kit-proxy, whose own description names p11-kit.
        token_manufacturer=("Mozilla Foundation",),
        # NSS reports CKA_LOCAL false even for keys it generated (measured, NSS 3.87).
        facts={"reports_local": False},
        reasons={"local": "NSS reports CKA_LOCAL false even for keys it generated itself"},
    ),
    Profile(
        name="opencryptoki",
        library=("openCryptoki", "IBM Meta PKCS11"),
        token_manufacturer=("IBM Corp.",),
        module_files=("libopencryptoki.so",),
        discover_when=("/var/run/pkcsslotd.pid", "/run/pkcsslotd.pid"),
    ),
    Profile(
        name="ykcs11",
        library=("Yubico",),
        token_manufacturer=("Yubico",),
        module_files=("libykcs11.so",),
        session_keys=False,
        # A YubiKey's PIV applet: keys live in slots and are made with the management key.
        # ykcs11 2.2.0 refuses CKA_EXTRACTABLE in a template and RSA-3072 (AttributeValueInvalid).
        facts={
            "generates": ("ec-p256", "ec-p384", "rsa-2048"),
            "ecdh": "raw",
            "oaep_hashes": ("sha256", "sha1"),
            "pss": "rsa-pkcs-pss",
            "reports_local": True,
            "template": "piv",
            "piv": True,
        },
        reasons={
            "rsa-3072": "ykcs11 2.2 generates RSA-2048 at most on PIV",
            "rsa-4096": "ykcs11 2.2 generates RSA-2048 at most on PIV",
            "policy": "ykcs11 has no attribute for a key's PIN or touch policy",
        },
    ),
    Profile(
        name="OpenSC PIV",
        library=("OpenSC",),
        token_manufacturer=("piv_II", "PIV"),
        module_files=("opensc-pkcs11.so",),
        session_keys=False,
        # OpenSC 0.23's PIV driver shows only keys whose slot holds a certificate; 9d decrypts
        # and derives but does not sign (CKR_KEY_TYPE_INCONSISTENT).
        facts={
            "generates": (),
            "ecdh": "raw",
            "oaep_hashes": ("sha1",),
            "pss": "rsa-pkcs-pss",
            "reports_local": True,
            "template": "piv",
            "piv": True,
        },
        reasons={
            "generate": "hsm-vault generates PIV keys through Yubico's ykcs11 only",
            "sign": "OpenSC's PIV driver signs with slots 9a and 9c only; it treats 9d as a "
            "decryption key",
            "policy": "OpenSC's PKCS#11 module has no attribute for a key's PIN or touch policy",
        },
    ),
)


def _matches(prefixes: tuple[str, ...], value: str) -> bool:
    return any(p in value for p in prefixes)


def profile_for(library: str, token_manufacturer: str, token_model: str) -> Profile:
    """The profile of a token, from what its module (C_GetInfo: description and manufacturer,
    joined) and the token itself say.

    The module decides when it is one we know; behind p11-kit-proxy, whose description names
    p11-kit, the token's own manufacturer and model decide.
    """
    for profile in PROFILES:
        if _matches(profile.library, library):
            return profile
    token = f"{token_manufacturer.strip()} {token_model.strip()}"
    for profile in PROFILES:
        if _matches(profile.token_manufacturer, token):
            return profile
    return GENERIC


def profile_for_module_file(path: str) -> Profile:
    """The profile whose module file this is (for discovery), else the generic one."""
    name = os.path.basename(path)
    for profile in PROFILES:
        if any(name.startswith(f.removesuffix(".so")) for f in profile.module_files):
            return profile
    return GENERIC
