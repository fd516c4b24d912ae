"""Routes of the recovery ceremony: a holder records an approval; anyone logged in reads the
approvals of a request (docs/api.md). The shares are wrapped to the requester's key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from hsm_vault.server import recovery
from hsm_vault.server.auth import CurrentUser, DbDep
from hsm_vault.server.problems import problem_responses

router = APIRouter(
    prefix="/v1/recovery", tags=["recovery"], responses=problem_responses(401, 409, 422)
)


class ApprovalIn(BaseModel):
    share: Annotated[str, Field(max_length=1 << 22, description="hsmv-recovery-share-1:...")]


class ApprovalOut(BaseModel):
    id: str = Field(description="hex SHA-256 of the share body")
    request: str = Field(description="the request id the share answers")
    header_sha256: str
    index: int
    holder_card: str
    requester_card: str
    approved_by: str
    recorded_at: str
    share: str = Field(description="the signed share, one line")


def _out(record: recovery.RecoveryApproval) -> ApprovalOut:
    return ApprovalOut(
        id=record.id,
        request=record.request_id,
        header_sha256=record.header_sha256,
        index=record.share_index,
        holder_card=record.holder_card_id,
        requester_card=record.requester_card_id,
        approved_by=record.approved_by,
        recorded_at=record.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        share=record.text,
    )


@router.post("/approvals", response_model=ApprovalOut, status_code=201)
def record_approval(body: ApprovalIn, user: CurrentUser, db: DbDep) -> ApprovalOut:
    """Record your approval of a recovery request: the share you wrapped to the requester,
    signed with your (approved) holder card's key. One approval per share of a request."""
    record = recovery.record_approval(db, user, body.share)
    db.commit()
    return _out(record)


@router.get("/requests/{request_id}/approvals", response_model=list[ApprovalOut])
def list_approvals(
    request_id: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")], _user: CurrentUser, db: DbDep
) -> list[ApprovalOut]:
    """The approvals recorded for a request, by share index."""
    return [_out(r) for r in recovery.approvals_for(db, request_id)]
