"""The directory's transparency log: entries, signed tree heads, what a client keeps, and the
checks on every answer and on the whole log.

Pure code: no I/O. The formats and rules (L1-L9) are in docs/log.md, with vectors in
tests/vectors/log/. An entry is canonical JSON (its leaf is SHA-256(0x00 || bytes), RFC 9162);
a tree head is a signed note (size, root, time) signed by the application key, carried as one
line `hsmv-head-1:<base64url>`. A client keeps a `LogState` (the last head it accepted, the
compact tree of that head, and the latest status entry it saw for each card) and moves it
forward only along a consistency proof and the entries in between (`advance`).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from hsm_vault.algorithms import key_type_of, load_spki, spki_fingerprint, verify_signature
from hsm_vault.cards.canonical import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    parse_canonical_json,
)
from hsm_vault.cards.model import Card, check_time, is_version
from hsm_vault.cards.revocation import RevocationStatement
from hsm_vault.errors import (
    CardError,
    CryptoError,
    LogError,
    LogForkError,
    LogFormatError,
    LogProofError,
    LogStale,
    LogWithheld,
)
from hsm_vault.trust.cards import APP, TrustPolicy, verify_card, verify_revocation
from hsm_vault.trust.merkle import HASH_SIZE, Frontier, leaf_hash, verify_consistency
from hsm_vault.trust.merkle import verify_inclusion as _verify_inclusion
from hsm_vault.trust.policy import SignedPolicy, accept_policy, verify_genesis

LOG_VERSION = 1
ENTRY_TYPE = "hsmv-log-entry"
HEAD_TEXT_PREFIX = "hsmv-head-"
HEAD_ORIGIN = "hsmv-log-1"
#: The default maximum age of a tree head a client accepts (a policy field later).
DEFAULT_MAX_AGE_SECONDS = 24 * 3600
#: Clock skew allowed for a head's time ahead of the client's clock.
MAX_FUTURE_SECONDS = 300
MAX_ENTRY_BYTES = 262144
ALERT = "alert your security officer"


class EntryKind(StrEnum):
    """What an entry records; each kind has its own fields (docs/log.md)."""

    POLICY_ADOPTED = "policy-adopted"
    CARD_APPROVED = "card-approved"
    CARD_REVOKED = "card-revoked"
    USER_ADDED = "user-added"
    ROLE_CHANGED = "role-changed"
    TOKENS_REVOKED = "tokens-revoked"
    USER_DISABLED = "user-disabled"
    USER_ENABLED = "user-enabled"


#: The fields of each kind, besides type, version, index, kind, at and actor.
ENTRY_FIELDS: dict[EntryKind, dict[str, type]] = {
    EntryKind.POLICY_ADOPTED: {"policy": str},
    EntryKind.CARD_APPROVED: {"card": str, "owner": str},
    EntryKind.CARD_REVOKED: {"card_id": str, "revocation": str},
    EntryKind.USER_ADDED: {"username": str, "identity": str, "role": str},
    EntryKind.ROLE_CHANGED: {"username": str, "role": str},
    EntryKind.TOKENS_REVOKED: {"username": str, "count": int},
    EntryKind.USER_DISABLED: {"username": str},
    EntryKind.USER_ENABLED: {"username": str},
}
_COMMON = ("actor", "at", "index", "kind", "type", "version")


def _fmt(check: Callable[..., Any], *args: Any) -> Any:
    try:
        return check(*args)
    except LogError:
        raise
    except (CardError, CryptoError) as exc:
        raise LogFormatError(exc.message) from None


@dataclass(frozen=True)
class LogEntry:
    """One event of the log. Invalid entries cannot be constructed."""

    index: int
    kind: EntryKind
    at: str
    actor: str
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        if type(self.index) is not int or not 0 <= self.index < 2**53:
            raise LogFormatError("an entry index must be a whole number from 0")
        try:
            kind = EntryKind(self.kind)
        except ValueError:
            raise LogFormatError(f"entry {self.index}: unknown kind {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        _fmt(check_time, self.at, "entry time")
        if not isinstance(self.actor, str) or not 0 < len(self.actor) <= 64:
            raise LogFormatError(f"entry {self.index}: the actor must be a name of 1-64 characters")
        fields = ENTRY_FIELDS[kind]
        if not isinstance(self.data, Mapping) or set(self.data) != set(fields):
            raise LogFormatError(f"entry {self.index}: a {kind} entry has {', '.join(fields)}")
        for name, kind_type in fields.items():
            value = self.data[name]
            if type(value) is not kind_type or (kind_type is str and not value):
                raise LogFormatError(f"entry {self.index}: {name} must be a {kind_type.__name__}")
        object.__setattr__(self, "data", dict(self.data))

    def to_json(self) -> dict[str, Any]:
        return {
            **self.data,
            "actor": self.actor,
            "at": self.at,
            "index": self.index,
            "kind": self.kind.value,
            "type": ENTRY_TYPE,
            "version": LOG_VERSION,
        }

    def to_bytes(self) -> bytes:
        """The canonical bytes (kept from parsing: the parser checked they are canonical)."""
        raw = self.__dict__.get("_raw")
        if raw is None:
            raw = canonical_json(self.to_json())
            object.__setattr__(self, "_raw", raw)
        return bytes(raw)

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.to_bytes())

    @classmethod
    def from_bytes(cls, raw: bytes) -> LogEntry:
        """Parse an entry (L1): canonical JSON, known version and kind, exact fields."""
        if len(raw) > MAX_ENTRY_BYTES:
            raise LogFormatError("a log entry is too long")
        obj = _fmt(parse_canonical_json, raw, "log entry")
        if not isinstance(obj, dict):
            raise LogFormatError("a log entry must be a JSON object")
        if obj.get("type") != ENTRY_TYPE or not is_version(obj.get("version"), LOG_VERSION):
            raise LogFormatError("this is not a version 1 hsm-vault log entry")
        try:
            kind = EntryKind(str(obj.get("kind")))
        except ValueError:
            raise LogFormatError(f"unknown log entry kind {obj.get('kind')!r}") from None
        if set(obj) != {*_COMMON, *ENTRY_FIELDS[kind]}:
            raise LogFormatError(f"a {kind} entry has the wrong fields")
        entry = cls(
            index=obj["index"],
            kind=kind,
            at=obj["at"],
            actor=obj["actor"],
            data={k: obj[k] for k in ENTRY_FIELDS[kind]},
        )
        object.__setattr__(entry, "_raw", bytes(raw))
        return entry

    @classmethod
    def from_text(cls, text: Any) -> LogEntry:
        if not isinstance(text, str):
            raise LogFormatError("a log entry must be text")
        return cls.from_bytes(text.encode("utf-8"))

    # -- what an entry says, for the kinds that name a card
    def card(self) -> Card:
        if self.kind != EntryKind.CARD_APPROVED:
            raise LogFormatError(f"entry {self.index} is not a card approval")
        return _fmt(Card.from_text, self.data["card"])

    def revocation(self) -> RevocationStatement:
        if self.kind != EntryKind.CARD_REVOKED:
            raise LogFormatError(f"entry {self.index} is not a revocation")
        return _fmt(RevocationStatement.from_text, self.data["revocation"])

    def summary(self) -> str:
        """One line for `log show`."""
        d = self.data
        if self.kind == EntryKind.CARD_APPROVED:
            card = self.card()
            rotation = f", replaces {card.previous_id[:16]}" if card.previous_id else ""
            return f"card {card.id[:16]} for {card.identity} (owner {d['owner']}){rotation}"
        if self.kind == EntryKind.CARD_REVOKED:
            return f"card {d['card_id'][:16]} revoked ({self.revocation().reason.value})"
        if self.kind == EntryKind.POLICY_ADOPTED:
            policy = _fmt(SignedPolicy.from_text, d["policy"])
            return f"policy {policy.serial}: {policy.body.approvals} approval(s), " + (
                f"{len(policy.body.officers)} officer(s)"
            )
        if self.kind == EntryKind.USER_ADDED:
            return f"user {d['username']} ({d['identity']}) added as {d['role']}"
        if self.kind == EntryKind.ROLE_CHANGED:
            return f"user {d['username']} is now {d['role']}"
        if self.kind == EntryKind.TOKENS_REVOKED:
            return f"{d['count']} API token(s) of {d['username']} revoked"
        done = "disabled" if self.kind == EntryKind.USER_DISABLED else "enabled"
        return f"user {d['username']} {done}"


# --- signed tree heads ---------------------------------------------------------------------


def _parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class TreeHead:
    """What a head states: whose log (the application key id), its size, root and time."""

    app_key_id: str
    size: int
    root: bytes
    timestamp: str

    def __post_init__(self) -> None:
        if type(self.size) is not int or not 0 <= self.size < 2**53:
            raise LogFormatError("a tree size must be a whole number from 0")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise LogFormatError("a root hash is 32 bytes")
        _fmt(check_time, self.timestamp, "tree head time")
        if not isinstance(self.app_key_id, str) or not _is_hex(self.app_key_id):
            raise LogFormatError("the tree head names no application key")

    @property
    def root_hex(self) -> str:
        return self.root.hex()

    def body(self) -> bytes:
        """The signed note body: origin, size, root (base64), time; one per line."""
        root = base64.b64encode(self.root).decode()
        return (
            f"{HEAD_ORIGIN} {self.app_key_id}\n{self.size}\n{root}\n{self.timestamp}\n"
        ).encode()

    def same_tree(self, other: TreeHead) -> bool:
        return self.size == other.size and self.root == other.root


@dataclass(frozen=True)
class SignedTreeHead:
    """A tree head with the application key's signature over its note body."""

    head: TreeHead
    signature: bytes

    @property
    def size(self) -> int:
        return self.head.size

    @property
    def root(self) -> bytes:
        return self.head.root

    def note(self) -> bytes:
        hint = bytes.fromhex(self.head.app_key_id)[:4]
        line = base64.b64encode(hint + self.signature).decode()
        return self.head.body() + f"\n\u2014 app {line}\n".encode()

    def to_text(self) -> str:
        return f"{HEAD_TEXT_PREFIX}{LOG_VERSION}:{b64url_encode(self.note())}"

    @classmethod
    def from_text(cls, text: Any) -> SignedTreeHead:
        """Parse the one-line form (L4); the signature is not checked here."""
        if not isinstance(text, str) or len(text) > 4096:
            raise LogFormatError("a tree head must be one line of text")
        head, colon, body = text.strip().partition(":")
        if not colon or head != f"{HEAD_TEXT_PREFIX}{LOG_VERSION}":
            raise LogFormatError("this is not a version 1 hsm-vault tree head (hsmv-head-1:...)")
        note = _fmt(b64url_decode, body, "tree head")
        try:
            lines = note.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            raise LogFormatError("the tree head is not UTF-8") from None
        if len(lines) != 7 or lines[4] != "" or lines[6] != "":
            raise LogFormatError("the tree head is not a signed note of four lines")
        origin, _, key_id = lines[0].partition(" ")
        if origin != HEAD_ORIGIN or not lines[1].isdigit() or lines[1] != str(int(lines[1])):
            raise LogFormatError("the tree head's origin or size is malformed")
        try:
            root = base64.b64decode(lines[2], validate=True)
            signed = base64.b64decode(lines[5].removeprefix("\u2014 app "), validate=True)
        except (ValueError, binascii.Error):
            raise LogFormatError("the tree head's root or signature is not base64") from None
        if not lines[5].startswith("\u2014 app ") or len(signed) < 8:
            raise LogFormatError("the tree head carries no application key signature")
        parsed = cls(TreeHead(key_id, int(lines[1]), root, lines[3]), signed[4:])
        if parsed.note() != note:
            raise LogFormatError("the tree head is not in canonical form")
        if signed[:4] != bytes.fromhex(parsed.head.app_key_id)[:4]:
            raise LogFormatError("the tree head's signature names another key")
        return parsed

    def verify(self, app_spki: bytes) -> None:
        """L5: signed by the pinned application key, and naming it."""
        if self.head.app_key_id != spki_fingerprint(app_spki):
            raise LogProofError(f"the tree head is for another server's application key: {ALERT}")
        algorithm = key_type_of(load_spki(app_spki)).signature_algorithm
        try:
            verify_signature(app_spki, algorithm, self.head.body(), self.signature)
        except (CardError, CryptoError):
            raise LogProofError(
                f"the tree head of {self.size} entries is not signed by the pinned application "
                f"key: {ALERT}"
            ) from None


