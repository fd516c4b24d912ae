"""The transparency log as a client keeps it: the last tree head it accepted, brought forward
on every contact, and the check of every card answer against it.

The decisions are `hsm_vault.trust.log`'s (`start_state`, `advance`, `verify_card_log`); this
module fetches the head, the consistency proof and the new entries over HTTP, and keeps the
accepted state in the client config (key "log", beside the pinned policy). Nothing from an
answer that fails is kept.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hsm_vault.cards.model import Card
from hsm_vault.client import VaultClient
from hsm_vault.config import Config
from hsm_vault.errors import (
    LogError,
    LogForkError,
    LogFormatError,
    LogMoved,
    LogProofError,
    ServerError,
)
from hsm_vault.trust import SignedPolicy
from hsm_vault.trust.entries import StatedCard
from hsm_vault.trust.log import (
    ALERT,
    DEFAULT_MAX_AGE_SECONDS,
    AuditReport,
    CardLog,
    LogEntry,
    LogState,
    SignedTreeHead,
    TreeHead,
    advance,
    audit,
    parse_hashes,
    start_state,
    verify_card_log,
)
from hsm_vault.trust.merkle import Frontier

#: The client config key under which the accepted log state is kept.
LOG_STATE_KEY = "log"


def max_age_seconds(config: Config, policy: SignedPolicy | None = None) -> int:
    """The oldest tree head this client accepts: the pinned policy's max_head_age (the
    officers' rule), else 24 h; the config's log-max-age-hours only makes it shorter."""
    limit = DEFAULT_MAX_AGE_SECONDS
    if policy is not None and policy.body.max_head_age is not None:
        limit = policy.body.max_head_age
    hours = config.log_max_age_hours
    return limit if hours is None else min(limit, int(hours) * 3600)


def kept_state(config: Config, app_fingerprint: str) -> LogState | None:
    """The log state kept for the server whose application key is pinned (None if none)."""
    raw = config.extra.get(LOG_STATE_KEY)
    if not raw:
        return None
    try:
        state = LogState.from_json(raw)
    except LogError as exc:
        raise LogFormatError(
            f"the log head kept in the config is unusable: {exc.message}"
        ) from None
    return state if state.head.head.app_key_id == app_fingerprint else None


class LogSync:
    """A server's log as this client keeps it; `sync` brings it to the server's head."""

    def __init__(
        self,
        client: VaultClient,
        config: Config,
        app_spki: bytes,
        policy: SignedPolicy | None = None,
    ) -> None:
        from hsm_vault.algorithms import spki_fingerprint

        self.client = client
        self.config = config
        self.app_spki = app_spki
        self.max_age = max_age_seconds(config, policy)
        self.state = kept_state(config, spki_fingerprint(app_spki))

    def _entries(self, start: int, end: int) -> list[LogEntry]:
        entries: list[LogEntry] = []
        while start + len(entries) < end:
            body = self.client.log_entries(start + len(entries), end)
            page = [LogEntry.from_text(text) for text in body["entries"]]
            if not page:
                raise LogForkError(
                    f"the server does not send entries {start + len(entries)}..{end - 1} of its "
                    f"log: {ALERT}"
                )
            entries.extend(page)
        return entries

    def sync(self) -> LogState:
        """Fetch the server's head; accept it only if it is signed, fresh and extends the head
        kept here (consistency proof, and the new entries make it up); keep it."""
        now = datetime.now(UTC)
        held = self.state
        body = self.client.log_head(None if held is None else held.size)
        try:
            head = SignedTreeHead.from_text(body["head"])
            if held is None:
                state = start_state(
                    head,
                    parse_hashes(body.get("frontier"), "compact tree"),
                    self.app_spki,
                    now,
                    self.max_age,
                )
            elif head.size < held.size or body.get("consistency") is None:
                state = advance(held, head, [], [], self.app_spki, now, self.max_age)
            else:
                proof = parse_hashes(body["consistency"], "consistency proof")
                entries = self._entries(held.size, head.size) if head.size > held.size else []
                state = advance(held, head, proof, entries, self.app_spki, now, self.max_age)
        except (KeyError, TypeError):
            raise ServerError("the server sent a malformed log head") from None
        if held is None or state.head != held.head:
            self.config.extra[LOG_STATE_KEY] = state.to_json()
            self.config.save()
        self.state = state
        return state

    def check(self, entry: StatedCard, card: Card) -> None:
        """A verified card answer: its log proofs are in the head kept here (brought forward
        first when the answer is under a newer head), and no known status is withheld."""
        if self.state is None:
            self.sync()
        try:
            head = SignedTreeHead.from_text(entry.log_head)
        except LogError:
            raise LogError(
                f"the server sent card {card.id[:16]} without a signed tree head: {ALERT}"
            ) from None
        state = self.state
        assert state is not None
        if not head.head.same_tree(state.head.head):
            if head.size < state.size:
                raise LogForkError(
                    f"the server answers from a log of {head.size} entries, older than the "
                    f"{state.size} seen here (a rollback): {ALERT}"
                )
            state = self.sync()
            if head.size < state.size:
                raise LogMoved(
                    f"the server's log grew while it answered (from {head.size} to {state.size} "
                    f"entries), twice: {ALERT}"
                )
            if not head.head.same_tree(state.head.head):
                raise LogForkError(f"the server answers from another log than it states: {ALERT}")
        proofs: Any = entry.log
        verify_card_log(
            state,
            card,
            entry.status,
            entry.revocation_text,
            entry.superseded_by,
            None if proofs is None else CardLog.from_json(proofs),
        )


def frontier_of(hashes: list[str], size: int) -> Frontier:
    """A compact tree as the API sends it (for `log show`)."""
    return Frontier(size, parse_hashes(hashes, "compact tree"))


# --- the whole log: download, audit, and locate a rewritten entry ------------------------------


def download(client: VaultClient, start: int, end: int) -> tuple[list[LogEntry], Frontier]:
    """Entries [start, end) and the compact tree of the entries before `start`."""
    entries: list[LogEntry] = []
    frontier: Frontier | None = None
    while start + len(entries) < end or frontier is None:
        body = client.log_entries(start + len(entries), end)
        if frontier is None:
            frontier = frontier_of(body.get("frontier") or [], start)
        page = [LogEntry.from_text(text) for text in body["entries"]]
        if not page and start + len(entries) < end:
            raise LogForkError(f"the server does not send entry {start + len(entries)}: {ALERT}")
        entries.extend(page)
    return entries, frontier


def _pool(jobs: int) -> Any:
    """A process pool for the signature checks (they dominate a full audit)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = min(os.cpu_count() or 1, 8)
    if jobs < 4000 or workers < 2:
        return None
    return ProcessPoolExecutor(workers)


