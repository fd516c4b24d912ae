"""`hsm-vault card ...`: create cards on the token, export, import, verify and keep them.

The sub-typer is the module-level `card_app`, so other command modules (the server's publish /
find / approve ...) add their commands to the same `card` group.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hsm_vault.cards import (
    Card,
    IdentityType,
    Keyring,
    Origin,
    RevocationReason,
    RevocationStatement,
    Scope,
    create_card,
    revoke_card,
)
from hsm_vault.cli import complete
from hsm_vault.cli.common import (
    JsonOpt,
    ModuleOpt,
    PinFileOpt,
    SlotOpt,
    TokenOpt,
    YesOpt,
    console,
    err_console,
    key_reference,
    print_json,
    split_token_from_key,
    token_session,
)
from hsm_vault.cli.shapes import attestation_line, attestation_summary, print_list
from hsm_vault.cli.shapes import card_json as card_summary
from hsm_vault.cli.shapes import keyring_entry_json as entry_summary
from hsm_vault.config import Config, attestation_roots, write_private_file
from hsm_vault.errors import (
    CardError,
    CardNotFound,
    FileExistsRefused,
    UsageError,
)
from hsm_vault.trust import TrustAnchors, TrustPolicy, verify_card
from hsm_vault.trust.anchors import PINNED_POLICY_KEY

card_app = typer.Typer(
    help="Identity cards: an identity bound to a token key, signed through the token.",
    no_args_is_help=True,
)

RefArg = Annotated[
    str,
    typer.Argument(
        help="Card id (or a prefix of 4+ hex digits) or identity.",
        autocompletion=complete.recipients,
    ),
]
SourceArg = Annotated[
    str, typer.Argument(help="The card line (hsmv-card-1:...), a file holding it, or - for stdin.")
]
RequireOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--require",
        help="Signer that must have signed, e.g. 'app' (the pinned server key). Repeatable.",
        show_default=False,
    ),
]


# --- helpers -------------------------------------------------------------------------------------


def read_source(source: str, prefix: str = "hsmv-card-") -> str:
    """The text of a card (or statement) given inline, in a file, or on stdin ('-')."""
    if source == "-":
        return sys.stdin.read()
    if source.startswith(prefix):
        return source
    path = Path(source)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
    raise UsageError(f"{source[:40]!r} is neither a {prefix}... line nor a readable file")


def pinned_anchors() -> TrustAnchors | None:
    """The application key and policy pinned at login (fingerprint-checked), or None."""
    config = Config.load()
    if not config.app_key_spki:
        return None
    return TrustAnchors.from_pinned(
        config.app_key_spki,
        config.app_fingerprint,
        config.extra.get(PINNED_POLICY_KEY),
        attestation_roots(),
    )


def trust_policy(required: list[str] | None) -> TrustPolicy:
    """Self signature always; the pinned app key is trusted for "app", the pinned policy's
    officers for their approvals (required with "app")."""
    wanted = frozenset(required or ())
    anchors = pinned_anchors()
    if anchors is None:
        missing = sorted(s for s in wanted if s not in ("self", "previous"))
        if missing:
            raise UsageError(
                f"no trusted key for {', '.join(missing)}",
                hint="Log in to the server first ('hsm-vault login') to pin its application key.",
            )
        return TrustPolicy(required=wanted, attestation_roots=attestation_roots())
    return anchors.trust_for(wanted)


def _print_card(card: Card, policy: TrustPolicy | None = None) -> None:
    checked = set(policy.checked_signers(card)) if policy is not None else set()
    console.print(f"identity     {card.identity} ({card.identity_type.value})")
    console.print(f"card id      {card.id}")
    console.print(f"short id     {card.short_id}")
    console.print(f"key          {card.key_type.value}, fingerprint {card.fingerprint}")
    if card.oaep_hash:
        console.print(f"wrap         rsa-oaep with {card.oaep_hash}")
    console.print(f"scope        {', '.join(s.value for s in card.snapshot.scope)}")
    for name, value in card.snapshot.data.items():
        console.print(f"data         {name} = {value}")
    console.print(f"created      {card.created_at}")
    if card.previous_id:
        console.print(f"replaces     {card.previous_id}")
    prov = card.snapshot.provenance
    console.print(
        f"token        {prov.manufacturer} / {prov.model} / serial {prov.serial or '-'}; "
        f"local={prov.local_text} never_extractable={prov.never_extractable} "
        f"always_sensitive={prov.always_sensitive}"
    )
    roots = policy.attestation_roots if policy is not None else None
    console.print(f"key origin   {attestation_line(attestation_summary(card, roots))}")
    approvers = [
        s.signer.partition(":")[2] for s in card.signatures if s.signer.startswith("officer:")
    ]
    if approvers:
        console.print(f"approved by  {', '.join(approvers)} (officers)")
    for sig in card.signatures:
        state = "verified" if sig.signer in checked else "unchecked"
        if policy is None:
            state = "present"
        console.print(f"signed by    {sig.signer} ({sig.algorithm.value}, {state})")


def _problems(keyring: Keyring) -> list[dict[str, str]]:
    problems = keyring.scan()[1]
    for problem in problems:
        err_console.print(f"[yellow]warning:[/] {problem.path}: {problem.message}", markup=True)
    return [{"path": str(p.path), "message": p.message} for p in problems]


def _parse_data(items: list[str] | None) -> dict[str, str]:
    data: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--data {item!r} must look like name=value")
        if name in data:
            raise UsageError(f"--data {name} given twice")
        data[name] = value
    return data


# --- commands ------------------------------------------------------------------------------------


@card_app.command("create")
def create(
    identity: Annotated[str, typer.Argument(help="Who the card is for: an email or user name.")],
    key: Annotated[
        str | None,
        typer.Option("--key", "-k", help="Token key label or PKCS#11 URI.", show_default=False),
    ] = None,
    slot: SlotOpt = None,
    identity_type: Annotated[
        IdentityType | None,
        typer.Option(
            "--type", help="Identity type (default: email if it has an @, else username)."
        ),
    ] = None,
    scope: Annotated[
        list[Scope] | None,
        typer.Option("--scope", help="What the key may be used for (default: encrypt and sign)."),
    ] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", help="Custom field name=value. Repeatable.")
    ] = None,
    rotate_from: Annotated[
        str | None,
        typer.Option("--rotate-from", help="Id of the card this one replaces (in the keyring)."),
    ] = None,
    old_key: Annotated[
        str | None,
        typer.Option("--old-key", help="Token key of the card named by --rotate-from."),
    ] = None,
    no_attestation: Annotated[
        bool,
        typer.Option(
            "--no-attestation",
            help="Do not read the token's key attestation: the card says 'not attested'.",
        ),
    ] = False,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Make a card for a token key, sign it on the token, and keep it in the keyring.

    The key must have been generated on the token (local, never extractable, always
    sensitive). For RSA keys the OAEP hash the token accepts is probed and written in the card.
    On a token that attests its keys (a YubiKey) the attestation is verified and recorded.
    """
    key = key_reference(key, slot)
    if (rotate_from is None) != (old_key is None):
        raise UsageError("--rotate-from and --old-key go together")
    keyring = Keyring()
    previous_card = keyring.resolve(rotate_from, allow_revoked=True).card if rotate_from else None
    roots = None if no_attestation else attestation_roots()
    with token_session(module, split_token_from_key(key, token), pin_file) as ts:
        token_key = ts.find_key(key)
        previous = None
        if previous_card is not None and old_key is not None:
            previous = (previous_card, ts.find_key(old_key))
        card = create_card(
            ts,
            token_key,
            identity,
            identity_type=identity_type,
            scope=scope or (Scope.ENCRYPT, Scope.SIGN),
            data=_parse_data(data),
            previous=previous,
            attest=not no_attestation,
            attestation_roots=roots,
        )
    entry = keyring.add(card, origin=Origin.OWN, key_uri=token_key.uri)
    if json_out:
        print_json({**entry_summary(entry), "card": card.to_text()})
        return
    console.print(f"created card {card.id} for {card.identity}")
    console.print(attestation_line(attestation_summary(card, roots)))
    console.print(f"short id: {card.short_id}  (read this to whoever imports the card)")
    console.print(f"export it with: hsm-vault card export {card.id[:16]}")


