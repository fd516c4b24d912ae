"""Encrypt and decrypt files: cards + envelope + token.

Cards become `Recipient`s (public keys only: encrypting never touches a token); token keys
become `TokenIdentity`s whose unwrap runs ECDH or RSA-OAEP on the token; a token key with its
card signs a file (`TokenSigner`). Files are written through a temporary file next to the
target that is renamed into place only when everything verified.

This module does not import python-pkcs11: sessions are passed in (see `hsm_vault.token`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hsm_vault.algorithms import KeyType
from hsm_vault.envelope import (
    DecryptResult,
    EncryptResult,
    Header,
    Identity,
    Recipient,
    SignerReference,
    Verifier,
    decrypt,
    encrypt,
    key_id_of,
    read_header,
)
from hsm_vault.envelope.recovery import RecoveryPlan
from hsm_vault.envelope.stream import Progress, plaintext_size
from hsm_vault.errors import (
    CardError,
    EnvelopeError,
    FileExistsRefused,
    HsmVaultError,
    PayloadError,
    UsageError,
)
from hsm_vault.outputs import complete_file

if TYPE_CHECKING:
    from hsm_vault.cards import Card
    from hsm_vault.token import KeyInfo, TokenSession

SUFFIX = ".hsmv"


# --- cards and token keys as envelope parties --------------------------------------------------


def recipient_for(card: Card) -> Recipient:
    """The envelope recipient for a card; refuses a card not meant for encryption."""
    # A card that states no scope is not for encryption: absence never grants a use.
    scope = {str(s) for s in getattr(card.snapshot, "scope", None) or ()}
    if "encrypt" not in scope:
        raise CardError(
            f"card {card.id[:16]} ({card.identity}) is not for encryption",
            hint="Ask the owner for a card whose scope includes 'encrypt'.",
        )
    return Recipient.from_card(card)


def verifier_for(card: Card) -> Verifier:
    """What `decrypt --verify-from` checks the file's signature against."""
    return Verifier(bytes.fromhex(card.id), card.spki_der, card.identity)


class TokenIdentity:
    """A private key on a token, used to unwrap file keys: ECDH or RSA-OAEP on the token."""

    def __init__(self, session: TokenSession, key: KeyInfo) -> None:
        self._session = session
        self.key = key
        self._key_id = key_id_of(key.spki_der)

    def __repr__(self) -> str:
        return f"TokenIdentity({self.key.uri})"

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def key_type(self) -> KeyType:
        return self.key.key_type

    def ecdh(self, peer_point: bytes) -> bytes:
        return self._session.ecdh(self.key, peer_point)

    def rsa_oaep_decrypt(self, ciphertext: bytes, hash_name: str) -> bytes:
        return self._session.rsa_oaep_decrypt(self.key, ciphertext, hash_name)


def token_identities(session: TokenSession, key_ref: str | None = None) -> list[TokenIdentity]:
    """The token's keys as identities: the one named by `key_ref`, or every key."""
    if key_ref:
        return [TokenIdentity(session, session.find_key(key_ref))]
    return [TokenIdentity(session, key) for key in session.keys()]


class TokenSigner:
    """Signs a file on the sender's token; the header names the sender's card."""

    def __init__(self, session: TokenSession, key: KeyInfo, card: Card) -> None:
        if card.key_id != key_id_of(key.spki_der):
            raise CardError(
                f"card {card.id[:16]} is not the card of token key {key.label!r}",
                hint="Sign with the key the card was made for ('hsm-vault card list').",
            )
        self._session = session
        self._key = key
        self.card = card
        algorithm = key.key_type.signature_algorithm
        self._reference = SignerReference(
            card_id=bytes.fromhex(card.id),
            key_id=card.key_id,
            algorithm=algorithm,
            signature_length=SignerReference.length_for(key.key_type),
        )

    @property
    def reference(self) -> SignerReference:
        return self._reference

    def sign(self, message: bytes) -> bytes:
        return self._session.sign(self._key, message)


# --- files --------------------------------------------------------------------------------------


def _check_output(src: Path | None, dst: Path | None, force: bool) -> None:
    if dst is None:
        return
    if src is not None and src.exists() and dst.exists() and os.path.samefile(src, dst):
        raise UsageError(f"refusing to write over the input {src}", hint="Choose another output.")
    if dst.exists() and not force:
        raise FileExistsRefused(f"{dst} exists")
    if dst.exists() and dst.is_dir():
        raise UsageError(f"{dst} is a folder", hint="Give a file path with -o.")


