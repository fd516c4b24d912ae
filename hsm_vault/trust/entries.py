"""Verifying a card record as a server states it: the card, its id, identity and revocation.

Pure code: no I/O. The client fetches; this decides. Anything that fails raises
`ServerTrustError` naming the card and the rule, and nothing from that answer is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hsm_vault.cards.model import Card
from hsm_vault.cards.revocation import RevocationStatement
from hsm_vault.cards.status import CardStatus
from hsm_vault.errors import CardError, ServerTrustError
from hsm_vault.trust.cards import TrustPolicy, verify_card, verify_revocation


class StatedCard(Protocol):
    """What a server says about one card (`hsm_vault.client.CardEntry` has this shape)."""

    @property
    def id(self) -> str: ...
    @property
    def identity(self) -> str: ...
    @property
    def status(self) -> CardStatus: ...
    @property
    def card_text(self) -> str: ...
    @property
    def revocation_text(self) -> str | None: ...
    @property
    def superseded_by(self) -> str | None: ...
    @property
    def log_head(self) -> str | None: ...
    @property
    def log(self) -> Any: ...


class LogCheck(Protocol):
    """Checks a verified card answer against the transparency log a client keeps
    (`hsm_vault.client.logsync.LogSync`): the proofs, and no withheld status change."""

    def check(self, entry: StatedCard, card: Card) -> None: ...


@dataclass(frozen=True)
class VerifiedCard:
    """A card whose signatures verified under the client's trust policy, with its state.

    `revocation` is set (and verified) when the card is revoked.
    """

    card: Card
    status: CardStatus
    revocation: RevocationStatement | None
    #: The id of the card that replaced this one, as the server states it (fetch and verify it).
    superseded_by: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revocation is not None


def parse_stated(entry: StatedCard, *, expect_id: str | None = None) -> Card:
    """The card of a record, parsed, with the id the server and the caller expect."""
    try:
        card = Card.from_text(entry.card_text)
    except CardError as exc:
        raise ServerTrustError(
            f"the server's card {entry.id[:16]}.. is malformed: {exc.message}"
        ) from None
    if card.id != entry.id or (expect_id is not None and card.id != expect_id):
        raise ServerTrustError("the server sent a different card than the one asked for")
    return card


def verify_entry(
    entry: StatedCard,
    policy: TrustPolicy,
    *,
    expect_id: str | None = None,
    expect_identity: str | None = None,
    log: LogCheck | None = None,
) -> VerifiedCard:
    """Verify one card record from the server under `policy`, and with `log` its entries in
    the transparency log; raise `ServerTrustError` (or a `LogError`)."""
    card = parse_stated(entry, expect_id=expect_id)
    if expect_identity is not None and card.identity != expect_identity:
        raise ServerTrustError(
            f"the server sent a card for {card.identity!r} when asked for {expect_identity!r}"
        )
    try:
        verify_card(card, policy)
        revocation = None
        if entry.revocation_text is not None:
            revocation = RevocationStatement.from_text(entry.revocation_text)
            verify_revocation(revocation, card, policy)
        elif entry.status is CardStatus.REVOKED:
            raise ServerTrustError("the server says the card is revoked but sent no statement")
    except ServerTrustError:
        raise
    except CardError as exc:
        raise ServerTrustError(
            f"the server's card {entry.id[:16]}.. for {entry.identity!r} failed verification: "
            f"{exc.message}"
        ) from None
    if log is not None:
        log.check(entry, card)
    return VerifiedCard(
        card=card, status=entry.status, revocation=revocation, superseded_by=entry.superseded_by
    )
