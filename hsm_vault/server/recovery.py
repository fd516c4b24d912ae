"""The server's record of recovery approvals (docs/trust.md "Recovery ceremony").

A holder who answers a recovery request sends the signed share here before it is handed to
the requester: the server checks that the holder's card is an approved card of the caller and
that the share is signed by it, and keeps it in `recovery_approvals` (migration
`recovery_0001`), so every approval leaves a record the officers can read. The share is
wrapped to the requester's key: the server learns nothing of the file key.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hsm_vault.errors import ConflictOnServer, RecoveryError, UsageError
from hsm_vault.server.db import Base, CardRecord, CardStatus, User, UTCDateTime, utcnow
from hsm_vault.trust.recovery import RecoveryShare


class RecoveryApproval(Base):
    """One holder's approval of a recovery request: the signed share (one line)."""

    __tablename__ = "recovery_approvals"
    __table_args__ = (UniqueConstraint("request_id", "share_index"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    header_sha256: Mapped[str] = mapped_column(String(64), index=True)
    share_index: Mapped[int] = mapped_column(Integer)
    holder_card_id: Mapped[str] = mapped_column(String(64))
    requester_card_id: Mapped[str] = mapped_column(String(64), index=True)
    approved_by: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


def record_approval(db: Session, user: User, text: str) -> RecoveryApproval:
    """Check a signed share sent by `user` and record it (the caller commits)."""
    try:
        share = RecoveryShare.from_text(text)
        share.verify_signature()
    except RecoveryError as exc:
        raise UsageError(f"the share is refused: {exc.message}") from None
    body = share.body
    card = db.get(CardRecord, body.holder.id)
    if card is None or card.owner_id != user.id or card.status != CardStatus.APPROVED.value:
        raise UsageError("the share's holder card is not an approved card of yours")
    if db.get(CardRecord, body.requester_card_id) is None:
        raise UsageError("the requester's card is not a card of this server")
    taken = db.scalars(
        select(RecoveryApproval).where(
            RecoveryApproval.request_id == body.request_id,
            RecoveryApproval.share_index == body.index,
        )
    ).first()
    if taken is not None:
        raise ConflictOnServer(f"share {body.index} of request {body.request_id[:16]} is recorded")
    record = RecoveryApproval(
        id=share.id,
        request_id=body.request_id,
        header_sha256=body.header_sha256,
        share_index=body.index,
        holder_card_id=body.holder.id,
        requester_card_id=body.requester_card_id,
        approved_by=user.name,
        text=share.to_text(),
        created_at=utcnow(),
    )
    db.add(record)
    return record


def approvals_for(db: Session, request_id: str) -> list[RecoveryApproval]:
    """The recorded approvals of one request, by share index."""
    query = select(RecoveryApproval).where(RecoveryApproval.request_id == request_id)
    return list(db.scalars(query.order_by(RecoveryApproval.share_index)))
