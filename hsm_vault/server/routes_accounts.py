"""Routes: the application key, enrolment, the current account, logout, user administration."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from hsm_vault.server import accounts
from hsm_vault.server.appkey import AppKeyInfo
from hsm_vault.server.auth import (
    AdminUser,
    AuthDep,
    DbDep,
    OfficerUser,
    SettingsDep,
    client_address,
    redeem_enrolment_code,
)
from hsm_vault.server.db import Role, User, utcnow
from hsm_vault.server.problems import problem_responses

router = APIRouter(prefix="/v1", responses=problem_responses(401, 403, 404, 409, 413, 422, 429))


class AppKeyOut(BaseModel):
    spki: str = Field(description="DER SubjectPublicKeyInfo, base64")
    fingerprint: str = Field(description="SHA-256 of the DER SPKI, lower-case hex")
    algorithm: str = Field(description="signature algorithm, e.g. ecdsa-sha256")
    key_type: str


class AppOut(BaseModel):
    api_version: str = "v1"
    app_key: AppKeyOut
    auto_approve: bool


class EnrolIn(BaseModel):
    username: Annotated[str, Field(pattern=accounts.USERNAME_PATTERN)]
    code: Annotated[str, Field(min_length=1, max_length=64)]


class EnrolOut(BaseModel):
    token: str
    username: str
    role: str
    identity: str
    expires_at: dt.datetime


class AccountOut(BaseModel):
    username: str
    role: str
    identity: str
    token_expires_at: dt.datetime | None = None


class TokenOut(BaseModel):
    """One API token of an account: when it was made, last used, and until when it works."""

    id: int
    created_at: dt.datetime
    last_used_at: dt.datetime | None = Field(
        description="to the minute; null if never used after login"
    )
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    state: str = Field(description="active, revoked or expired")


class EnrolmentCodeStateOut(BaseModel):
    """One enrolment code of an account (the code itself is never shown again)."""

    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None
    state: str = Field(description="pending, used or expired")


class UserOut(BaseModel):
    """An account as officers and admins see it (`account list`, `server users`)."""

    username: str
    role: str
    identity: str
    disabled: bool
    created_at: dt.datetime
    tokens: list[TokenOut]
    enrolment_codes: list[EnrolmentCodeStateOut]

    @classmethod
    def from_report(cls, report: accounts.AccountReport) -> UserOut:
        return cls.model_validate(asdict(report))


class RevokedOut(BaseModel):
    username: str
    revoked: int = Field(description="how many API tokens were revoked")


class NewUserIn(BaseModel):
    username: Annotated[str, Field(pattern=accounts.USERNAME_PATTERN)]
    role: Role = Role.USER
    identity: Annotated[str | None, Field(min_length=1, max_length=255)] = None


class EnrolmentCodeOut(BaseModel):
    username: str
    role: str
    identity: str
    enrolment_code: str


def app_key_out(info: AppKeyInfo) -> AppKeyOut:
    return AppKeyOut(
        spki=base64.b64encode(info.spki_der).decode(),
        fingerprint=info.fingerprint,
        algorithm=info.algorithm.value,
        key_type=info.key_type.value,
    )


def _account(user: User, expires: dt.datetime | None = None) -> AccountOut:
    return AccountOut(
        username=user.name, role=user.role, identity=user.identity, token_expires_at=expires
    )


@router.get("/app", response_model=AppOut, tags=["app"])
def get_app(request: Request, settings: SettingsDep) -> AppOut:
    """The application key that signs approved cards; clients pin its fingerprint."""
    return AppOut(
        app_key=app_key_out(request.app.state.app_key.info), auto_approve=settings.auto_approve
    )


@router.post("/enrol", response_model=EnrolOut, tags=["accounts"])
def enrol(body: EnrolIn, request: Request, db: DbDep, settings: SettingsDep) -> EnrolOut:
    """Exchange a one-time enrolment code for an API token (shown once)."""
    user, secret, token = redeem_enrolment_code(
        db, settings, body.username, body.code, client_address(request)
    )
    return EnrolOut(
        token=secret,
        username=user.name,
        role=user.role,
        identity=user.identity,
        expires_at=token.expires_at,
    )


@router.get("/me", response_model=AccountOut, tags=["accounts"])
def whoami(auth: AuthDep) -> AccountOut:
    """The account behind the API token."""
    return _account(auth.user, auth.token.expires_at)


@router.post("/logout", status_code=204, tags=["accounts"])
def logout(auth: AuthDep, db: DbDep) -> Response:
    """Revoke the API token that made this request."""
    token = db.merge(auth.token)
    token.revoked_at = utcnow()
    db.commit()
    return Response(status_code=204)


@router.post("/logout/all", response_model=RevokedOut, tags=["accounts"])
def logout_everywhere(auth: AuthDep, db: DbDep) -> RevokedOut:
    """Revoke every API token of the calling account, this one included (`logout --all`)."""
    count = accounts.revoke_tokens(db, auth.user.name, by=auth.user.name)
    return RevokedOut(username=auth.user.name, revoked=count)


@router.get("/users", response_model=list[UserOut], tags=["accounts"])
def list_users(_officer: OfficerUser, db: DbDep) -> list[UserOut]:
    """Every account with its API tokens and enrolment codes (officers and admins)."""
    return [UserOut.from_report(r) for r in accounts.account_reports(db)]


@router.post("/users/{username}/revoke-tokens", response_model=RevokedOut, tags=["accounts"])
def revoke_user_tokens(username: str, officer: OfficerUser, db: DbDep) -> RevokedOut:
    """Revoke every API token of an account, e.g. after a laptop was stolen (officers)."""
    accounts.check_may_manage(officer, accounts.find_user(db, username))
    count = accounts.revoke_tokens(db, username, by=officer.name)
    return RevokedOut(username=username, revoked=count)


@router.post("/users/{username}/disable", response_model=UserOut, tags=["accounts"])
def disable_user(username: str, officer: OfficerUser, db: DbDep) -> UserOut:
    """Disable an account: its tokens and enrolment codes stop working until enabled."""
    accounts.set_disabled(db, username, True, by=officer)
    return UserOut.from_report(accounts.account_reports(db, username)[0])


@router.post("/users/{username}/enable", response_model=UserOut, tags=["accounts"])
def enable_user(username: str, officer: OfficerUser, db: DbDep) -> UserOut:
    """Enable a disabled account again (its unrevoked, unexpired tokens work again)."""
    accounts.set_disabled(db, username, False, by=officer)
    return UserOut.from_report(accounts.account_reports(db, username)[0])


@router.post("/users", response_model=EnrolmentCodeOut, status_code=201, tags=["accounts"])
def create_user(
    body: NewUserIn, admin: AdminUser, db: DbDep, settings: SettingsDep
) -> EnrolmentCodeOut:
    """Create an account (admins only); the answer holds its one-time enrolment code."""
    user, code = accounts.create_user(
        db, settings, body.username, body.role, body.identity, by=admin.name
    )
    return EnrolmentCodeOut(
        username=user.name, role=user.role, identity=user.identity, enrolment_code=code
    )


@router.post(
    "/users/{username}/enrolment-codes",
    response_model=EnrolmentCodeOut,
    status_code=201,
    tags=["accounts"],
)
def new_enrolment_code(
    username: str, _admin: AdminUser, db: DbDep, settings: SettingsDep
) -> EnrolmentCodeOut:
    """A fresh one-time enrolment code for an existing account (admins only)."""
    code = accounts.new_code_for(db, settings, username)
    user = accounts.find_user(db, username)
    return EnrolmentCodeOut(
        username=user.name, role=user.role, identity=user.identity, enrolment_code=code
    )