def _is_hex(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def sign_head(head: TreeHead, sign: Callable[[bytes], bytes]) -> SignedTreeHead:
    """Sign `head` with `sign` (the application key on the server's token)."""
    return SignedTreeHead(head, sign(head.body()))


def check_fresh(head: SignedTreeHead, now: datetime, max_age_seconds: int) -> None:
    """L6: a head older than the maximum age (or from the future) is refused."""
    at = _parse_time(head.head.timestamp)
    age = (now - at).total_seconds()
    if age > max_age_seconds:
        hours = age / 3600
        raise LogStale(
            f"the server's signed tree head is {hours:.1f} h old, more than the "
            f"{max_age_seconds / 3600:g} h accepted: it may be hiding recent revocations; {ALERT}"
        )
    if age < -MAX_FUTURE_SECONDS:
        raise LogStale(f"the server's signed tree head is dated in the future: {ALERT}")


# --- what a client keeps, and how it moves forward ---------------------------------------


def _hex_list(values: Any, what: str) -> tuple[bytes, ...]:
    if not isinstance(values, list) or len(values) > 128:
        raise LogFormatError(f"the {what} must be a list of hashes")
    try:
        hashes = tuple(bytes.fromhex(v) for v in values)
    except (TypeError, ValueError):
        raise LogFormatError(f"the {what} holds a malformed hash") from None
    if any(len(h) != HASH_SIZE for h in hashes):
        raise LogFormatError(f"the {what} holds a hash that is not 32 bytes")
    return hashes


def parse_hashes(values: Any, what: str = "proof") -> tuple[bytes, ...]:
    """A proof or compact tree as the API sends it: a list of hex hashes."""
    return _hex_list(values, what)


def _latest_status(entry: LogEntry) -> tuple[str, int] | None:
    """The card whose status `entry` changes: a revocation, or the card a rotation replaces."""
    if entry.kind == EntryKind.CARD_REVOKED:
        return str(entry.data["card_id"]), entry.index
    if entry.kind == EntryKind.CARD_APPROVED:
        previous = entry.card().previous_id
        if previous is not None:
            return previous, entry.index
    return None


@dataclass(frozen=True)
class LogState:
    """What a client keeps of a server's log: the last accepted head, its compact tree, and
    for each card revoked or replaced since, the index of that status entry."""

    head: SignedTreeHead
    frontier: Frontier
    status: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frontier.size != self.head.size or self.frontier.root() != self.head.root:
            raise LogProofError(f"the compact tree does not make up the signed head: {ALERT}")

    @property
    def size(self) -> int:
        return self.head.size

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head.to_text(),
            "frontier": [h.hex() for h in self.frontier.hashes],
            "status": dict(sorted(self.status.items())),
        }

    @classmethod
    def from_json(cls, obj: Any) -> LogState:
        if not isinstance(obj, dict) or set(obj) != {"head", "frontier", "status"}:
            raise LogFormatError("the log state kept in the config is malformed")
        head = SignedTreeHead.from_text(obj["head"])
        status = obj["status"]
        if not isinstance(status, dict) or not all(
            isinstance(k, str) and type(v) is int for k, v in status.items()
        ):
            raise LogFormatError("the log state kept in the config is malformed")
        frontier = Frontier(head.size, _hex_list(obj["frontier"], "compact tree"))
        return cls(head, frontier, status)


