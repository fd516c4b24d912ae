"""The byte format of an hsm-vault file header (docs/format.md): pure encoding and parsing.

No I/O, no token, no cryptography beyond what parsing needs: this module turns header bytes
into checked values and back. Recipient entries are CMS RecipientInfo structures (RFC 5652,
RFC 5753, RFC 8017/4055) encoded with asn1crypto.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from asn1crypto import algos, cms, core, keys

from hsm_vault.algorithms import OAEP_HASHES, KeyType, SignatureAlgorithm
from hsm_vault.errors import HeaderError

MAGIC = b"HSMV\r\n\x1a\n"
VERSION = 1
#: Version 2 is version 1 with recovery entries (docs/format.md): a writer uses it only for a
#: file that has them, so files without recovery stay readable by every version 1 reader.
RECOVERY_VERSION = 2
VERSIONS = (VERSION, RECOVERY_VERSION)
MAX_SHARES = 64
PREFIX_LENGTH = len(MAGIC) + 1 + 4
MAC_LENGTH = 32
KEY_ID_LENGTH = 32
FILE_KEY_LENGTH = 32
SALT_LENGTH = 32
TAG_LENGTH = 16
MAX_BODY_LENGTH = 1 << 20
MAX_RECIPIENTS = 1024
MIN_CHUNK_SIZE = 1 << 10
MAX_CHUNK_SIZE = 1 << 22
DEFAULT_CHUNK_SIZE = 1 << 20
PAYLOAD_ALGORITHM = "aes-256-gcm-stream"

# RFC 5753 dhSinglePass-stdDH-sha256kdf-scheme: asn1crypto 1.5 does not know it. Extending an
# OID map is how asn1crypto is meant to be taught new algorithms.
_ECDH_SHA256KDF_OID = "1.3.132.1.11.1"
_ECDH_SHA256KDF = "dh_single_pass_std_dh_sha256kdf_scheme"
cms.KeyEncryptionAlgorithmId._map.setdefault(_ECDH_SHA256KDF_OID, _ECDH_SHA256KDF)
if cms.KeyEncryptionAlgorithmId._reverse_map is not None:
    cms.KeyEncryptionAlgorithmId._reverse_map.setdefault(_ECDH_SHA256KDF, _ECDH_SHA256KDF_OID)
cms.KeyEncryptionAlgorithm._oid_specs.setdefault(_ECDH_SHA256KDF, cms.KeyEncryptionAlgorithm)

_RSA_BY_LENGTH = {256: KeyType.RSA_2048, 384: KeyType.RSA_3072, 512: KeyType.RSA_4096}
_SIGNATURE_LENGTHS = {
    SignatureAlgorithm.ECDSA_SHA256: (64,),
    SignatureAlgorithm.ECDSA_SHA384: (96,),
    SignatureAlgorithm.RSA_PSS_SHA256: (256, 384, 512),
}


class ECCCMSSharedInfo(core.Sequence):
    """RFC 5753 ECC-CMS-SharedInfo: the X9.63 KDF's shared info."""

    _fields = [  # noqa: RUF012 (asn1crypto's declaration style)
        ("key_info", cms.KeyEncryptionAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


class _RecipientInfos(core.SequenceOf):
    _child_spec = cms.RecipientInfo


class _PayloadParameters(core.Sequence):
    _fields = [  # noqa: RUF012
        ("algorithm", core.UTF8String),
        ("chunk_size", core.Integer),
        ("salt", core.OctetString),
    ]


class _SignerReference(core.Sequence):
    _fields = [  # noqa: RUF012
        ("card_id", core.OctetString),
        ("key_id", core.OctetString),
        ("algorithm", core.UTF8String),
        ("signature_length", core.Integer),
    ]


class _RecoveryShare(core.Sequence):
    _fields = [  # noqa: RUF012
        ("index", core.Integer),
        ("entry", cms.RecipientInfo),
    ]


class _RecoveryShares(core.SequenceOf):
    _child_spec = _RecoveryShare


class _Recovery(core.Sequence):
    _fields = [  # noqa: RUF012
        ("threshold", core.Integer),
        ("shares", _RecoveryShares),
    ]


class _HeaderBody(core.Sequence):
    _fields = [  # noqa: RUF012
        ("recipients", _RecipientInfos),
        ("payload", _PayloadParameters),
        ("signer", _SignerReference, {"implicit": 0, "optional": True}),
        ("recovery", _Recovery, {"implicit": 1, "optional": True}),
    ]


def kdf_shared_info() -> bytes:
    """DER ECC-CMS-SharedInfo for AES-256 key wrap: keyInfo id-aes256-wrap, 256 bits."""
    return ECCCMSSharedInfo(
        {"key_info": {"algorithm": "aes256_wrap"}, "supp_pub_info": struct.pack(">I", 256)}
    ).dump()


@dataclass(frozen=True)
class PayloadParameters:
    """How the payload is chunked and keyed."""

    chunk_size: int
    salt: bytes
    algorithm: str = PAYLOAD_ALGORITHM

    def __post_init__(self) -> None:
        if self.algorithm != PAYLOAD_ALGORITHM:
            raise HeaderError(f"unknown payload algorithm {self.algorithm!r}")
        size = self.chunk_size
        if not (MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE) or size & (size - 1):
            raise HeaderError(f"chunk size {size} is not an allowed power of two")
        if len(self.salt) != SALT_LENGTH:
            raise HeaderError("payload salt is not 32 bytes")


@dataclass(frozen=True)
class SignerReference:
    """Who signed the file (a card id) and what the trailer holds."""

    card_id: bytes
    key_id: bytes
    algorithm: SignatureAlgorithm
    signature_length: int

    def __post_init__(self) -> None:
        if len(self.card_id) != 32 or len(self.key_id) != KEY_ID_LENGTH:
            raise HeaderError("signer card id or key id is not 32 bytes")
        if self.signature_length not in _SIGNATURE_LENGTHS[self.algorithm]:
            raise HeaderError("signature length does not fit the signature algorithm")

    @staticmethod
    def length_for(key_type: KeyType) -> int:
        """The trailer length for a signer key of `key_type`."""
        if key_type.is_ec:
            return 2 * key_type.field_bytes
        return key_type.bits // 8


@dataclass(frozen=True)
class _Entry:
    """What every parsed recipient entry has: its key id, key type and wrapped file key."""

    key_id: bytes
    key_type: KeyType
    encrypted_key: bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_id={self.key_id.hex()}, key_type={self.key_type})"


@dataclass(frozen=True, repr=False)
class ECRecipientEntry(_Entry):
    """An EC entry (KeyAgreeRecipientInfo): ECDH with `ephemeral_point`, then AES key wrap."""

    ephemeral_point: bytes


@dataclass(frozen=True, repr=False)
class RSARecipientEntry(_Entry):
    """An RSA entry (KeyTransRecipientInfo): RSA-OAEP with `oaep_hash` (MGF1 of the same)."""

    oaep_hash: str


#: One parsed recipient entry: one type per kind of key.
RecipientEntry = ECRecipientEntry | RSARecipientEntry


@dataclass(frozen=True)
class RecoveryEntries:
    """The recovery part of a version 2 header: any `threshold` of the shares rebuild the file
    key. `shares[i]` holds the share with Shamir index i + 1, wrapped to its holder's key."""

    threshold: int
    shares: tuple[RecipientEntry, ...]

    def __post_init__(self) -> None:
        count = len(self.shares)
        if not 1 <= count <= MAX_SHARES:
            raise HeaderError(f"recovery has {count} shares (1 to {MAX_SHARES} allowed)")
        if not 1 <= self.threshold <= count:
            raise HeaderError(f"recovery threshold {self.threshold} is not 1 to {count}")
        ids = [entry.key_id for entry in self.shares]
        if len(set(ids)) != len(ids):
            raise HeaderError("two recovery shares are for the same key id")

    def index_of(self, key_id: bytes) -> int | None:
        """The share index (from 1) held by `key_id`, or None."""
        ids = [entry.key_id for entry in self.shares]
        return ids.index(key_id) + 1 if key_id in ids else None


def ec_entry(key_id: bytes, key_type: KeyType, ephemeral_point: bytes, encrypted_key: bytes) -> Any:
    """A KeyAgreeRecipientInfo (RFC 5753) for one EC recipient."""
    kari = cms.KeyAgreeRecipientInfo(
        {
            "version": "v3",
            "originator": cms.OriginatorIdentifierOrKey(
                name="originator_key",
                value=keys.PublicKeyInfo(
                    {
                        "algorithm": {
                            "algorithm": "ec",
                            "parameters": keys.ECDomainParameters(
                                name="named", value=key_type.curve_name
                            ),
                        },
                        "public_key": ephemeral_point,
                    }
                ),
            ),
            "key_encryption_algorithm": {
                "algorithm": _ECDH_SHA256KDF,
                "parameters": cms.KeyEncryptionAlgorithm({"algorithm": "aes256_wrap"}),
            },
            "recipient_encrypted_keys": [
                {
                    "rid": cms.KeyAgreementRecipientIdentifier(
                        name="r_key_id", value={"subject_key_identifier": key_id}
                    ),
                    "encrypted_key": encrypted_key,
                }
            ],
        }
    )
    return cms.RecipientInfo(name="kari", value=kari)


def rsa_entry(key_id: bytes, oaep_hash: str, encrypted_key: bytes) -> Any:
    """A KeyTransRecipientInfo with RSAES-OAEP parameters (RFC 4055) for one RSA recipient."""
    params = algos.RSAESOAEPParams(
        {
            "hash_algorithm": {"algorithm": oaep_hash},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": oaep_hash}},
        }
    )
    ktri = cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": cms.RecipientIdentifier(name="subject_key_identifier", value=key_id),
            "key_encryption_algorithm": {"algorithm": "rsaes_oaep", "parameters": params},
            "encrypted_key": encrypted_key,
        }
    )
    return cms.RecipientInfo(name="ktri", value=ktri)


