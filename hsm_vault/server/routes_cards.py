"""Routes of the card directory: publish, pending, approve, reject, search, get, revoke.

The server checks every card it is given as fully as a client would (self signature, token
protection, rotation signature, officer approvals under the policy in force), but clients
never rely on that: they verify the cards and revocations they fetch against the application
key and the signed policy they pinned. Approval follows the policy in force: with
`approvals` N > 0 each officer of the policy signs the card on their own token, no one
approves their own card, and the application key signs once N officers have.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session, aliased

from hsm_vault.cards.model import (
    PREVIOUS,
    SELF,
    Card,
    CardSignature,
    RevocationReason,
    now_utc,
)
from hsm_vault.cards.revocation import RevocationStatement
from hsm_vault.config import attestation_roots
from hsm_vault.errors import CardError, CardVerificationError
from hsm_vault.server import log
from hsm_vault.server.appkey import ApplicationKey
from hsm_vault.server.approvals import current_policy, require_policy, sign_and_publish
from hsm_vault.server.auth import (
    Authenticated,
    BearerDep,
    CurrentUser,
    DbDep,
    OfficerUser,
    SettingsDep,
    run_authenticated,
)
from hsm_vault.server.db import CardRecord, CardStatus, Role, User, utcnow
from hsm_vault.server.problems import Problem, problem_responses
from hsm_vault.trust import (
    APP,
    SignedPolicy,
    TrustPolicy,
    officer_signer,
    verify_card,
    verify_revocation,
)

router = APIRouter(
    prefix="/v1/cards",
    tags=["cards"],
    responses=problem_responses(401, 403, 404, 409, 413, 422, 429),
)

APP_SIGNER = APP
CARD_ID_PATTERN = r"^[0-9a-f]{64}$"
CardIdPath = Annotated[str, Path(pattern=CARD_ID_PATTERN, description="hex SHA-256 card id")]


class PublishIn(BaseModel):
    # Below the 64 KiB limit of a JSON body, so a card of the largest length still fits.
    card: Annotated[str, Field(min_length=1, max_length=60000, description="one-line card")]


class RejectIn(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


class ApproveIn(BaseModel):
    signature: dict[str, Any] | None = Field(
        None,
        description="the officer's signature entry (signer officer:<username>) over the card "
        "id, made on the officer's token; needed when the policy requires approvals",
    )


class RevokeIn(BaseModel):
    statement: Annotated[
        str | None,
        Field(max_length=4096, description="a revocation statement signed by the card's key"),
    ] = None
    reason: RevocationReason = RevocationReason.UNSPECIFIED


class CardOut(BaseModel):
    id: str
    identity: str
    owner: str
    status: CardStatus
    card: str = Field(description="the one-line card with every signature it has")
    previous_id: str | None = None
    superseded_by: str | None = None
    published_at: dt.datetime
    decided_at: dt.datetime | None = None
    decided_by: str | None = None
    reject_reason: str | None = None
    revocation: str | None = Field(None, description="the signed revocation statement")
    revoked_at: dt.datetime | None = None
    second_card: bool = Field(
        default=False,
        description="pending cards: the identity has an approved card this one does not replace",
    )
    log: dict[str, Any] | None = Field(
        None,
        description="the transparency log entries of the card's approval and latest status "
        "(revocation, or its successor's approval), each with its inclusion proof in the "
        "answer's log_head; null for cards the log does not hold (pending, rejected)",
    )
    log_head: str | None = Field(
        None, description="single-card answers: the signed tree head (hsmv-head-1:...)"
    )


class CardListOut(BaseModel):
    cards: list[CardOut]
    log_head: str = Field(description="the signed tree head the proofs are in (hsmv-head-1:...)")


def _out(record: CardRecord | Row[*tuple[Any, ...]], owner: str) -> CardOut:
    return CardOut(
        id=record.id,
        identity=record.identity,
        owner=owner,
        status=CardStatus(record.status),
        card=record.text,
        previous_id=record.previous_id,
        superseded_by=record.superseded_by,
        published_at=record.published_at,
        decided_at=record.decided_at,
        decided_by=record.decided_by,
        reject_reason=record.reject_reason,
        revocation=record.revocation,
        revoked_at=record.revoked_at,
        log=None,
        log_head=None,
    )


def _owner_names(db: Session, records: list[CardRecord]) -> dict[int, str]:
    ids = {r.owner_id for r in records}
    if not ids:
        return {}
    return {u.id: u.name for u in db.scalars(select(User).where(User.id.in_(ids)))}


def _attach_logs(
    db: Session,
    sessions: Any,
    app_key: ApplicationKey,
    settings: Any,
    cache: log.LogCache,
    records: Sequence[Any],
    cards: list[CardOut],
    bodies: dict[int, str] | None = None,
) -> str:
    """Give each card its log proofs in the current signed head; returns the head."""
    head = log.current_head(db, sessions, app_key, settings.log_max_age_seconds)
    logs = log.card_logs(db, cache, head, records, bodies)
    for out in cards:
        out.log = logs.get(out.id)
    return head


def _list_out(db: Session, records: list[CardRecord], request: Request) -> CardListOut:
    """The records as the API states them, each with its log proofs in the current head."""
    names = _owner_names(db, records)
    cards = [_out(r, names.get(r.owner_id, "?")) for r in records]
    state = request.app.state
    head = _attach_logs(
        db, state.sessionmaker, _app_key(request), state.settings, state.log_cache, records, cards
    )
    return CardListOut(cards=cards, log_head=head)


def _one_out(db: Session, record: CardRecord, request: Request) -> CardOut:
    listing = _list_out(db, [record], request)
    out = listing.cards[0]
    out.log_head = listing.log_head
    return out


def _app_key(request: Request) -> ApplicationKey:
    key: ApplicationKey = request.app.state.app_key
    return key


def _app_policy(app_key: ApplicationKey) -> TrustPolicy:
    return TrustPolicy.with_app_key(app_key.info.spki_der, required=False)


def _get_record(db: Session, card_id: str) -> CardRecord:
    record = db.get(CardRecord, card_id)
    if record is None:
        raise Problem(404, f"no card {card_id}")
    return record


def _may_see(user: User, record: CardRecord) -> bool:
    public = record.status in (CardStatus.APPROVED, CardStatus.SUPERSEDED, CardStatus.REVOKED)
    return public or record.owner_id == user.id or user.role_enum.includes(Role.OFFICER)


def _second_card(db: Session, record: CardRecord) -> bool:
    """Whether approving `record` would give its identity a second current card."""
    others = db.scalars(
        select(CardRecord.id).where(
            CardRecord.identity == record.identity,
            CardRecord.status == CardStatus.APPROVED,
            CardRecord.id != record.id,
        )
    ).all()
    return any(other != record.previous_id for other in others)


@router.post("", response_model=CardOut, status_code=201)
def publish_card(
    body: PublishIn, user: CurrentUser, db: DbDep, settings: SettingsDep, request: Request
) -> CardOut:
    """Publish a self-signed card for your own identity; it waits for an officer's approval."""
    card = Card.from_text(body.card)  # CardFormatError -> 422
    if card.identity != user.identity:
        raise Problem(403, f"you may publish cards for your own identity {user.identity!r} only")
    unexpected = [s for s in card.signers if s not in (SELF, PREVIOUS)]
    if unexpected:
        raise Problem(422, f"a published card must not carry {', '.join(unexpected)} signatures")
    previous: Card | None = None
    if card.previous_id is not None:
        old = db.get(CardRecord, card.previous_id)
        if old is None or old.owner_id != user.id:
            raise Problem(422, "the card replaces a card that is not one of yours on this server")
        if old.status != CardStatus.APPROVED:
            raise Problem(409, f"the card it replaces is {old.status}, not approved")
        previous = Card.from_text(old.text)
    # The policy's attestation rule, and a stated attestation must verify to our roots.
    rules = current_policy(db)
    trust = TrustPolicy(
        require_attestation=rules is not None and rules.body.require_attestation,
        attestation_roots=attestation_roots(),
    )
    try:
        verify_card(card, trust, previous=previous)
    except CardVerificationError as exc:
        raise Problem(422, f"the card does not verify: {exc.message}") from None
    if db.get(CardRecord, card.id) is not None:
        raise Problem(409, f"card {card.id} was published already")
    record = CardRecord(
        id=card.id,
        owner_id=user.id,
        identity=card.identity,
        text=card.to_text(),
        status=CardStatus.PENDING.value,
        previous_id=card.previous_id,
        published_at=utcnow(),
        key_id=card.key_id.hex(),
    )
    db.add(record)
    if settings.auto_approve and require_policy(db).body.approvals == 0:
        sign_and_publish(db, record, _app_key(request), by="auto-approve")
    db.commit()
    return _one_out(db, record, request)


