"""Routes of the signed server policy: read it (anyone), propose and sign a change (officers).

Clients trust nothing here on the server's word: they accept a policy only along a chain of
policies each signed by the application key and the officer quorum of the one before
(`hsm_vault.trust.accept_policy`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from hsm_vault.cards.model import CardSignature
from hsm_vault.errors import CardError
from hsm_vault.server import approvals
from hsm_vault.server.appkey import ApplicationKey
from hsm_vault.server.auth import DbDep, OfficerUser
from hsm_vault.server.problems import Problem, problem_responses
from hsm_vault.trust import SignedPolicy
from hsm_vault.trust.policy import Recovery, recovery_from_json

router = APIRouter(
    prefix="/v1/policy", tags=["policy"], responses=problem_responses(401, 403, 404, 409, 422)
)


class PolicyOut(BaseModel):
    serial: int
    id: str = Field(description="hex SHA-256 of the policy body")
    version: int = Field(description="the policy format version (1 or 2)")
    approvals: int
    require_attestation: bool = Field(
        description="cards must carry a verified key attestation (version 2)"
    )
    officers: list[str] = Field(description="the officers' user names")
    signers: list[str]
    policy: str = Field(description="the signed policy, one line (hsmv-policy-1:... or -2:)")
    in_force: bool = Field(description="false for a proposal still collecting signatures")


class ProposeIn(BaseModel):
    approvals: Annotated[int | None, Field(ge=0, le=16)] = None
    add_officers: Annotated[list[str], Field(max_length=16)] = []
    remove_officers: Annotated[list[str], Field(max_length=16)] = []
    require_attestation: bool | None = Field(
        None, description="set or clear the key-attestation rule (a version 2 policy)"
    )
    recovery: dict[str, Any] | None = Field(
        None,
        description='set the recovery rule: {"method": "card", "card_id"} or '
        '{"method": "officer-shares", "officers": [...], "threshold"} (docs/trust.md)',
    )


class SignIn(BaseModel):
    id: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    signature: dict[str, Any]


def _out(policy: SignedPolicy, in_force: bool) -> PolicyOut:
    return PolicyOut(
        serial=policy.serial,
        id=policy.id,
        version=policy.version,
        approvals=policy.body.approvals,
        require_attestation=policy.body.require_attestation,
        officers=[o.username for o in policy.body.officers],
        signers=list(policy.signers),
        policy=policy.to_text(),
        in_force=in_force,
    )


def _recovery_rule(obj: dict[str, Any]) -> Recovery:
    try:
        return recovery_from_json(obj)
    except CardError as exc:
        raise Problem(422, f"the recovery rule is malformed: {exc.message}") from None


def _app_key(request: Request) -> ApplicationKey:
    key: ApplicationKey = request.app.state.app_key
    return key


@router.get("", response_model=PolicyOut)
def get_policy(db: DbDep) -> PolicyOut:
    """The policy in force: approvals per card and the officers, signed."""
    policy = approvals.current_policy(db)
    if policy is None:
        raise Problem(404, "the server has no signed policy yet")
    return _out(policy, True)


@router.get("/proposal", response_model=PolicyOut)
def get_proposal(_officer: OfficerUser, db: DbDep) -> PolicyOut:
    """The open proposal for the next policy, with the signatures it has (officers)."""
    record = approvals.open_proposal(db)
    if record is None:
        raise Problem(404, "no policy change is proposed")
    return _out(SignedPolicy.from_text(record.text), False)


@router.post("/proposal", response_model=PolicyOut, status_code=201)
def propose(body: ProposeIn, officer: OfficerUser, db: DbDep, request: Request) -> PolicyOut:
    """Propose the next policy (officers). While the bootstrap is not complete the server
    adopts it at once; otherwise the officers of the policy in force sign it."""
    if (
        body.approvals is None
        and not body.add_officers
        and not body.remove_officers
        and body.require_attestation is None
    ):
        raise Problem(
            422, "propose a change: approvals, officers to add or to remove, the attestation rule"
        )
    policy = approvals.propose(
        db,
        _app_key(request),
        officer,
        approvals=body.approvals,
        add=tuple(body.add_officers),
        remove=tuple(body.remove_officers),
        require_attestation=body.require_attestation,
        recovery=None if body.recovery is None else _recovery_rule(body.recovery),
    )
    in_force = policy.signature_by("app") is not None
    db.commit()
    return _out(policy, in_force)


@router.post("/proposal/signatures", response_model=PolicyOut)
def sign_proposal(body: SignIn, officer: OfficerUser, db: DbDep, request: Request) -> PolicyOut:
    """Add your signature (made on your token) to the open proposal; with the quorum the
    server signs it with the application key and it is in force."""
    try:
        signature = CardSignature.from_json(body.signature)
    except CardError as exc:
        raise Problem(422, f"the signature is malformed: {exc.message}") from None
    policy = approvals.add_proposal_signature(db, _app_key(request), officer, body.id, signature)
    in_force = policy.signature_by("app") is not None
    db.commit()
    return _out(policy, in_force)


@router.get("/{serial}", response_model=PolicyOut)
def get_policy_by_serial(serial: Annotated[int, Path(ge=1)], db: DbDep) -> PolicyOut:
    """An earlier policy, so a client can check the chain from the one it pinned."""
    policy = approvals.policy_by_serial(db, serial)
    if policy is None:
        raise Problem(404, f"no policy {serial}")
    return _out(policy, True)
