"""Routes of the card directory: publish, pending, approve, reject, search, get, revoke.

The server checks every card it is given as fully as a client would (self signature, token
protection, rotation signature), but clients never rely on that: they verify the cards and
revocations they fetch against the application key they pinned.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.orm import Session

from hsm_vault.cards.model import (
    PREVIOUS,
    SELF,
    Card,
    CardSignature,
    RevocationReason,
    TrustPolicy,
    now_utc,
    verify_card,
)
from hsm_vault.cards.revocation import RevocationStatement, verify_revocation
from hsm_vault.errors import CardVerificationError
from hsm_vault.server.appkey import ApplicationKey
from hsm_vault.server.auth import (
    Authenticated,
    BearerDep,
    CurrentUser,
    DbDep,
    OfficerUser,
    SettingsDep,
    end_read,
    run_authenticated,
)
from hsm_vault.server.db import CardRecord, CardStatus, Role, User, utcnow
from hsm_vault.server.problems import Problem, problem_responses

router = APIRouter(
    prefix="/v1/cards",
    tags=["cards"],
    responses=problem_responses(401, 403, 404, 409, 413, 422, 429),
)

APP_SIGNER = "app"
CARD_ID_PATTERN = r"^[0-9a-f]{64}$"
CardIdPath = Annotated[str, Path(pattern=CARD_ID_PATTERN, description="hex SHA-256 card id")]


class PublishIn(BaseModel):
    card: Annotated[str, Field(min_length=1, max_length=65536, description="one-line card")]


class RejectIn(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


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


class CardListOut(BaseModel):
    cards: list[CardOut]


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
    )


def _owner_names(db: Session, records: list[CardRecord]) -> dict[int, str]:
    ids = {r.owner_id for r in records}
    if not ids:
        return {}
    return {u.id: u.name for u in db.scalars(select(User).where(User.id.in_(ids)))}


def _list_out(db: Session, records: list[CardRecord]) -> CardListOut:
    names = _owner_names(db, records)
    return CardListOut(cards=[_out(r, names.get(r.owner_id, "?")) for r in records])


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


def _approval(record: CardRecord, app_key: ApplicationKey, by: str) -> dict[str, Any]:
    """The approved record's new values: the card with the app signature (made on the
    server's token), its status, when and by whom."""
    card = Card.from_text(record.text)
    verify_card(card, TrustPolicy.self_only())
    signature = CardSignature(
        signer=APP_SIGNER,
        key_id=bytes.fromhex(app_key.info.fingerprint),
        algorithm=app_key.info.algorithm,
        signature=app_key.sign(card.signing_message(APP_SIGNER)),
    )
    signed = card.with_signature(signature)
    verify_card(signed, TrustPolicy.with_app_key(app_key.info.spki_der))
    return {
        "text": signed.to_text(),
        "status": CardStatus.APPROVED.value,
        "decided_at": utcnow(),
        "decided_by": by,
    }


def _supersede_previous(db: Session, record: CardRecord) -> None:
    if record.previous_id:
        db.execute(
            update(CardRecord)
            .where(
                CardRecord.id == record.previous_id,
                CardRecord.status == CardStatus.APPROVED.value,
            )
            .values(status=CardStatus.SUPERSEDED.value, superseded_by=record.id)
        )


