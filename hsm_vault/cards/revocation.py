"""Revocation statements: "card X is revoked for reason R", signed by the card's key or by a
trusted signer. Pure code: no I/O, no token. Specified in docs/cards.md; whether a statement is
trusted is decided by `hsm_vault.trust.verify_revocation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hsm_vault.cards.canonical import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    hex_digest_field,
    parse_canonical_json,
)
from hsm_vault.cards.model import (
    CardSignature,
    RevocationReason,
    _enum,
    _exact_keys,
    check_signer,
    check_time,
    is_version,
)
from hsm_vault.errors import CardFormatError

REVOCATION_VERSION = 1
REVOCATION_TEXT_PREFIX = "hsmv-revocation-"
REVOCATION_DOMAIN = b"hsmv-revocation-v1\n"


@dataclass(frozen=True)
class RevocationStatement:
    """A signed statement that a card must no longer be used.

    `signature.signer` is "self" when made with the revoked card's own key, or the name of a
    signer the verifier's `hsm_vault.trust.TrustPolicy` trusts (e.g. "app").
    """

    card_id: str
    reason: RevocationReason
    created_at: str
    signature: CardSignature

    def __post_init__(self) -> None:
        hex_digest_field(self.card_id, "revoked card id")
        object.__setattr__(
            self, "reason", _enum(RevocationReason, self.reason, "revocation reason")
        )
        check_time(self.created_at)
        if not isinstance(self.signature, CardSignature):
            raise CardFormatError("a revocation needs a CardSignature")

    @property
    def signer(self) -> str:
        return self.signature.signer

    @staticmethod
    def signing_message(
        card_id: str, reason: RevocationReason | str, created_at: str, signer: str
    ) -> bytes:
        """The domain-separated message the revoking key signs."""
        hex_digest_field(card_id, "revoked card id")
        checked: RevocationReason = _enum(RevocationReason, reason, "revocation reason")
        check_time(created_at)
        check_signer(signer)
        body = f"{card_id}\n{checked.value}\n{created_at}\n{signer}"
        return REVOCATION_DOMAIN + body.encode("ascii")

    def message(self) -> bytes:
        return self.signing_message(self.card_id, self.reason, self.created_at, self.signer)

    def to_json(self) -> dict[str, Any]:
        return {
            "card_id": self.card_id,
            "created_at": self.created_at,
            "reason": self.reason.value,
            "signature": self.signature.to_json(),
            "version": REVOCATION_VERSION,
        }

    def to_text(self) -> str:
        """One line: `hsmv-revocation-1:` and base64url of the canonical JSON."""
        return f"{REVOCATION_TEXT_PREFIX}{REVOCATION_VERSION}:" + b64url_encode(
            canonical_json(self.to_json())
        )

    @classmethod
    def from_text(cls, text: str) -> RevocationStatement:
        """Parse the one-line form; raises `CardFormatError` (signature not checked)."""
        if not isinstance(text, str):
            raise CardFormatError("a revocation must be text")
        text = text.strip(" \t\r\n")
        head, colon, body = text.partition(":")
        if not colon or not head.startswith(REVOCATION_TEXT_PREFIX):
            raise CardFormatError("this is not an hsm-vault revocation (hsmv-revocation-...)")
        version = head[len(REVOCATION_TEXT_PREFIX) :]
        if version != str(REVOCATION_VERSION):
            raise CardFormatError(f"unknown revocation version {version!r}")
        obj = parse_canonical_json(b64url_decode(body, "revocation text"), "revocation")
        if isinstance(obj, dict) and not is_version(obj.get("version"), REVOCATION_VERSION):
            raise CardFormatError(f"unknown revocation version {obj.get('version')!r}")
        obj = _exact_keys(
            obj, ("card_id", "created_at", "reason", "signature", "version"), "revocation"
        )
        return cls(
            card_id=obj["card_id"],
            reason=obj["reason"],
            created_at=obj["created_at"],
            signature=CardSignature.from_json(obj["signature"]),
        )