@contextlib.contextmanager
def open_input(src: Path | None) -> Iterator[BinaryIO]:
    """`src` opened unbuffered for reading, or stdin when None; a clear error if unreadable."""
    if src is None:
        # The unbuffered stream: a buffered one may read ahead of the header, and its lock
        # would be held by a reader thread still waiting on the pipe when the process exits.
        yield getattr(sys.stdin.buffer, "raw", sys.stdin.buffer)
        return
    try:
        handle = open(src, "rb", buffering=0)  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise UsageError(f"cannot read {src}: {exc.strerror}", hint="Check the path.") from None
    with handle:
        yield handle


@contextlib.contextmanager
def _atomic_output(dst: Path | None, mode: int, *, force: bool) -> Iterator[BinaryIO]:
    """stdout, or a file that becomes `dst` only if the block succeeds (hsm_vault.outputs)."""
    if dst is None:
        sys.stdout.flush()
        try:
            yield getattr(sys.stdout.buffer, "raw", sys.stdout.buffer)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python from complaining
            # again when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            raise HsmVaultError(
                "the output pipe was closed before the end",
                hint="The program reading the output stopped early; nothing is wrong "
                "with the file.",
            ) from None
        return
    with complete_file(dst, mode, replace=force) as out:
        yield out


def _public_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def encrypt_file(
    src: Path | None,
    dst: Path | None,
    recipients: Sequence[Recipient],
    signer: Any = None,
    *,
    recovery: RecoveryPlan | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> EncryptResult:
    """Encrypt `src` (stdin if None) to `dst` (stdout if None) for `recipients`, and with
    `recovery` for its share holders too.

    Never writes over the input; refuses an existing output unless `force`; the output appears
    only when complete.
    """
    _check_output(src, dst, force)
    with open_input(src) as source, _atomic_output(dst, _public_mode(), force=force) as out:
        return encrypt(source, out, recipients, signer, recovery=recovery, progress=progress)


def decrypt_file(
    src: Path | None,
    dst: Path | None,
    identities: Sequence[Identity],
    verifier: Verifier | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> DecryptResult:
    """Decrypt `src` (stdin if None) to `dst` (stdout if None).

    To a file: the plaintext goes to a temporary file (mode 0600) that is renamed onto `dst`
    only after the last chunk and the signature (if required) verified; on failure it is
    removed and an existing `dst` is untouched. To stdout: each chunk is written once it
    verified; a later failure raises after earlier chunks were written (docs/format.md).
    """
    _check_output(src, dst, force)
    with open_input(src) as source:
        return decrypt_stream(source, dst, identities, verifier, force=force, progress=progress)


def decrypt_stream(
    source: BinaryIO,
    dst: Path | None,
    identities: Sequence[Identity],
    verifier: Verifier | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
    header: Header | None = None,
) -> DecryptResult:
    """Decrypt an open stream (a file, a pipe, a download) to `dst`, as `decrypt_file` does.

    `header` is the stream's header when the caller has read it already (to pick a token).
    """
    _check_output(None, dst, force)
    if header is None:
        header = read_header(source)  # fail before creating any output file
    with _atomic_output(dst, 0o600, force=force) as out:
        return decrypt(source, out, identities, verifier, progress=progress, header=header)


def recipient_key_ids(path: Path) -> set[bytes]:
    """The key ids a file is encrypted to, from its header (no token, no decryption)."""
    with open_input(path) as source:
        return {entry.key_id for entry in read_header(source).recipients}


def inspect_file(path: Path) -> tuple[Header, int | None]:
    """The header of an hsm-vault file and its plaintext size from the file size; None when
    no whole file has that size (truncated, or bytes appended). Nothing is verified."""
    with open_input(path) as source:
        header = read_header(source)
        total = os.fstat(source.fileno()).st_size
    payload = total - len(header.raw) - header.trailer_length()
    try:
        return header, plaintext_size(payload, header.payload.chunk_size)
    except PayloadError:
        return header, None


def default_encrypt_output(src: Path, out_dir: Path | None) -> Path:
    """FILE -> FILE.hsmv (in `out_dir` if given)."""
    name = src.name + SUFFIX
    return (out_dir / name) if out_dir else src.with_name(name)


def default_decrypt_output(src: Path, out_dir: Path | None) -> Path:
    """FILE.hsmv -> FILE (in `out_dir` if given); other names need an explicit output."""
    if not src.name.endswith(SUFFIX) or src.name == SUFFIX:
        raise UsageError(
            f"{src} does not end in {SUFFIX}: say where the plaintext goes",
            hint="Pass -o OUT (or -o - for stdout).",
        )
    name = src.name[: -len(SUFFIX)]
    return (out_dir / name) if out_dir else src.with_name(name)


@dataclass(frozen=True)
class BatchFailure:
    source: Path
    error: HsmVaultError


def batch_failed(failures: Sequence[BatchFailure], total: int) -> EnvelopeError:
    """The error a batch raises when some of its files failed."""
    return EnvelopeError(
        f"{len(failures)} of {total} files failed",
        hint="See the errors above; the files that succeeded were written.",
    )