def start_state(
    head: SignedTreeHead,
    frontier_hashes: Sequence[bytes],
    app_spki: bytes,
    now: datetime,
    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS,
) -> LogState:
    """The first head a client accepts (L5, L6), with the compact tree that makes it up."""
    head.verify(app_spki)
    check_fresh(head, now, max_age_seconds)
    try:
        frontier = Frontier(head.size, tuple(frontier_hashes))
    except LogProofError:
        raise LogProofError(f"the server's compact tree does not fit its head: {ALERT}") from None
    return LogState(head, frontier)


def advance(
    state: LogState,
    head: SignedTreeHead,
    consistency: Sequence[bytes],
    entries: Sequence[LogEntry],
    app_spki: bytes,
    now: datetime,
    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS,
) -> LogState:
    """Move `state` to `head` (L5-L7): the head is signed and fresh, the log it states
    extends the one held (consistency proof), and `entries` are exactly the entries in
    between (they fold onto the compact tree to the new root). Raise, keeping nothing."""
    head.verify(app_spki)
    check_fresh(head, now, max_age_seconds)
    held = state.head
    if head.size < held.size:
        raise LogForkError(
            f"the server's log has {head.size} entries, fewer than the {held.size} seen here "
            f"(a rollback, e.g. a restored backup): {ALERT}"
        )
    try:
        verify_consistency(held.size, head.size, held.root, head.root, consistency)
    except LogProofError:
        raise LogForkError(
            f"the server's log of {head.size} entries is not an extension of the log of "
            f"{held.size} entries seen here (a fork or a rewritten entry): {ALERT}"
        ) from None
    if len(entries) != head.size - held.size:
        raise LogProofError(
            f"the server sent {len(entries)} new entries, not {head.size - held.size}"
        )
    frontier = state.frontier
    status = dict(state.status)
    for offset, entry in enumerate(entries):
        if entry.index != held.size + offset:
            raise LogProofError(
                f"entry {held.size + offset} of the server's log is missing or out of order"
            )
        frontier = frontier.append(entry.leaf_hash)
        changed = _latest_status(entry)
        if changed is not None:
            status[changed[0]] = changed[1]
    if frontier.root() != head.root:
        raise LogForkError(
            f"entries {held.size}..{head.size - 1} the server sent do not make up its signed "
            f"head (a rewritten entry): {ALERT}"
        )
    return LogState(head, frontier, status)