#: Card search, built once; plain columns (no ORM objects to build): it is the hot path.
_APPROVAL = aliased(log.LogEntryRecord)
_STATUS = aliased(log.LogEntryRecord)
_SEARCH = (
    select(
        *CardRecord.__table__.columns,
        User.name.label("owner"),
        _APPROVAL.body.label("approval_entry"),
        _STATUS.body.label("status_entry"),
    )
    .join(User, User.id == CardRecord.owner_id)
    # The card's log entries come with it: no second query on the hot path.
    .outerjoin(_APPROVAL, _APPROVAL.index == CardRecord.log_index)
    .outerjoin(_STATUS, _STATUS.index == CardRecord.status_index)
    .where(
        CardRecord.identity == bindparam("identity"),
        CardRecord.status == CardStatus.APPROVED.value,
    )
    .order_by(CardRecord.decided_at.desc())
)


@router.get("", response_model=CardListOut)
async def search_cards(
    identity: Annotated[str, Query(min_length=1, max_length=255)],
    request: Request,
    credentials: BearerDep,
) -> CardListOut:
    """Approved, unrevoked, current cards for an identity, with their signatures and their
    transparency log proofs."""
    app_key, state = _app_key(request), request.app.state

    def search(db: Session, _auth: Authenticated) -> CardListOut:
        rows = db.execute(_SEARCH, {"identity": identity}).all()
        cards = [_out(row, row.owner) for row in rows]
        bodies = {r.log_index: r.approval_entry for r in rows if r.approval_entry is not None}
        bodies.update((r.status_index, r.status_entry) for r in rows if r.status_entry is not None)
        head = _attach_logs(
            db, state.sessionmaker, app_key, state.settings, state.log_cache, rows, cards, bodies
        )
        return CardListOut(cards=cards, log_head=head)

    # The hot path: authentication, search and proofs in one worker thread.
    return await run_authenticated(request, credentials, search)


