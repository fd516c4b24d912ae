"""Recovery requests and shares: the documents of the recovery ceremony (docs/trust.md).

A requester who lost the key a file is for writes a `RecoveryRequest`: the file's header, the
requester's (new) card and a reason, signed with that card's key on the requester's token.
Each holder of a recovery share answers with a `RecoveryShare`: their share, unwrapped on
their own token and wrapped again to the requester's card key (never in clear), naming the
request and the file, signed with the holder's card key. Both are canonical JSON sent as one
line (`hsmv-recovery-request-1:...`, `hsmv-recovery-share-1:...`), like cards and policies.

Pure code: no I/O. Whether the embedded cards are to be trusted (the server's and officers'
signatures, revocation) is the caller's check with its pinned policy; rules R1-R10 are here,
each with a vector in tests/vectors/recovery/.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from hsm_vault.algorithms import SignatureAlgorithm, verify_signature
from hsm_vault.cards.canonical import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    hex_digest_field,
    parse_canonical_json,
)
from hsm_vault.cards.model import (
    Card,
    CardSignature,
    _exact_keys,
    _text_field,
    check_time,
    is_version,
    key_id_of,
)
from hsm_vault.envelope.envelope import Header, read_header
from hsm_vault.envelope.format import MAX_SHARES, RecipientEntry, parse_recipient_info
from hsm_vault.errors import (
    CardError,
    EnvelopeError,
    InvalidSignature,
    RecoveryError,
    RecoveryFormatError,
)

DOCUMENT_VERSION = 1
REQUEST_PREFIX = "hsmv-recovery-request-"
SHARE_PREFIX = "hsmv-recovery-share-"
REQUEST_DOMAIN = b"hsmv-recovery-request-sig-v1\n"
SHARE_DOMAIN = b"hsmv-recovery-share-sig-v1\n"
SIGNER = "self"
MAX_REASON = 1000
MAX_TEXT_LENGTH = 1 << 22  # a header is at most 1 MiB; base64url of it, twice nested


def _format(check: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a card-format check, reporting its failure as a recovery format error (R1, R5)."""
    try:
        return check(*args, **kwargs)
    except RecoveryFormatError:
        raise
    except CardError as exc:
        raise RecoveryFormatError(exc.message) from None


def _card(text: Any, what: str) -> Card:
    if not isinstance(text, str):
        raise RecoveryFormatError(f"the {what} card must be a card line")
    return _format(Card.from_text, text)


def _header(raw: bytes) -> Header:
    try:
        header = read_header(io.BytesIO(raw))
    except EnvelopeError as exc:
        raise RecoveryFormatError(f"the request's file header: {exc.message}") from None
    if len(header.raw) != len(raw):
        raise RecoveryFormatError("the request's file header has bytes after its MAC")
    if header.recovery is None:
        raise RecoveryFormatError(
            "the file has no recovery entries: it cannot be recovered",
            hint="Only files written under a recovery policy can be recovered.",
        )
    return header


def header_digest(header: Header) -> str:
    """Hex SHA-256 of a file's whole header (prefix, body, MAC): how a request names a file."""
    return hashlib.sha256(header.raw).hexdigest()


def _sign_checked(
    domain: bytes, doc_id: str, card: Card, algorithm: SignatureAlgorithm, signature: bytes
) -> CardSignature:
    made = CardSignature(SIGNER, card.key_id, algorithm, signature)
    _verify(domain, doc_id, card, made, "signature just made")
    return made


def _verify(domain: bytes, doc_id: str, card: Card, sig: CardSignature, what: str) -> None:
    if sig.signer != SIGNER or sig.key_id != key_id_of(card.spki_der):
        raise RecoveryError(f"the {what} is not by the key of card {card.id[:16]}")
    try:
        verify_signature(
            card.spki_der,
            SignatureAlgorithm(sig.algorithm),
            domain + bytes.fromhex(doc_id),
            sig.signature,
        )
    except InvalidSignature:
        raise RecoveryError(f"the {what} does not verify") from None