def recovery_value(threshold: int, share_entries: list[Any]) -> Any:
    """The Recovery structure: share i + 1 is `share_entries[i]` (a RecipientInfo)."""
    return _Recovery(
        {
            "threshold": threshold,
            "shares": [{"index": i + 1, "entry": e} for i, e in enumerate(share_entries)],
        }
    )


def encode_body(
    entries: list[Any],
    payload: PayloadParameters,
    signer: SignerReference | None,
    recovery: Any = None,
) -> bytes:
    """DER HeaderBody from RecipientInfo values (see `ec_entry`/`rsa_entry`) and, for a
    version 2 header, the Recovery structure (`recovery_value`)."""
    value: dict[str, Any] = {
        "recipients": entries,
        "payload": {
            "algorithm": payload.algorithm,
            "chunk_size": payload.chunk_size,
            "salt": payload.salt,
        },
    }
    if signer is not None:
        value["signer"] = {
            "card_id": signer.card_id,
            "key_id": signer.key_id,
            "algorithm": signer.algorithm.value,
            "signature_length": signer.signature_length,
        }
    if recovery is not None:
        value["recovery"] = recovery
    body: bytes = _HeaderBody(value).dump()
    if not 0 < len(body) <= MAX_BODY_LENGTH:
        raise HeaderError("header too large: too many recipients")
    return body