# --- proofs on card answers ----------------------------------------------------------------


@dataclass(frozen=True)
class EntryProof:
    """An entry as a card answer carries it, with its inclusion proof in the answer's head."""

    entry: LogEntry
    proof: tuple[bytes, ...]

    @classmethod
    def from_json(cls, obj: Any) -> EntryProof:
        if not isinstance(obj, dict) or set(obj) != {"index", "entry", "proof"}:
            raise LogFormatError("a log proof in the card answer is malformed")
        entry = LogEntry.from_text(obj["entry"])
        if entry.index != obj["index"]:
            raise LogFormatError("a log proof names another entry than it carries")
        return cls(entry, _hex_list(obj["proof"], "inclusion proof"))

    def verify(self, head: TreeHead) -> None:
        try:
            _verify_inclusion(
                self.entry.leaf_hash, self.entry.index, head.size, self.proof, head.root
            )
        except LogProofError:
            raise LogProofError(
                f"log entry {self.entry.index} the server sent is not in its signed log "
                f"(a rewritten entry): {ALERT}"
            ) from None


@dataclass(frozen=True)
class CardLog:
    """The log proofs of one card answer: its approval and, if any, its latest status."""

    approval: EntryProof
    status: EntryProof | None

    @classmethod
    def from_json(cls, obj: Any) -> CardLog:
        if not isinstance(obj, dict) or set(obj) != {"approval", "status"}:
            raise LogFormatError("the log proofs in the card answer are malformed")
        status = None if obj["status"] is None else EntryProof.from_json(obj["status"])
        return cls(EntryProof.from_json(obj["approval"]), status)


