"""Standard CMS output (docs/format.md, "Export to CMS"): no lock-in to the hsm-vault format.

`CMSWriter` is a write-only stream: plaintext written to it leaves as an RFC 5083
AuthEnvelopedData (AES-256-GCM) or an RFC 5652 EnvelopedData (AES-256-CBC), BER with
indefinite lengths so that any size streams in constant memory. The content-encryption key
is fresh, never a file key, and is wrapped to each recipient exactly as a file key is (the
same KeyAgreeRecipientInfo / KeyTransRecipientInfo), so any CMS implementation holding a
recipient's private key (OpenSSL with the token through its pkcs11 engine) opens it.

No I/O beyond the stream it is given; no token.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Sequence
from typing import Any, BinaryIO

from asn1crypto import algos, cms, core
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsm_vault.envelope.recipients import Randomness, Recipient, wrap_file_key
from hsm_vault.envelope.stream import write_all
from hsm_vault.errors import EnvelopeError

CONTENT_KEY_LENGTH = 32
GCM_NONCE_LENGTH = 12
GCM_TAG_LENGTH = 16
_END = b"\x00\x00"  # end-of-contents of an indefinite-length encoding


class CMSKind(enum.StrEnum):
    """Which CMS content type `CMSWriter` produces."""

    AUTH_ENVELOPED = "auth-enveloped"  # RFC 5083 + RFC 5084: AES-256-GCM, authenticated
    ENVELOPED = "enveloped"  # RFC 5652 + RFC 3565: AES-256-CBC, for older CMS readers


class _GCMParameters(core.Sequence):
    """RFC 5084 GCMParameters (asn1crypto 1.5 has no spec for it)."""

    _fields = [  # noqa: RUF012 (asn1crypto's declaration style)
        ("aes_nonce", core.OctetString),
        ("aes_icvlen", core.Integer, {"default": 12}),
    ]


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _oid(dotted: str) -> bytes:
    return bytes(core.ObjectIdentifier(dotted).dump())


class CMSWriter(io.RawIOBase):
    """Encrypts what is written into a CMS message on `dst`; call `finish()` at the end.

    Each `write` is encrypted at once and leaves as one segment of the constructed
    encryptedContent OCTET STRING; `finish` writes the tail (the GCM tag as the `mac`).
    """

    def __init__(
        self,
        dst: BinaryIO,
        recipients: Sequence[Recipient],
        kind: CMSKind = CMSKind.AUTH_ENVELOPED,
    ) -> None:
        super().__init__()
        if not recipients:
            raise EnvelopeError("no recipients for the CMS message", hint="Name at least one.")
        self._dst = dst
        self._kind = kind
        rng = Randomness()
        content_key = rng.random_bytes(CONTENT_KEY_LENGTH)
        infos = cms.RecipientInfos([wrap_file_key(r, content_key, rng) for r in recipients])
        self._padder: Any = None
        if kind is CMSKind.AUTH_ENVELOPED:
            nonce = rng.random_bytes(GCM_NONCE_LENGTH)
            mode: Any = modes.GCM(nonce)
            params: Any = _GCMParameters({"aes_nonce": nonce, "aes_icvlen": GCM_TAG_LENGTH})
            algorithm = "aes256_gcm"
            content_type, version = "1.2.840.113549.1.9.16.1.23", 0  # id-ct-authEnvelopedData
        else:
            iv = rng.random_bytes(16)
            mode, params, algorithm = modes.CBC(iv), core.OctetString(iv), "aes256_cbc"
            self._padder = padding.PKCS7(128).padder()
            # RFC 5652 6.1: version 2 (kari entries, ktri entries of version 2).
            content_type, version = "1.2.840.113549.1.7.3", 2  # id-envelopedData
        self._encryptor: Any = Cipher(algorithms.AES(content_key), mode).encryptor()
        identifier = algos.EncryptionAlgorithm({"algorithm": algorithm, "parameters": params})
        opening = (
            b"\x30\x80"  # ContentInfo
            + _oid(content_type)
            + b"\xa0\x80"  # [0] EXPLICIT content
            + b"\x30\x80"  # (Auth)EnvelopedData
            + core.Integer(version).dump()
            + infos.dump()
            + b"\x30\x80"  # EncryptedContentInfo
            + _oid("1.2.840.113549.1.7.1")  # id-data
            + identifier.dump()
            + b"\xa0\x80"  # [0] IMPLICIT encryptedContent, constructed
        )
        write_all(dst, memoryview(opening))
        self.size = 0

    def writable(self) -> bool:
        return True

    def _segment(self, data: bytes) -> None:
        if data:
            write_all(self._dst, memoryview(b"\x04" + _length(len(data)) + data))

    def write(self, data: Any) -> int:
        """Encrypt `data` and write it as one segment."""
        view = memoryview(data)
        block = view if self._padder is None else self._padder.update(view)
        self._segment(self._encryptor.update(block))
        self.size += len(view)
        return len(view)

    def finish(self) -> None:
        """Write the last segment, the end of the content, and the tag (GCM)."""
        last = b"" if self._padder is None else self._encryptor.update(self._padder.finalize())
        self._segment(last + self._encryptor.finalize())
        tail = _END + _END  # encryptedContent, EncryptedContentInfo
        if self._kind is CMSKind.AUTH_ENVELOPED:
            tail += core.OctetString(self._encryptor.tag).dump()  # mac
        tail += _END + _END + _END  # (Auth)EnvelopedData, [0], ContentInfo
        write_all(self._dst, memoryview(tail))