def encode_prefix(body_length: int, version: int = VERSION) -> bytes:
    """magic || version || body length."""
    return MAGIC + bytes([version]) + struct.pack(">I", body_length)


def prefix_version(prefix: bytes) -> int:
    """The version byte of a prefix that `parse_prefix` accepted."""
    return prefix[len(MAGIC)]


def parse_prefix(prefix: bytes) -> int:
    """Check the magic and version; return the body length (rules H1-H4)."""
    if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
        raise HeaderError("not an hsm-vault file (bad magic)")
    if len(prefix) < len(MAGIC) + 1:
        raise HeaderError("file truncated inside the header")
    if prefix[len(MAGIC)] not in VERSIONS:
        raise HeaderError(
            f"unsupported format version {prefix[len(MAGIC)]}",
            hint="The file was written by a newer hsm-vault; upgrade to read it.",
        )
    if len(prefix) < PREFIX_LENGTH:
        raise HeaderError("file truncated inside the header")
    (length,) = struct.unpack(">I", prefix[len(MAGIC) + 1 : PREFIX_LENGTH])
    if not 0 < length <= MAX_BODY_LENGTH:
        raise HeaderError(f"header body length {length} out of range")
    return int(length)


@dataclass(frozen=True)
class HeaderBody:
    """The parsed and checked header body."""

    recipients: tuple[RecipientEntry, ...]
    payload: PayloadParameters
    signer: SignerReference | None
    recovery: RecoveryEntries | None = None