def verify_card_log(
    state: LogState,
    card: Card,
    stated_status: str,
    revocation_text: str | None,
    superseded_by: str | None,
    proofs: CardLog | None,
) -> None:
    """L8: the card answer's approval and latest status are in the head held (`state.head`:
    the caller brings it up to the answer's head first), agree with what the answer states,
    and no later revocation or rotation that this client saw in the log is withheld."""
    short = card.id[:16]
    if proofs is None:
        raise LogProofError(f"the server sent card {short} without its log proofs: {ALERT}")
    approval = proofs.approval
    approval.verify(state.head.head)
    if (
        approval.entry.kind != EntryKind.CARD_APPROVED
        or approval.entry.data["card"] != card.to_text()
    ):
        raise LogProofError(f"the log entry sent for card {short} is not its approval: {ALERT}")
    status = proofs.status
    if status is not None:
        status.verify(state.head.head)
        entry = status.entry
        if entry.index <= approval.entry.index:
            raise LogProofError(f"the status entry of card {short} precedes its approval")
        if entry.kind == EntryKind.CARD_REVOKED:
            if (
                entry.data["card_id"] != card.id
                or stated_status != "revoked"
                or entry.data["revocation"] != revocation_text
            ):
                raise LogProofError(f"the log's revocation of card {short} is not the one stated")
        elif entry.kind == EntryKind.CARD_APPROVED:
            successor = entry.card()
            if (
                successor.previous_id != card.id
                or stated_status != "superseded"
                or superseded_by != successor.id
            ):
                raise LogProofError(f"the log's rotation of card {short} is not the one stated")
        else:
            raise LogProofError(f"the log entry sent as card {short}'s status is not a status")
    elif stated_status in ("revoked", "superseded"):
        raise LogProofError(f"the server says card {short} is {stated_status} but sent no proof")
    known = state.status.get(card.id)
    if known is not None and (status is None or status.entry.index < known):
        raise LogWithheld(
            f"the server serves card {short} as {stated_status} and withholds its revocation or "
            f"rotation, which its log holds at entry {known}: {ALERT}"
        )


