"""Making cards and revocations: the pure building steps, and the thin part that uses a token.

The building steps take a `sign(message) -> signature` function, so the same code signs with a
token session (`create_card`, `revoke_card`) or with a software key (the test-vector
generator). This module never imports the token layer: a session is anything with the
`SigningSession` shape (`hsm_vault.token`'s session has it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from hsm_vault.algorithms import KeyType, SignatureAlgorithm, verify_signature
from hsm_vault.attestation import verify_attestation, yubico_roots
from hsm_vault.cards.model import (
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
    _enum,
    key_id_of,
    now_utc,
)
from hsm_vault.cards.revocation import RevocationStatement
from hsm_vault.errors import CardVerificationError, InvalidSignature, KeyPolicyError, UsageError

Signer = Callable[[bytes], bytes]


class TokenKey(Protocol):
    """The parts of `hsm_vault.token.KeyInfo` a card needs."""

    label: str
    key_type: KeyType
    spki_der: bytes
    local: bool
    never_extractable: bool
    always_sensitive: bool


class SigningSession(Protocol):
    """The parts of an `hsm_vault.token` session a card needs."""

    @property
    def info(self) -> Any: ...

    def sign(self, key: Any, message: bytes) -> bytes: ...

    def oaep_hash(self, key: Any) -> str: ...

    def check_can_decrypt(self, key: Any) -> None: ...

    def attestation(self, key: Any) -> tuple[bytes, bytes] | None: ...


def default_identity_type(identity: str) -> IdentityType:
    """email if the identity has an @, otherwise username."""
    return IdentityType.EMAIL if "@" in identity else IdentityType.USERNAME


def check_key_protection(key: TokenKey) -> None:
    """Raise `KeyPolicyError` unless the token says the key was made on it and cannot leave."""
    missing = [
        name
        for name in ("local", "never_extractable", "always_sensitive")
        if not getattr(key, name)
        and not (name == "local" and getattr(key, "local_not_reported", False))
    ]
    # KeyInfo also reports the current CKA_SENSITIVE / CKA_EXTRACTABLE; honour them when present.
    if not getattr(key, "sensitive", True):
        missing.append("sensitive")
    if getattr(key, "extractable", False):
        missing.append("not extractable")
    if missing:
        raise KeyPolicyError(
            f"key {key.label!r} is not protected by the token ({', '.join(missing)} is false); "
            "a card can only be made for a key generated on the token"
        )


def sign_card(
    card: Card, signer: str, spki_der: bytes, algorithm: SignatureAlgorithm, sign: Signer
) -> Card:
    """Add `signer`'s signature made by `sign` (checked against `spki_der` before it is kept)."""
    message = card.signing_message(signer)
    signature = sign(message)
    # A token that returns garbage must not produce a card that fails later, far from here.
    try:
        verify_signature(spki_der, algorithm, message, signature)
    except InvalidSignature:
        raise CardVerificationError(
            f"the {signer!r} signature just made does not verify (token fault?)"
        ) from None
    return card.with_signature(CardSignature(signer, key_id_of(spki_der), algorithm, signature))


def build_snapshot(
    *,
    identity: str,
    spki_der: bytes,
    key_type: KeyType,
    provenance: TokenProvenance,
    identity_type: IdentityType | str | None = None,
    oaep_hash: str | None = None,
    scope: Iterable[Scope | str] = (Scope.ENCRYPT, Scope.SIGN),
    data: Mapping[str, str] | None = None,
    created_at: str | None = None,
    previous_id: str | None = None,
    attestation: CardAttestation | None = None,
) -> CardSnapshot:
    """A validated snapshot; the wrap method follows from the key type."""
    return CardSnapshot(
        identity=identity,
        identity_type=_enum(
            IdentityType, identity_type or default_identity_type(identity), "identity type"
        ),
        spki_der=spki_der,
        key_type=key_type,
        wrap_method=WrapMethod.ECDH if key_type.is_ec else WrapMethod.RSA_OAEP,
        oaep_hash=None if key_type.is_ec else oaep_hash,
        scope=tuple(sorted({_enum(Scope, s, "scope") for s in scope})),
        data=dict(data or {}),
        created_at=created_at or now_utc(),
        previous_id=previous_id,
        provenance=provenance,
        attestation=attestation,
    )


def read_attestation(
    session: SigningSession, key: TokenKey, roots: tuple[Any, ...] | None = None
) -> CardAttestation | None:
    """The token's attestation of `key`, verified to `roots` (None: Yubico's pinned PIV root),
    as a card records it; None when the token offers none. Raises `AttestationError` for a
    chain that does not verify, so no card records an attestation that was not checked."""
    certificates = session.attestation(key)
    if certificates is None:
        return None
    found = verify_attestation(
        *certificates, key.spki_der, yubico_roots() if roots is None else roots
    )
    return CardAttestation(
        chain=certificates,
        serial=found.serial,
        firmware=found.firmware,
        pin_policy=found.pin_policy,
        touch_policy=found.touch_policy,
        form_factor=found.form_factor,
    )


