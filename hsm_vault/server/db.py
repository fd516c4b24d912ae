"""Persistence: SQLAlchemy 2 models, the engine, and schema migrations (Alembic).

The schema is owned by the migrations in `hsm_vault/server/migrations/versions/`; the models
here must match them (a test compares the two). `migrate_to_head` runs at `server init` and at
every start-up, so upgrading hsm-vault keeps the existing data.
"""

from __future__ import annotations

import datetime as dt
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# The directory's card states, shared with the client (re-exported: routes import it from here).
from hsm_vault.cards.status import CardStatus as CardStatus

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timestamps stored as naive UTC (SQLite keeps no zone) and returned zone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Role(StrEnum):
    """Account roles; each includes the rights of the ones before it."""

    USER = "user"
    OFFICER = "officer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def includes(self, other: Role) -> bool:
        return self.rank >= other.rank


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: The card identity this account may publish cards for.
    identity: Mapped[str] = mapped_column(String(255), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    @property
    def role_enum(self) -> Role:
        return Role(self.role)


class EnrolmentCode(Base):
    __tablename__ = "enrolment_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Updated at most once a minute (LAST_USED_GRANULARITY), not on every request.
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AuthLimit(Base):
    """Failed authentications of one subject, and until when it must wait (the limiter).

    One row per subject, updated with an atomic upsert, so the count holds across replicas.
    """

    __tablename__ = "auth_limits"

    #: "account:NAME", "pair:ADDRESS|NAME" or "address:ADDRESS".
    subject: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    blocked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CardRecord(Base):
    """A published card: its text (with every signature it has so far) and its state."""

    __tablename__ = "cards"
    #: Card search: one index range per identity, newest approval first.
    __table_args__ = (
        Index("ix_cards_identity_status_decided", "identity", "status", "decided_at"),
        Index("ix_cards_owner_id_key_id", "owner_id", "key_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    identity: Mapped[str] = mapped_column(String(255), index=True)
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    previous_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    superseded_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    published_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reject_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The signed revocation statement (one line), once revoked.
    revocation: Mapped[str | None] = mapped_column(Text, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: The transparency log entry of its approval, and of its latest status (revocation, or
    #: the approval of the card replacing it).
    log_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The card's key id (lower-case hex SHA-256 of its SPKI), kept so that reads need not
    #: parse the card; set when it is published.
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # Several requests write at once; WAL lets readers go on while one writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode, NORMAL syncs at checkpoints instead of at every commit: a killed process
    # loses nothing, a power cut may lose the last commits but never corrupts the database.
    # A full sync per commit (~6 ms here) would cap all writes at ~170/s (performance.md).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


#: SQLite allows one writer at a time; threads of one process queue on this mutex instead of
#: polling in SQLite's busy handler (which sleeps up to 100 ms a try). Other processes still
#: wait in the busy handler.
_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()


def _create_private_sqlite_file(url: str | URL) -> None:
    # The database holds token hashes and account data: readable by the server user only.
    path = make_url(url).database
    if path and path != ":memory:" and not Path(path).exists():
        from hsm_vault.config import make_private_dir

        make_private_dir(Path(path).parent)
        Path(path).touch(mode=0o600)


def make_engine(url: str | URL, *, pool_size: int = 5, pool_timeout: float = 30.0) -> Engine:
    """An engine for `url` with a pool of `pool_size` connections and no overflow.

    The server sizes the pool to its worker threads (`ServerSettings.worker_threads`), so a
    thread never waits for a connection held by a request that waits for a thread; waiting
    longer than `pool_timeout` raises `sqlalchemy.exc.TimeoutError` (answered 503).
    SQLite gets foreign keys, WAL and a busy timeout.
    """
    pool = {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": pool_timeout}
    if make_url(url).get_backend_name() == "sqlite":
        _create_private_sqlite_file(url)
        engine = create_engine(url, connect_args={"check_same_thread": False}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        _SQLITE_WRITERS[engine] = threading.Lock()
        return engine
    # A database that does not answer must not hold a request for minutes.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5}, **pool)


@contextmanager
def user_write_transaction(db: Session, user_id: int) -> Iterator[None]:
    """A write transaction serialised with every other one for the same user; commit inside.

    It starts with a no-op write of the user's row: PostgreSQL locks the row, SQLite takes its
    database write lock (and, as the transaction's first statement, reads every commit made
    before it). Quotas use it, so two uploads on two replicas cannot both pass the check.
    Rolled back if the block raises.
    """
    bind = db.get_bind()
    mutex = _SQLITE_WRITERS.get(bind) if isinstance(bind, Engine) else None
    with mutex or nullcontext():
        try:
            db.execute(update(User).where(User.id == user_id).values(id=User.id))
            yield
        except BaseException:
            db.rollback()
            raise


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def migrate_to_head(engine: Engine) -> None:
    """Bring the schema up to the newest migration (a no-op when it is already there)."""
    from alembic import command

    from hsm_vault.errors import ConfigError

    try:
        command.upgrade(_alembic_config(engine), "head")
    except Exception as exc:  # SQLAlchemy/Alembic errors: the database is unusable
        raise ConfigError(
            f"cannot migrate the database: {type(exc).__name__}: {exc}".splitlines()[0],
            hint="Check --database-url and that the database server is reachable.",
        ) from exc


def schema_revision(engine: Engine) -> str | None:
    """The migration the database is at (None before the first)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
