"""Wrapping the file key to recipients and unwrapping it with identities.

A `Recipient` is a public key (built from a card); wrapping needs nothing else, so encrypting
never touches a token. An `Identity` holds (or reaches) a private key and offers the two
primitives a token offers: raw ECDH and RSA-OAEP decryption. The KDF and AES key unwrap run
here, in software, exactly as RFC 5753 describes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from hsm_vault.algorithms import (
    OAEP_HASHES,
    KeyType,
    hash_algorithm,
    key_id_of,
    key_type_of,
    load_spki,
)
from hsm_vault.envelope.format import (
    FILE_KEY_LENGTH,
    ECRecipientEntry,
    RecipientEntry,
    ec_entry,
    kdf_shared_info,
    rsa_entry,
)
from hsm_vault.errors import EnvelopeError, HeaderError, TokenOperationFailed


@dataclass(frozen=True)
class Recipient:
    """A public key a file is encrypted to (built from a card: `Recipient.from_card`)."""

    spki_der: bytes
    key_type: KeyType
    oaep_hash: str | None
    key_id: bytes
    name: str = ""

    def __post_init__(self) -> None:
        if self.key_id != key_id_of(self.spki_der):
            raise EnvelopeError("recipient key id is not the SHA-256 of its public key")
        if key_type_of(load_spki(self.spki_der)) != self.key_type:
            raise EnvelopeError("recipient key type does not match its public key")
        if self.key_type.is_ec and self.oaep_hash is not None:
            raise EnvelopeError("an EC recipient has no OAEP hash")
        if not self.key_type.is_ec and self.oaep_hash not in OAEP_HASHES:
            raise EnvelopeError(f"unsupported OAEP hash {self.oaep_hash!r}")

    @classmethod
    def from_spki(cls, spki_der: bytes, oaep_hash: str | None = None, name: str = "") -> Recipient:
        """A recipient from a public key alone (RSA defaults to OAEP with SHA-1)."""
        key_type = key_type_of(load_spki(spki_der))
        if not key_type.is_ec and oaep_hash is None:
            oaep_hash = "sha1"
        return cls(spki_der, key_type, oaep_hash, key_id_of(spki_der), name)

    @classmethod
    def from_card(cls, card: Any) -> Recipient:
        """A recipient from a card (anything with spki_der, key_type, oaep_hash, key_id)."""
        name = str(getattr(card, "identity", "") or "")
        return cls(card.spki_der, KeyType(card.key_type), card.oaep_hash, card.key_id, name)


@runtime_checkable
class Identity(Protocol):
    """A private key that can unwrap file keys: a token key, or a software key in tests."""

    @property
    def key_id(self) -> bytes: ...

    @property
    def key_type(self) -> KeyType: ...

    def ecdh(self, peer_point: bytes) -> bytes:
        """Raw ECDH shared secret (x coordinate) with an uncompressed peer point."""
        ...

    def rsa_oaep_decrypt(self, ciphertext: bytes, hash_name: str) -> bytes:
        """RSA-OAEP decryption with MGF1 of the same hash and no label."""
        ...


class Randomness:
    """Where encryption gets its randomness. Only vector generation substitutes this."""

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def ephemeral_key(self, key_type: KeyType) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(key_type.curve)

    def rsa_oaep_encrypt(self, public: rsa.RSAPublicKey, hash_name: str, message: bytes) -> bytes:
        chosen = hash_algorithm(hash_name)
        return public.encrypt(
            message, padding.OAEP(mgf=padding.MGF1(chosen), algorithm=chosen, label=None)
        )


def _kek(shared_secret: bytes) -> bytes:
    return X963KDF(algorithm=hashes.SHA256(), length=32, sharedinfo=kdf_shared_info()).derive(
        shared_secret
    )


def wrap_file_key(recipient: Recipient, file_key: bytes, randomness: Randomness) -> Any:
    """The asn1crypto RecipientInfo that carries `file_key` to `recipient`."""
    public = load_spki(recipient.spki_der)
    if isinstance(public, ec.EllipticCurvePublicKey):
        ephemeral = randomness.ephemeral_key(recipient.key_type)
        shared = ephemeral.exchange(ec.ECDH(), public)
        point = ephemeral.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        wrapped = aes_key_wrap(_kek(shared), file_key)
        return ec_entry(recipient.key_id, recipient.key_type, point, wrapped)
    assert recipient.oaep_hash is not None
    encrypted = randomness.rsa_oaep_encrypt(public, recipient.oaep_hash, file_key)
    return rsa_entry(recipient.key_id, recipient.oaep_hash, encrypted)


def check_entry_point(entry: RecipientEntry) -> None:
    """Rule H9: an EC entry's ephemeral point must be a valid point on its curve."""
    if not isinstance(entry, ECRecipientEntry):
        return
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(entry.key_type.curve, entry.ephemeral_point)
    except ValueError:
        raise HeaderError("EC recipient entry: ephemeral point is not on the curve") from None


def unwrap_file_key(entry: RecipientEntry, identity: Identity) -> bytes:
    """Unwrap the file key from an entry addressed to `identity` (rule H12 on failure)."""
    if entry.key_type != identity.key_type:
        raise HeaderError("recipient entry does not fit the key type of its key id")
    try:
        if isinstance(entry, ECRecipientEntry):
            shared = identity.ecdh(entry.ephemeral_point)
            file_key = aes_key_unwrap(_kek(shared), entry.encrypted_key)
        else:
            file_key = identity.rsa_oaep_decrypt(entry.encrypted_key, entry.oaep_hash)
    except (InvalidUnwrap, ValueError, TokenOperationFailed):
        raise HeaderError(
            f"the entry for key {entry.key_id.hex()[:16]} does not unwrap with that key"
        ) from None
    if len(file_key) != FILE_KEY_LENGTH:
        raise HeaderError("the unwrapped file key is not 32 bytes")
    return file_key