def verify_all(client: VaultClient, sync: LogSync) -> AuditReport:
    """Download the whole log under the head just accepted and audit it (`trust.log.audit`);
    a log whose entries do not make up its head is searched for the rewritten entry among
    the heads the server signed before."""
    state = sync.state or sync.sync()
    entries, _ = download(client, 0, state.size)
    pool = _pool(len(entries))
    try:
        return audit(entries, state.head, sync.app_spki, executor=pool)
    except LogProofError as exc:
        if "do not make up its signed head" not in exc.message:
            raise
        where = locate_rewrite(client, [e.leaf_hash for e in entries], sync.app_spki)
        raise LogProofError(f"{where} of the log was rewritten: {ALERT}") from None
    finally:
        if pool is not None:
            pool.shutdown()


def locate_rewrite(client: VaultClient, leaves: list[bytes], app_spki: bytes) -> str:
    """Narrow down, with the heads the server signed before, the first entry that no longer
    makes up a signed head: a binary search over sizes."""
    from hsm_vault.trust.merkle import MerkleTree

    tree = MerkleTree(leaves)
    good, bad = 0, len(leaves)  # the first `good` entries make up a signed head; `bad` do not

    def signed_at_most(size: int) -> TreeHead | None:
        try:
            head = SignedTreeHead.from_text(client.log_signed_head(size))
            head.verify(app_spki)
        except (LogError, ServerError):
            return None
        return head.head if good < head.size < bad else None

    while bad - good > 1:
        found = signed_at_most((good + bad) // 2) or signed_at_most(bad - 1)
        if found is None:
            break  # no signed head in between: this is as narrow as the heads allow
        if tree.root(found.size) == found.root:
            good = found.size
        else:
            bad = found.size
    if bad - good == 1:
        return f"entry {good}"
    return f"one of the entries {good}..{bad - 1}"