@router.get("/pending", response_model=CardListOut)
def pending_cards(_officer: OfficerUser, db: DbDep, request: Request) -> CardListOut:
    """Cards waiting for approval (officers only), each saying whether it would be a second
    current card for its identity."""
    records = list(
        db.scalars(
            select(CardRecord)
            .where(CardRecord.status == CardStatus.PENDING)
            .order_by(CardRecord.published_at)
        )
    )
    listing = _list_out(db, records, request)
    for out, record in zip(listing.cards, records, strict=True):
        out.second_card = _second_card(db, record)
    return listing


@router.get("/mine", response_model=CardListOut)
def my_cards(user: CurrentUser, db: DbDep, request: Request) -> CardListOut:
    """Every card you published, in any state."""
    records = list(
        db.scalars(
            select(CardRecord)
            .where(CardRecord.owner_id == user.id)
            .order_by(CardRecord.published_at)
        )
    )
    return _list_out(db, records, request)


@router.get("/{card_id}", response_model=CardOut)
def get_card(card_id: CardIdPath, user: CurrentUser, db: DbDep, request: Request) -> CardOut:
    """One card by id, with its status and, if revoked, the signed revocation statement."""
    record = _get_record(db, card_id)
    if not _may_see(user, record):
        raise Problem(404, f"no card {card_id}")
    return _one_out(db, record, request)


def _officer_approval(
    record: CardRecord, card: Card, policy: SignedPolicy, officer: User, body: ApproveIn | None
) -> Card:
    """The card with `officer`'s checked approval added (policy approvals > 0)."""
    entry = policy.body.officer(officer.name)
    if entry is None:
        raise Problem(
            403,
            f"{officer.name!r} is not an officer of the server policy (serial "
            f"{policy.serial}): only its officers approve cards",
        )
    if body is None or body.signature is None:
        raise Problem(
            422,
            f"the server policy requires {policy.body.approvals} officer approval(s) signed "
            "on the officers' tokens: approve with 'hsm-vault card approve'",
        )
    try:
        signature = CardSignature.from_json(body.signature)
    except CardError as exc:
        raise Problem(422, f"the approval is malformed: {exc.message}") from None
    signer = officer_signer(officer.name)
    if signature.signer != signer:
        raise Problem(422, f"your approval must be signed as {signer!r}")
    if entry.identity == card.identity:
        raise Problem(403, "no one may approve their own card")
    if card.signature_by(signer) is not None:
        raise Problem(409, f"you approved card {record.id} already")
    signed = card.with_signature(signature)
    try:
        verify_card(
            signed, TrustPolicy(trusted={signer: (entry.spki_der,)}, check_attestation=False)
        )
    except CardVerificationError as exc:
        raise Problem(422, f"your approval does not verify: {exc.message}") from None
    return signed


