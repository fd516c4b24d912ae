"""Approvals on the server: the application signature on cards, and the signed server policy
(its records, the open proposal, and the changes).

Policies are kept in order of serial (`policies`); the one with the highest serial is in
force. A change is proposed by an officer (`policy_proposals`, one open at a time), signed by
the officers of the policy in force on their own tokens, and adopted once it carries their
quorum: the application key then signs it too. During the bootstrap ceremony (the policy in
force names fewer officers than it requires approvals) the application key alone signs.
The schema is created by the migration `policy_0001` in `migrations/versions/`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from sqlalchemy import Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hsm_vault.cards.model import Card, CardSignature, now_utc
from hsm_vault.errors import CardError, ConflictOnServer, PolicyVerificationError, UsageError
from hsm_vault.server import log
from hsm_vault.server.appkey import ApplicationKey
from hsm_vault.server.db import Base, CardRecord, CardStatus, Role, User, UTCDateTime, utcnow
from hsm_vault.trust import (
    APP,
    PolicyBody,
    PolicyOfficer,
    SignedPolicy,
    TrustPolicy,
    accept_policy,
    officer_approvals,
    officer_signer,
    verify_card,
)
from hsm_vault.trust.policy import Recovery, version_needed


class PolicyRecord(Base):
    """One adopted policy (one line, every signature), by serial."""

    __tablename__ = "policies"

    serial: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class PolicyProposal(Base):
    """The proposed next policy with the officer signatures it has so far."""

    __tablename__ = "policy_proposals"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    serial: Mapped[int] = mapped_column(Integer, index=True)
    text: Mapped[str] = mapped_column(Text)
    proposed_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    #: "open", "adopted" or "replaced".
    status: Mapped[str] = mapped_column(String(16), index=True)


def sign_and_publish(db: Session, record: CardRecord, app_key: ApplicationKey, by: str) -> None:
    """Add the app signature (made on the server's token) and publish; supersede the previous.
    Under a policy that requires attestation an unattested card is refused (its attestation,
    if any, was verified at publish). The approval (and the rotation) enters the transparency
    log in the same transaction."""
    card = Card.from_text(record.text)
    rules = current_policy(db)
    verify_card(
        card,
        TrustPolicy(
            check_attestation=False,
            require_attestation=rules is not None and rules.body.require_attestation,
        ),
    )
    signature = CardSignature(
        signer=APP,
        key_id=bytes.fromhex(app_key.info.fingerprint),
        algorithm=app_key.info.algorithm,
        signature=app_key.sign(card.signing_message(APP)),
    )
    signed = card.with_signature(signature)
    app_trust = TrustPolicy.with_app_key(app_key.info.spki_der)
    verify_card(signed, replace(app_trust, check_attestation=False))
    now = utcnow()
    record.text = signed.to_text()
    record.status = CardStatus.APPROVED.value
    record.decided_at = now
    record.decided_by = by
    if record.previous_id:
        previous = db.get(CardRecord, record.previous_id)
        if previous is not None and previous.status == CardStatus.APPROVED:
            previous.status = CardStatus.SUPERSEDED.value
            previous.superseded_by = record.id
    log.card_approved(db, record, by)


def current_policy(db: Session) -> SignedPolicy | None:
    """The policy in force, or None before `server init` wrote the first one."""
    record = db.scalars(select(PolicyRecord).order_by(PolicyRecord.serial.desc()).limit(1)).first()
    return SignedPolicy.from_text(record.text) if record is not None else None


def policy_by_serial(db: Session, serial: int) -> SignedPolicy | None:
    record = db.get(PolicyRecord, serial)
    return SignedPolicy.from_text(record.text) if record is not None else None


def require_policy(db: Session) -> SignedPolicy:
    policy = current_policy(db)
    if policy is None:
        raise ConflictOnServer(
            "the server has no signed policy yet",
            hint="Run 'hsm-vault server init --data DIR' on the server host.",
        )
    return policy


def _app_signature(app_key: ApplicationKey, policy: SignedPolicy) -> CardSignature:
    return CardSignature(
        signer=APP,
        key_id=bytes.fromhex(app_key.info.fingerprint),
        algorithm=app_key.info.algorithm,
        signature=app_key.sign(policy.body.signing_message(APP)),
    )


def _adopt(
    db: Session, app_key: ApplicationKey, policy: SignedPolicy, by: str = "server"
) -> SignedPolicy:
    """Sign with the application key, check it as a client would, put it in force, and log
    it."""
    signed = policy.with_signature(_app_signature(app_key, policy))
    held = current_policy(db)
    if held is not None:
        accept_policy(held, signed, app_key.info.spki_der)
    db.add(
        PolicyRecord(serial=signed.serial, id=signed.id, text=signed.to_text(), created_at=utcnow())
    )
    log.policy_adopted(db, signed.to_text(), by)
    return signed


def init_policy(
    db: Session,
    app_key: ApplicationKey,
    approvals: int | None,
    require_attestation: bool | None = None,
) -> SignedPolicy:
    """Write policy 1 (approvals, the attestation rule, no officers) if there is none; change
    approvals or the attestation rule while the bootstrap is not complete. Returns the policy
    in force."""
    held = current_policy(db)
    if held is None:
        attest = bool(require_attestation)
        body = PolicyBody(
            serial=1,
            app_key_id=app_key.info.fingerprint,
            approvals=1 if approvals is None else approvals,
            officers=(),
            created_at=now_utc(),
            previous=None,
            require_attestation=attest,
            version=version_needed(attest, None, None),
        )
        return _adopt(db, app_key, SignedPolicy(body))
    same_approvals = approvals is None or approvals == held.body.approvals
    same_attestation = (
        require_attestation is None or require_attestation == held.body.require_attestation
    )
    if same_approvals and same_attestation:
        return held
    if held.body.complete and held.body.approvals > 0:
        raise UsageError(
            f"policy {held.serial} is in force with its officers: changing it needs them",
            hint="An officer runs 'hsm-vault policy propose' (--approvals N, "
            "--require-attestation yes); the others sign it.",
        )
    body = held.body.successor(
        created_at=now_utc(), approvals=approvals, require_attestation=require_attestation
    )
    return _adopt(db, app_key, SignedPolicy(body))


def officer_of(db: Session, user: User) -> PolicyOfficer:
    """`user` as a policy officer: an officer account with an approved (or, in the ceremony,
    a published) current card."""
    if not user.role_enum.includes(Role.OFFICER):
        raise UsageError(f"{user.name!r} is a {user.role}, not an officer")
    try:
        officer_signer(user.name)
    except CardError as exc:
        raise UsageError(exc.message) from None
    record = db.scalars(
        select(CardRecord)
        .where(
            CardRecord.owner_id == user.id,
            CardRecord.status.in_((CardStatus.APPROVED, CardStatus.PENDING)),
        )
        .order_by(CardRecord.published_at.desc())
        .limit(1)
    ).first()
    if record is None:
        raise UsageError(
            f"{user.name!r} has no published card",
            hint="The officer creates a card on their token and runs 'hsm-vault card publish'.",
        )
    card = Card.from_text(record.text)
    return PolicyOfficer(user.name, card.identity, card.id, card.key_type, card.spki_der)


def add_officer_in_ceremony(
    db: Session, app_key: ApplicationKey, officer: PolicyOfficer
) -> SignedPolicy:
    """Bootstrap: approve the officer's card with the application key and name it in a new
    policy signed by the application key alone. Refused once the policy has its officers."""
    held = require_policy(db)
    if held.body.complete:
        raise UsageError(
            f"policy {held.serial} already names {len(held.body.officers)} officers for "
            f"{held.body.approvals} approvals: the ceremony is over",
            hint="Officers add one with 'hsm-vault policy propose --add-officer NAME' and sign.",
        )
    if held.body.officer(officer.username) is not None:
        raise UsageError(f"{officer.username!r} is an officer already")
    record = db.get(CardRecord, officer.card_id)
    if record is None:
        raise UsageError(f"card {officer.card_id} is not on this server")
    if record.status == CardStatus.PENDING:
        sign_and_publish(db, record, app_key, by="add-officer")
    body = held.body.successor(created_at=now_utc(), add=(officer,))
    return _adopt(db, app_key, SignedPolicy(body), "add-officer")


def propose(
    db: Session,
    app_key: ApplicationKey,
    by: User,
    *,
    approvals: int | None,
    add: tuple[str, ...],
    remove: tuple[str, ...],
    require_attestation: bool | None = None,
    recovery: Recovery | None = None,
) -> SignedPolicy:
    """Record the next policy as the open proposal (replacing any); during the bootstrap the
    application key alone adopts it at once. Returns it (adopted or open)."""
    held = require_policy(db)
    officers = []
    for name in add:
        user = db.scalars(select(User).where(User.name == name)).first()
        if user is None:
            raise UsageError(f"no account {name!r}")
        officer = officer_of(db, user)
        card = db.get(CardRecord, officer.card_id)
        if card is None or card.status != CardStatus.APPROVED:
            raise UsageError(f"{name!r}'s card is not approved yet: approve it first")
        officers.append(officer)
    body = held.body.successor(
        created_at=now_utc(),
        approvals=approvals,
        add=tuple(officers),
        remove=remove,
        require_attestation=require_attestation,
        recovery=recovery,
    )
    if held.body.complete and not body.complete:
        raise UsageError(
            f"the new policy would name {len(body.officers)} officers for {body.approvals} "
            "approvals: a policy that has its officers must keep enough of them"
        )
    for proposal in db.scalars(select(PolicyProposal).where(PolicyProposal.status == "open")):
        proposal.status = "replaced"
    policy = SignedPolicy(body)
    if not held.body.complete or held.body.approvals == 0:
        return _adopt(db, app_key, policy, by.name)
    db.add(
        PolicyProposal(
            id=policy.id,
            serial=policy.serial,
            text=policy.to_text(),
            proposed_by=by.name,
            created_at=utcnow(),
            status="open",
        )
    )
    return policy


def open_proposal(db: Session) -> PolicyProposal | None:
    return db.scalars(
        select(PolicyProposal).where(PolicyProposal.status == "open").with_for_update()
    ).first()


def add_proposal_signature(
    db: Session, app_key: ApplicationKey, by: User, policy_id: str, signature: CardSignature
) -> SignedPolicy:
    """An officer of the policy in force signs the open proposal; adopt it at the quorum."""
    held = require_policy(db)
    record = open_proposal(db)
    if record is None or record.id != policy_id:
        raise ConflictOnServer("that proposal is not open (replaced or adopted)")
    if held.body.officer(by.name) is None:
        raise PolicyVerificationError(
            f"{by.name!r} is not an officer of policy {held.serial}: only they sign changes"
        )
    if signature.signer != officer_signer(by.name):
        raise PolicyVerificationError(f"the signature must be by {officer_signer(by.name)!r}")
    proposal = SignedPolicy.from_text(record.text)
    if proposal.serial != held.serial + 1 or proposal.body.previous != held.id:
        record.status = "replaced"
        raise ConflictOnServer("the proposal no longer follows the policy in force")
    if proposal.signature_by(signature.signer) is not None:
        raise ConflictOnServer("you signed this proposal already")
    signed = proposal.with_signature(signature)
    approvers = officer_approvals(signed, held.body)  # checks every signature (P6)
    if len(approvers) < held.body.approvals:
        record.text = signed.to_text()
        return signed
    record.status = "adopted"
    return _adopt(db, app_key, signed, by.name)
