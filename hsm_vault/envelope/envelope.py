"""Encrypt and decrypt whole files over binary streams (docs/format.md).

`encrypt(src, dst, recipients)` needs only public keys. `decrypt(src, dst, identities)` asks
an identity to unwrap the file key (on a token, that is the only token operation), verifies
the header MAC before releasing anything, then releases the payload chunk by verified chunk.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsm_vault.algorithms import SignatureAlgorithm, verify_signature
from hsm_vault.envelope.format import (
    DEFAULT_CHUNK_SIZE,
    FILE_KEY_LENGTH,
    MAC_LENGTH,
    PREFIX_LENGTH,
    RECOVERY_VERSION,
    SALT_LENGTH,
    VERSION,
    HeaderBody,
    PayloadParameters,
    RecipientEntry,
    RecoveryEntries,
    SignerReference,
    encode_body,
    encode_prefix,
    parse_body,
    parse_prefix,
    prefix_version,
)
from hsm_vault.envelope.recipients import (
    Identity,
    Randomness,
    Recipient,
    check_entry_point,
    key_id_of,
    unwrap_file_key,
    wrap_file_key,
)
from hsm_vault.envelope.recovery import RecoveryPlan, recovery_structure_for
from hsm_vault.envelope.stream import (
    Progress,
    is_large,
    open_payload,
    open_payload_overlapped,
    payload_size,
    seal,
    seal_overlapped,
    write_all,
)
from hsm_vault.errors import (
    EnvelopeError,
    HeaderError,
    InvalidSignature,
    NoMatchingRecipient,
    PayloadError,
    SignatureError,
)

SIGNATURE_CONTEXT = b"hsm-vault/v1 file signature\x00"


def _hkdf(file_key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(file_key)


def header_key(file_key: bytes) -> bytes:
    return _hkdf(file_key, b"", b"hsm-vault/v1 header")


def payload_key(file_key: bytes, salt: bytes) -> bytes:
    return _hkdf(file_key, salt, b"hsm-vault/v1 payload")


def header_mac(file_key: bytes, prefix_and_body: bytes) -> bytes:
    return hmac.new(header_key(file_key), prefix_and_body, "sha256").digest()


class Signer(Protocol):
    """The sender's signing key (a token key with its card): see vault.TokenSigner."""

    @property
    def reference(self) -> SignerReference: ...

    def sign(self, message: bytes) -> bytes:
        """A signature over `message`: DER for ECDSA, raw for RSA-PSS."""
        ...


@dataclass(frozen=True)
class Verifier:
    """The sender a reader expects: a card id, its public key, and a name to report."""

    card_id: bytes
    spki_der: bytes
    name: str = ""

    @property
    def key_id(self) -> bytes:
        return key_id_of(self.spki_der)


@dataclass(frozen=True)
class Header:
    """A parsed header: the checked body and its bytes (MAC not yet verified)."""

    body: HeaderBody
    raw: bytes  # prefix || body || mac

    @property
    def recipients(self) -> tuple[RecipientEntry, ...]:
        return self.body.recipients

    @property
    def payload(self) -> PayloadParameters:
        return self.body.payload

    @property
    def signer(self) -> SignerReference | None:
        return self.body.signer

    @property
    def recovery(self) -> RecoveryEntries | None:
        return self.body.recovery

    @property
    def version(self) -> int:
        return prefix_version(self.raw)

    @property
    def mac(self) -> bytes:
        return self.raw[-MAC_LENGTH:]

    def trailer_length(self) -> int:
        return self.signer.signature_length if self.signer else 0

    def key_ids(self) -> list[str]:
        return [entry.key_id.hex() for entry in self.recipients]


@dataclass(frozen=True)
class EncryptResult:
    header: Header
    plaintext_size: int
    ciphertext_size: int


@dataclass(frozen=True)
class DecryptResult:
    header: Header
    plaintext_size: int
    key_id: bytes  # which identity's entry unwrapped the file key
    signer: Verifier | None  # set only when a signature was required and verified


def _read_exact(src: BinaryIO, n: int) -> bytes:
    chunks = []
    remaining = n
    while remaining:
        got = src.read(remaining)
        if not got:
            break
        chunks.append(got)
        remaining -= len(got)
    return b"".join(chunks)


