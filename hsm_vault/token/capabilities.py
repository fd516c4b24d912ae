"""What a token can do: the record the probe fills in, and its cache on disk.

Every operation reads a `Capabilities` instead of asking which implementation it talks to.
Probing generates throw-away session keys, so results are cached per token model, firmware
and module (not per token: two YubiKeys of one firmware behave alike) in the user's data
folder. `hsm-vault token info --probe` measures again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from hsm_vault.algorithms import KeyType
from hsm_vault.config import data_dir, write_private_file
from hsm_vault.token.profiles import Profile

CACHE_VERSION = 1
CACHE_FILE = "token-capabilities.json"

# The order `key generate` without --type tries: the first the token can make and decrypt with.
PREFERRED_KEY_TYPES = (
    KeyType.EC_P256,
    KeyType.EC_P384,
    KeyType.RSA_3072,
    KeyType.RSA_2048,
    KeyType.RSA_4096,
)


class PointEncoding(StrEnum):
    """How the token wants the peer's point in CKM_ECDH1_DERIVE parameters."""

    RAW = "raw"  # the X9.62 point itself (PKCS#11 2.40's recommendation)
    DER = "der"  # the point wrapped in a DER OCTET STRING (some older tokens)


class PSSMode(StrEnum):
    """How the token makes RSA-PSS-SHA256 signatures."""

    ON_TOKEN = "sha256-rsa-pkcs-pss"  # CKM_SHA256_RSA_PKCS_PSS: the token hashes
    SOFTWARE_HASH = "rsa-pkcs-pss"  # CKM_RSA_PKCS_PSS over a SHA-256 computed here


class TemplateVariant(StrEnum):
    """Which key-generation template the token accepts."""

    MINIMAL = "minimal"  # only the attributes hsm-vault needs; the rest left to the token
    EXPLICIT = "explicit"  # every usage attribute set, true or false (python-pkcs11's default)
    PIV = "piv"  # minimal without CKA_EXTRACTABLE, which PIV modules refuse (AttributeTypeInvalid)


# What a token of unknown kind is tried with, in order; PIV's comes only from a profile.
GENERAL_TEMPLATES = (TemplateVariant.MINIMAL, TemplateVariant.EXPLICIT)


@dataclass(frozen=True)
class Capabilities:
    """What one token model does, as measured (or fixed by its profile)."""

    profile: str
    generates: tuple[KeyType, ...] = ()
    ecdh: PointEncoding | None = None
    oaep_hashes: tuple[str, ...] = ()
    pss: PSSMode | None = None
    ecdsa: bool = True
    template: TemplateVariant = TemplateVariant.MINIMAL
    reports_local: bool = True
    max_rsa_bits: int = 4096
    piv: bool = False
    reasons: Mapping[str, str] = field(default_factory=dict)
    """Why an operation or key type is unavailable: 'ecdh', 'oaep', 'pss', 'rsa-4096', ..."""

    def can_generate(self, key_type: KeyType) -> bool:
        return key_type in self.generates

    def can_decrypt(self, key_type: KeyType) -> bool:
        """Whether keys of this type on the token can unwrap a file key."""
        return self.ecdh is not None if key_type.is_ec else bool(self.oaep_hashes)

    def can_sign(self, key_type: KeyType) -> bool:
        return self.ecdsa if key_type.is_ec else self.pss is not None

    def best_key_type(self) -> KeyType | None:
        """The first preferred type the token can both generate and decrypt with."""
        return next(
            (t for t in PREFERRED_KEY_TYPES if self.can_generate(t) and self.can_decrypt(t)),
            None,
        )

    def why_not(self, what: str) -> str:
        return self.reasons.get(what, "the token does not offer it")

    def why_unusable(self, key_type: KeyType) -> str | None:
        """Why keys of this type cannot both be made and decrypt here; None if they can."""
        if not self.can_generate(key_type):
            return self.why_not(str(key_type))
        if not self.can_decrypt(key_type):
            return self.why_not("ecdh" if key_type.is_ec else "oaep")
        return None

    def with_profile(self, profile: Profile) -> Capabilities:
        """These capabilities with the profile's fixed facts laid over them."""
        facts = dict(profile.facts)
        if "generates" in facts:
            facts["generates"] = tuple(KeyType(t) for t in facts["generates"])
        if "ecdh" in facts:
            facts["ecdh"] = PointEncoding(facts["ecdh"]) if facts["ecdh"] else None
        if "pss" in facts:
            facts["pss"] = PSSMode(facts["pss"]) if facts["pss"] else None
        if "template" in facts:
            facts["template"] = TemplateVariant(facts["template"])
        merged = replace(self, profile=profile.name, **facts)
        generates = tuple(t for t in merged.generates if t.is_ec or t.bits <= merged.max_rsa_bits)
        return replace(merged, generates=generates, reasons={**self.reasons, **profile.reasons})

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["generates"] = [str(t) for t in self.generates]
        body["oaep_hashes"] = list(self.oaep_hashes)
        body["reasons"] = dict(self.reasons)
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Capabilities:
        return cls(
            profile=str(body["profile"]),
            generates=tuple(KeyType(t) for t in body["generates"]),
            ecdh=PointEncoding(body["ecdh"]) if body.get("ecdh") else None,
            oaep_hashes=tuple(body["oaep_hashes"]),
            pss=PSSMode(body["pss"]) if body.get("pss") else None,
            ecdsa=bool(body["ecdsa"]),
            template=TemplateVariant(body["template"]),
            reports_local=bool(body["reports_local"]),
            max_rsa_bits=int(body["max_rsa_bits"]),
            piv=bool(body.get("piv", False)),
            reasons=dict(body.get("reasons", {})),
        )


class CapabilityCache:
    """Probed capabilities by token model, in one JSON file in the data folder."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or data_dir() / CACHE_FILE

    def _read(self) -> dict[str, Any]:
        try:
            body = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a missing or unreadable cache only costs a new probe
        if not isinstance(body, dict) or body.get("version") != CACHE_VERSION:
            return {}
        models = body.get("models")
        return models if isinstance(models, dict) else {}

    def get(self, model_key: str) -> Capabilities | None:
        entry = self._read().get(model_key)
        if entry is None:
            return None
        try:
            return Capabilities.from_json(entry)
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, model_key: str, capabilities: Capabilities) -> None:
        models = self._read()
        models[model_key] = capabilities.as_json()
        body = {"version": CACHE_VERSION, "models": models}
        write_private_file(self.path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
