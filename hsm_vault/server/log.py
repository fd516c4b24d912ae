"""The transparency log on the server: appending in the change's own transaction, the signed
tree head, and proofs from a cache of the tree.

`append` adds one entry inside the caller's transaction and moves the log state (size, root,
compact tree) forward: if the transaction rolls back, so does the entry, and no change is
committed without its entry. The state row is read `FOR UPDATE`, so appends are serialised
on databases that lock rows. Appending costs one row lock, one insert, O(log n) hashes and
no signature: the application key signs the head when it is next served (`current_head`),
and again once it is older than the refresh interval, so a head is never older than that
while the server runs.

`LogCache` keeps every perfect subtree hash of the tree in memory (derived data, rebuilt
from the entries; each server process has its own) to give O(log n) proofs. The schema is
created by the migration `log_0001`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from hsm_vault.cards.model import Card, now_utc
from hsm_vault.server.appkey import ApplicationKey
from hsm_vault.server.db import Base, CardRecord, CardStatus, User, UTCDateTime, utcnow
from hsm_vault.trust.log import (
    EntryKind,
    LogEntry,
    SignedTreeHead,
    TreeHead,
    sign_head,
)
from hsm_vault.trust.merkle import EMPTY_ROOT, Frontier, MerkleTree, leaf_hash

logger = logging.getLogger("hsm_vault.server.log")

#: The longest range of entries one request returns.
MAX_ENTRIES_PER_PAGE = 5000
STATE_ID = 1


class LogEntryRecord(Base):
    """One entry, as the canonical JSON bytes its leaf hash is computed from."""

    __tablename__ = "log_entries"

    index: Mapped[int] = mapped_column("idx", Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(32))
    #: The card id or user name the entry is about (for look-ups; not part of the entry).
    subject: Mapped[str] = mapped_column(String(255), index=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class LogHeadRecord(Base):
    """Every signed tree head, by size (the newest signature of that size)."""

    __tablename__ = "log_heads"

    size: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    root: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    signed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class LogStateRecord(Base):
    """The one row of log state: size, root and compact tree, and the latest signed head."""

    __tablename__ = "log_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(Integer)
    root: Mapped[str] = mapped_column(String(64))
    #: The compact tree: hex hashes joined by ",".
    frontier: Mapped[str] = mapped_column(Text)
    head: Mapped[str | None] = mapped_column(Text, nullable=True)
    head_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    head_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: The policy's max_head_age, when the policy in force sets one (seconds).
    max_age: Mapped[int | None] = mapped_column(Integer, nullable=True)

    def compact(self) -> Frontier:
        hashes = tuple(bytes.fromhex(h) for h in self.frontier.split(",") if h)
        return Frontier(self.size, hashes)


def _lock_state(db: Session) -> None:
    """Take the log's write lock before reading its state: a no-op write of the state row
    (the row lock on PostgreSQL; on SQLite the database write lock, so the state read next is
    the last committed one and no other writer can append in between)."""
    db.execute(
        update(LogStateRecord).where(LogStateRecord.id == STATE_ID).values(id=LogStateRecord.id)
    )


def _state(db: Session, *, lock: bool) -> LogStateRecord:
    state = db.get(LogStateRecord, STATE_ID, with_for_update=lock)
    if state is None:
        state = LogStateRecord(id=STATE_ID, size=0, root=EMPTY_ROOT.hex(), frontier="")
        db.add(state)
        db.flush()
    return state


def append(
    db: Session, kind: EntryKind, actor: str, data: dict[str, Any], *, subject: str
) -> LogEntry:
    """Append one entry in `db`'s transaction (committed or rolled back with the change)."""
    _lock_state(db)
    state = _state(db, lock=True)
    entry = LogEntry(index=state.size, kind=kind, at=now_utc(), actor=actor[:64], data=data)
    body = entry.to_bytes()
    frontier = state.compact().append(leaf_hash(body))
    db.add(
        LogEntryRecord(
            index=entry.index,
            kind=kind.value,
            subject=subject[:255],
            body=body.decode("utf-8"),
            created_at=utcnow(),
        )
    )
    state.size = frontier.size
    state.root = frontier.root().hex()
    state.frontier = ",".join(h.hex() for h in frontier.hashes)
    return entry


# --- what the directory records -------------------------------------------------------------


def card_approved(db: Session, record: CardRecord, by: str) -> None:
    """Log an approval (with every signature) and, for a rotation, the replaced card's status."""
    owner = db.get(User, record.owner_id)
    entry = append(
        db,
        EntryKind.CARD_APPROVED,
        by,
        {"card": record.text, "owner": owner.name if owner is not None else "?"},
        subject=record.id,
    )
    record.log_index = entry.index
    if record.previous_id:
        previous = db.get(CardRecord, record.previous_id)
        if previous is not None:
            previous.status_index = entry.index