def read_header(src: BinaryIO) -> Header:
    """Read and check a header from `src` (rules H1-H11); the MAC is checked by `decrypt`."""
    prefix = _read_exact(src, PREFIX_LENGTH)
    length = parse_prefix(prefix)
    body = _read_exact(src, length)
    mac = _read_exact(src, MAC_LENGTH)
    if len(body) != length or len(mac) != MAC_LENGTH:
        raise HeaderError("file truncated inside the header")
    parsed = parse_body(body, prefix_version(prefix))
    shares = parsed.recovery.shares if parsed.recovery is not None else ()
    for entry in (*parsed.recipients, *shares):
        check_entry_point(entry)
    return Header(parsed, prefix + body + mac)


def _signature_hash(algorithm: SignatureAlgorithm) -> hashlib._Hash:
    return hashlib.new(algorithm.hash_name)


def _signature_message(digest: bytes) -> bytes:
    return SIGNATURE_CONTEXT + digest


def encrypt(
    src: BinaryIO,
    dst: BinaryIO,
    recipients: Sequence[Recipient],
    signer: Signer | None = None,
    *,
    recovery: RecoveryPlan | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> EncryptResult:
    """Encrypt `src` to every recipient, writing an hsm-vault file to `dst`.

    Needs no token unless `signer` is given (the signature is made on the sender's token).
    With `recovery`, the header also carries the file key's shares for its holders (a
    version 2 header).
    """
    return _encrypt_from_parts(
        src,
        dst,
        recipients,
        signer,
        recovery=recovery,
        chunk_size=chunk_size,
        progress=progress,
        randomness=Randomness(),
    )


def _encrypt_from_parts(
    src: BinaryIO,
    dst: BinaryIO,
    recipients: Sequence[Recipient],
    signer: Signer | None,
    *,
    recovery: RecoveryPlan | None,
    chunk_size: int,
    progress: Progress | None,
    randomness: Randomness,
) -> EncryptResult:
    """`encrypt` with its randomness given: the test vector generators fix it (test seam)."""
    if not recipients:
        raise EnvelopeError("no recipients", hint="Name at least one recipient with --to.")
    ids = [r.key_id for r in recipients]
    if len(set(ids)) != len(ids):
        raise EnvelopeError(
            "the same recipient key is named twice", hint="Name each recipient once."
        )
    rng = randomness
    file_key = rng.random_bytes(FILE_KEY_LENGTH)
    payload = PayloadParameters(chunk_size=chunk_size, salt=rng.random_bytes(SALT_LENGTH))
    entries = [wrap_file_key(r, file_key, rng) for r in recipients]
    reference = signer.reference if signer is not None else None
    structure = recovery_structure_for(recovery, file_key, rng) if recovery else None
    version = RECOVERY_VERSION if recovery else VERSION
    body = encode_body(entries, payload, reference, structure)
    prefix_and_body = encode_prefix(len(body), version) + body
    raw = prefix_and_body + header_mac(file_key, prefix_and_body)
    header = Header(parse_body(body, version), raw)
    hasher = _signature_hash(reference.algorithm) if reference else None
    if hasher is not None:
        hasher.update(raw)
    write_all(dst, memoryview(raw))
    seal_all = seal_overlapped if is_large(src, chunk_size) else seal
    size = seal_all(
        src,
        dst,
        payload_key(file_key, payload.salt),
        chunk_size,
        hasher=hasher,
        progress=progress,
    )
    total = len(raw) + payload_size(size, chunk_size)
    if signer is not None and reference is not None and hasher is not None:
        trailer = _encode_trailer(reference, signer.sign(_signature_message(hasher.digest())))
        write_all(dst, memoryview(trailer))
        total += len(trailer)
    return EncryptResult(header, size, total)


def _encode_trailer(reference: SignerReference, signature: bytes) -> bytes:
    if reference.algorithm is SignatureAlgorithm.RSA_PSS_SHA256:
        trailer = signature
    else:
        # Fixed-width r || s, so a reader knows where the payload ends.
        r, s = decode_dss_signature(signature)
        half = reference.signature_length // 2
        trailer = r.to_bytes(half, "big") + s.to_bytes(half, "big")
    if len(trailer) != reference.signature_length:
        raise EnvelopeError("the signature has an unexpected length")
    return trailer


def _decode_trailer(reference: SignerReference, trailer: bytes) -> bytes:
    if reference.algorithm is SignatureAlgorithm.RSA_PSS_SHA256:
        return trailer
    half = reference.signature_length // 2
    return encode_dss_signature(
        int.from_bytes(trailer[:half], "big"), int.from_bytes(trailer[half:], "big")
    )


def unwrap(header: Header, identities: Sequence[Identity]) -> tuple[bytes, bytes]:
    """Find an entry for one of `identities`, unwrap the file key, verify the header MAC.

    Returns (file key, key id used). Raises NoMatchingRecipient (naming the file's key ids)
    or HeaderError.
    """
    by_id = {identity.key_id: identity for identity in identities}
    for entry in header.recipients:
        identity = by_id.get(entry.key_id)
        if identity is None:
            continue
        file_key = unwrap_file_key(entry, identity)
        expected = header_mac(file_key, header.raw[:-MAC_LENGTH])
        if not hmac.compare_digest(expected, header.mac):
            raise HeaderError("the header MAC does not verify")
        return file_key, entry.key_id
    ids = ", ".join(header.key_ids())
    raise NoMatchingRecipient(f"none of your keys is a recipient of this file; it is for: {ids}")


def decrypt(
    src: BinaryIO,
    dst: BinaryIO,
    identities: Sequence[Identity],
    verifier: Verifier | None = None,
    *,
    progress: Progress | None = None,
    header: Header | None = None,
) -> DecryptResult:
    """Decrypt an hsm-vault file from `src` into `dst`.

    Plaintext is written to `dst` chunk by chunk, each only after its tag verified, and only
    after the header MAC verified. A failure later in the stream (or of the signature) raises
    after earlier chunks were written: callers that write to a file must write to a temporary
    file and keep it only on success (vault.decrypt_file does). Pass `header` if it was
    already read from `src` with `read_header`.
    """
    if header is None:
        header = read_header(src)
    file_key, key_id = unwrap(header, identities)
    return _open(src, dst, header, file_key, key_id, verifier, progress)


def decrypt_with_file_key(
    src: BinaryIO,
    dst: BinaryIO,
    header: Header,
    file_key: bytes,
    *,
    progress: Progress | None = None,
) -> DecryptResult:
    """Decrypt the payload that follows `header` (already read from `src`) with a file key
    obtained some other way (a recovery); the header MAC is verified first (H13)."""
    expected = header_mac(file_key, header.raw[:-MAC_LENGTH])
    if not hmac.compare_digest(expected, header.mac):
        raise HeaderError("the header MAC does not verify under that file key")
    return _open(src, dst, header, file_key, b"", None, progress)


def _open(
    src: BinaryIO,
    dst: BinaryIO,
    header: Header,
    file_key: bytes,
    key_id: bytes,
    verifier: Verifier | None,
    progress: Progress | None,
) -> DecryptResult:
    reference = header.signer
    if verifier is not None:
        if reference is None:
            raise SignatureError("the file is not signed, but a signature was required")
        if reference.card_id != verifier.card_id or reference.key_id != verifier.key_id:
            raise SignatureError(
                f"the file was signed by card {reference.card_id.hex()[:16]}, "
                f"not by the expected {verifier.name or verifier.card_id.hex()[:16]}"
            )
    hasher = None
    if verifier is not None and reference is not None:
        hasher = _signature_hash(reference.algorithm)
        hasher.update(header.raw)
    open_all = open_payload_overlapped if is_large(src, header.payload.chunk_size) else open_payload
    size, trailer = open_all(
        src,
        dst,
        payload_key(file_key, header.payload.salt),
        header.payload.chunk_size,
        header.trailer_length(),
        hasher=hasher,
        progress=progress,
    )
    if reference is not None and len(trailer) != reference.signature_length:
        raise PayloadError("the signature trailer is truncated")
    signer = None
    if verifier is not None and reference is not None and hasher is not None:
        try:
            verify_signature(
                verifier.spki_der,
                reference.algorithm,
                _signature_message(hasher.digest()),
                _decode_trailer(reference, trailer),
            )
        except InvalidSignature:
            raise SignatureError("the file's signature does not verify") from None
        signer = verifier
    return DecryptResult(header, size, key_id, signer)
