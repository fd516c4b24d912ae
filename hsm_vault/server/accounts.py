"""Account operations shared by the HTTP routes and the server-host commands (`add-user`,
`revoke-tokens`, `disable-user`, `users`)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from hsm_vault.errors import ConflictOnServer, NotFoundOnServer, PermissionDenied, UsageError
from hsm_vault.server import log
from hsm_vault.server.auth import issue_enrolment_code
from hsm_vault.server.db import ApiToken, EnrolmentCode, Role, User, utcnow
from hsm_vault.server.settings import ServerSettings
from hsm_vault.trust.log import EntryKind

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_USERNAME = re.compile(USERNAME_PATTERN)


def check_username(name: str) -> str:
    if not _USERNAME.fullmatch(name):
        raise UsageError(
            f"invalid user name {name!r}",
            hint="Use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit.",
        )
    return name


def create_user(
    db: Session,
    settings: ServerSettings,
    name: str,
    role: Role,
    identity: str | None = None,
    by: str = "server",
) -> tuple[User, str]:
    """Create an account and its first enrolment code; (user, code). Logged; commits."""
    check_username(name)
    identity = identity or name
    if not identity or len(identity) > 255:
        raise UsageError("the identity must be 1-255 characters")
    clash = db.scalar(
        select(User).where(or_(User.name == name, User.identity == identity, User.name == identity))
    )
    if clash is not None:
        raise ConflictOnServer(
            f"a user named {name!r} or with identity {identity!r} exists already",
            hint="Choose another name, or give the existing user a new code with 'enrol-code'.",
        )
    user = User(name=name, identity=identity, role=role.value, disabled=False, created_at=utcnow())
    db.add(user)
    db.flush()
    log.account_event(db, EntryKind.USER_ADDED, user, by)
    code = issue_enrolment_code(db, user, settings)
    db.commit()
    return user, code


def find_user(db: Session, name: str) -> User:
    user = db.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFoundOnServer(f"no user named {name!r}")
    return user


def new_code_for(db: Session, settings: ServerSettings, name: str) -> str:
    """A fresh enrolment code for an existing user (e.g. a new laptop, or after logout)."""
    user = find_user(db, name)
    code = issue_enrolment_code(db, user, settings)
    db.commit()
    return code


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.name)))


def revoke_tokens(
    db: Session, name: str, *, keep: int | None = None, by: str = "server-host"
) -> int:
    """Revoke every live API token of `name` (but the one with id `keep`); how many. Logged
    in the transparency log (when any was live) with the change; commits.

    What an officer does for a stolen laptop, and what `logout --all` does for oneself.
    """
    user = find_user(db, name)
    now = utcnow()
    query = (
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    if keep is not None:
        query = query.where(ApiToken.id != keep)
    count = int(cast("CursorResult[Any]", db.execute(query)).rowcount or 0)
    if count:
        log.account_event(db, EntryKind.TOKENS_REVOKED, user, by, count=count)
    db.commit()
    return count


def set_disabled(db: Session, name: str, disabled: bool, *, by: User | None = None) -> User:
    """Disable (every request of the account then gets 401) or enable an account; a change is
    logged in the transparency log with it. Commits.

    `by` is the officer or admin acting through the API: they may act only on accounts whose
    role theirs includes, and not disable themselves. On the server host `by` is None.
    """
    user = find_user(db, name)
    check_may_manage(by, user)
    if disabled and by is not None and by.id == user.id:
        raise ConflictOnServer(
            "you cannot disable your own account",
            hint="Ask another officer or admin, or use 'hsm-vault server disable-user'.",
        )
    changed = user.disabled != disabled
    user.disabled = disabled  # written first: the log append then runs under the write lock
    if changed:
        kind = EntryKind.USER_DISABLED if disabled else EntryKind.USER_ENABLED
        log.account_event(db, kind, user, by.name if by is not None else "server-host")
    db.commit()
    return user


def check_may_manage(by: User | None, user: User) -> None:
    """An officer manages users and officers; an admin everyone; the host operator everyone."""
    if by is not None and not by.role_enum.includes(user.role_enum):
        raise PermissionDenied(f"only an admin may manage the {user.role} account {user.name!r}")


# --- what `server users` and `account list` show -----------------------------------------------


@dataclass(frozen=True)
class TokenState:
    """One API token of an account (never the secret, nor its hash)."""

    id: int
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    state: str  # active, revoked, expired


@dataclass(frozen=True)
class CodeState:
    """One enrolment code of an account (never the code, nor its hash)."""

    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None
    state: str  # pending, used, expired


@dataclass(frozen=True)
class AccountReport:
    username: str
    role: str
    identity: str
    disabled: bool
    created_at: dt.datetime
    tokens: tuple[TokenState, ...]
    enrolment_codes: tuple[CodeState, ...]


def _token_state(token: ApiToken, now: dt.datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "expired" if token.expires_at <= now else "active"


def _code_state(code: EnrolmentCode, now: dt.datetime) -> str:
    if code.used_at is not None:
        return "used"
    return "expired" if code.expires_at <= now else "pending"


def account_reports(db: Session, name: str | None = None) -> list[AccountReport]:
    """Every account (or only `name`) with its tokens and enrolment codes, newest first."""
    users = [find_user(db, name)] if name is not None else list_users(db)
    ids = [u.id for u in users]
    tokens: dict[int, list[ApiToken]] = {i: [] for i in ids}
    codes: dict[int, list[EnrolmentCode]] = {i: [] for i in ids}
    for token in db.scalars(
        select(ApiToken).where(ApiToken.user_id.in_(ids)).order_by(ApiToken.id.desc())
    ):
        tokens[token.user_id].append(token)
    for code in db.scalars(
        select(EnrolmentCode)
        .where(EnrolmentCode.user_id.in_(ids))
        .order_by(EnrolmentCode.id.desc())
    ):
        codes[code.user_id].append(code)
    now = utcnow()
    return [
        AccountReport(
            username=u.name,
            role=u.role,
            identity=u.identity,
            disabled=u.disabled,
            created_at=u.created_at,
            tokens=tuple(
                TokenState(
                    t.id,
                    t.created_at,
                    t.last_used_at,
                    t.expires_at,
                    t.revoked_at,
                    _token_state(t, now),
                )
                for t in tokens[u.id]
            ),
            enrolment_codes=tuple(
                CodeState(c.created_at, c.expires_at, c.used_at, _code_state(c, now))
                for c in codes[u.id]
            ),
        )
        for u in users
    ]
