"""Authentication: enrolment codes, API tokens, roles, and the failed-authentication limiter.

- API tokens are `hsmv_` + `secrets.token_urlsafe(32)`; only their SHA-256 is stored. They
  expire (`api_token_ttl_seconds`) and are revoked by logout.
- Enrolment codes are 20 characters of Crockford base32 (100 bits), one-time, expiring; only
  their SHA-256 is stored.
- Failed authentications are counted in the database (table `auth_limits`, one atomic upsert
  per failure), so the limits hold across replicas: failed enrolments per (address, user name)
  and per user name, bad API tokens per address. Past a limit each failure doubles the wait
  (429 + Retry-After) up to `auth_backoff_max_seconds`. A valid API token is never refused
  because of failures: the token is looked up first and the limiter only answers failures.
- The database connection used to authenticate goes back to the pool before the route runs:
  a request never holds a connection while it waits for a worker thread.

Routes depend on `get_current_user` (any role) or `require_role(Role.OFFICER)`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, case, delete, func, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from hsm_vault.server.db import ApiToken, AuthLimit, EnrolmentCode, Role, User, utcnow
from hsm_vault.server.problems import Problem
from hsm_vault.server.settings import ServerSettings

T = TypeVar("T")
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


# Dependencies that do no I/O are `async def`: FastAPI runs them without a worker thread.


async def get_settings(request: Request) -> ServerSettings:
    """The server's settings (a FastAPI dependency)."""
    settings: ServerSettings = request.app.state.settings
    return settings


async def get_db(request: Request) -> AsyncIterator[Session]:
    """A database session for one request, closed as soon as the route returns.

    Closing may talk to the database (the pool rolls back what is open), so it runs in a
    thread, but one outside the worker-thread limit: it must never wait for a worker thread
    while it holds a connection. Cancelled requests close it in place.
    """
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        if session.in_transaction():
            try:
                await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))
            except anyio.get_cancelled_exc_class():
                session.close()
                raise
        else:
            session.close()


def end_read(db: Session) -> None:
    """End a read-only transaction in the route's own thread (hot paths): the connection goes
    back to the pool at once, and closing the session afterwards needs no thread."""
    db.commit()


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
DbDep = Annotated[Session, Depends(get_db, scope="function")]


# --- the limiter -----------------------------------------------------------------------------


class FailureLimiter:
    """Failed-authentication counters in the database, with exponential backoff.

    Subjects: `pair:ADDRESS|NAME` and `account:NAME` for enrolments, `address:ADDRESS` for
    bad API tokens. A subject past its limit waits 1 s after the next failure, then 2 s,
    4 s, ... up to `auth_backoff_max_seconds`; a counter starts again after
    `auth_failure_window_seconds` without a failure.
    """

    def __init__(self, db: Session, settings: ServerSettings) -> None:
        self.db = db
        self.window = dt.timedelta(seconds=settings.auth_failure_window_seconds)
        self.backoff_max = settings.auth_backoff_max_seconds
        self.allowed = {
            "pair": settings.auth_failures_allowed,
            "account": settings.auth_account_failures_allowed,
            "address": settings.auth_address_failures_allowed,
        }

    def check(self, *subjects: str) -> None:
        """Raise 429 with Retry-After if any subject must still wait."""
        now = utcnow()
        until = self.db.scalar(
            select(func.max(AuthLimit.blocked_until)).where(
                AuthLimit.subject.in_(subjects), AuthLimit.blocked_until > now
            )
        )
        if until is not None:
            wait = max(1, math.ceil((until - now).total_seconds()))
            raise Problem(
                429,
                "too many failed authentication attempts; try again later",
                headers={"Retry-After": str(wait)},
            )

    def record(self, *subjects: str) -> None:
        """Count one failure for each subject (atomically, whatever other replicas do)."""
        now = utcnow()
        insert = _upsert_for(self.db)
        for subject in subjects:
            statement = insert(AuthLimit).values(subject=subject, failures=1, last_failure_at=now)
            statement = statement.on_conflict_do_update(
                index_elements=[AuthLimit.subject],
                set_={
                    "failures": case(
                        (AuthLimit.last_failure_at < now - self.window, 1),
                        else_=AuthLimit.failures + 1,
                    ),
                    "last_failure_at": now,
                },
            ).returning(AuthLimit.failures)
            failures = int(self.db.scalar(statement) or 1)
            over = failures - self.allowed[subject.split(":", 1)[0]]
            if over > 0:
                wait = min(self.backoff_max, 2 ** min(over - 1, 30))
                self.db.execute(
                    update(AuthLimit)
                    .where(AuthLimit.subject == subject)
                    .values(blocked_until=now + dt.timedelta(seconds=wait))
                )
        # Counters nobody failed on for a window (and no longer blocking) are forgotten.
        self.db.execute(
            delete(AuthLimit).where(
                AuthLimit.last_failure_at < now - self.window,
                func.coalesce(AuthLimit.blocked_until, now) <= now,
            )
        )
        self.db.commit()

    def clear(self, subject: str) -> None:
        self.db.execute(delete(AuthLimit).where(AuthLimit.subject == subject))


