"""Trust anchors: the application key pinned at login and the server policy pinned after it.

Pure code: the caller reads the stored strings (the client config) and hands them over; this
module decodes and checks them. It is the one loader of the pinned application key for every
caller: base64 DER whose SHA-256 must equal the pinned fingerprint (compared in constant time).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from enum import Enum
from typing import Any

from hsm_vault.algorithms import spki_fingerprint
from hsm_vault.errors import CardError, NotLoggedIn, ServerTrustError, UsageError
from hsm_vault.trust.cards import APP, TrustPolicy
from hsm_vault.trust.entries import LogCheck
from hsm_vault.trust.policy import SignedPolicy

#: The client config key under which the pinned policy is kept (one line, hsmv-policy-1:...).
PINNED_POLICY_KEY = "policy"


def load_app_key(spki_b64: str | None, fingerprint: str | None) -> bytes:
    """The pinned application key (DER SPKI); ServerTrustError if missing or altered."""
    if not spki_b64 or not fingerprint:
        raise NotLoggedIn("no application key is pinned for this server")
    try:
        spki = base64.b64decode(spki_b64, validate=True)
    except (ValueError, binascii.Error):
        raise ServerTrustError("the pinned application key in the config is malformed") from None
    if not hmac.compare_digest(spki_fingerprint(spki), fingerprint.lower()):
        raise ServerTrustError("the pinned application key does not match the pinned fingerprint")
    return spki


class AppKeyCheck(Enum):
    """What login must still do about the application key a server states."""

    #: It matches the fingerprint the person was given: pin it.
    CHECKED = "checked"
    #: The very key is pinned for this server already: keep it.
    PINNED = "pinned"
    #: Nobody checked it: show its fingerprint and ask (or trust it on first use, if told to).
    UNCHECKED = "unchecked"


def normalise_fingerprint(text: str) -> str:
    """Lower-case hex without separators (colons, spaces) as people copy fingerprints."""
    return "".join(ch for ch in text.lower() if ch not in ": \t\n-")


def check_app_key(fingerprint: str, *, given: str | None, pinned: str | None) -> AppKeyCheck:
    """Login's pinning decision for a server's application key `fingerprint`.

    `given` is the fingerprint the person was given out of band (--app-fingerprint), all 64
    hex digits; `pinned` the one pinned for this same server (None for none, or for another
    server). A given fingerprint that differs, or a pinned key that changed, raises
    `ServerTrustError`; a given one that is not a full fingerprint raises `UsageError`.
    """
    if given is not None:
        wanted = normalise_fingerprint(given)
        if len(wanted) != len(fingerprint) or any(c not in "0123456789abcdef" for c in wanted):
            raise UsageError(
                "--app-fingerprint needs the full fingerprint: 64 hex digits",
                hint="Give the full 64-hex fingerprint your officer gave you (colons and "
                "spaces are fine); a prefix is not enough.",
            )
        if not hmac.compare_digest(wanted, fingerprint):
            raise ServerTrustError(
                f"the server's application key fingerprint is {fingerprint}, "
                "not the one you were given"
            )
        return AppKeyCheck.CHECKED
    if pinned and pinned != fingerprint:
        raise ServerTrustError(
            f"the server's application key changed: pinned {pinned}, now {fingerprint}",
            hint="Ask your security officer; if the change is expected, log in with "
            "--app-fingerprint NEW.",
        )
    return AppKeyCheck.PINNED if pinned else AppKeyCheck.UNCHECKED


def load_policy(text: str | None) -> SignedPolicy | None:
    """The pinned server policy, or None when none is pinned yet."""
    if not text:
        return None
    try:
        return SignedPolicy.from_text(text)
    except CardError as exc:
        raise ServerTrustError(f"the pinned server policy is unusable: {exc.message}") from None


@dataclass(frozen=True)
class TrustAnchors:
    """What a client trusts a server's cards by: its application key, its signed policy, and
    the key-attestation roots (None: Yubico's pinned PIV root) attested cards must chain to."""

    app_spki: bytes
    policy: SignedPolicy | None = None
    attestation_roots: tuple[Any, ...] | None = None
    #: The transparency log as this client keeps it (set once the log is brought up to date).
    log: LogCheck | None = None

    @property
    def app_fingerprint(self) -> str:
        return spki_fingerprint(self.app_spki)

    @classmethod
    def from_pinned(
        cls,
        app_key_spki: str | None,
        app_fingerprint: str | None,
        policy_text: str | None,
        attestation_roots: tuple[Any, ...] | None = None,
    ) -> TrustAnchors:
        """The anchors as the client config stores them; a policy pinned for another
        application key (the client logged in elsewhere since) is not used."""
        app_spki = load_app_key(app_key_spki, app_fingerprint)
        policy = load_policy(policy_text)
        if policy is not None and policy.body.app_key_id != spki_fingerprint(app_spki):
            policy = None
        return cls(app_spki, policy, attestation_roots)

    def card_policy(self) -> TrustPolicy:
        """The trust policy for a server's cards: self, app, and the policy's officer quorum.

        Without a pinned policy no card of the server is trusted.
        """
        if self.policy is None:
            raise ServerTrustError(
                "no server policy is pinned, so no card of this server can be trusted",
                hint="Run 'hsm-vault policy show' (or log in again) to fetch and pin it.",
            )
        return self.policy.card_trust(self.app_spki, self.attestation_roots)

    def trust_for(self, required: frozenset[str]) -> TrustPolicy:
        """For cards handed over by hand (`card import/verify`): the app key and the pinned
        policy's officers are trusted; requiring "app" also requires the officer quorum and
        the policy's attestation rule."""
        policy = self.policy.body if self.policy is not None else None
        server_rules = policy is not None and APP in required
        return TrustPolicy(
            required=required,
            trusted={APP: (self.app_spki,)},
            approvals=policy.approvals if policy is not None and server_rules else 0,
            officers=tuple(o.key for o in policy.officers) if policy is not None else (),
            require_attestation=policy.require_attestation if policy and server_rules else False,
            attestation_roots=self.attestation_roots,
        )