def _parse_text(text: Any, prefix: str, what: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise RecoveryFormatError(f"a recovery {what} must be text")
    text = text.strip(" \t\r\n")
    if len(text) > MAX_TEXT_LENGTH:
        raise RecoveryFormatError(f"the recovery {what} is too long")
    head, colon, encoded = text.partition(":")
    if not colon or not head.startswith(prefix):
        raise RecoveryFormatError(f"this is not a recovery {what} ({prefix}...)")
    if head[len(prefix) :] != str(DOCUMENT_VERSION):
        raise RecoveryFormatError(f"unknown recovery {what} version {head[len(prefix) :]!r}")
    obj = _format(parse_canonical_json, _format(b64url_decode, encoded, what), what)
    if isinstance(obj, dict) and not is_version(obj.get("version"), DOCUMENT_VERSION):
        raise RecoveryFormatError(f"unknown recovery {what} version {obj.get('version')!r}")
    obj = _format(_exact_keys, obj, ("body", "id", "signature", "version"), f"recovery {what}")
    _format(hex_digest_field, obj["id"], f"{what} id")
    return obj


def _text(prefix: str, doc_id: str, body: dict[str, Any], signature: CardSignature) -> str:
    envelope = {
        "body": body,
        "id": doc_id,
        "signature": signature.to_json(),
        "version": DOCUMENT_VERSION,
    }
    return f"{prefix}{DOCUMENT_VERSION}:{b64url_encode(canonical_json(envelope))}"


def _check_body(obj: Any, fields: tuple[str, ...], kind: str) -> dict[str, Any]:
    if isinstance(obj, dict) and not is_version(obj.get("version"), DOCUMENT_VERSION):
        raise RecoveryFormatError(f"unknown recovery {kind} body version {obj.get('version')!r}")
    obj = _format(_exact_keys, obj, (*fields, "type", "version"), f"recovery {kind}")
    if obj["type"] != f"hsmv-recovery-{kind}":
        raise RecoveryFormatError(f"the type is not hsmv-recovery-{kind}")
    return obj


# --- requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestBody:
    """What a request says: the file (its header), who asks (their card), and why."""

    header: Header
    requester: Card
    reason: str
    created_at: str

    def __post_init__(self) -> None:
        _format(_text_field, self.reason, "reason", MAX_REASON)
        _format(check_time, self.created_at)

    @property
    def id(self) -> str:
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    @property
    def header_sha256(self) -> str:
        return header_digest(self.header)

    def to_json(self) -> dict[str, Any]:
        return {
            "created_at": self.created_at,
            "header": b64url_encode(self.header.raw),
            "reason": self.reason,
            "requester": self.requester.to_text(),
            "type": "hsmv-recovery-request",
            "version": DOCUMENT_VERSION,
        }

    @classmethod
    def from_json(cls, obj: Any) -> RequestBody:
        obj = _check_body(obj, ("created_at", "header", "reason", "requester"), "request")
        if not isinstance(obj["header"], str):
            raise RecoveryFormatError("the request's header must be base64url text")
        return cls(
            header=_header(_format(b64url_decode, obj["header"], "header")),
            requester=_card(obj["requester"], "requester"),
            reason=obj["reason"],
            created_at=obj["created_at"],
        )


@dataclass(frozen=True)
class RecoveryRequest:
    """A signed request. `from_text` checks its form and id; `verify` its signature."""

    body: RequestBody
    signature: CardSignature

    @property
    def id(self) -> str:
        return self.body.id

    def to_text(self) -> str:
        return _text(REQUEST_PREFIX, self.id, self.body.to_json(), self.signature)

    @classmethod
    def from_text(cls, text: str) -> RecoveryRequest:
        """R1 (form), R2 (the stated id is the body's), R3 (a header with recovery entries)."""
        obj = _parse_text(text, REQUEST_PREFIX, "request")
        body = RequestBody.from_json(obj["body"])
        signature = _format(CardSignature.from_json, obj["signature"])
        if body.id != obj["id"]:
            raise RecoveryError("the request id does not match its content (tampered?)")
        return cls(body, signature)

    def verify(self) -> None:
        """R4: signed by the requester card's own key (the card's self signature is checked by
        the caller's trust policy, with the rest of the card)."""
        _verify(REQUEST_DOMAIN, self.id, self.body.requester, self.signature, "request signature")


def make_request(
    body: RequestBody, algorithm: SignatureAlgorithm, sign: Callable[[bytes], bytes]
) -> RecoveryRequest:
    """Sign `body` with the requester's key (`sign`: a token, or a test key); checked."""
    raw = sign(REQUEST_DOMAIN + bytes.fromhex(body.id))
    signature = _sign_checked(REQUEST_DOMAIN, body.id, body.requester, algorithm, raw)
    return RecoveryRequest(body, signature)


# --- shares ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareBody:
    """One holder's answer: share `index` of the file, wrapped to the requester's card key."""

    request_id: str
    header_sha256: str
    requester_card_id: str
    index: int
    threshold: int
    holder: Card
    wrapped: bytes  # DER RecipientInfo: the 32-byte share for the requester's key
    created_at: str

    def __post_init__(self) -> None:
        for digest, what in (
            (self.request_id, "request id"),
            (self.header_sha256, "header digest"),
            (self.requester_card_id, "requester card id"),
        ):
            _format(hex_digest_field, digest, what)
        for number, what in ((self.index, "share index"), (self.threshold, "threshold")):
            if type(number) is not int or not 1 <= number <= MAX_SHARES:
                raise RecoveryFormatError(f"the {what} must be a whole number from 1 to 64")
        if not isinstance(self.wrapped, bytes):
            raise RecoveryFormatError("the wrapped share must be bytes")
        try:
            self.entry  # noqa: B018 (checks the RecipientInfo)
        except EnvelopeError as exc:
            raise RecoveryFormatError(f"the wrapped share: {exc.message}") from None
        _format(check_time, self.created_at)

    @property
    def entry(self) -> RecipientEntry:
        return parse_recipient_info(self.wrapped)

    @property
    def id(self) -> str:
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "created_at": self.created_at,
            "header_sha256": self.header_sha256,
            "holder": self.holder.to_text(),
            "index": self.index,
            "request": self.request_id,
            "requester_card": self.requester_card_id,
            "share": b64url_encode(self.wrapped),
            "threshold": self.threshold,
            "type": "hsmv-recovery-share",
            "version": DOCUMENT_VERSION,
        }

    @classmethod
    def from_json(cls, obj: Any) -> ShareBody:
        fields = (
            "created_at",
            "header_sha256",
            "holder",
            "index",
            "request",
            "requester_card",
            "share",
            "threshold",
        )
        obj = _check_body(obj, fields, "share")
        if not isinstance(obj["share"], str):
            raise RecoveryFormatError("the wrapped share must be base64url text")
        return cls(
            request_id=obj["request"],
            header_sha256=obj["header_sha256"],
            requester_card_id=obj["requester_card"],
            index=obj["index"],
            threshold=obj["threshold"],
            holder=_card(obj["holder"], "holder"),
            wrapped=_format(b64url_decode, obj["share"], "share"),
            created_at=obj["created_at"],
        )


