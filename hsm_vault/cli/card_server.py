"""The card commands that talk to the server: publish, find, pending, approve, reject, revoke,
refresh.

They join the `card` group of hsm_vault/cli/card.py through `register_card_commands(card_app)`.
Every card that comes back from the server is verified against the application key pinned at
login and the signed server policy pinned after it (officer approvals) before it is shown as
valid or kept in the keyring.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import typer

from hsm_vault.cards import (
    PREVIOUS,
    SELF,
    Card,
    CardStatus,
    Keyring,
    Origin,
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
    err_console,
    print_json,
    split_token_from_key,
    token_session,
)
from hsm_vault.cli.shapes import (
    approvers,
    attestation_line,
    attestation_summary,
    keyring_entry_json,
    print_list,
)
from hsm_vault.cli.shapes import card_record_json as _entry_json
from hsm_vault.config import Config
from hsm_vault.errors import (
    AmbiguousCard,
    CardError,
    CardNotFound,
    PermissionDenied,
    UsageError,
)
from hsm_vault.trust import TrustAnchors, officer_signer, parse_stated, verify_entry

_FULL_ID = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]{4,64}")

IdArg = Annotated[str, typer.Argument(help="Card id (or a prefix of 4+ hex digits).")]


def _client_and_trust() -> tuple[Any, TrustAnchors, Config]:
    """A client of the logged-in server, and the anchors with the server policy brought up
    to date (along a verified chain) and pinned."""
    from hsm_vault.client import VaultClient
    from hsm_vault.client.pinning import update_policy

    config = Config.load()
    client = VaultClient.from_config(config)
    try:
        anchors = update_policy(client, config)
    except BaseException:
        client.close()
        raise
    return client, anchors, config


def _unsigned_by_others(card: Card) -> Card:
    """The card with only the signatures its owner makes (self, previous): what is published."""
    return Card(card.snapshot, tuple(s for s in card.signatures if s.signer in (SELF, PREVIOUS)))


def publish(
    ref: Annotated[str, typer.Argument(help="Card id, id prefix or identity in the keyring.")],
    json_out: JsonOpt = False,
) -> None:
    """Send one of your cards to the server; it waits there until an officer approves it."""
    keyring = Keyring()
    card = keyring.resolve(ref).card
    client, anchors, _ = _client_and_trust()
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
        if entry.status is CardStatus.APPROVED:
            # Auto-approved: keep the app signature, once it verifies under the pinned policy.
            verified = verify_entry(
                entry, anchors.card_policy(), expect_id=card.id, log=anchors.log
            )
            keyring.add(verified.card, origin=Origin.OWN)
    if json_out:
        print_json(_entry_json(entry))
        return
    console.print(f"published card {entry.id} for {entry.identity}: {entry.status}")
    if entry.status is CardStatus.PENDING:
        console.print("An officer approves it with: hsm-vault card approve " + entry.id[:16])


def find(
    identity: Annotated[str, typer.Argument(help="Whose cards to fetch (email or user name).")],
    json_out: JsonOpt = False,
) -> None:
    """Fetch an identity's approved cards, verify them, and keep them in the keyring.

    Every card must carry a valid self signature, a valid "app" signature by the application
    key pinned at login, and the officer approvals the pinned server policy requires; if any
    card in the answer fails, nothing is kept.
    """
    from hsm_vault.client import fetch_cards_into_keyring

    keyring = Keyring()
    client, anchors, _ = _client_and_trust()
    with client:
        entries = fetch_cards_into_keyring(
            client, identity, anchors.card_policy(), keyring, anchors.log
        )
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
        console.print(f"  {attestation_line(row)}")


def _pending_json(entry: Any) -> dict[str, Any]:
    summary = {**_entry_json(entry), "second_card": entry.second_card}
    try:
        card = Card.from_text(entry.card_text)
    except CardError:
        return {**summary, "malformed": True}
    prov = card.snapshot.provenance
    return {
        **summary,
        "key_type": card.key_type.value,
        "key_fingerprint_sha256": card.fingerprint,
        "short_id": card.short_id,
        "provenance": prov.to_json(),
        "token_protected": prov.protected,
        **attestation_summary(card),
    }


def pending(json_out: JsonOpt = False) -> None:
    """List the cards waiting for approval (officers): full key fingerprint, key type, token
    provenance, the approvals so far, and whether it would be a second card for its identity."""
    client, _anchors, _ = _client_and_trust()
    with client:
        entries = client.pending_cards()
    rows = [_pending_json(e) for e in entries]
    if json_out:
        print_list("cards", rows)
        return
    if not rows:
        console.print("no cards are waiting for approval")
        return
    for row in rows:
        console.print(f"card {row['id']}  {row['identity']} (owner {row['owner']})")
        if row.get("malformed"):
            console.print("  [red]malformed card text[/]", markup=True)
            continue
        prov = row["provenance"]
        console.print(
            f"  key          {row['key_type']}, fingerprint {row['key_fingerprint_sha256']}"
        )
        console.print(
            f"  token        {prov['manufacturer']} / {prov['model']} / serial "
            f"{prov['serial'] or '-'}; protected={row['token_protected']}"
        )
        console.print(f"  key origin   {attestation_line(row)}")
        console.print(f"  published    {row['published_at']}")
        console.print(f"  approved by  {', '.join(row['approved_by']) or '-'}")
        if row["second_card"]:
            console.print(
                f"  [yellow]warning:[/] {row['identity']} already has an approved card this "
                "one does not replace",
                markup=True,
            )


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


def _officer_key_ref(anchors: TrustAnchors, username: str, key: str | None) -> tuple[Card, str]:
    """The officer's own card named in the pinned policy, and the token key to sign with."""
    policy = anchors.policy
    officer = policy.body.officer(username) if policy is not None else None
    if officer is None:
        raise UsageError(
            f"{username!r} is not an officer of the server policy",
            hint="'hsm-vault policy show' lists the officers.",
        )
    try:
        own = Keyring().get(officer.card_id)
    except CardNotFound:
        raise CardNotFound(
            f"your officer card {officer.card_id[:16]} is not in this keyring",
            hint="Approve from the machine where you created it, or import it and pass --key.",
        ) from None
    key_ref = key or own.key_uri
    if key_ref is None:
        raise UsageError("which token key signs your approvals?", hint="Pass --key LABEL.")
    return own.card, key_ref


