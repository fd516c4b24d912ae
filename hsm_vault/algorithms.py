"""Key types and signature algorithms, and software verification of token signatures.

Pure code: no I/O, no token. The token layer makes signatures; everything else checks them here
with `cryptography`, so a signature made on a token verifies anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography import exceptions as cryptography_exceptions
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hsm_vault.errors import InvalidSignature, KeyFormatError


@dataclass(frozen=True)
class Curve:
    """An EC curve hsm-vault uses: every fact about it, in one place."""

    name: str  # SECG name, as `cryptography` and asn1crypto spell it
    oid: str
    field_bytes: int  # length of a coordinate (and of the ECDH shared secret)
    curve: ec.EllipticCurve = field(compare=False)  # the `cryptography` curve object

    @property
    def point_length(self) -> int:
        """Length of an uncompressed X9.62 point: 0x04 || x || y."""
        return 1 + 2 * self.field_bytes


P256 = Curve("secp256r1", "1.2.840.10045.3.1.7", 32, ec.SECP256R1())
P384 = Curve("secp384r1", "1.3.132.0.34", 48, ec.SECP384R1())


class KeyType(StrEnum):
    """The key pair types hsm-vault generates and uses on a token."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @property
    def is_ec(self) -> bool:
        return self.value in _EC_CURVES

    @property
    def ec_curve(self) -> Curve:
        """The curve's facts (EC types only)."""
        return _EC_CURVES[self.value]

    @property
    def bits(self) -> int:
        if self.is_ec:
            return self.ec_curve.field_bytes * 8
        return int(self.value.split("-")[1])

    @property
    def curve_name(self) -> str:
        """The SECG name of the curve (EC types only)."""
        return self.ec_curve.name

    @property
    def curve_oid(self) -> str:
        return self.ec_curve.oid

    @property
    def curve(self) -> ec.EllipticCurve:
        """The `cryptography` curve object (EC types only)."""
        return self.ec_curve.curve

    @property
    def field_bytes(self) -> int:
        return self.ec_curve.field_bytes

    @property
    def signature_algorithm(self) -> SignatureAlgorithm:
        return {
            "ec-p256": SignatureAlgorithm.ECDSA_SHA256,
            "ec-p384": SignatureAlgorithm.ECDSA_SHA384,
        }.get(self.value, SignatureAlgorithm.RSA_PSS_SHA256)

    @classmethod
    def from_curve_name(cls, name: str) -> KeyType:
        """The EC key type of a curve name; raises `KeyFormatError` for other curves."""
        for value, curve in _EC_CURVES.items():
            if curve.name == name:
                return cls(value)
        raise KeyFormatError(f"unsupported EC curve {name}")


_EC_CURVES: dict[str, Curve] = {"ec-p256": P256, "ec-p384": P384}


class SignatureAlgorithm(StrEnum):
    """Signature algorithms; ECDSA signatures are DER-encoded, RSA-PSS uses salt = hash length."""

    ECDSA_SHA256 = "ecdsa-sha256"
    ECDSA_SHA384 = "ecdsa-sha384"
    RSA_PSS_SHA256 = "rsa-pss-sha256"

    @property
    def hash_name(self) -> str:
        return self.value.rsplit("-", 1)[1]

    def digest(self, message: bytes) -> bytes:
        return hashlib.new(self.hash_name, message).digest()


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    """The `cryptography` hash object for a lower-case name such as 'sha256'."""
    try:
        return _HASHES[name]()
    except KeyError:
        raise KeyFormatError(f"unknown hash algorithm {name!r}") from None


PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def load_spki(spki_der: bytes) -> PublicKey:
    """Parse a DER SubjectPublicKeyInfo into a `cryptography` public key (EC or RSA only)."""
    try:
        key = serialization.load_der_public_key(spki_der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError("the public key is not a valid SubjectPublicKeyInfo") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise KeyFormatError("the public key is neither EC nor RSA")
    return key


def key_type_of(public_key: PublicKey) -> KeyType:
    """The `KeyType` of a public key; raises for curves and sizes hsm-vault does not use."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return KeyType.from_curve_name(public_key.curve.name)
    try:
        return KeyType(f"rsa-{public_key.key_size}")
    except ValueError:
        raise KeyFormatError(f"unsupported RSA key size {public_key.key_size}") from None


# RSA-OAEP hashes a card may state and an envelope entry may use (MGF1 of the same hash).
OAEP_HASHES = ("sha1", "sha256")


def key_id_of(spki_der: bytes) -> bytes:
    """A public key's id everywhere in hsm-vault: SHA-256 of its DER SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der).digest()


def spki_fingerprint(spki_der: bytes) -> str:
    """`key_id_of` in lower-case hex (as `openssl pkey -pubin -outform DER | sha256sum` gives)."""
    return key_id_of(spki_der).hex()


def verify_signature(
    spki_der: bytes, algorithm: SignatureAlgorithm, message: bytes, signature: bytes
) -> None:
    """Verify `signature` over `message`; raise `InvalidSignature` if it does not verify.

    A public key that cannot be used raises `KeyFormatError`.
    """
    key = load_spki(spki_der)
    expected = key_type_of(key).signature_algorithm
    if algorithm != expected:
        raise InvalidSignature(f"signature algorithm {algorithm} does not fit the key")
    chosen = hash_algorithm(algorithm.hash_name)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(chosen))
        else:
            key.verify(
                signature,
                message,
                padding.PSS(mgf=padding.MGF1(chosen), salt_length=chosen.digest_size),
                chosen,
            )
    except cryptography_exceptions.InvalidSignature:
        raise InvalidSignature("signature does not verify") from None