@card_app.command("export")
def export(
    ref: RefArg,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the line to FILE instead.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False,
) -> None:
    """Print a card as one line of text (safe to paste into a ticket or chat)."""
    entry = Keyring().resolve(ref, allow_revoked=True)
    line = entry.card.to_text()
    if out is None:
        typer.echo(line)
        return
    if out.exists() and not force:
        raise FileExistsRefused(f"{out} exists")
    write_private_file(out, (line + "\n").encode())
    err_console.print(f"wrote card {entry.card.id[:16]} ({entry.card.identity}) to {out}")


@card_app.command("import")
def import_card(
    source: SourceArg,
    require: RequireOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify a card and, only if it verifies, add it to the keyring.

    The self signature is always checked; an 'app' signature is checked against the server key
    pinned at login. Compare the short id with the card's owner over another channel.
    """
    policy = trust_policy(require)
    card = Card.from_text(read_source(source))
    keyring = Keyring()
    previous = None
    if card.previous_id is not None:
        try:
            previous = keyring.get(card.previous_id).card
        except CardError:
            previous = None  # not at hand: the rotation signature is checked when it is
    verify_card(card, policy, previous=previous)
    entry = keyring.add(card, origin=Origin.IMPORTED)
    if json_out:
        print_json({**card_summary(entry.card, policy), "status": entry.status})
        return
    console.print(f"imported card for {card.identity}")
    _print_card(entry.card, policy)


@card_app.command("verify")
def verify(
    source: SourceArg,
    require: RequireOpt = None,
    previous_ref: Annotated[
        str | None,
        typer.Option("--previous", help="The previous card (id in the keyring, line or file)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a card without storing it; exit non-zero with the reason if it fails."""
    policy = trust_policy(require)
    card = Card.from_text(read_source(source))
    previous = None
    if previous_ref is not None:
        if previous_ref.startswith("hsmv-card-") or Path(previous_ref).is_file():
            previous = Card.from_text(read_source(previous_ref))
        else:
            previous = Keyring().get(previous_ref).card
    verify_card(card, policy, previous=previous)
    if json_out:
        print_json({**card_summary(card, policy), "valid": True})
        return
    console.print("card verifies")
    _print_card(card, policy)


@card_app.command("fingerprint")
def fingerprint(ref: RefArg, json_out: JsonOpt = False) -> None:
    """The card id (SHA-256 of the card) and its short form for reading aloud."""
    card = Keyring().resolve(ref, allow_revoked=True).card
    if json_out:
        print_json(
            {
                "id": card.id,
                "short_id": card.short_id,
                "identity": card.identity,
                "key_fingerprint_sha256": card.fingerprint,
            }
        )
        return
    console.print(f"card id  {card.id}")
    console.print(f"short    {card.short_id}")
    console.print(f"key      {card.fingerprint}")


@card_app.command("list")
def list_cards(json_out: JsonOpt = False) -> None:
    """The cards in the local keyring (own and imported). Unreadable entries are reported."""
    keyring = Keyring()
    entries = keyring.entries()
    problems = _problems(keyring)
    if json_out:
        print_list("cards", [entry_summary(e) for e in entries], problems=problems)
        return
    if not entries:
        console.print("the keyring holds no cards")
        return
    table = Table("id", "identity", "key", "origin", "status", "signers", "created")
    table.columns[0].no_wrap = True
    table.columns[1].overflow = "fold"
    table.columns[6].no_wrap = True
    for e in entries:
        table.add_row(
            e.card.id[:12],
            e.card.identity,
            e.card.key_type.value,
            e.origin,
            e.status,
            ",".join(e.card.signers),
            e.card.created_at[:10],
        )
    console.print(table)


@card_app.command("show")
def show(ref: RefArg, json_out: JsonOpt = False) -> None:
    """Everything a card says, and what the keyring knows about it. A full card id that is not
    in the keyring is asked of the server (officers see pending cards there)."""
    try:
        entry = Keyring().resolve(ref, allow_revoked=True)
    except CardNotFound:
        if re.fullmatch(r"[0-9a-f]{64}", ref.lower()) is None or not Config.load().api_token:
            raise
        from hsm_vault.cli.card_server import show_from_server

        show_from_server(ref.lower(), json_out)
        return
    if json_out:
        print_json(entry_summary(entry))
        return
    _print_card(entry.card)
    console.print(f"origin       {entry.origin} (added {entry.added_at})")
    if entry.key_uri:
        console.print(f"token key    {entry.key_uri}")
    console.print(f"status       {entry.status}")
    if entry.revocation is not None:
        console.print(
            f"revoked      {entry.revocation.reason.value} at {entry.revocation.created_at} "
            f"by {entry.revocation.signer}"
        )
    if entry.superseded_by:
        console.print(f"replaced by  {entry.superseded_by}")


@card_app.command("remove")
def remove(
    ref: Annotated[str, typer.Argument(help="Card id or id prefix (not an identity).")],
    yes: YesOpt = False,
) -> None:
    """Remove a card from the local keyring (the token key is not touched)."""
    keyring = Keyring()
    entry = keyring.get(ref)
    if not yes:
        typer.confirm(
            f"remove card {entry.card.id[:16]} for {entry.card.identity} from the keyring?",
            abort=True,
        )
    keyring.remove(entry.card.id)
    console.print(f"removed card {entry.card.id[:16]} ({entry.card.identity})")


@card_app.command("sign-revocation")
def sign_revocation(
    ref: RefArg,
    key: Annotated[str, typer.Option("--key", "-k", help="The card's token key (label or URI).")],
    reason: Annotated[
        RevocationReason, typer.Option("--reason", help="Why the card is revoked.")
    ] = RevocationReason.UNSPECIFIED,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write it to FILE.")] = None,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign, on the token, a statement revoking a card with its own key, and keep it."""
    keyring = Keyring()
    entry = keyring.resolve(ref, allow_revoked=True)
    with token_session(module, split_token_from_key(key, token), pin_file) as ts:
        statement = revoke_card(ts, ts.find_key(key), entry.card, reason)
    keyring.add_revocation(statement)
    line = statement.to_text()
    if out is not None:
        if out.exists():
            raise FileExistsRefused(f"{out} exists")
        write_private_file(out, (line + "\n").encode())
    if json_out:
        print_json({"card_id": entry.card.id, "reason": reason.value, "revocation": line})
        return
    console.print(f"revoked card {entry.card.id[:16]} ({entry.card.identity}): {reason.value}")
    typer.echo(line)


@card_app.command("import-revocation")
def import_revocation(
    source: Annotated[
        str, typer.Argument(help="The statement (hsmv-revocation-1:...), a file, or -.")
    ],
    json_out: JsonOpt = False,
) -> None:
    """Verify a revocation statement against the card in the keyring and keep it."""
    statement = RevocationStatement.from_text(read_source(source, "hsmv-revocation-"))
    entry = Keyring().add_revocation(statement, trust_policy(None))
    if json_out:
        print_json({"card_id": statement.card_id, "reason": statement.reason.value})
        return
    console.print(
        f"card {entry.card.id[:16]} ({entry.card.identity}) is revoked: {statement.reason.value}"
    )


def register(app: typer.Typer) -> None:
    """Add the `card` command group, with its server commands, to the application."""
    from hsm_vault.cli.card_server import register_card_commands

    register_card_commands(card_app)
    app.add_typer(card_app, name="card")