def parse_body(body: bytes, version: int = VERSION) -> HeaderBody:
    """Parse DER HeaderBody of a header of `version`; raise `HeaderError` for anything
    docs/format.md rejects."""
    try:
        parsed = _HeaderBody.load(body, strict=True)
        # Touch every field so that lazy parsing errors surface here, then insist on DER.
        parsed.native  # noqa: B018
        if parsed.dump(force=True) != body:
            raise HeaderError("header body is not DER")
        entries = [_parse_entry(info) for info in parsed["recipients"]]
        payload_value = parsed["payload"]
        payload = PayloadParameters(
            algorithm=payload_value["algorithm"].native,
            chunk_size=payload_value["chunk_size"].native,
            salt=payload_value["salt"].native,
        )
        signer = None
        if parsed["signer"].native is not None:
            value = parsed["signer"]
            try:
                algorithm = SignatureAlgorithm(value["algorithm"].native)
            except ValueError:
                raise HeaderError("unknown signature algorithm") from None
            signer = SignerReference(
                card_id=value["card_id"].native,
                key_id=value["key_id"].native,
                algorithm=algorithm,
                signature_length=value["signature_length"].native,
            )
        recovery = _parse_recovery(parsed["recovery"]) if parsed["recovery"].native else None
    except HeaderError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise HeaderError("header body is malformed") from exc
    if not 1 <= len(entries) <= MAX_RECIPIENTS:
        raise HeaderError(f"header has {len(entries)} recipients (1 to {MAX_RECIPIENTS} allowed)")
    ids = [entry.key_id for entry in entries]
    if len(set(ids)) != len(ids):
        raise HeaderError("two recipient entries have the same key id")
    if (recovery is not None) != (version == RECOVERY_VERSION):
        raise HeaderError(
            f"a version {version} header must {'' if version == RECOVERY_VERSION else 'not '}"
            "carry recovery entries"
        )
    return HeaderBody(tuple(entries), payload, signer, recovery)


def _parse_recovery(value: Any) -> RecoveryEntries:
    shares = []
    for position, share in enumerate(value["shares"]):
        if share["index"].native != position + 1:
            raise HeaderError("recovery share indexes must be 1, 2, ... in order")
        shares.append(_parse_entry(share["entry"]))
    return RecoveryEntries(value["threshold"].native, tuple(shares))


def recovery_structure(body: bytes) -> Any:
    """The Recovery structure of a body that `parse_body` accepted (None in version 1), to be
    copied as it is into a re-wrapped header."""
    parsed = _HeaderBody.load(body, strict=True)
    value = parsed["recovery"]
    return _Recovery.load(value.untag().dump(force=True)) if value.native else None


def parse_recipient_info(der: bytes) -> RecipientEntry:
    """One DER RecipientInfo (as a recovery share carries it), checked as a header entry is."""
    try:
        info = cms.RecipientInfo.load(der, strict=True)
        info.native  # noqa: B018
        if info.dump(force=True) != der:
            raise HeaderError("the recipient entry is not DER")
        return _parse_entry(info)
    except HeaderError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise HeaderError("the recipient entry is malformed") from exc


def recipient_infos(body: bytes) -> dict[bytes, bytes]:
    """The DER of each RecipientInfo of a body that `parse_body` accepted, by key id.

    A re-wrap keeps the entries it does not change byte for byte (envelope/rewrap.py).
    """
    parsed = _HeaderBody.load(body, strict=True)
    return {_parse_entry(info).key_id: info.dump(force=True) for info in parsed["recipients"]}


def _parse_entry(info: Any) -> RecipientEntry:
    if info.name == "kari":
        return _parse_kari(info.chosen)
    if info.name == "ktri":
        return _parse_ktri(info.chosen)
    raise HeaderError(f"unsupported recipient entry type {info.name}")