@dataclass(frozen=True)
class RecoveryShare:
    """A signed share. `from_text` checks its form and id; `verify_for` everything else."""

    body: ShareBody
    signature: CardSignature

    @property
    def id(self) -> str:
        return self.body.id

    def to_text(self) -> str:
        return _text(SHARE_PREFIX, self.id, self.body.to_json(), self.signature)

    @classmethod
    def from_text(cls, text: str) -> RecoveryShare:
        """R5 (form), R6 (the stated id is the body's)."""
        obj = _parse_text(text, SHARE_PREFIX, "share")
        body = ShareBody.from_json(obj["body"])
        signature = _format(CardSignature.from_json, obj["signature"])
        if body.id != obj["id"]:
            raise RecoveryError("the share id does not match its content (tampered?)")
        return cls(body, signature)

    def verify_signature(self) -> None:
        """R9: signed by the holder card's own key."""
        _verify(SHARE_DOMAIN, self.id, self.body.holder, self.signature, "share signature")

    def verify_for(
        self, header: Header, requester_key_ids: Collection[bytes], request_id: str | None = None
    ) -> RecipientEntry:
        """Check the share against the file and the requester (R7-R10); return the wrapped
        entry to unwrap with the requester's key."""
        body = self.body
        if body.header_sha256 != header_digest(header):
            raise RecoveryError(f"share {body.index} is for another file")
        if request_id is not None and body.request_id != request_id:
            raise RecoveryError(f"share {body.index} answers another request")
        recovery = header.recovery
        if recovery is None or body.threshold != recovery.threshold:
            raise RecoveryError(f"share {body.index} states a threshold the file does not have")
        if body.index > len(recovery.shares) or (
            recovery.shares[body.index - 1].key_id != body.holder.key_id
        ):
            raise RecoveryError(
                f"share {body.index} is not from the holder of share {body.index} of the file"
            )
        self.verify_signature()
        entry = body.entry
        if entry.key_id not in requester_key_ids:
            raise RecoveryError(f"share {body.index} is wrapped to another card's key")
        return entry


def make_share(
    body: ShareBody, algorithm: SignatureAlgorithm, sign: Callable[[bytes], bytes]
) -> RecoveryShare:
    """Sign `body` with the holder's key (`sign`: a token, or a test key); checked."""
    raw = sign(SHARE_DOMAIN + bytes.fromhex(body.id))
    return RecoveryShare(body, _sign_checked(SHARE_DOMAIN, body.id, body.holder, algorithm, raw))
