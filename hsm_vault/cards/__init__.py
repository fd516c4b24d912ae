"""Cards: signed identity cards (identity + public key on a token), their one-line export,
rotation and revocation statements, and the local keyring.

Specified in docs/cards.md. The model (`Card`, `CardSnapshot`, ...) is pure code: no I/O, no
token. Whom to trust is decided in `hsm_vault.trust` (`TrustPolicy`, `verify_card`).
`create_card` / `revoke_card` / `approve_card` sign through a token session passed in;
`Keyring` stores cards under the user's data folder.

Quick use::

    card = Card.from_text(line)                  # CardFormatError / CardVerificationError
    trust.verify_card(card, TrustPolicy.with_app_key(app_spki))  # raises, never a bool
    card.id          # hex SHA-256 of the canonical snapshot bytes
    card.key_id      # 32 bytes: SHA-256 of the SPKI DER; envelopes name recipients by it
    card.signing_message("app")                  # what the server's application key signs
    card = card.with_signature(CardSignature("app", key_id_of(app_spki), alg, sig))
"""

from hsm_vault.cards.create import (
    SigningSession,
    TokenKey,
    approve_card,
    build_snapshot,
    check_key_protection,
    create_card,
    default_identity_type,
    make_revocation,
    read_attestation,
    revoke_card,
    sign_card,
)
from hsm_vault.cards.keyring import Keyring, KeyringEntry, KeyringProblem
from hsm_vault.cards.model import (
    CARD_VERSION,
    PREVIOUS,
    SELF,
    Card,
    CardAttestation,
    CardSignature,
    CardSnapshot,
    IdentityType,
    RevocationReason,
    Scope,
    TokenProvenance,
    WrapMethod,
    key_id_of,
    short_form,
)
from hsm_vault.cards.revocation import RevocationStatement
from hsm_vault.cards.status import CardStatus, KeyringStatus, Origin

__all__ = [
    "CARD_VERSION",
    "PREVIOUS",
    "SELF",
    "Card",
    "CardAttestation",
    "CardSignature",
    "CardSnapshot",
    "CardStatus",
    "IdentityType",
    "Keyring",
    "KeyringEntry",
    "KeyringProblem",
    "KeyringStatus",
    "Origin",
    "RevocationReason",
    "RevocationStatement",
    "Scope",
    "SigningSession",
    "TokenKey",
    "TokenProvenance",
    "WrapMethod",
    "approve_card",
    "build_snapshot",
    "check_key_protection",
    "create_card",
    "default_identity_type",
    "key_id_of",
    "make_revocation",
    "read_attestation",
    "revoke_card",
    "short_form",
    "sign_card",
]
