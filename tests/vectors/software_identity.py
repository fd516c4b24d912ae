"""A software identity: a private key in memory, for tests and the vector generators only.

hsm-vault itself never holds a private key; its identities are token keys (vault.py). This
lives with the tests so that the package ships no way to decrypt without a token.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hsm_vault.algorithms import KeyType, hash_algorithm, key_id_of, key_type_of
from hsm_vault.envelope import Recipient
from hsm_vault.errors import EnvelopeError


class SoftwareIdentity:
    """An identity whose private key is in memory: for tests and test vectors only.

    hsm-vault itself never holds a private key; its identities are token keys (vault.py).
    """

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self._private = private_key
        spki = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.spki_der = spki
        self._key_id = key_id_of(spki)
        self._key_type = key_type_of(private_key.public_key())

    @classmethod
    def from_der(cls, pkcs8_der: bytes) -> SoftwareIdentity:
        key = serialization.load_der_private_key(pkcs8_der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise EnvelopeError("software identity must be an EC or RSA key")
        return cls(key)

    def __repr__(self) -> str:
        return f"SoftwareIdentity(key_id={self._key_id.hex()[:16]}, {self._key_type})"

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    def recipient(self, oaep_hash: str | None = None) -> Recipient:
        return Recipient.from_spki(self.spki_der, oaep_hash)

    def ecdh(self, peer_point: bytes) -> bytes:
        assert isinstance(self._private, ec.EllipticCurvePrivateKey)
        peer = ec.EllipticCurvePublicKey.from_encoded_point(self._private.curve, peer_point)
        return self._private.exchange(ec.ECDH(), peer)

    def rsa_oaep_decrypt(self, ciphertext: bytes, hash_name: str) -> bytes:
        assert isinstance(self._private, rsa.RSAPrivateKey)
        chosen = hash_algorithm(hash_name)
        return self._private.decrypt(
            ciphertext, padding.OAEP(mgf=padding.MGF1(chosen), algorithm=chosen, label=None)
        )