def card_revoked(db: Session, record: CardRecord, by: str) -> None:
    """Log a revocation of a card the log holds (a card never approved is not in the log)."""
    if record.log_index is None or record.revocation is None:
        return
    entry = append(
        db,
        EntryKind.CARD_REVOKED,
        by,
        {"card_id": record.id, "revocation": record.revocation},
        subject=record.id,
    )
    record.status_index = entry.index


def policy_adopted(db: Session, policy_text: str, by: str) -> None:
    """Log a policy put in force, and keep its maximum head age for signing heads."""
    from hsm_vault.trust import SignedPolicy

    append(db, EntryKind.POLICY_ADOPTED, by, {"policy": policy_text}, subject="policy")
    _state(db, lock=False).max_age = SignedPolicy.from_text(policy_text).body.max_head_age


def max_age_seconds(db: Session, configured: int) -> int:
    """The maximum head age in force: the server's setting, or the policy's if shorter."""
    policy_age = _state(db, lock=False).max_age
    return configured if policy_age is None else min(configured, policy_age)


def account_event(db: Session, kind: EntryKind, user: User, by: str, **extra: Any) -> None:
    """Log an account event (user added, role changed, tokens revoked, disabled, enabled)."""
    data: dict[str, Any] = {"username": user.name, **extra}
    if kind == EntryKind.USER_ADDED:
        data.update(identity=user.identity, role=user.role)
    elif kind == EntryKind.ROLE_CHANGED:
        data.update(role=user.role)
    append(db, kind, by, data, subject=user.name)


# --- the signed head -----------------------------------------------------------------------


@dataclass(frozen=True)
class CurrentHead:
    head: SignedTreeHead
    text: str


def _sign(db: Session, app_key: ApplicationKey, state: LogStateRecord) -> str:
    head = TreeHead(app_key.info.fingerprint, state.size, bytes.fromhex(state.root), now_utc())
    text = sign_head(head, app_key.sign).to_text()
    now = utcnow()
    record = db.get(LogHeadRecord, state.size)
    if record is None:
        db.add(LogHeadRecord(size=state.size, root=state.root, text=text, signed_at=now))
    else:
        record.root, record.text, record.signed_at = state.root, text, now
    state.head, state.head_size, state.head_at = text, state.size, now
    return text


def current_head(db: Session, sessions: Any, app_key: ApplicationKey, max_age_seconds: int) -> str:
    """The current signed head: read with `db` (one primary-key read; read paths run it in
    autocommit), or, when the log grew or the last head is older than 1/24 of the maximum age
    (the server's setting, or the policy's if shorter), signed anew in a short transaction
    of its own (`sessions`) under the log's write lock."""
    state = db.get(LogStateRecord, STATE_ID)
    if state is not None and state.head is not None and _current(state, max_age_seconds):
        return state.head
    with sessions() as writer:
        _lock_state(writer)
        state = _state(writer, lock=True)
        text = state.head
        if text is None or not _current(state, max_age_seconds):
            text = _sign(writer, app_key, state)
        writer.commit()
        return text


def _current(state: LogStateRecord, max_age_seconds: int) -> bool:
    """The state's signed head is of the whole log and younger than 1/24 of the max age."""
    if state.max_age is not None:
        max_age_seconds = min(max_age_seconds, state.max_age)
    return (
        state.head is not None
        and state.head_size == state.size
        and state.head_at is not None
        and (utcnow() - state.head_at).total_seconds() < max_age_seconds / 24
    )


def head_at_most(db: Session, size: int) -> str | None:
    """The newest signed head of at most `size` entries (for locating a rewritten entry)."""
    record = db.scalars(
        select(LogHeadRecord)
        .where(LogHeadRecord.size <= size)
        .order_by(LogHeadRecord.size.desc())
        .limit(1)
    ).first()
    return record.text if record is not None else None


# --- proofs --------------------------------------------------------------------------------


