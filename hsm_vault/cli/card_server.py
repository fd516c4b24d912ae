"""The card commands that talk to the server: publish, find, pending, approve, reject, revoke,
refresh.

They join the `card` group of hsm_vault/cli/card.py through `register_card_commands(card_app)`.
Every card that comes back from the server is verified against the application key pinned at
login before it is shown as valid or kept in the keyring.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from hsm_vault.cards import (
    PREVIOUS,
    SELF,
    Card,
    Keyring,
    RevocationReason,
    RevocationStatement,
    revoke_card,
)
from hsm_vault.cli.common import (
    JsonOpt,
    ModuleOpt,
    PinFileOpt,
    TokenOpt,
    console,
    print_json,
    split_token_from_key,
    token_session,
)
from hsm_vault.cli.shapes import card_record_json as _entry_json
from hsm_vault.cli.shapes import keyring_entry_json, print_list
from hsm_vault.config import Config
from hsm_vault.errors import (
    AmbiguousCard,
    CardError,
    CardNotFound,
    PermissionDenied,
    UsageError,
)

_FULL_ID = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]{4,64}")

IdArg = Annotated[str, typer.Argument(help="Card id (or a prefix of 4+ hex digits).")]


def _client_and_key() -> tuple[Any, bytes]:
    from hsm_vault.client import VaultClient, pinned_app_key

    config = Config.load()
    client = VaultClient.from_config(config)
    return client, pinned_app_key(config)


def _unsigned_by_others(card: Card) -> Card:
    """The card with only the signatures its owner makes (self, previous): what is published."""
    return Card(card.snapshot, tuple(s for s in card.signatures if s.signer in (SELF, PREVIOUS)))


def publish(
    ref: Annotated[str, typer.Argument(help="Card id, id prefix or identity in the keyring.")],
    json_out: JsonOpt = False,
) -> None:
    """Send one of your cards to the server; it waits there until an officer approves it."""
    from hsm_vault.client import verify_entry

    keyring = Keyring()
    card = keyring.resolve(ref).card
    client, app_spki = _client_and_key()
    with client:
        try:
            entry = client.publish_card(_unsigned_by_others(card))
        except PermissionDenied as exc:
            # The account's identity is not the card's: the fix is a new card, not a role.
            raise PermissionDenied(
                exc.message,
                hint="Make a card for the identity your account may publish ('hsm-vault "
                "whoami' shows it): hsm-vault card create IDENTITY --key KEY, then publish it.",
            ) from None
    if entry.status == "approved":
        # Auto-approved: keep the app signature, once it verifies against the pinned key.
        keyring.add(verify_entry(entry, app_spki, expect_id=card.id).card, origin="own")
    if json_out:
        print_json(_entry_json(entry))
        return
    console.print(f"published card {entry.id} for {entry.identity}: {entry.status}")
    if entry.status == "pending":
        console.print("An officer approves it with: hsm-vault card approve " + entry.id[:16])


def find(
    identity: Annotated[str, typer.Argument(help="Whose cards to fetch (email or user name).")],
    json_out: JsonOpt = False,
) -> None:
    """Fetch an identity's approved cards, verify them, and keep them in the keyring.

    Every card must carry a valid self signature and a valid "app" signature by the
    application key pinned at login; if any card in the answer fails, nothing is kept.
    """
    from hsm_vault.client import fetch_cards_into_keyring

    keyring = Keyring()
    client, app_spki = _client_and_key()
    with client:
        entries = fetch_cards_into_keyring(client, identity, app_spki, keyring)
    if not entries:
        raise CardNotFound(
            f"the server has no approved card for {identity!r}",
            hint="Check the spelling; the card may still wait for an officer's approval.",
        )
    rows = [keyring_entry_json(e) for e in entries]
    if json_out:
        print_list("cards", rows)
        return
    for row in rows:
        console.print(
            f"verified card {row['id']} for {row['identity']} ({row['key_type']}), "
            f"signed by {', '.join(row['signers'])}; kept in the keyring"
        )
        console.print(f"  short id {row['short_id']}")


def pending(json_out: JsonOpt = False) -> None:
    """List the cards waiting for approval (officers)."""
    client, _ = _client_and_key()
    with client:
        entries = client.pending_cards()
    if json_out:
        print_list("cards", [_entry_json(e) for e in entries])
        return
    if not entries:
        console.print("no cards are waiting for approval")
        return
    table = Table("id", "identity", "owner", "key", "published")
    for entry in entries:
        try:
            key_type = Card.from_text(entry.card_text).key_type.value
        except CardError:
            key_type = "?"
        table.add_row(entry.id[:16], entry.identity, entry.owner, key_type, entry.published_at)
    console.print(table)


def _resolve_pending(client: Any, ref: str) -> str:
    ref = ref.lower()
    if _FULL_ID.fullmatch(ref):
        return ref
    if not _PREFIX.fullmatch(ref):
        raise UsageError(f"{ref!r} is not a card id or a prefix of 4+ hex digits")
    matches = [e.id for e in client.pending_cards() if e.id.startswith(ref)]
    if not matches:
        raise CardNotFound(f"no pending card has an id starting with {ref}")
    if len(matches) > 1:
        raise AmbiguousCard(f"{len(matches)} pending cards start with {ref}: give more digits")
    return matches[0]


def approve(card_id: IdArg, json_out: JsonOpt = False) -> None:
    """Approve a pending card: the server signs it with its application key (officers)."""
    from hsm_vault.client import verify_entry

    client, app_spki = _client_and_key()
    with client:
        entry = client.approve_card(_resolve_pending(client, card_id))
    verified = verify_entry(entry, app_spki, expect_id=entry.id)
    if json_out:
        print_json(_entry_json(entry))
        return
    console.print(
        f"approved card {entry.id} for {entry.identity} (owner {entry.owner}); "
        f"short id {verified.card.short_id}"
    )


def reject(
    card_id: IdArg,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the card's owner.")],
    json_out: JsonOpt = False,
) -> None:
    """Reject a pending card (officers)."""
    client, _ = _client_and_key()
    with client:
        entry = client.reject_card(_resolve_pending(client, card_id), reason)
    if json_out:
        print_json(_entry_json(entry))
        return
    console.print(f"rejected card {entry.id} for {entry.identity}: {reason}")


def revoke(
    ref: Annotated[
        str, typer.Argument(help="Card id, id prefix or identity in the keyring, or a card id.")
    ],
    reason: Annotated[
        RevocationReason, typer.Option("--reason", help="Why the card is revoked.")
    ] = RevocationReason.UNSPECIFIED,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            "-k",
            help="The card's own token key: sign the revocation on the token (owners). "
            "Without it, an own card in the keyring uses the key it was made with; otherwise "
            "the server signs with its application key (officers).",
        ),
    ] = None,
    server_signs: Annotated[
        bool,
        typer.Option("--server-signs", help="Let the server sign as 'app' (officers only)."),
    ] = False,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke a card on the server, with a statement signed on the owner's token or by the
    server's application key; the verified statement is kept in the keyring."""
    from hsm_vault.client import app_policy, verify_entry

    keyring = Keyring()
    local = None
    try:
        local = keyring.resolve(ref, allow_revoked=True)
    except CardNotFound:
        if not _FULL_ID.fullmatch(ref.lower()):
            raise
    card_id = local.card.id if local else ref.lower()
    key_ref = key or (local.key_uri if local and local.origin == "own" else None)
    if server_signs:
        key_ref = None
    statement: RevocationStatement | None = None
    if key_ref is not None:
        if local is None:
            raise CardNotFound(
                f"card {card_id[:16]} is not in the keyring",
                hint="Fetch it first with 'hsm-vault card find IDENTITY'.",
            )
        with token_session(module, split_token_from_key(key_ref, token), pin_file) as ts:
            statement = revoke_card(ts, ts.find_key(key_ref), local.card, reason)
    client, app_spki = _client_and_key()
    with client:
        entry = client.revoke_card(card_id, statement=statement, reason=reason.value)
    verified = verify_entry(entry, app_spki, expect_id=card_id)
    if verified.revocation is None:
        raise CardError("the server did not return the revocation statement")
    if local is not None:
        keyring.add_revocation(verified.revocation, app_policy(app_spki))
    if json_out:
        print_json(
            {
                "card_id": card_id,
                "reason": verified.revocation.reason.value,
                "signer": verified.revocation.signer,
                "revocation": verified.revocation.to_text(),
            }
        )
        return
    console.print(
        f"revoked card {card_id} ({entry.identity}): {verified.revocation.reason.value}, "
        f"signed by {verified.revocation.signer}"
    )


