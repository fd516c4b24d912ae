"""Which card, key or token a person means: `--to`, `--verify-from`, `--sign-with` and the
token hint of `decrypt`, decided here so that tests reach them without the CLI.

A reference is a card file (a one-line export, its self signature checked), a card id (or a
unique prefix) or an identity in the keyring. An identity the keyring lacks can be fetched
by a `fetch` function the caller gives (the CLI: from the server it is logged in to).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm_vault.cards import Card, Keyring, KeyringStatus, Origin
from hsm_vault.errors import CardNotFound, CardRevoked

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

#: Fetches, verifies and keeps an identity's approved cards in the keyring; returns them.
Fetch = Callable[[str, Keyring], Sequence[Any]]


def is_card_file(ref: str) -> bool:
    """A reference names a card file: it has a folder part or a .card / .txt suffix, and is a
    file (anything else is a card id or an identity)."""
    return ("/" in ref or ref.endswith((".card", ".txt"))) and Path(ref).is_file()


def card_from_ref(ref: str, keyring: Keyring, roots: tuple[Certificate, ...] | None = None) -> Card:
    """The card `ref` names: a card file (self signature and any attestation checked against
    `roots`, default the configured ones; refused if the keyring holds its revocation), else
    the keyring's card for that id or identity (`Keyring.resolve`)."""
    if not is_card_file(ref):
        return keyring.resolve(ref).card
    from hsm_vault.trust import TrustPolicy, verify_card

    if roots is None:
        from hsm_vault.config import attestation_roots

        roots = attestation_roots()
    card = Card.from_text(Path(ref).read_text().strip())
    verify_card(card, TrustPolicy.self_only(roots))
    if keyring.revocation(card.id) is not None:
        raise CardRevoked(f"card {card.id[:16]} ({card.identity}) is revoked")
    return card


def card_or_fetch(
    ref: str, keyring: Keyring, fetch: Fetch | None = None, *, server: str = "the server"
) -> Card:
    """`card_from_ref`; when the keyring lacks `ref` and a `fetch` is given, its approved
    cards are fetched from `server` into the keyring first."""
    try:
        return card_from_ref(ref, keyring)
    except CardNotFound:
        if fetch is None:
            raise
        if not fetch(ref, keyring):
            raise CardNotFound(
                f"no approved card for {ref!r} on {server} nor in the keyring",
                hint="Check the spelling; a card just published needs an officer's approval "
                "first ('hsm-vault card pending'); 'hsm-vault card import' takes a card given "
                "to you directly.",
            ) from None
        return card_from_ref(ref, keyring)


def own_card_for(spki_der: bytes, keyring: Keyring) -> Card:
    """The signing key's card: a valid card for that key, preferring your own, then newest."""
    from hsm_vault.algorithms import key_id_of

    key_id = key_id_of(spki_der)
    found = [
        entry
        for entry in keyring.entries()
        if entry.card.key_id == key_id and entry.status is KeyringStatus.VALID
    ]
    if not found:
        raise CardNotFound(
            "no valid card in the keyring for the signing key",
            hint="Create one with 'hsm-vault card create' for that key.",
        )
    best = max(found, key=lambda e: (e.origin is Origin.OWN, e.card.created_at))
    return best.card


def own_token_for(wanted: Collection[bytes], keyring: Keyring) -> str | None:
    """The token holding the key of one of your own cards among `wanted` key ids.

    Only a hint for machines with several tokens: None (let the token layer choose, or ask)
    unless exactly one token fits. Needs no PIN: the keyring knows where its own keys are.
    """
    from hsm_vault.token.uri import parse_uri

    tokens = set()
    for entry in keyring.entries():
        if entry.origin is Origin.OWN and entry.key_uri and entry.card.key_id in wanted:
            uri = parse_uri(entry.key_uri)
            if uri.token:
                tokens.add(uri.token)
    return tokens.pop() if len(tokens) == 1 else None
