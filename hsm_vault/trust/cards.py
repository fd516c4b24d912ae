"""Card trust decisions: which signatures a card must carry and whose keys they must be by.

Pure code: no I/O, no token, no HTTP. `TrustPolicy` says what a verifier requires;
`verify_card`, `verify_rotation` and `verify_revocation` raise `CardVerificationError` (never
return a bool). The rules are docs/cards.md section 8 (V1-V11, R2); each has a test vector.
A card that states an attestation is only valid if its chain verifies to a root the verifier
trusts and says what the card says (V10), so no card claims an attestation it lacks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hsm_vault.algorithms import SignatureAlgorithm, verify_signature
from hsm_vault.attestation import Attestation, verify_attestation, yubico_roots
from hsm_vault.cards.model import (
    PREVIOUS,
    SELF,
    Card,
    CardSignature,
    _load_public_key,
    check_signer,
    key_id_of,
)
from hsm_vault.cards.revocation import RevocationStatement
from hsm_vault.errors import (
    AttestationError,
    CardFormatError,
    CardVerificationError,
    InvalidSignature,
    KeyFormatError,
)

APP = "app"
OFFICER_PREFIX = "officer:"
_OFFICER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,55}")


def officer_signer(username: str) -> str:
    """The signer name of an officer's approval: `officer:<username>` (lower-case usernames)."""
    if not isinstance(username, str) or _OFFICER_NAME.fullmatch(username) is None:
        raise CardFormatError(
            f"{username!r} cannot be an officer: an officer's user name must be 1-56 "
            "characters of a-z 0-9 . _ - (lower case)"
        )
    return OFFICER_PREFIX + username


@dataclass(frozen=True)
class OfficerKey:
    """An officer a verifier trusts to approve cards: their name, identity and card key."""

    username: str
    identity: str
    card_id: str
    spki_der: bytes

    @property
    def signer(self) -> str:
        return officer_signer(self.username)


@dataclass(frozen=True)
class TrustPolicy:
    """Which signers a card must carry, and which public keys are trusted for each signer.

    The "self" signature is always required and always checked against the card's own key.
    Any signature by a signer listed in `trusted` (or by a listed officer) is checked and must
    verify even if that signer is not required; signatures by other signers are left unchecked.
    With `approvals` > 0 a card also needs that many distinct officer signatures by `officers`
    other than its owner, unless it is itself one of the officers' cards (the signed server
    policy names those).

    A card's attestation is checked against `attestation_roots` (None: Yubico's pinned PIV
    root) unless `check_attestation` is off (the keyring re-reading what it checked when the
    card was added); `require_attestation` (the server policy's rule) refuses unattested cards.
    """

    required: frozenset[str] = frozenset()
    trusted: Mapping[str, tuple[bytes, ...]] = field(default_factory=dict)
    require_token_protection: bool = True
    approvals: int = 0
    officers: tuple[OfficerKey, ...] = ()
    require_attestation: bool = False
    attestation_roots: tuple[Any, ...] | None = None
    check_attestation: bool = True

    def __post_init__(self) -> None:
        required = frozenset(check_signer(s) for s in self.required)
        for reserved in (SELF, PREVIOUS):
            if reserved in self.trusted:
                raise CardFormatError(f"the {reserved!r} signature needs no trusted key")
        trusted = {check_signer(k): tuple(v) for k, v in self.trusted.items()}
        officers = tuple(self.officers)
        for officer in officers:
            if officer.signer in trusted:
                raise CardFormatError(f"officer {officer.username!r} is listed twice")
            trusted[officer.signer] = (officer.spki_der,)
        for signer in required - {SELF, PREVIOUS}:
            if not trusted.get(signer):
                raise CardFormatError(f"required signer {signer!r} has no trusted key")
        for keys in trusted.values():
            for spki in keys:
                _load_public_key(spki)
        if type(self.approvals) is not int or self.approvals < 0:
            raise CardFormatError("the number of approvals must be a whole number >= 0")
        object.__setattr__(self, "required", required)
        object.__setattr__(self, "trusted", MappingProxyType(trusted))
        object.__setattr__(self, "officers", officers)
        if self.attestation_roots is not None:
            object.__setattr__(self, "attestation_roots", tuple(self.attestation_roots))

    def roots(self) -> tuple[Any, ...]:
        """The attestation roots this verifier trusts (x509 certificates)."""
        return yubico_roots() if self.attestation_roots is None else self.attestation_roots

    @classmethod
    def self_only(cls, attestation_roots: tuple[Any, ...] | None = None) -> TrustPolicy:
        """Check the self signature (and the attestation a card states) only."""
        return cls(attestation_roots=attestation_roots)

    @classmethod
    def with_app_key(cls, app_spki: bytes, *, required: bool = True) -> TrustPolicy:
        """Trust `app_spki` for the "app" signer, and (by default) require that signature."""
        return cls(
            required=frozenset({APP}) if required else frozenset(), trusted={APP: (app_spki,)}
        )

    def checked_signers(self, card: Card) -> tuple[str, ...]:
        """The signers of `card` whose signatures `verify_card` checks under this policy."""
        return tuple(
            s.signer for s in card.signatures if s.signer == SELF or s.signer in self.trusted
        )

    def approvers(self, card: Card) -> tuple[str, ...]:
        """User names of the policy's officers who signed `card` (signatures not checked)."""
        return tuple(o.username for o in self.officers if card.signature_by(o.signer))