class LogCache:
    """The tree of the log in memory, extended from the database as the log grows."""

    def __init__(self) -> None:
        self._tree = MerkleTree()
        self._lock = threading.Lock()
        self._head: tuple[str, SignedTreeHead] | None = None

    def parsed(self, text: str) -> SignedTreeHead:
        """The head `text` parsed (the last one is kept: every answer carries the same head)."""
        held = self._head
        if held is not None and held[0] == text:
            return held[1]
        head = SignedTreeHead.from_text(text)
        self._head = (text, head)
        return head

    def _sync(self, db: Session, head: SignedTreeHead) -> MerkleTree:
        tree = self._tree
        if tree.size > head.size:
            tree = self._tree = MerkleTree()  # the database went back (restored): start again
        if tree.size < head.size:
            rows = db.execute(
                select(LogEntryRecord.body)
                .where(LogEntryRecord.index >= tree.size, LogEntryRecord.index < head.size)
                .order_by(LogEntryRecord.index)
            )
            for (body,) in rows:
                tree.append(leaf_hash(body.encode("utf-8")))
            if tree.root(head.size) != head.root:
                logger.error(
                    "the log entries in the database do not make up the signed head of %d "
                    "entries: an entry was edited or removed",
                    head.size,
                )
                self._tree = MerkleTree()  # reload next time; clients will refuse these proofs
        return tree

    def proofs(
        self, db: Session, head: SignedTreeHead, indices: Iterable[int]
    ) -> dict[int, list[str]]:
        """Inclusion proofs (hex) in `head` of the entries at `indices`."""
        with self._lock:
            tree = self._sync(db, head)
            if tree.size < head.size:
                return {}
            return {
                i: [h.hex() for h in tree.inclusion_proof(i, head.size)]
                for i in indices
                if 0 <= i < head.size
            }

    def consistency(self, db: Session, head: SignedTreeHead, since: int) -> list[str]:
        with self._lock:
            tree = self._sync(db, head)
            return [h.hex() for h in tree.consistency_proof(since, head.size)]

    def frontier(self, db: Session, head: SignedTreeHead, size: int) -> list[str]:
        with self._lock:
            tree = self._sync(db, head)
            return [h.hex() for h in tree.frontier(size).hashes]


def entry_bodies(db: Session, indices: Iterable[int]) -> dict[int, str]:
    wanted = sorted(set(indices))
    if not wanted:
        return {}
    rows = db.execute(
        select(LogEntryRecord.index, LogEntryRecord.body).where(LogEntryRecord.index.in_(wanted))
    )
    return {index: body for index, body in rows}


def entries_between(db: Session, start: int, end: int) -> list[str]:
    rows = db.execute(
        select(LogEntryRecord.body)
        .where(LogEntryRecord.index >= start, LogEntryRecord.index < end)
        .order_by(LogEntryRecord.index)
    )
    return [body for (body,) in rows]


def card_logs(
    db: Session,
    cache: LogCache,
    head_text: str,
    records: Sequence[Any],
    bodies: dict[int, str] | None = None,
) -> dict[str, dict[str, Any] | None]:
    """For each card record, its approval and latest status entries with their proofs in
    the head (None for cards the log does not hold: pending, rejected). `bodies` are the
    entries when the caller read them with the records (the card search joins them)."""
    head = cache.parsed(head_text)
    wanted = [i for r in records for i in (r.log_index, r.status_index) if i is not None]
    if bodies is None:
        bodies = entry_bodies(db, wanted)
    proofs = cache.proofs(db, head, wanted)

    def one(index: int | None) -> dict[str, Any] | None:
        if index is None or index not in bodies or index not in proofs:
            return None
        return {"index": index, "entry": bodies[index], "proof": proofs[index]}

    logs: dict[str, dict[str, Any] | None] = {}
    for record in records:
        approval = one(record.log_index)
        logs[record.id] = (
            None if approval is None else {"approval": approval, "status": one(record.status_index)}
        )
    return logs


# --- a database from before the log -----------------------------------------------------------


def backfill(db: Session) -> int:
    """Write the log of a database made before it: the accounts, policies, approvals and
    revocations it holds, in the order they happened. Returns the number of entries."""
    from hsm_vault.server.approvals import PolicyRecord

    if db.get(LogStateRecord, STATE_ID) is not None:
        return 0
    events: list[tuple[dt.datetime, int, Any]] = []
    for user in db.scalars(select(User)):
        events.append((user.created_at, 0, user))
    for policy in db.scalars(select(PolicyRecord)):
        events.append((policy.created_at, 1, policy))
    public = (CardStatus.APPROVED, CardStatus.SUPERSEDED, CardStatus.REVOKED)
    for card in db.scalars(select(CardRecord).where(CardRecord.decided_at.is_not(None))):
        approved = card.status in public and "app" in Card.from_text(card.text).signers
        if approved and card.decided_at is not None:
            events.append((card.decided_at, 2, card))
            if card.revoked_at is not None:
                events.append((card.revoked_at, 3, card))
    events.sort(key=lambda e: (e[0], e[1]))
    _state(db, lock=True)
    for _at, order, item in events:
        if order == 0:
            account_event(db, EntryKind.USER_ADDED, item, "server")
        elif order == 1:
            policy_adopted(db, item.text, "server")
        elif order == 2:
            card_approved(db, item, item.decided_by or "server")
        else:
            card_revoked(db, item, "server")
    return len(events)