# --- the whole log -------------------------------------------------------------------------


@dataclass
class AuditedCard:
    """A card as the log states its history."""

    card_id: str
    identity: str
    owner: str
    approved_at: int
    time: str
    previous_id: str | None
    status: str = "approved"
    status_at: int | None = None


@dataclass
class AuditReport:
    """What `audit` found: the head it checked, every card by id, the accounts, counts."""

    head: SignedTreeHead
    cards: dict[str, AuditedCard]
    users: dict[str, str]
    counts: dict[str, int]
    policy_serial: int

    def cards_of(self, identity: str) -> list[AuditedCard]:
        return [c for c in self.cards.values() if c.identity == identity]


@dataclass(frozen=True)
class SignatureJob:
    """One entry's signatures to check: a card under a policy (its text, as the policy in
    force there), or a revocation. Plain strings, so a chunk of jobs pickles cheaply."""

    index: int
    card_text: str
    policy_text: str
    app_spki: bytes
    previous_text: str | None = None
    revocation_text: str | None = None
    #: What the audit read from the card without checking it (id, identity, previous id).
    facts: tuple[str, str, str | None] | None = None


@dataclass(frozen=True)
class _CardFacts:
    """A card's stated id, identity and previous id, read without checking anything: the
    audit's signature jobs parse the card fully and refuse it if these differ."""

    id: str
    identity: str
    previous_id: str | None

    @classmethod
    def of(cls, text: str) -> _CardFacts:
        import json

        try:
            obj = json.loads(b64url_decode(text.partition(":")[2], "card text"))
            snapshot = obj["snapshot"]
            facts = cls(obj["id"], snapshot["identity"], snapshot["previous"])
        except (ValueError, KeyError, TypeError):
            raise LogFormatError("the card in it is malformed") from None
        if not all(isinstance(v, str) for v in (facts.id, facts.identity)) or not (
            facts.previous_id is None or isinstance(facts.previous_id, str)
        ):
            raise LogFormatError("the card in it is malformed")
        return facts


@functools.lru_cache(maxsize=64)
def _card_trust(policy_text: str, app_spki: bytes) -> TrustPolicy:
    """The trust for cards approved under a policy; during the bootstrap (fewer officers than
    approvals) the application key alone approves, as the ceremony does for officers' cards."""
    policy = SignedPolicy.from_text(policy_text)
    if policy.body.complete:
        return policy.card_trust(app_spki)
    return TrustPolicy(
        required=frozenset({APP}),
        trusted={APP: (app_spki,)},
        officers=tuple(o.key for o in policy.body.officers),
    )


