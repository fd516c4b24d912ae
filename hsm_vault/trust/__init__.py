"""Trust decisions, apart from any I/O: which cards, revocations and server policies to accept.

Pure code: nothing here reads a file, opens a socket or touches a token, and nothing imports
`hsm_vault.client`, `hsm_vault.server` or `hsm_vault.token`. Callers fetch (client/), store
(server/) or sign (token/), and hand the bytes here to be judged. Every rule has a test vector
(tests/vectors/cards/, tests/vectors/policy/); the formats and rules are docs/cards.md and
docs/trust.md.

- `cards`: `TrustPolicy`, `verify_card`, `verify_rotation`, `verify_revocation`, officer signers.
- `policy`: the signed server policy (`SignedPolicy`), and `accept_policy` / `verify_chain`.
- `entries`: a card record as the server states it -> `VerifiedCard`, or `ServerTrustError`.
- `anchors`: the pinned application key (`load_app_key`) and `TrustAnchors`.
"""

from hsm_vault.trust.anchors import TrustAnchors, load_app_key, load_policy
from hsm_vault.trust.cards import (
    APP,
    OFFICER_PREFIX,
    OfficerKey,
    TrustPolicy,
    officer_signer,
    verify_card,
    verify_card_attestation,
    verify_revocation,
    verify_rotation,
)
from hsm_vault.trust.entries import StatedCard, VerifiedCard, parse_stated, verify_entry
from hsm_vault.trust.policy import (
    POLICY_VERSION,
    PolicyBody,
    PolicyOfficer,
    SignedPolicy,
    accept_policy,
    officer_approvals,
    verify_chain,
    verify_genesis,
)

__all__ = [
    "APP",
    "OFFICER_PREFIX",
    "POLICY_VERSION",
    "OfficerKey",
    "PolicyBody",
    "PolicyOfficer",
    "SignedPolicy",
    "StatedCard",
    "TrustAnchors",
    "TrustPolicy",
    "VerifiedCard",
    "accept_policy",
    "load_app_key",
    "load_policy",
    "officer_approvals",
    "officer_signer",
    "parse_stated",
    "verify_card",
    "verify_card_attestation",
    "verify_chain",
    "verify_entry",
    "verify_genesis",
    "verify_revocation",
    "verify_rotation",
]