def _verify_one(card: Card, sig: CardSignature, spki_der: bytes, label: str) -> None:
    if sig.key_id != key_id_of(spki_der):
        raise CardVerificationError(f"the {label} signature names a different key")
    try:
        verify_signature(spki_der, sig.algorithm, card.signing_message(sig.signer), sig.signature)
    except InvalidSignature:
        raise CardVerificationError(f"the {label} signature does not verify") from None
    except KeyFormatError as exc:  # a trusted key given to the policy that is not usable
        raise CardFormatError(exc.message) from None


def _check_rotation(card: Card, previous: Card | None) -> None:
    prev_sig = card.signature_by(PREVIOUS)
    if card.previous_id is None:
        if prev_sig is not None:
            raise CardVerificationError("a 'previous' signature on a card that rotates nothing")
        if previous is not None:
            raise CardVerificationError("the card does not name a previous card")
        return
    if prev_sig is None:
        raise CardVerificationError(
            "the card replaces an earlier card but is not signed by the earlier card's key"
        )
    if previous is not None:
        if previous.id != card.previous_id:
            raise CardVerificationError("the previous card given is not the one this names")
        if (previous.identity, previous.identity_type) != (card.identity, card.identity_type):
            raise CardVerificationError("a rotated card must keep the previous identity")
        _verify_one(card, prev_sig, previous.spki_der, "previous")


def _check_approvals(card: Card, policy: TrustPolicy) -> None:
    """V8/V9: enough officer approvals, none by the card's owner (signatures checked already)."""
    approvers = [o for o in policy.officers if card.signature_by(o.signer) is not None]
    own = [o.username for o in approvers if o.identity == card.identity]
    if own:
        raise CardVerificationError(
            f"the card is approved by its own owner (officer {own[0]!r}): "
            "no one may approve their own card"
        )
    if policy.approvals == 0 or any(o.card_id == card.id for o in policy.officers):
        return
    if len(approvers) < policy.approvals:
        raise CardVerificationError(
            f"the card has {len(approvers)} of the {policy.approvals} officer approvals "
            "the server policy requires"
        )