def _decide(db: Session, record: CardRecord, expected: CardStatus, **values: Any) -> None:
    """Write `values` only if the card is still in state `expected` (409 otherwise).

    A conditional UPDATE, so the same card approved (or revoked) on two replicas at once is
    decided once; the loser is told it was decided meanwhile.
    """
    done = db.execute(
        update(CardRecord)
        .where(CardRecord.id == record.id, CardRecord.status == expected.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        db.rollback()
        raise Problem(409, f"card {record.id} was decided by someone else at the same time")


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
    try:
        verify_card(card, TrustPolicy.self_only(), previous=previous)
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
    )
    if settings.auto_approve:
        for field, value in _approval(record, _app_key(request), "auto-approve").items():
            setattr(record, field, value)
        _supersede_previous(db, record)
    db.add(record)
    db.commit()
    return _out(record, user.name)


#: Card search, built once; plain columns (no ORM objects to build): it is the hot path.
_SEARCH = (
    select(*CardRecord.__table__.columns, User.name.label("owner"))
    .join(User, User.id == CardRecord.owner_id)
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
    """Approved, unrevoked, current cards for an identity, with their signatures."""

    def search(db: Session, _auth: Authenticated) -> CardListOut:
        rows = db.execute(_SEARCH, {"identity": identity}).all()
        return CardListOut(cards=[_out(row, row.owner) for row in rows])

    # The hot path: authentication and search in one worker thread.
    return await run_authenticated(request, credentials, search)


@router.get("/pending", response_model=CardListOut)
def pending_cards(_officer: OfficerUser, db: DbDep) -> CardListOut:
    """Cards waiting for approval (officers only)."""
    records = list(
        db.scalars(
            select(CardRecord)
            .where(CardRecord.status == CardStatus.PENDING)
            .order_by(CardRecord.published_at)
        )
    )
    return _list_out(db, records)


@router.get("/mine", response_model=CardListOut)
def my_cards(user: CurrentUser, db: DbDep) -> CardListOut:
    """Every card you published, in any state."""
    records = list(
        db.scalars(
            select(CardRecord)
            .where(CardRecord.owner_id == user.id)
            .order_by(CardRecord.published_at)
        )
    )
    return _list_out(db, records)


@router.get("/{card_id}", response_model=CardOut)
def get_card(card_id: CardIdPath, user: CurrentUser, db: DbDep) -> CardOut:
    """One card by id, with its status and, if revoked, the signed revocation statement."""
    record = _get_record(db, card_id)
    if not _may_see(user, record):
        raise Problem(404, f"no card {card_id}")
    found = _list_out(db, [record]).cards[0]
    end_read(db)
    return found


@router.post("/{card_id}/approve", response_model=CardOut)
def approve_card(
    card_id: CardIdPath,
    officer: OfficerUser,
    db: DbDep,
    request: Request,
) -> CardOut:
    """Approve a pending card: the server signs it with the application key (officers only)."""
    record = _get_record(db, card_id)
    if record.status != CardStatus.PENDING:
        raise Problem(409, f"card {card_id} is {record.status}, not pending")
    if record.previous_id is not None:
        previous = db.get(CardRecord, record.previous_id)
        if previous is None or previous.status != CardStatus.APPROVED:
            state = previous.status if previous else "gone"
            raise Problem(409, f"the card this one replaces is {state} now, not approved")
    _decide(db, record, CardStatus.PENDING, **_approval(record, _app_key(request), officer.name))
    _supersede_previous(db, record)
    db.commit()
    db.refresh(record)
    return _list_out(db, [record]).cards[0]


@router.post("/{card_id}/reject", response_model=CardOut)
def reject_card(
    card_id: CardIdPath,
    body: RejectIn,
    officer: OfficerUser,
    db: DbDep,
) -> CardOut:
    """Reject a pending card, with a reason its owner can read (officers only)."""
    record = _get_record(db, card_id)
    if record.status != CardStatus.PENDING:
        raise Problem(409, f"card {card_id} is {record.status}, not pending")
    _decide(
        db,
        record,
        CardStatus.PENDING,
        status=CardStatus.REJECTED.value,
        reject_reason=body.reason,
        decided_at=utcnow(),
        decided_by=officer.name,
    )
    db.commit()
    db.refresh(record)
    return _list_out(db, [record]).cards[0]


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
    _decide(
        db,
        record,
        CardStatus(record.status),
        revocation=statement.to_text(),
        revoked_at=utcnow(),
        status=CardStatus.REVOKED.value,
    )
    db.commit()
    db.refresh(record)
    return _list_out(db, [record]).cards[0]