def _key_id(value: bytes) -> bytes:
    if len(value) != KEY_ID_LENGTH:
        raise HeaderError("recipient key id is not 32 bytes")
    return value


def _parse_kari(kari: Any) -> RecipientEntry:
    if kari["version"].native != "v3" or kari["ukm"].native is not None:
        raise HeaderError("EC recipient entry: version must be 3 and ukm absent")
    originator = kari["originator"]
    if originator.name != "originator_key":
        raise HeaderError("EC recipient entry: originator must be an ephemeral public key")
    key = originator.chosen
    algorithm = key["algorithm"]
    if algorithm["algorithm"].native != "ec" or algorithm["parameters"].name != "named":
        raise HeaderError("EC recipient entry: ephemeral key is not on a named curve")
    curve = algorithm["parameters"].chosen.native
    key_type = next((t for t in KeyType if t.is_ec and t.curve_name == curve), None)
    if key_type is None:
        raise HeaderError(f"EC recipient entry: unsupported curve {curve}")
    point = key["public_key"].native
    if len(point) != key_type.ec_curve.point_length or point[0] != 4:
        raise HeaderError("EC recipient entry: ephemeral point is not uncompressed")
    kea = kari["key_encryption_algorithm"]
    if kea["algorithm"].native != _ECDH_SHA256KDF:
        raise HeaderError("EC recipient entry: key agreement is not dhSinglePass-stdDH-sha256kdf")
    wrap = kea["parameters"]
    if (
        not isinstance(wrap, cms.KeyEncryptionAlgorithm)
        or wrap["algorithm"].native != "aes256_wrap"
        or wrap["parameters"].native
    ):
        raise HeaderError("EC recipient entry: key wrap is not id-aes256-wrap")
    reks = kari["recipient_encrypted_keys"]
    if len(reks) != 1:
        raise HeaderError("EC recipient entry must hold exactly one encrypted key")
    rid = reks[0]["rid"]
    if rid.name != "r_key_id":
        raise HeaderError("EC recipient entry: recipient must be named by key id")
    rkey = rid.chosen
    if rkey["date"].native is not None or rkey["other"].native is not None:
        raise HeaderError("EC recipient entry: key identifier has extra fields")
    encrypted = reks[0]["encrypted_key"].native
    if len(encrypted) != FILE_KEY_LENGTH + 8:
        raise HeaderError("EC recipient entry: wrapped key is not 40 bytes")
    return ECRecipientEntry(
        key_id=_key_id(rkey["subject_key_identifier"].native),
        key_type=key_type,
        encrypted_key=encrypted,
        ephemeral_point=point,
    )


def _parse_ktri(ktri: Any) -> RecipientEntry:
    if ktri["version"].native != "v2":
        raise HeaderError("RSA recipient entry: version must be 2")
    rid = ktri["rid"]
    if rid.name != "subject_key_identifier":
        raise HeaderError("RSA recipient entry: recipient must be named by key id")
    kea = ktri["key_encryption_algorithm"]
    if kea["algorithm"].native != "rsaes_oaep":
        raise HeaderError("RSA recipient entry: key transport is not RSAES-OAEP")
    params = kea["parameters"]
    if params.native is None:
        raise HeaderError("RSA recipient entry: OAEP parameters missing")
    hash_name = params["hash_algorithm"]["algorithm"].native
    mgf = params["mask_gen_algorithm"]
    if (
        hash_name not in OAEP_HASHES
        or mgf["algorithm"].native != "mgf1"
        or mgf["parameters"]["algorithm"].native != hash_name
        or params["p_source_algorithm"]["algorithm"].native != "p_specified"
        or params["p_source_algorithm"]["parameters"].native != b""
    ):
        raise HeaderError("RSA recipient entry: OAEP parameters not supported")
    encrypted = ktri["encrypted_key"].native
    key_type = _RSA_BY_LENGTH.get(len(encrypted))
    if key_type is None:
        raise HeaderError("RSA recipient entry: encrypted key length fits no RSA key size")
    return RSARecipientEntry(
        key_id=_key_id(rid.chosen.native),
        key_type=key_type,
        encrypted_key=encrypted,
        oaep_hash=hash_name,
    )