def check_signatures(jobs: Iterable[SignatureJob]) -> int | None:
    """The index of the first job whose signatures fail, or None (picklable, for a pool)."""
    for job in jobs:
        try:
            trust = _card_trust(job.policy_text, job.app_spki)
            card = Card.from_text(job.card_text)
            if job.revocation_text is not None:
                verify_revocation(RevocationStatement.from_text(job.revocation_text), card, trust)
                continue
            if job.facts is not None and job.facts != (card.id, card.identity, card.previous_id):
                return job.index
            previous = Card.from_text(job.previous_text) if job.previous_text else None
            verify_card(card, trust, previous=previous)
        except (CardError, CryptoError):
            return job.index
    return None


class _Audit:
    def __init__(self, app_spki: bytes, executor: Executor | None, chunk: int) -> None:
        self.app_spki = app_spki
        self.policy: SignedPolicy | None = None
        self.policy_text = ""
        self.cards: dict[str, AuditedCard] = {}
        self.texts: dict[str, str] = {}
        self.users: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.jobs: list[SignatureJob] = []
        self.executor = executor
        self.chunk = chunk
        self.pending: list[Future[int | None]] = []
        self.failures: list[int] = []

    def job(self, job: SignatureJob) -> None:
        """Queue a signature check; full chunks go to the executor while the pass goes on."""
        self.jobs.append(job)
        if len(self.jobs) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        jobs, self.jobs = self.jobs, []
        if not jobs:
            return
        if self.executor is None:
            failed = check_signatures(jobs)
            if failed is not None:
                self.failures.append(failed)
        else:
            self.pending.append(self.executor.submit(check_signatures, jobs))

    def first_failure(self) -> int | None:
        self.flush()
        failures = self.failures + [i for f in self.pending if (i := f.result()) is not None]
        return min(failures) if failures else None

    def fail(self, index: int, why: str) -> LogError:
        return LogProofError(f"log entry {index} does not verify: {why}: {ALERT}")

    def entry(self, entry: LogEntry) -> None:
        i = entry.index
        self.counts[entry.kind.value] = self.counts.get(entry.kind.value, 0) + 1
        try:
            if entry.kind == EntryKind.POLICY_ADOPTED:
                self._policy(entry)
            elif entry.kind == EntryKind.CARD_APPROVED:
                self._approved(entry)
            elif entry.kind == EntryKind.CARD_REVOKED:
                self._revoked(entry)
            else:
                self._account(entry)
        except LogError as exc:
            if exc.message.startswith("log entry"):
                raise
            raise self.fail(i, exc.message) from None
        except (CardError, CryptoError) as exc:
            raise self.fail(i, exc.message) from None

    def _policy(self, entry: LogEntry) -> None:
        policy = SignedPolicy.from_text(entry.data["policy"])
        if self.policy is None:
            verify_genesis(policy, self.app_spki)
        else:
            accept_policy(self.policy, policy, self.app_spki)
        self.policy = policy
        self.policy_text = entry.data["policy"]

    def _approved(self, entry: LogEntry) -> None:
        card = _CardFacts.of(entry.data["card"])
        if self.policy is None:
            raise self.fail(entry.index, "a card is approved before any policy")
        if card.id in self.cards:
            raise self.fail(entry.index, f"card {card.id[:16]} is approved twice")
        previous_text = None
        if card.previous_id is not None:
            previous = self.cards.get(card.previous_id)
            if previous is None or previous.status != "approved":
                raise self.fail(entry.index, "the card replaces a card that is not current")
            previous.status, previous.status_at = "superseded", entry.index
            previous_text = self.texts[card.previous_id]
        self.job(
            SignatureJob(
                entry.index,
                entry.data["card"],
                self.policy_text,
                self.app_spki,
                previous_text,
                facts=(card.id, card.identity, card.previous_id),
            )
        )
        self.texts[card.id] = entry.data["card"]
        self.cards[card.id] = AuditedCard(
            card.id,
            card.identity,
            str(entry.data["owner"]),
            entry.index,
            entry.at,
            card.previous_id,
        )

    def _revoked(self, entry: LogEntry) -> None:
        card_id = str(entry.data["card_id"])
        known = self.cards.get(card_id)
        if known is None or known.status == "revoked" or self.policy is None:
            raise self.fail(entry.index, f"card {card_id[:16]} is not a card of the log to revoke")
        statement = entry.revocation()
        if statement.card_id != card_id:
            raise self.fail(entry.index, "the revocation is for another card")
        known.status, known.status_at = "revoked", entry.index
        self.job(
            SignatureJob(
                entry.index,
                self.texts[card_id],
                self.policy_text,
                self.app_spki,
                revocation_text=entry.data["revocation"],
            )
        )

    def _account(self, entry: LogEntry) -> None:
        name = str(entry.data["username"])
        if entry.kind == EntryKind.USER_ADDED:
            if name in self.users:
                raise self.fail(entry.index, f"user {name!r} is added twice")
            self.users[name] = str(entry.data["role"])
        elif name not in self.users:
            raise self.fail(entry.index, f"user {name!r} was never added")
        elif entry.kind == EntryKind.ROLE_CHANGED:
            self.users[name] = str(entry.data["role"])


