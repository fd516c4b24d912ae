"""The local keyring: own and imported cards, and revocations, under the user's data folder.

Layout (`config.data_dir()/cards` unless a root is given)::

    cards/<card id>.json          {"version": 1, "card": "hsmv-card-1:...", "origin": "own",
                                   "added_at": "...", "key_uri": "pkcs11:..." | null}
    cards/revocations/<card id>.txt   one line: hsmv-revocation-1:...

Every write is atomic (temp file + rename). An entry that cannot be read, parsed or verified is
reported as a `KeyringProblem` and skipped; it never stops the rest of the keyring from loading.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm_vault import config
from hsm_vault.cards.model import Card, now_utc
from hsm_vault.cards.revocation import RevocationStatement
from hsm_vault.cards.status import KeyringStatus, Origin
from hsm_vault.errors import (
    AmbiguousCard,
    CardError,
    CardNotFound,
    CardRevoked,
    KeyringError,
    UsageError,
)

if TYPE_CHECKING:
    from hsm_vault.trust.cards import TrustPolicy

ENTRY_VERSION = 1
_ID_PREFIX = re.compile(r"[0-9a-fA-F]{4,64}")
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.json")
_REV_NAME = re.compile(r"[0-9a-f]{64}\.txt")


def _trust() -> Any:
    """`hsm_vault.trust.cards`, imported on use: it builds on this package's card model."""
    from hsm_vault.trust import cards

    return cards


def _verify_stored(card: Card) -> None:
    """Verifying what is already stored: the self signature proves the file is intact (the
    attestation was checked when the card was added, against that moment's roots)."""
    trust = _trust()
    trust.verify_card(
        card, trust.TrustPolicy(require_token_protection=False, check_attestation=False)
    )


@dataclass(frozen=True)
class KeyringEntry:
    """A card in the keyring, with what the keyring knows about it."""

    card: Card
    origin: Origin
    added_at: str
    key_uri: str | None
    path: Path
    revocation: RevocationStatement | None = None
    superseded_by: str | None = None

    @property
    def status(self) -> KeyringStatus:
        """Revoked, superseded (a verified newer card replaces it) or valid."""
        if self.revocation is not None:
            return KeyringStatus.REVOKED
        if self.superseded_by is not None:
            return KeyringStatus.SUPERSEDED
        return KeyringStatus.VALID


@dataclass(frozen=True)
class KeyringProblem:
    """An entry the keyring could not use, and why."""

    path: Path
    message: str


def _entry_body(card: Card, origin: Origin, added_at: str, key_uri: str | None) -> bytes:
    body = {
        "added_at": added_at,
        "card": card.to_text(),
        "key_uri": key_uri,
        "origin": origin.value,
        "version": ENTRY_VERSION,
    }
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


