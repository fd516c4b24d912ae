"""Authentication: enrolment codes, API tokens, roles, and the failed-authentication limiter.

- API tokens are `hsmv_` + `secrets.token_urlsafe(32)`; only their SHA-256 is stored. They
  expire (`api_token_ttl_seconds`) and are revoked by logout.
- Enrolment codes are 20 characters of Crockford base32 (100 bits), one-time, expiring; only
  their SHA-256 is stored.
- Failed authentications are recorded in the database (table `auth_failures`), so the limit
  holds across several server processes behind one load balancer. Past the limit, per client
  address or per user name, requests get 429 until the window has passed.

Routes depend on `get_current_user` (any role) or `require_role(Role.OFFICER)`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from hsm_vault.server.db import ApiToken, AuthFailure, EnrolmentCode, Role, User, utcnow
from hsm_vault.server.problems import Problem
from hsm_vault.server.settings import ServerSettings

API_TOKEN_PREFIX = "hsmv_"
_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
_CODE_LENGTH = 20
#: `last_used_at` of an API token is written at most this often, not on every request.
LAST_USED_GRANULARITY = dt.timedelta(minutes=1)


def secret_hash(value: str) -> str:
    """SHA-256 hex of a bearer secret: what the database stores instead of the secret."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_enrolment_code() -> str:
    """A fresh code, shown in groups of five: XXXXX-XXXXX-XXXXX-XXXXX."""
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LENGTH))
    return "-".join(raw[i : i + 5] for i in range(0, _CODE_LENGTH, 5))


def normalise_code(code: str) -> str:
    """Upper case, without separators, with the look-alike letters Crockford allows."""
    cleaned = "".join(ch for ch in code.upper() if ch not in "- \t\r\n")
    return cleaned.replace("O", "0").replace("I", "1").replace("L", "1")


# --- request plumbing ----------------------------------------------------------------------------


def get_settings(request: Request) -> ServerSettings:
    """The server's settings (a FastAPI dependency)."""
    settings: ServerSettings = request.app.state.settings
    return settings


def get_db(request: Request) -> Iterator[Session]:
    """A database session for one request, closed afterwards (a FastAPI dependency)."""
    with request.app.state.sessionmaker() as session:
        yield session


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
DbDep = Annotated[Session, Depends(get_db)]


# --- the limiter -----------------------------------------------------------------------------


class FailureLimiter:
    """Counts failed authentications per subject ("ip:ADDR", "user:NAME") in the database."""

    def __init__(self, db: Session, settings: ServerSettings) -> None:
        self.db = db
        self.allowed = settings.auth_failures_allowed
        self.window = dt.timedelta(seconds=settings.auth_failure_window_seconds)

    def check(self, *subjects: str) -> None:
        """Raise 429 if any subject is over the limit."""
        since = utcnow() - self.window
        for subject in subjects:
            count = self.db.scalar(
                select(func.count())
                .select_from(AuthFailure)
                .where(AuthFailure.subject == subject, AuthFailure.at >= since)
            )
            if (count or 0) >= self.allowed:
                raise Problem(
                    429,
                    "too many failed authentication attempts; try again later",
                    headers={"Retry-After": str(int(self.window.total_seconds()))},
                )

    def record(self, *subjects: str) -> None:
        now = utcnow()
        self.db.execute(delete(AuthFailure).where(AuthFailure.at < now - self.window))
        for subject in subjects:
            self.db.add(AuthFailure(subject=subject, at=now))
        self.db.commit()


# --- API tokens and enrolment ---------------------------------------------------------------------


def issue_api_token(db: Session, user: User, settings: ServerSettings) -> tuple[str, ApiToken]:
    """Create an API token for `user`; the caller shows the secret once, the DB keeps its hash."""
    secret = new_api_token()
    now = utcnow()
    record = ApiToken(
        user_id=user.id,
        token_hash=secret_hash(secret),
        created_at=now,
        expires_at=now + dt.timedelta(seconds=settings.api_token_ttl_seconds),
    )
    db.add(record)
    return secret, record


def issue_enrolment_code(db: Session, user: User, settings: ServerSettings) -> str:
    """Create a one-time enrolment code for `user` (older unused codes stay valid until used)."""
    code = new_enrolment_code()
    now = utcnow()
    db.add(
        EnrolmentCode(
            user_id=user.id,
            code_hash=secret_hash(normalise_code(code)),
            created_at=now,
            expires_at=now + dt.timedelta(seconds=settings.enrolment_ttl_seconds),
        )
    )
    return code


def redeem_enrolment_code(
    db: Session, settings: ServerSettings, username: str, code: str, address: str
) -> tuple[User, str, ApiToken]:
    """Exchange a one-time code for an API token; 401 (and a recorded failure) otherwise."""
    limiter = FailureLimiter(db, settings)
    subjects = (f"ip:{address}", f"user:{username}")
    limiter.check(*subjects)
    now = utcnow()
    row = db.execute(
        select(EnrolmentCode, User)
        .join(User, EnrolmentCode.user_id == User.id)
        .where(EnrolmentCode.code_hash == secret_hash(normalise_code(code)))
    ).first()
    if row is None:
        limiter.record(*subjects)
        raise _unauthorised("the user name or the enrolment code is wrong, used or expired")
    enrolment, user = row.tuple()
    if (
        user.name != username
        or user.disabled
        or enrolment.used_at is not None
        or enrolment.expires_at <= now
    ):
        limiter.record(*subjects)
        raise _unauthorised("the user name or the enrolment code is wrong, used or expired")
    enrolment.used_at = now
    secret, token = issue_api_token(db, user, settings)
    db.commit()
    return user, secret, token


def _unauthorised(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": "Bearer"})


_bearer = HTTPBearer(auto_error=False, description="An API token from POST /v1/enrol")


class Authenticated:
    """The user behind a request and the API token that authenticated it."""

    def __init__(self, user: User, token: ApiToken) -> None:
        self.user = user
        self.token = token

    @property
    def role(self) -> Role:
        return self.user.role_enum


def get_authenticated(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Authenticated:
    """Check the bearer API token: 401 if missing, unknown, revoked or expired."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorised("this request needs an API token (Authorization: Bearer ...)")
    limiter = FailureLimiter(db, settings)
    address = f"ip:{client_address(request)}"
    limiter.check(address)
    row = db.execute(
        select(ApiToken, User)
        .join(User, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == secret_hash(credentials.credentials))
    ).first()
    if row is None:
        limiter.record(address)
        raise _unauthorised("the API token is not valid")
    token, user = row.tuple()
    if token.revoked_at is not None:
        limiter.record(address)
        raise _unauthorised("the API token was revoked")
    if token.expires_at <= utcnow():
        limiter.record(address)
        raise _unauthorised("the API token has expired")
    if user.disabled:
        raise _unauthorised("the account is disabled")
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_GRANULARITY:
        db.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
        db.commit()
        token.last_used_at = now
    return Authenticated(user, token)


AuthDep = Annotated[Authenticated, Depends(get_authenticated)]


def get_current_user(auth: AuthDep) -> User:
    """The authenticated user of this request (a FastAPI dependency for routes)."""
    return auth.user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_role(role: Role) -> Callable[[User], User]:
    """A dependency: the current user, or 403 if their role does not include `role`."""

    def dependency(user: CurrentUser) -> User:
        if not user.role_enum.includes(role):
            raise Problem(403, f"this needs the {role.value} role")
        return user

    return dependency


OfficerUser = Annotated[User, Depends(require_role(Role.OFFICER))]
AdminUser = Annotated[User, Depends(require_role(Role.ADMIN))]