@router.post("/{card_id}/approve", response_model=CardOut)
def approve_card(
    card_id: CardIdPath,
    officer: OfficerUser,
    db: DbDep,
    request: Request,
    body: ApproveIn | None = None,
) -> CardOut:
    """Approve a pending card (officers only; never their own).

    Under a policy with approvals N > 0 the request carries the officer's signature made on
    their token; the card stays pending, collecting approvals, until N officers of the policy
    have signed, and then the server signs it with the application key. With N = 0 the
    application key alone signs at once.
    """
    record = db.get(CardRecord, card_id, with_for_update=True)
    if record is None:
        raise Problem(404, f"no card {card_id}")
    if record.status == CardStatus.APPROVED:
        raise Problem(409, f"card {card_id} is approved already")
    if record.status != CardStatus.PENDING:
        raise Problem(409, f"card {card_id} is {record.status}, not pending")
    if record.owner_id == officer.id:
        raise Problem(403, "no one may approve their own card")
    if record.previous_id is not None:
        previous = db.get(CardRecord, record.previous_id)
        if previous is None or previous.status != CardStatus.APPROVED:
            state = previous.status if previous else "gone"
            raise Problem(409, f"the card this one replaces is {state} now, not approved")
    policy = require_policy(db)
    if policy.body.approvals == 0:
        sign_and_publish(db, record, _app_key(request), by=officer.name)
    else:
        card = _officer_approval(record, Card.from_text(record.text), policy, officer, body)
        approvers = [o for o in policy.body.officers if card.signature_by(o.signer)]
        record.text = card.to_text()
        if len(approvers) >= policy.body.approvals:
            sign_and_publish(db, record, _app_key(request), by=officer.name)
    db.commit()
    return _one_out(db, record, request)


@router.post("/{card_id}/reject", response_model=CardOut)
def reject_card(
    card_id: CardIdPath,
    body: RejectIn,
    officer: OfficerUser,
    db: DbDep,
    request: Request,
) -> CardOut:
    """Reject a pending card, with a reason its owner can read (officers only)."""
    record = _get_record(db, card_id)
    if record.status != CardStatus.PENDING:
        raise Problem(409, f"card {card_id} is {record.status}, not pending")
    record.status = CardStatus.REJECTED.value
    record.reject_reason = body.reason
    record.decided_at = utcnow()
    record.decided_by = officer.name
    db.commit()
    return _one_out(db, record, request)


@router.post("/{card_id}/revoke", response_model=CardOut)
def revoke_card(
    card_id: CardIdPath,
    body: RevokeIn,
    user: CurrentUser,
    db: DbDep,
    request: Request,
) -> CardOut:
    """Revoke a card (its owner or an officer).

    The owner sends a revocation statement signed with the card's key on their token. An
    officer may send one too, or only a reason: the server then signs the statement with the
    application key (signer "app").
    """
    record = _get_record(db, card_id)
    officer = user.role_enum.includes(Role.OFFICER)
    if record.owner_id != user.id and not officer:
        if not _may_see(user, record):
            raise Problem(404, f"no card {card_id}")
        raise Problem(403, "only the card's owner or an officer may revoke it")
    if record.revocation is not None:
        raise Problem(409, f"card {card_id} is revoked already")
    if record.status == CardStatus.REJECTED:
        raise Problem(409, f"card {card_id} was rejected; there is nothing to revoke")
    if record.status == CardStatus.PENDING and record.owner_id != user.id:
        raise Problem(409, f"card {card_id} is pending: reject it instead of revoking it")
    app_key = _app_key(request)
    card = Card.from_text(record.text)
    if body.statement is not None:
        statement = RevocationStatement.from_text(body.statement)
        try:
            verify_revocation(statement, card, _app_policy(app_key))
        except CardVerificationError as exc:
            raise Problem(422, f"the revocation does not verify: {exc.message}") from None
    elif officer:
        created = now_utc()
        message = RevocationStatement.signing_message(card.id, body.reason, created, APP_SIGNER)
        statement = RevocationStatement(
            card_id=card.id,
            reason=body.reason,
            created_at=created,
            signature=CardSignature(
                signer=APP_SIGNER,
                key_id=bytes.fromhex(app_key.info.fingerprint),
                algorithm=app_key.info.algorithm,
                signature=app_key.sign(message),
            ),
        )
    else:
        raise Problem(
            422,
            "send a revocation statement signed with the card's key "
            "(or ask an officer to revoke it)",
        )
    record.revocation = statement.to_text()
    record.revoked_at = utcnow()
    record.status = CardStatus.REVOKED.value
    log.card_revoked(db, record, user.name)
    db.commit()
    return _one_out(db, record, request)