def _upsert_for(db: Session) -> Callable[..., Any]:
    """The dialect's INSERT with ON CONFLICT (SQLite and PostgreSQL both have it)."""
    if db.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


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
    """Exchange a one-time code for an API token; 401 (and a recorded failure) otherwise.

    The code is spent with a conditional UPDATE, so the same code sent to two replicas at
    once gives one token.
    """
    limiter = FailureLimiter(db, settings)
    pair = f"pair:{address}|{username}"
    subjects = (pair, f"account:{username}")
    limiter.check(*subjects)
    now = utcnow()
    row = db.execute(
        select(EnrolmentCode, User)
        .join(User, EnrolmentCode.user_id == User.id)
        .where(EnrolmentCode.code_hash == secret_hash(normalise_code(code)))
    ).first()
    wrong = _unauthorised("the user name or the enrolment code is wrong, used or expired")
    if row is None:
        limiter.record(*subjects)
        raise wrong
    enrolment, user = row.tuple()
    if user.name != username or user.disabled or enrolment.expires_at <= now:
        limiter.record(*subjects)
        raise wrong
    spent = db.execute(
        update(EnrolmentCode)
        .where(EnrolmentCode.id == enrolment.id, EnrolmentCode.used_at.is_(None))
        .values(used_at=now)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        db.rollback()
        limiter.record(*subjects)
        raise wrong
    limiter.clear(pair)
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


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
#: Built once: constructing a statement costs more than running it from the compiled cache.
_TOKEN_LOOKUP = (
    select(ApiToken, User)
    .join(User, ApiToken.user_id == User.id)
    .where(ApiToken.token_hash == bindparam("token_hash"))
)


def authenticate(
    db: Session, settings: ServerSettings, address: str, credentials: BearerDep
) -> Authenticated:
    """Check the bearer API token: 401 if missing, unknown, revoked or expired.

    One indexed lookup; the limiter is consulted only when the token fails, so failures of
    others from the same address never refuse a valid token.
    """
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorised("this request needs an API token (Authorization: Bearer ...)")
    row = db.execute(_TOKEN_LOOKUP, {"token_hash": secret_hash(credentials.credentials)}).first()
    problem: Problem | None = None
    if row is None:
        problem = _unauthorised("the API token is not valid")
    else:
        token, user = row.tuple()
        if token.revoked_at is not None:
            problem = _unauthorised("the API token was revoked")
        elif token.expires_at <= utcnow():
            problem = _unauthorised("the API token has expired")
        elif user.disabled:
            problem = _unauthorised("the account is disabled")
    if problem is not None:
        limiter = FailureLimiter(db, settings)
        limiter.check(f"address:{address}")
        limiter.record(f"address:{address}")
        raise problem
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_GRANULARITY:
        # At most once a minute per token: `account list` shows it, the hot path barely pays.
        db.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
        db.commit()
        token.last_used_at = now
    return Authenticated(user, token)


def get_authenticated(
    request: Request, db: DbDep, settings: SettingsDep, credentials: BearerDep
) -> Authenticated:
    """`authenticate` as a FastAPI dependency, in its own worker thread."""
    auth = authenticate(db, settings, client_address(request), credentials)
    # The connection goes back to the pool before the route waits for a thread.
    end_read(db)
    return auth


async def run_authenticated(
    request: Request, credentials: BearerDep, work: Callable[[Session, Authenticated], T]
) -> T:
    """Authenticate and run `work` with one session in one worker thread (the hot paths).

    A dependency chain hops to a worker thread for each sync step; on a busy machine each
    hop waits for the scheduler. Here the request makes one hop, and the session is closed
    (its connection back in the pool) before the thread is given back.
    """
    settings: ServerSettings = request.app.state.settings
    address = client_address(request)

    def call() -> T:
        with request.app.state.sessionmaker() as db:
            # Reads in autocommit: no BEGIN and ROLLBACK round trips to the database.
            db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            return work(db, authenticate(db, settings, address, credentials))

    return await run_in_threadpool(call)


AuthDep = Annotated[Authenticated, Depends(get_authenticated)]


async def get_current_user(auth: AuthDep) -> User:
    """The authenticated user of this request (a FastAPI dependency for routes)."""
    return auth.user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_role(role: Role) -> Callable[[User], Awaitable[User]]:
    """A dependency: the current user, or 403 if their role does not include `role`."""

    async def dependency(user: CurrentUser) -> User:
        if not user.role_enum.includes(role):
            raise Problem(403, f"this needs the {role.value} role")
        return user

    return dependency


OfficerUser = Annotated[User, Depends(require_role(Role.OFFICER))]
AdminUser = Annotated[User, Depends(require_role(Role.ADMIN))]
