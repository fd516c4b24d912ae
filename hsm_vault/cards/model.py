"""The card model: snapshot, signatures and the one-line export.

Pure code: no I/O, no token. The format is specified in docs/cards.md; every format rule there
that says "must reject" is enforced here when an object is constructed (`CardFormatError`).
Whom to trust for which signature is decided in `hsm_vault.trust` (`verify_card`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from hsm_vault.algorithms import (
    OAEP_HASHES,
    KeyType,
    SignatureAlgorithm,
    key_id_of,
    key_type_of,
    load_spki,
    spki_fingerprint,
)
from hsm_vault.attestation import FORM_FACTOR_PATTERN, PIN_POLICIES, TOUCH_POLICIES
from hsm_vault.cards.canonical import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    hex_digest_field,
    parse_canonical_json,
)
from hsm_vault.errors import CardFormatError, CardVerificationError, KeyFormatError

CARD_VERSION = 1
CARD_TEXT_PREFIX = "hsmv-card-"
MAX_TEXT_LENGTH = 65536
SIGNATURE_DOMAIN = b"hsmv-card-sig-v1\n"

SELF = "self"
PREVIOUS = "previous"

_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_SIGNER = re.compile(r"[a-z][a-z0-9._:@-]{0,63}")
_DATA_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
MAX_DATA_ENTRIES = 32
MAX_DATA_VALUE = 1024
MAX_FIELD = 256


class IdentityType(StrEnum):
    """What kind of name a card's identity is."""

    EMAIL = "email"
    USERNAME = "username"
    HOSTNAME = "hostname"


class Scope(StrEnum):
    """What others may use the card's key for."""

    ENCRYPT = "encrypt"  # others may encrypt files to this key
    SIGN = "sign"  # signatures by this key (on files, statements) may be accepted


class WrapMethod(StrEnum):
    """How a file key is wrapped to the card's key (see docs/format.md)."""

    ECDH = "ecdh"
    RSA_OAEP = "rsa-oaep"


class RevocationReason(StrEnum):
    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "key-compromise"
    SUPERSEDED = "superseded"


# --- small field checks --------------------------------------------------------------------------