class Keyring:
    """The card store. Construct with no argument for the user's keyring."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else config.data_dir() / "cards"

    def __repr__(self) -> str:
        return f"Keyring({str(self.root)!r})"

    @property
    def revocations_dir(self) -> Path:
        return self.root / "revocations"

    # -- reading -------------------------------------------------------------------------------

    def _load_entry(self, path: Path) -> KeyringEntry:
        try:
            raw: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise KeyringError(f"cannot read {path.name}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("version") != ENTRY_VERSION:
            raise KeyringError(f"{path.name} is not a version {ENTRY_VERSION} keyring entry")
        origin, added_at, key_uri = raw.get("origin"), raw.get("added_at"), raw.get("key_uri")
        if origin not in tuple(Origin) or not isinstance(added_at, str):
            raise KeyringError(f"{path.name} has a bad origin or added_at field")
        if key_uri is not None and not isinstance(key_uri, str):
            raise KeyringError(f"{path.name} has a bad key_uri field")
        try:
            card = Card.from_text(raw.get("card", ""))
            _verify_stored(card)
        except CardError as exc:
            raise KeyringError(f"{path.name} holds a bad card: {exc}") from None
        if f"{card.id}.json" != path.name:
            raise KeyringError(f"{path.name} holds card {card.id}, not the one its name says")
        return KeyringEntry(card, Origin(origin), added_at, key_uri, path)

    def _load_revocation(self, path: Path) -> RevocationStatement:
        try:
            statement = RevocationStatement.from_text(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyringError(f"cannot read {path.name}: {exc}") from None
        except CardError as exc:
            raise KeyringError(f"{path.name} holds a bad revocation: {exc}") from None
        if f"{statement.card_id}.txt" != path.name:
            raise KeyringError(f"{path.name} revokes another card than its name says")
        return statement

    def scan(self) -> tuple[list[KeyringEntry], list[KeyringProblem]]:
        """Every readable entry (sorted by identity, then creation time) and every problem."""
        entries: list[KeyringEntry] = []
        problems: list[KeyringProblem] = []
        if not self.root.is_dir():
            return entries, problems
        for path in sorted(self.root.iterdir()):
            if path.is_dir() or path.name.startswith("."):
                continue  # sub-folders and temp files of writes in progress
            if _ENTRY_NAME.fullmatch(path.name) is None:
                problems.append(KeyringProblem(path, f"{path.name} is not a keyring entry name"))
                continue
            try:
                entries.append(self._load_entry(path))
            except KeyringError as exc:
                problems.append(KeyringProblem(path, exc.message))
        by_id = {e.card.id: e for e in entries}
        revocations: dict[str, RevocationStatement] = {}
        if self.revocations_dir.is_dir():
            for path in sorted(self.revocations_dir.iterdir()):
                if path.name.startswith("."):
                    continue
                try:
                    if _REV_NAME.fullmatch(path.name) is None:
                        raise KeyringError(f"{path.name} is not a revocation file name")
                    statement = self._load_revocation(path)
                    target = by_id.get(statement.card_id)
                    if target is not None and statement.signer == "self":
                        _trust().verify_revocation(statement, target.card)
                    revocations[statement.card_id] = statement
                except CardError as exc:
                    problems.append(KeyringProblem(path, exc.message))
        superseded: dict[str, str] = {}
        for entry in entries:
            old = by_id.get(entry.card.previous_id or "")
            if old is None:
                continue
            try:
                _trust().verify_rotation(entry.card, old.card)
            except CardError as exc:
                problems.append(KeyringProblem(entry.path, f"rotation does not verify: {exc}"))
                continue
            superseded[old.card.id] = entry.card.id
        result = [
            KeyringEntry(
                e.card,
                e.origin,
                e.added_at,
                e.key_uri,
                e.path,
                revocations.get(e.card.id),
                superseded.get(e.card.id),
            )
            for e in entries
        ]
        result.sort(key=lambda e: (e.card.identity.casefold(), e.card.created_at, e.card.id))
        return result, problems

    def entries(self) -> list[KeyringEntry]:
        """Every readable entry; unreadable ones are skipped (see `scan` for the reasons)."""
        return self.scan()[0]

    def get(self, ref: str) -> KeyringEntry:
        """The entry whose id is `ref` or starts with it (at least 4 hex digits)."""
        if _ID_PREFIX.fullmatch(ref) is None:
            raise UsageError(f"{ref!r} is not a card id or id prefix (4 to 64 hex digits)")
        prefix = ref.lower()
        matches = [e for e in self.entries() if e.card.id.startswith(prefix)]
        if not matches:
            raise CardNotFound(f"no card in the keyring has an id starting with {prefix}")
        if len(matches) > 1:
            raise AmbiguousCard(
                f"{len(matches)} cards have ids starting with {prefix}: give more digits"
            )
        return matches[0]

    def find(self, identity: str) -> list[KeyringEntry]:
        """Every entry for `identity` (compared case-insensitively), whatever its status."""
        wanted = identity.casefold()
        return [e for e in self.entries() if e.card.identity.casefold() == wanted]

    def resolve(self, ref: str, *, allow_revoked: bool = False) -> KeyringEntry:
        """A card id, id prefix or identity -> exactly one entry, or raise.

        An identity resolves to its one valid card (not revoked, not superseded); several valid
        cards raise `AmbiguousCard` (name one by id), none raise `CardNotFound` or, when the only
        cards are revoked, `CardRevoked`. `allow_revoked` lets an id name a revoked card.
        """
        if _ID_PREFIX.fullmatch(ref):
            try:
                entry = self.get(ref)
            except CardNotFound:
                entry = None  # a hex-looking identity such as "cafe"
            if entry is not None:
                if entry.status is KeyringStatus.REVOKED and not allow_revoked:
                    raise CardRevoked(
                        f"card {entry.card.id[:16]} ({entry.card.identity}) is revoked"
                    )
                return entry
        found = self.find(ref)
        if not found:
            raise CardNotFound(f"no card in the keyring for {ref!r}")
        valid = [e for e in found if e.status is KeyringStatus.VALID]
        if len(valid) == 1:
            return valid[0]
        if len(valid) > 1:
            ids = ", ".join(e.card.id[:16] for e in valid)
            raise AmbiguousCard(f"{ref!r} has {len(valid)} valid cards ({ids}): choose one by id")
        if any(e.status is KeyringStatus.REVOKED for e in found) and not any(
            e.status is KeyringStatus.SUPERSEDED for e in found
        ):
            raise CardRevoked(f"every card for {ref!r} is revoked")
        raise CardNotFound(f"no current card for {ref!r} (the cards found are superseded)")

    def revocation(self, card_id: str) -> RevocationStatement | None:
        path = self.revocations_dir / f"{card_id}.txt"
        if not path.exists():
            return None
        return self._load_revocation(path)

    # -- writing -------------------------------------------------------------------------------

    def add(
        self, card: Card, *, origin: Origin = Origin.IMPORTED, key_uri: str | None = None
    ) -> KeyringEntry:
        """Store `card` (its self signature is checked; callers verify their policy first).

        Adding a card that is already stored merges the signatures (the new ones win) and keeps
        "own" over "imported". A card that names a previous card in the keyring must carry a
        valid rotation signature.
        """
        if origin not in tuple(Origin):
            raise UsageError(f"origin must be one of {', '.join(Origin)}")
        origin = Origin(origin)
        _verify_stored(card)
        path = self.root / f"{card.id}.json"
        added_at = now_utc()
        if card.previous_id is not None:
            old = self.root / f"{card.previous_id}.json"
            if old.exists():
                _trust().verify_rotation(card, self._load_entry(old).card)
        if path.exists():
            try:
                existing = self._load_entry(path)
            except KeyringError:
                existing = None  # a corrupt entry is replaced by the good card
            if existing is not None:
                for sig in existing.card.signatures:
                    if card.signature_by(sig.signer) is None:
                        card = card.with_signature(sig)
                if existing.origin is Origin.OWN:
                    origin = Origin.OWN
                key_uri = key_uri or existing.key_uri
                added_at = existing.added_at
        config.write_private_file(path, _entry_body(card, origin, added_at, key_uri))
        return KeyringEntry(card, origin, added_at, key_uri, path)

    def remove(self, ref: str) -> KeyringEntry:
        """Delete the card named by id or id prefix (not by identity: removal must be exact)."""
        entry = self.get(ref)
        entry.path.unlink()
        return entry

    def add_revocation(
        self, statement: RevocationStatement, policy: TrustPolicy | None = None
    ) -> KeyringEntry:
        """Verify `statement` against the stored card it revokes and store it."""
        path = self.root / f"{statement.card_id}.json"
        if not path.exists():
            raise CardNotFound(
                f"card {statement.card_id[:16]} is not in the keyring: import it first"
            )
        entry = self._load_entry(path)
        _trust().verify_revocation(statement, entry.card, policy)
        config.write_private_file(
            self.revocations_dir / f"{statement.card_id}.txt",
            (statement.to_text() + "\n").encode(),
        )
        return KeyringEntry(
            entry.card, entry.origin, entry.added_at, entry.key_uri, entry.path, statement
        )