def refresh(json_out: JsonOpt = False) -> None:
    """Ask the server about every card in the keyring: keep verified revocations, and fetch
    the cards that replaced superseded ones. Run it before encrypting to long-known cards."""
    from hsm_vault.client import app_policy, refresh_card_status, verify_entry

    keyring = Keyring()
    client, app_spki = _client_and_key()
    policy = app_policy(app_spki)
    report: list[dict[str, Any]] = []
    with client:
        for entry in keyring.entries():
            if entry.revocation is not None:
                continue
            verified = refresh_card_status(client, entry.card.id, app_spki, keyring, policy=policy)
            if verified is None:
                report.append({"id": entry.card.id, "status": "unknown to the server"})
                continue
            row: dict[str, Any] = {"id": entry.card.id, "status": verified.status}
            newer = verified.superseded_by
            if newer:
                keyring.add(verify_entry(client.get_card(newer), app_spki, expect_id=newer).card)
                row["superseded_by"] = newer
            report.append(row)
    if json_out:
        print_list("cards", report)
        return
    for row in report:
        extra = f" (replaced by {row['superseded_by'][:16]})" if row.get("superseded_by") else ""
        console.print(f"{row['id'][:16]}  {row['status']}{extra}")


_COMMANDS: dict[str, Callable[..., None]] = {
    "publish": publish,
    "find": find,
    "pending": pending,
    "approve": approve,
    "reject": reject,
    "revoke": revoke,
    "refresh": refresh,
}


def register_card_commands(card_app: typer.Typer) -> None:
    """Add the server card commands to the `card` group (a second call changes nothing)."""
    present = {c.name for c in card_app.registered_commands}
    for name, function in _COMMANDS.items():
        if name not in present:
            card_app.command(name)(function)