def audit(
    entries: Iterable[LogEntry],
    head: SignedTreeHead,
    app_spki: bytes,
    *,
    pinned: TreeHead | None = None,
    executor: Executor | None = None,
    chunk: int = 1000,
) -> AuditReport:
    """L9: recompute the whole log and check it: entries in order, every policy along its
    chain, every card and revocation signature under the policy in force at its place, the
    root of the signed head, and the pinned head as a prefix. With `executor` (a process
    pool) the signature checks run beside the pass, in chunks. Raise naming the failing
    entry."""
    head.verify(app_spki)
    state = _Audit(app_spki, executor, chunk)
    frontier = Frontier()
    for expected, entry in enumerate(entries):
        if entry.index != expected:
            raise LogProofError(f"log entry {expected} is missing or out of order: {ALERT}")
        frontier = frontier.append(entry.leaf_hash)
        if pinned is not None and frontier.size == pinned.size and frontier.root() != pinned.root:
            raise LogForkError(
                f"the log's first {pinned.size} entries differ from the head pinned here (a "
                f"rewritten entry before {pinned.size}): {ALERT}"
            )
        state.entry(entry)
    if frontier.size != head.size:
        raise LogProofError(
            f"the server sent {frontier.size} entries for a head of {head.size}: {ALERT}"
        )
    if pinned is not None and pinned.size > head.size:
        raise LogForkError(f"the log has fewer entries than the head pinned here: {ALERT}")
    failed = state.first_failure()
    if failed is not None:
        raise state.fail(failed, "a signature in it does not verify")
    if frontier.root() != head.root:
        raise LogProofError(
            f"the log's entries do not make up its signed head (a rewritten entry): {ALERT}"
        )
    return AuditReport(
        head,
        state.cards,
        state.users,
        state.counts,
        state.policy.serial if state.policy is not None else 0,
    )


def first_mismatch(leaves: Sequence[bytes], heads: Mapping[int, bytes]) -> int | None:
    """The smallest size among `heads` (size -> root of a signed head) whose root the
    entries do not reproduce, or None: the rewritten entry lies before that size."""
    frontier = Frontier()
    for size in sorted(heads):
        if size > len(leaves):
            break
        frontier = frontier.extend(leaves[frontier.size : size])
        if frontier.root() != heads[size]:
            return size
    return None


__all__ = [
    "ALERT",
    "DEFAULT_MAX_AGE_SECONDS",
    "AuditReport",
    "AuditedCard",
    "CardLog",
    "EntryKind",
    "EntryProof",
    "LogEntry",
    "LogState",
    "SignatureJob",
    "SignedTreeHead",
    "TreeHead",
    "advance",
    "audit",
    "check_fresh",
    "check_signatures",
    "first_mismatch",
    "parse_hashes",
    "sign_head",
    "start_state",
    "verify_card_log",
]