def verify_card_attestation(card: Card, roots: tuple[Any, ...] | None = None) -> Attestation | None:
    """V10: the attestation `card` states, verified against `roots` (None: Yubico's pinned PIV
    root): the chain verifies, attests the card's own key, and says what the card says.
    Returns None for a card that states no attestation; raises `CardVerificationError`."""
    stated = card.attestation
    if stated is None:
        return None
    try:
        found = verify_attestation(
            stated.attestation_der,
            stated.device_der,
            card.spki_der,
            yubico_roots() if roots is None else roots,
        )
    except AttestationError as exc:
        raise CardVerificationError(
            f"the card's attestation does not verify: {exc.message}"
        ) from None
    attested = {k: v for k, v in found.as_json().items() if k != "root"}
    if attested != stated.stated():
        differ = sorted(k for k in attested if attested[k] != stated.stated()[k])
        raise CardVerificationError(
            f"the card states another {', '.join(differ)} than its attestation certificate"
        )
    return found


def verify_card(card: Card, policy: TrustPolicy, *, previous: Card | None = None) -> None:
    """Verify `card` under `policy`; return None or raise.

    Checks the self signature against the card's own key, every signature by a signer the
    policy trusts, that every required signer signed, officer approvals, and rotation: a card
    naming a previous card must carry a "previous" signature, which is checked when `previous`
    is given (and `previous` must then be the card it names). Raises `CardVerificationError`.
    """
    if not isinstance(card, Card):
        raise CardFormatError("not a card")
    own = card.signature_by(SELF)
    if own is None:
        raise CardVerificationError("the card has no self signature")
    _verify_one(card, own, card.spki_der, "self")
    if policy.require_token_protection and not card.snapshot.provenance.protected:
        raise CardVerificationError(
            "the card says its key was not generated on the token or could be extracted"
        )
    if policy.check_attestation:
        verify_card_attestation(card, policy.roots())
    if policy.require_attestation and card.attestation is None:
        raise CardVerificationError(
            "the card is not attested, and the server policy requires key attestation"
        )
    _check_rotation(card, previous)
    for signer in sorted(policy.required - {SELF, PREVIOUS}):
        if card.signature_by(signer) is None:
            raise CardVerificationError(f"the card lacks the required {signer!r} signature")
    if PREVIOUS in policy.required and previous is None:
        raise CardVerificationError("the previous card is needed to check the rotation")
    for sig in card.signatures:
        keys = policy.trusted.get(sig.signer)
        if not keys:
            continue
        match = next((k for k in keys if key_id_of(k) == sig.key_id), None)
        if match is None:
            raise CardVerificationError(f"the {sig.signer!r} signature is by an untrusted key")
        _verify_one(card, sig, match, repr(sig.signer))
    _check_approvals(card, policy)


def verify_rotation(new: Card, old: Card) -> None:
    """Check that `new` names `old` as its previous card and carries a valid "previous"
    signature by `old`'s key (and a valid self signature). Raises `CardVerificationError`."""
    if new.previous_id is None:
        raise CardVerificationError("the card does not name a previous card")
    verify_card(
        new, TrustPolicy(require_token_protection=False, check_attestation=False), previous=old
    )


def verify_revocation(
    statement: RevocationStatement, card: Card, policy: TrustPolicy | None = None
) -> None:
    """Check that `statement` revokes `card` and is signed by the card's key or by a signer
    `policy` trusts. Raises `CardVerificationError`."""
    if statement.card_id != card.id:
        raise CardVerificationError("the revocation is for a different card")
    sig = statement.signature
    if sig.signer == SELF:
        candidates: Iterable[bytes] = (card.spki_der,)
    else:
        candidates = tuple((policy.trusted if policy else {}).get(sig.signer, ()))
        if not candidates:
            raise CardVerificationError(
                f"the revocation is signed by {sig.signer!r}, whom this policy does not trust"
            )
    spki = next((k for k in candidates if key_id_of(k) == sig.key_id), None)
    if spki is None:
        raise CardVerificationError("the revocation is signed by an untrusted key")
    try:
        verify_signature(
            spki, SignatureAlgorithm(sig.algorithm), statement.message(), sig.signature
        )
    except InvalidSignature:
        raise CardVerificationError("the revocation signature does not verify") from None
    except KeyFormatError as exc:  # a trusted key given to the policy that is not usable
        raise CardFormatError(exc.message) from None