def _text_field(value: Any, what: str, limit: int = MAX_FIELD, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise CardFormatError(f"the {what} must be a string")
    if not value and not empty:
        raise CardFormatError(f"the {what} must not be empty")
    if len(value) > limit:
        raise CardFormatError(f"the {what} is longer than {limit} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in value):
        raise CardFormatError(f"the {what} contains control or unassigned characters")
    if unicodedata.normalize("NFC", value) != value:
        raise CardFormatError(f"the {what} is not in Unicode NFC form")
    return value


def check_time(value: Any, what: str = "created-at time") -> str:
    """An RFC 3339 UTC time with second precision: YYYY-MM-DDTHH:MM:SSZ."""
    if not isinstance(value, str) or _TIME.fullmatch(value) is None:
        raise CardFormatError(f"the {what} must look like 2026-01-31T12:00:00Z")
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise CardFormatError(f"the {what} is not a valid date and time") from None
    return value


def is_version(value: Any, expected: int) -> bool:
    """True for the integer `expected` only (JSON `true` equals 1 in Python: not a version)."""
    return type(value) is int and value == expected


def now_utc() -> str:
    """The current time in the format cards and statements use."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_signer(value: Any) -> str:
    if not isinstance(value, str) or _SIGNER.fullmatch(value) is None:
        raise CardFormatError(
            "a signer name must be 1-64 characters of a-z 0-9 . _ : @ - starting with a letter"
        )
    return value


def _enum(enum: type[StrEnum], value: Any, what: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        raise CardFormatError(f"unknown {what} {value!r}") from None


def _exact_keys(obj: Any, keys: Iterable[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise CardFormatError(f"the {what} must be a JSON object")
    expected = set(keys)
    if set(obj) != expected:
        missing = sorted(expected - set(obj))
        extra = sorted(set(obj) - expected)
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unexpected {', '.join(extra)}"] if extra else []
        raise CardFormatError(f"the {what} has the wrong fields ({'; '.join(parts)})")
    return obj


def check_identity(identity: str, identity_type: IdentityType) -> str:
    """Check an identity against the rules of its type; return it unchanged."""
    _text_field(identity, "identity")
    if identity != identity.strip() or " " in identity:
        raise CardFormatError("the identity must not contain spaces")
    if identity_type is IdentityType.EMAIL:
        local, at, domain = identity.rpartition("@")
        if not at or not local or not domain or "." not in domain.strip("."):
            raise CardFormatError(f"{identity!r} is not an email address")
    elif identity_type is IdentityType.USERNAME:
        if _USERNAME.fullmatch(identity) is None:
            raise CardFormatError(f"{identity!r} is not a username (A-Z a-z 0-9 . _ -)")
    elif _HOSTNAME.fullmatch(identity) is None:
        raise CardFormatError(f"{identity!r} is not a lower-case host name")
    return identity


def _load_public_key(spki_der: bytes) -> Any:
    """`load_spki`, its failures (and cryptography's UnsupportedAlgorithm) as format errors."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return load_spki(spki_der)
    except UnsupportedAlgorithm:
        raise CardFormatError("the public key is of an unknown algorithm") from None
    except KeyFormatError as exc:
        raise CardFormatError(exc.message) from None


def _key_type_of(public_key: Any) -> KeyType:
    """`key_type_of`, a curve or size hsm-vault does not use as a card format error."""
    try:
        return key_type_of(public_key)
    except KeyFormatError as exc:
        raise CardFormatError(exc.message) from None


def short_form(hex_digest: str, groups: int = 6) -> str:
    """A digest cut to `groups` groups of four upper-case hex digits, for reading aloud."""
    upper = hex_digest.upper()
    return " ".join(upper[i * 4 : i * 4 + 4] for i in range(groups))


MAX_CERTIFICATE = 4096
_FIRMWARE = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")


@dataclass(frozen=True)
class CardAttestation:
    """What the device that made the key attested, and the certificates that say so.

    `chain` is (the slot's attestation certificate, the device certificate that signed it),
    DER. The format is checked here; whether the chain verifies, to which roots, and whether it
    says what the other fields say is decided by `hsm_vault.trust.verify_card` (rule V10).
    """

    chain: tuple[bytes, ...]
    serial: int
    firmware: str
    pin_policy: str
    touch_policy: str
    form_factor: str

    def __post_init__(self) -> None:
        from cryptography import x509

        chain = tuple(self.chain)
        if len(chain) != 2:
            raise CardFormatError(
                "the attestation chain must be two certificates (attestation, device)"
            )
        for der in chain:
            if not isinstance(der, bytes) or not 0 < len(der) <= MAX_CERTIFICATE:
                raise CardFormatError(
                    f"an attestation certificate must be 1 to {MAX_CERTIFICATE} bytes of DER"
                )
            try:
                x509.load_der_x509_certificate(der)
            except ValueError:
                raise CardFormatError("an attestation certificate is not DER X.509") from None
        object.__setattr__(self, "chain", chain)
        if type(self.serial) is not int or not 0 <= self.serial < 2**53:
            raise CardFormatError("the attested serial must be a whole number from 0")
        if not isinstance(self.firmware, str) or _FIRMWARE.fullmatch(self.firmware) is None:
            raise CardFormatError("the attested firmware must look like 5.4.3")
        if any(int(part) > 255 for part in self.firmware.split(".")):
            raise CardFormatError("the attested firmware must look like 5.4.3")
        if self.pin_policy not in PIN_POLICIES.values():
            raise CardFormatError(f"unknown attested PIN policy {self.pin_policy!r}")
        if self.touch_policy not in TOUCH_POLICIES.values():
            raise CardFormatError(f"unknown attested touch policy {self.touch_policy!r}")
        if (
            not isinstance(self.form_factor, str)
            or re.fullmatch(FORM_FACTOR_PATTERN, self.form_factor) is None
        ):
            raise CardFormatError(f"bad attested form factor {self.form_factor!r}")

    @property
    def attestation_der(self) -> bytes:
        return self.chain[0]

    @property
    def device_der(self) -> bytes:
        return self.chain[1]

    def stated(self) -> dict[str, Any]:
        """The attested fields (without the chain), as `Attestation.as_json` names them."""
        return {
            "serial": self.serial,
            "firmware": self.firmware,
            "pin_policy": self.pin_policy,
            "touch_policy": self.touch_policy,
            "form_factor": self.form_factor,
        }

    def to_json(self) -> dict[str, Any]:
        return {"chain": [b64url_encode(der) for der in self.chain], **self.stated()}

    @classmethod
    def from_json(cls, obj: Any) -> CardAttestation:
        obj = _exact_keys(
            obj,
            ("chain", "firmware", "form_factor", "pin_policy", "serial", "touch_policy"),
            "attestation",
        )
        if not isinstance(obj["chain"], list):
            raise CardFormatError("the attestation chain must be a list")
        return cls(
            chain=tuple(b64url_decode(c, "attestation certificate") for c in obj["chain"]),
            serial=obj["serial"],
            firmware=obj["firmware"],
            pin_policy=obj["pin_policy"],
            touch_policy=obj["touch_policy"],
            form_factor=obj["form_factor"],
        )


# --- the snapshot --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenProvenance:
    """What the token said about itself and about the key when the card was made.

    Self-asserted by the card's owner (signed with the card): it is not an attestation.
    """

    manufacturer: str
    model: str
    serial: str
    local: bool
    never_extractable: bool
    always_sensitive: bool
    local_not_reported: bool = False
    """The token's model reports CKA_LOCAL false even for keys it generated (NSS does), and an
    officer allowed that model: `local` is false because the token cannot say, not because
    the key was imported."""

    def __post_init__(self) -> None:
        for name in ("manufacturer", "model", "serial"):
            _text_field(getattr(self, name), f"token {name}", 64, empty=True)
        for name in ("local", "never_extractable", "always_sensitive", "local_not_reported"):
            if not isinstance(getattr(self, name), bool):
                raise CardFormatError(f"the provenance field {name} must be true or false")
        if self.local and self.local_not_reported:
            raise CardFormatError("provenance: local_not_reported with local true")

    @property
    def protected(self) -> bool:
        """True when the token said the key was made on it and can never leave it."""
        made_here = self.local or self.local_not_reported
        return made_here and self.never_extractable and self.always_sensitive

    @property
    def local_text(self) -> str:
        return "not reported by the token" if self.local_not_reported else str(self.local)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "always_sensitive": self.always_sensitive,
            "local": self.local,
            "manufacturer": self.manufacturer,
            "model": self.model,
            "never_extractable": self.never_extractable,
            "serial": self.serial,
        }
        if self.local_not_reported:  # absent otherwise: older cards keep their bytes and ids
            body["local_not_reported"] = True
        return body

    @classmethod
    def from_json(cls, obj: Any) -> TokenProvenance:
        if isinstance(obj, dict) and "local_not_reported" in obj:
            obj = dict(obj)
            flag = obj.pop("local_not_reported")
            if flag is not True:
                raise CardFormatError("provenance: local_not_reported may only be present as true")
            return replace(cls.from_json(obj), local_not_reported=True)
        obj = _exact_keys(
            obj,
            (
                "always_sensitive",
                "local",
                "manufacturer",
                "model",
                "never_extractable",
                "serial",
            ),
            "provenance",
        )
        return cls(**obj)


@dataclass(frozen=True)
class CardSnapshot:
    """The signed content of a card. Its canonical bytes are what the card id hashes.

    Invalid snapshots cannot be constructed: every field is checked here, including that the
    key algorithm and the wrap parameters fit the public key.
    """

    identity: str
    identity_type: IdentityType
    spki_der: bytes
    key_type: KeyType
    wrap_method: WrapMethod
    oaep_hash: str | None
    scope: tuple[Scope, ...]
    data: Mapping[str, str]
    created_at: str
    previous_id: str | None
    provenance: TokenProvenance
    #: What the device attested about the key; None: not attested (the field is then absent,
    #: so cards made before attestation keep their bytes and ids).
    attestation: CardAttestation | None = None
    version: int = CARD_VERSION

    def __post_init__(self) -> None:
        if not is_version(self.version, CARD_VERSION):
            raise CardFormatError(f"unknown card snapshot version {self.version!r}")
        object.__setattr__(
            self, "identity_type", _enum(IdentityType, self.identity_type, "identity type")
        )
        check_identity(self.identity, self.identity_type)
        if not isinstance(self.spki_der, bytes):
            raise CardFormatError("the public key must be DER bytes")
        public_key = _load_public_key(self.spki_der)
        # One key, one encoding: the SPKI must be the DER that `cryptography` produces.
        from cryptography.hazmat.primitives import serialization

        der = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if der != self.spki_der:
            raise CardFormatError("the public key is not in canonical DER form")
        key_type = _enum(KeyType, self.key_type, "key algorithm")
        object.__setattr__(self, "key_type", key_type)
        actual = _key_type_of(public_key)
        if actual != key_type:
            raise CardFormatError(
                f"the key algorithm {key_type} does not match the public key ({actual})"
            )
        method = _enum(WrapMethod, self.wrap_method, "wrap method")
        object.__setattr__(self, "wrap_method", method)
        if key_type.is_ec:
            if method is not WrapMethod.ECDH or self.oaep_hash is not None:
                raise CardFormatError("an EC card must use the ecdh wrap method, no OAEP hash")
        else:
            if method is not WrapMethod.RSA_OAEP:
                raise CardFormatError("an RSA card must use the rsa-oaep wrap method")
            if self.oaep_hash not in OAEP_HASHES:
                raise CardFormatError(f"unknown OAEP hash {self.oaep_hash!r}")
        scope = tuple(_enum(Scope, s, "scope") for s in self.scope)
        if not scope:
            raise CardFormatError("the scope must name at least one use")
        if list(scope) != sorted(set(scope)):
            raise CardFormatError("the scope must be sorted and without repeats")
        object.__setattr__(self, "scope", scope)
        if not isinstance(self.data, Mapping):
            raise CardFormatError("the custom data must be a mapping of strings")
        if len(self.data) > MAX_DATA_ENTRIES:
            raise CardFormatError(f"a card holds at most {MAX_DATA_ENTRIES} custom fields")
        for key, value in self.data.items():
            if not isinstance(key, str) or _DATA_KEY.fullmatch(key) is None:
                raise CardFormatError(
                    f"custom field name {key!r} must be 1-64 of a-z 0-9 . _ - (lower case)"
                )
            _text_field(value, f"custom field {key}", MAX_DATA_VALUE, empty=True)
        object.__setattr__(self, "data", MappingProxyType(dict(sorted(self.data.items()))))
        check_time(self.created_at)
        if self.previous_id is not None:
            hex_digest_field(self.previous_id, "previous card id")
        if not isinstance(self.provenance, TokenProvenance):
            raise CardFormatError("the provenance must be a TokenProvenance")
        if self.attestation is not None and not isinstance(self.attestation, CardAttestation):
            raise CardFormatError("the attestation must be a CardAttestation")

    def to_json(self) -> dict[str, Any]:
        """The snapshot as a JSON object (see docs/cards.md for the field list)."""
        wrap: dict[str, Any] = {"method": self.wrap_method.value}
        if self.oaep_hash is not None:
            wrap["oaep_hash"] = self.oaep_hash
        body: dict[str, Any] = {
            "created_at": self.created_at,
            "data": dict(self.data),
            "identity": self.identity,
            "identity_type": self.identity_type.value,
            "key": {"algorithm": self.key_type.value, "spki": b64url_encode(self.spki_der)},
            "previous": self.previous_id,
            "provenance": self.provenance.to_json(),
            "scope": [s.value for s in self.scope],
            "type": "hsmv-card",
            "version": self.version,
            "wrap": wrap,
        }
        if self.attestation is not None:
            body["attestation"] = self.attestation.to_json()
        return body

    def to_bytes(self) -> bytes:
        """The canonical snapshot bytes (the card id is their SHA-256)."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any) -> CardSnapshot:
        """Build a snapshot from its JSON object, checking every field."""
        if isinstance(obj, dict) and not is_version(obj.get("version"), CARD_VERSION):
            raise CardFormatError(f"unknown card snapshot version {obj.get('version')!r}")
        attestation = None
        if isinstance(obj, dict) and "attestation" in obj:
            obj = dict(obj)
            attestation = CardAttestation.from_json(obj.pop("attestation"))
        obj = _exact_keys(
            obj,
            (
                "created_at",
                "data",
                "identity",
                "identity_type",
                "key",
                "previous",
                "provenance",
                "scope",
                "type",
                "version",
                "wrap",
            ),
            "card snapshot",
        )
        if obj["type"] != "hsmv-card":
            raise CardFormatError("the snapshot type is not hsmv-card")
        key = _exact_keys(obj["key"], ("algorithm", "spki"), "key field")
        wrap = obj["wrap"]
        if isinstance(wrap, dict) and wrap.get("method") == WrapMethod.RSA_OAEP.value:
            wrap = _exact_keys(wrap, ("method", "oaep_hash"), "wrap field")
        else:
            wrap = _exact_keys(wrap, ("method",), "wrap field")
        if not isinstance(obj["scope"], list):
            raise CardFormatError("the scope must be a list")
        if not isinstance(obj["data"], dict):
            raise CardFormatError("the custom data must be an object of strings")
        return cls(
            identity=obj["identity"],
            identity_type=obj["identity_type"],
            spki_der=b64url_decode(key["spki"], "public key"),
            key_type=key["algorithm"],
            wrap_method=wrap["method"],
            oaep_hash=wrap.get("oaep_hash"),
            scope=tuple(obj["scope"]),
            data=obj["data"],
            created_at=obj["created_at"],
            previous_id=obj["previous"],
            provenance=TokenProvenance.from_json(obj["provenance"]),
            attestation=attestation,
            version=obj["version"],
        )

    @property
    def id(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def __hash__(self) -> int:
        # The data mapping is read-only but not hashable; the canonical bytes say it all.
        return hash(self.to_bytes())


# --- signatures and the card -----------------------------------------------------------------


@dataclass(frozen=True)
class CardSignature:
    """One signature over `Card.signing_message(signer)`.

    `key_id` is the SHA-256 of the signer's SubjectPublicKeyInfo (32 bytes).
    """

    signer: str
    key_id: bytes
    algorithm: SignatureAlgorithm
    signature: bytes

    def __post_init__(self) -> None:
        check_signer(self.signer)
        if not isinstance(self.key_id, bytes) or len(self.key_id) != 32:
            raise CardFormatError("a signer key id must be 32 bytes (SHA-256 of its public key)")
        object.__setattr__(
            self, "algorithm", _enum(SignatureAlgorithm, self.algorithm, "signature algorithm")
        )
        if not isinstance(self.signature, bytes) or not 0 < len(self.signature) <= 1024:
            raise CardFormatError("a signature must be 1 to 1024 bytes")

    def __repr__(self) -> str:
        return f"CardSignature(signer={self.signer!r}, key_id={self.key_id.hex()[:16]}..)"

    def to_json(self) -> dict[str, Any]:
        return {
            "alg": self.algorithm.value,
            "key_id": self.key_id.hex(),
            "sig": b64url_encode(self.signature),
            "signer": self.signer,
        }

    @classmethod
    def from_json(cls, obj: Any) -> CardSignature:
        obj = _exact_keys(obj, ("alg", "key_id", "sig", "signer"), "signature entry")
        return cls(
            signer=obj["signer"],
            key_id=bytes.fromhex(hex_digest_field(obj["key_id"], "signer key id")),
            algorithm=obj["alg"],
            signature=b64url_decode(obj["sig"], "signature"),
        )


@dataclass(frozen=True)
class Card:
    """A snapshot and its signatures. Signatures are kept sorted by signer, one per signer."""

    snapshot: CardSnapshot
    signatures: tuple[CardSignature, ...] = ()
    # Derived once at construction; not part of equality beyond the snapshot itself.
    _snapshot_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.snapshot, CardSnapshot):
            raise CardFormatError("a card needs a CardSnapshot")
        signatures = tuple(self.signatures)
        names = [s.signer for s in signatures]
        if len(set(names)) != len(names):
            raise CardFormatError("a card holds at most one signature per signer")
        object.__setattr__(
            self, "signatures", tuple(sorted(signatures, key=lambda s: s.signer.encode()))
        )
        object.__setattr__(self, "_snapshot_bytes", self.snapshot.to_bytes())

    def __repr__(self) -> str:
        return f"Card(id={self.id[:16]}.., identity={self.identity!r}, signers={self.signers})"

    # -- derived properties
    @property
    def snapshot_bytes(self) -> bytes:
        return self._snapshot_bytes

    @property
    def id(self) -> str:
        """Hex SHA-256 of the canonical snapshot bytes."""
        return hashlib.sha256(self._snapshot_bytes).hexdigest()

    @property
    def identity(self) -> str:
        return self.snapshot.identity

    @property
    def identity_type(self) -> IdentityType:
        return self.snapshot.identity_type

    @property
    def spki_der(self) -> bytes:
        return self.snapshot.spki_der

    @property
    def key_type(self) -> KeyType:
        return self.snapshot.key_type

    @property
    def oaep_hash(self) -> str | None:
        """For RSA keys the OAEP hash the token accepts ("sha1" or "sha256"); None for EC."""
        return self.snapshot.oaep_hash

    @property
    def previous_id(self) -> str | None:
        return self.snapshot.previous_id

    @property
    def created_at(self) -> str:
        return self.snapshot.created_at

    @property
    def attestation(self) -> CardAttestation | None:
        """What the card states its device attested (verified by `verify_card`), or None."""
        return self.snapshot.attestation

    @property
    def key_id(self) -> bytes:
        """SHA-256 of the SPKI DER (32 bytes): how envelopes name this card's key."""
        return key_id_of(self.snapshot.spki_der)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the SPKI DER, as `key list` and `openssl pkey -pubin` show it."""
        return spki_fingerprint(self.snapshot.spki_der)

    @property
    def short_id(self) -> str:
        """The card id as six groups of four hex digits, for comparing aloud."""
        return short_form(self.id)

    @property
    def signers(self) -> tuple[str, ...]:
        return tuple(s.signer for s in self.signatures)

    def signature_by(self, signer: str) -> CardSignature | None:
        return next((s for s in self.signatures if s.signer == signer), None)

    # -- signing
    def signing_message(self, signer: str) -> bytes:
        """The domain-separated message `signer` signs: domain, signer name, raw card id."""
        check_signer(signer)
        return SIGNATURE_DOMAIN + signer.encode("ascii") + b"\n" + bytes.fromhex(self.id)

    def with_signature(self, signature: CardSignature) -> Card:
        """A copy with `signature` added (replacing one by the same signer); same id."""
        kept = tuple(s for s in self.signatures if s.signer != signature.signer)
        return replace(self, signatures=(*kept, signature))

    # -- text form
    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "signatures": [s.to_json() for s in self.signatures],
            "snapshot": self.snapshot.to_json(),
            "version": CARD_VERSION,
        }

    def to_text(self) -> str:
        """The one-line export: `hsmv-card-1:` and base64url of the canonical envelope."""
        return f"{CARD_TEXT_PREFIX}{CARD_VERSION}:" + b64url_encode(canonical_json(self.to_json()))

    @classmethod
    def from_text(cls, text: str) -> Card:
        """Parse a one-line export.

        Raises `CardFormatError` for anything malformed, non-canonical or of an unknown version,
        and `CardVerificationError` if the stated card id is not the snapshot's. Signatures are
        not checked here: call `verify_card`.
        """
        if not isinstance(text, str):
            raise CardFormatError("a card must be text")
        text = text.strip(" \t\r\n")
        if len(text) > MAX_TEXT_LENGTH:
            raise CardFormatError("the card text is too long")
        head, colon, body = text.partition(":")
        if not colon or not head.startswith(CARD_TEXT_PREFIX):
            raise CardFormatError("this is not an hsm-vault card (it must start with hsmv-card-)")
        version = head[len(CARD_TEXT_PREFIX) :]
        if version != str(CARD_VERSION):
            raise CardFormatError(f"unknown card version {version!r} (this hsm-vault reads 1)")
        raw = b64url_decode(body, "card text")
        return cls.from_bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Card:
        """Parse the canonical envelope bytes (the base64url-decoded body of the text)."""
        obj = parse_canonical_json(raw, "card")
        if isinstance(obj, dict) and not is_version(obj.get("version"), CARD_VERSION):
            raise CardFormatError(f"unknown card envelope version {obj.get('version')!r}")
        obj = _exact_keys(obj, ("id", "signatures", "snapshot", "version"), "card")
        stated = hex_digest_field(obj["id"], "card id")
        snapshot = CardSnapshot.from_json(obj["snapshot"])
        if not isinstance(obj["signatures"], list):
            raise CardFormatError("the signatures must be a list")
        signatures = tuple(CardSignature.from_json(s) for s in obj["signatures"])
        names = [s.signer.encode() for s in signatures]
        if names != sorted(names):
            raise CardFormatError("the signatures are not sorted by signer")
        card = cls(snapshot, signatures)
        if card.id != stated:
            raise CardVerificationError(
                "the card id does not match its content (the card was changed)"
            )
        return card
