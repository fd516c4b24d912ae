"""Account operations shared by the HTTP routes and the server-host commands (`add-user`)."""

from __future__ import annotations

import re

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from hsm_vault.errors import ConflictOnServer, NotFoundOnServer, UsageError
from hsm_vault.server import log
from hsm_vault.server.auth import issue_enrolment_code
from hsm_vault.server.db import Role, User, utcnow
from hsm_vault.server.settings import ServerSettings
from hsm_vault.trust.log import EntryKind

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