def approve(
    card_id: IdArg,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", "-k", help="Your officer card's token key (default: the one it was made with)."
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Approve a second card without asking.")
    ] = False,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Approve a pending card (officers; never your own).

    Under a server policy that requires officer approvals you sign the card id on your own
    token with your officer card's key (PIN prompt); the card is usable once the policy's
    number of officers have approved it.
    """
    from hsm_vault.cards import approve_card
    from hsm_vault.config import attestation_roots
    from hsm_vault.trust import TrustPolicy, verify_card

    client, anchors, config = _client_and_trust()
    with client:
        entry = client.get_card(_resolve_pending(client, card_id))
        card = parse_stated(entry, expect_id=entry.id)
        if entry.status is CardStatus.APPROVED:
            raise UsageError(f"card {entry.id} is approved already")
        verify_card(card, TrustPolicy.self_only(attestation_roots()))
        pending_entry = next((e for e in client.pending_cards() if e.id == entry.id), None)
        if pending_entry is not None and pending_entry.second_card and not yes:
            err_console.print(
                f"warning: {card.identity} already has an approved card that this one does not "
                "replace; after approval 'encrypt --to' will find two cards."
            )
            typer.confirm("Approve it anyway?", abort=True)
        signature = None
        needed = anchors.card_policy().approvals
        if needed > 0:
            username = config.username or ""
            own, key_ref = _officer_key_ref(anchors, username, key)
            with token_session(module, split_token_from_key(key_ref, token), pin_file) as ts:
                signature = approve_card(
                    ts, ts.find_key(key_ref), card, officer_signer(username), own
                )
        entry = client.approve_card(entry.id, signature)
        if entry.status is CardStatus.APPROVED:
            verify_entry(entry, anchors.card_policy(), expect_id=entry.id, log=anchors.log)
    done = approvers(entry)
    if json_out:
        print_json({**_entry_json(entry), "approvals_required": needed})
        return
    if entry.status is CardStatus.APPROVED:
        console.print(
            f"approved card {entry.id} for {entry.identity} (owner {entry.owner}); "
            f"short id {card.short_id}"
        )
    else:
        console.print(
            f"your approval of card {entry.id[:16]} is recorded: {len(done)} of {needed} "
            "officer approvals; it is not usable until the rest approve"
        )


def reject(
    card_id: IdArg,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the card's owner.")],
    json_out: JsonOpt = False,
) -> None:
    """Reject a pending card (officers)."""
    client, _anchors, _ = _client_and_trust()
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
    keyring = Keyring()
    local = None
    try:
        local = keyring.resolve(ref, allow_revoked=True)
    except CardNotFound:
        if not _FULL_ID.fullmatch(ref.lower()):
            raise
    card_id = local.card.id if local else ref.lower()
    key_ref = key or (local.key_uri if local and local.origin is Origin.OWN else None)
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
    client, anchors, _ = _client_and_trust()
    policy = anchors.card_policy()
    with client:
        entry = client.revoke_card(card_id, statement=statement, reason=reason.value)
        verified = verify_entry(entry, policy, expect_id=card_id, log=anchors.log)
    if verified.revocation is None:
        raise CardError("the server did not return the revocation statement")
    if local is not None:
        keyring.add_revocation(verified.revocation, policy)
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
    from hsm_vault.client import refresh_card_status

    keyring = Keyring()
    client, anchors, _ = _client_and_trust()
    policy = anchors.card_policy()
    report: list[dict[str, Any]] = []
    with client:
        for entry in keyring.entries():
            if entry.revocation is not None:
                continue
            verified = refresh_card_status(client, entry.card.id, policy, keyring, anchors.log)
            if verified is None:
                report.append({"id": entry.card.id, "status": "unknown to the server"})
                continue
            row: dict[str, Any] = {"id": entry.card.id, "status": verified.status}
            newer = verified.superseded_by
            if newer:
                fresh = client.get_card(newer)
                keyring.add(verify_entry(fresh, policy, expect_id=newer, log=anchors.log).card)
                row["superseded_by"] = newer
            report.append(row)
    if json_out:
        print_list("cards", report)
        return
    for row in report:
        extra = f" (replaced by {row['superseded_by'][:16]})" if row.get("superseded_by") else ""
        console.print(f"{row['id'][:16]}  {row['status']}{extra}")


def show_from_server(card_id: str, json_out: bool) -> None:
    """`card show` of a card the keyring lacks: the server's record, its self signature
    checked, its approvals listed; approved cards are verified under the pinned policy."""
    from hsm_vault.cli.card import _print_card, card_summary
    from hsm_vault.config import attestation_roots
    from hsm_vault.trust import TrustPolicy, verify_card

    client, anchors, _ = _client_and_trust()
    with client:
        entry = client.get_card(card_id)
        card = parse_stated(entry, expect_id=card_id)
        policy = TrustPolicy.self_only(attestation_roots())
        if entry.status is CardStatus.APPROVED:
            policy = anchors.card_policy()
            verify_entry(entry, policy, expect_id=card_id, log=anchors.log)
        else:
            verify_card(card, policy)
    if json_out:
        print_json({**card_summary(card, policy), **_entry_json(entry)})
        return
    _print_card(card, policy)
    console.print(
        f"on the server  {entry.status}, owner {entry.owner}, published {entry.published_at}"
    )
    if entry.status is CardStatus.PENDING:
        console.print("not yet valid: it waits for officer approvals")


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