def create_card(
    session: SigningSession,
    key: TokenKey,
    identity: str,
    *,
    identity_type: IdentityType | str | None = None,
    scope: Iterable[Scope | str] = (Scope.ENCRYPT, Scope.SIGN),
    data: Mapping[str, str] | None = None,
    previous: tuple[Card, TokenKey] | None = None,
    created_at: str | None = None,
    attest: bool = True,
    attestation_roots: tuple[Any, ...] | None = None,
) -> Card:
    """Make a card for `key` and sign it "self" on the token (and "previous" when rotating).

    Refuses (`KeyPolicyError`) a key the token does not report as local, never extractable and
    always sensitive. For RSA keys the OAEP hash the token accepts is probed and recorded.
    `previous` is (old card, old card's key on a token of the same session). A token that
    attests its keys (a YubiKey) has the attestation read, verified to `attestation_roots`
    and recorded (unless `attest` is off); a chain that does not verify makes no card.
    """
    check_key_protection(key)
    scope = tuple(scope)
    if Scope.ENCRYPT in {_enum(Scope, s, "scope") for s in scope}:
        session.check_can_decrypt(key)  # a card others encrypt to must be decryptable
    info = session.info
    provenance = TokenProvenance(
        manufacturer=str(info.manufacturer).strip(),
        model=str(info.model).strip(),
        serial=str(info.serial).strip(),
        local=bool(key.local),
        never_extractable=bool(key.never_extractable),
        always_sensitive=bool(key.always_sensitive),
        local_not_reported=bool(getattr(key, "local_not_reported", False)),
    )
    previous_card: Card | None = None
    if previous is not None:
        previous_card, old_key = previous
        if old_key.spki_der != previous_card.spki_der:
            raise UsageError(
                f"key {old_key.label!r} is not the key of card {previous_card.id[:16]}",
                hint="Pass --old-key with the token key the previous card was made for.",
            )
        if old_key.spki_der == key.spki_der:
            raise UsageError(
                "rotation needs a new key: the new card uses the same key as the previous one",
                hint="Generate a new key with 'hsm-vault key generate' first.",
            )
    attestation = read_attestation(session, key, attestation_roots) if attest else None
    snapshot = build_snapshot(
        identity=identity,
        identity_type=identity_type
        or (previous_card.identity_type if previous_card is not None else None),
        spki_der=key.spki_der,
        key_type=key.key_type,
        provenance=provenance,
        oaep_hash=None if key.key_type.is_ec else session.oaep_hash(key),
        scope=scope,
        data=data,
        created_at=created_at,
        previous_id=previous_card.id if previous_card is not None else None,
        attestation=attestation,
    )
    card = Card(snapshot)
    algorithm = key.key_type.signature_algorithm
    card = sign_card(card, SELF, key.spki_der, algorithm, lambda m: session.sign(key, m))
    if previous is not None:
        old_key = previous[1]
        card = sign_card(
            card,
            PREVIOUS,
            old_key.spki_der,
            old_key.key_type.signature_algorithm,
            lambda m: session.sign(old_key, m),
        )
    return card


def make_revocation(
    card_id: str,
    reason: RevocationReason | str,
    signer: str,
    spki_der: bytes,
    algorithm: SignatureAlgorithm,
    sign: Signer,
    *,
    created_at: str | None = None,
) -> RevocationStatement:
    """A revocation statement for `card_id` signed by `sign` as `signer`."""
    created_at = created_at or now_utc()
    reason = RevocationReason(reason)
    message = RevocationStatement.signing_message(card_id, reason, created_at, signer)
    signature = sign(message)
    try:
        verify_signature(spki_der, algorithm, message, signature)
    except InvalidSignature as exc:
        raise CardVerificationError(exc.message) from None
    return RevocationStatement(
        card_id=card_id,
        reason=reason,
        created_at=created_at,
        signature=CardSignature(signer, key_id_of(spki_der), algorithm, signature),
    )


def revoke_card(
    session: SigningSession,
    key: TokenKey,
    card: Card,
    reason: RevocationReason | str,
    *,
    signer: str = SELF,
    created_at: str | None = None,
) -> RevocationStatement:
    """Sign a revocation of `card` on the token: with the card's own key ("self"), or with a
    key that verifiers trust for `signer` (e.g. the server's "app" key)."""
    if signer == SELF and key.spki_der != card.spki_der:
        raise UsageError(
            f"key {key.label!r} is not the key of card {card.id[:16]}",
            hint="Revoke with the card's own key, or as a signer others trust.",
        )
    return make_revocation(
        card.id,
        reason,
        signer,
        key.spki_der,
        key.key_type.signature_algorithm,
        lambda m: session.sign(key, m),
        created_at=created_at,
    )


def approve_card(
    session: SigningSession, key: TokenKey, card: Card, signer: str, own_card: Card
) -> CardSignature:
    """An officer's approval of `card`: `signer` (officer:<name>) signs the card id on the
    token with the key of the officer's own card `own_card`. Returns the signature."""
    if key.spki_der != own_card.spki_der:
        raise UsageError(
            f"key {key.label!r} is not the key of your officer card {own_card.id[:16]}",
            hint="Approve with the token key your officer card was made for.",
        )
    signed = sign_card(
        card,
        signer,
        key.spki_der,
        key.key_type.signature_algorithm,
        lambda m: session.sign(key, m),
    )
    signature = signed.signature_by(signer)
    if signature is None:  # sign_card adds it: this is a bug, not bad input
        raise CardVerificationError(f"no {signer!r} signature was made")
    return signature
