"""`hsm-vault recover`: the recovery ceremony for a file whose recipients' keys are lost.

    hsm-vault recover request FILE --reason TEXT      (requester, on their new token)
    hsm-vault recover approve REQUEST                 (each share holder, on their own token)
    hsm-vault recover FILE --shares DIR [--rewrap]    (requester, once enough shares are in)

Shares never exist in clear outside a token's process memory: a holder's token unwraps the
holder's share and it is wrapped to the requester's card at once (docs/trust.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from hsm_vault.cli.common import (
    JsonOpt,
    ModuleOpt,
    PinFileOpt,
    TokenOpt,
    YesOpt,
    console,
    err_console,
    print_json,
    split_token_from_key,
    token_session,
)
from hsm_vault.errors import CardNotFound, RecoveryError, UsageError

if TYPE_CHECKING:
    from hsm_vault.cards import KeyringEntry
    from hsm_vault.trust.recovery import RecoveryRequest

REQUEST_SUFFIX = ".recovery-request"


class _RecoverGroup(TyperGroup):
    """`recover FILE ...` runs the hidden `file` command; `recover request|approve` as usual."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["file", *args]
        return list(super().parse_args(ctx, args))


recover_app = typer.Typer(
    cls=_RecoverGroup,
    help="Recover a file whose recipients' keys are lost, with the recovery share holders.\n\n"
    "hsm-vault recover request FILE --reason TEXT; each holder: hsm-vault recover approve "
    "REQUEST; then hsm-vault recover FILE --shares DIR [-o OUT | --rewrap].",
    no_args_is_help=True,
)

KeyOpt = Annotated[
    str | None,
    typer.Option("--key", "-k", help="The token key (label or pkcs11: URI).", show_default=False),
]


def _own_entry(card: str | None, wanted: set[bytes] | None = None) -> KeyringEntry:
    """Your own valid card: the one named, else the one whose key is among `wanted`, else
    the newest."""
    from hsm_vault.cards import Keyring, KeyringStatus, Origin

    keyring = Keyring()
    if card is not None:
        entry = keyring.resolve(card)
        if entry.origin is not Origin.OWN:
            raise UsageError(f"card {entry.card.id[:16]} is not one of your own cards")
        return entry
    own = [
        e for e in keyring.entries() if e.origin is Origin.OWN and e.status is KeyringStatus.VALID
    ]
    if wanted is not None:
        own = [e for e in own if e.card.key_id in wanted]
    if not own:
        raise CardNotFound(
            "none of your own cards fits",
            hint="Create a card for your token key ('hsm-vault card create'), or pass --card.",
        )
    return max(own, key=lambda e: e.card.created_at)


def _key_ref(entry: KeyringEntry, key: str | None) -> str:
    ref = key or entry.key_uri
    if ref is None:
        raise UsageError("which token key is your card's?", hint="Pass --key LABEL.")
    return ref


def _read_request(source: str) -> RecoveryRequest:
    from hsm_vault.cli.card import read_source
    from hsm_vault.trust.recovery import REQUEST_PREFIX, RecoveryRequest

    return RecoveryRequest.from_text(read_source(source, REQUEST_PREFIX))


@recover_app.command("request")
def request(
    file: Annotated[Path, typer.Argument(help="The hsm-vault file to recover.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the approving holders.")],
    card: Annotated[
        str | None,
        typer.Option("--card", help="Your new card (default: your newest own card)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where the request goes (FILE.recovery-request)."),
    ] = None,
    key: KeyOpt = None,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a recovery request for FILE, signed on your token: send it to the share holders."""
    from hsm_vault.config import write_private_file
    from hsm_vault.recovery import request_recovery
    from hsm_vault.vault import inspect_file

    header, _ = inspect_file(file)
    if header.recovery is None:
        raise RecoveryError(
            f"{file} has no recovery entries: it cannot be recovered",
            hint="Only files written under a recovery policy can be recovered.",
        )
    entry = _own_entry(card)
    out = output or file.with_name(file.name + REQUEST_SUFFIX)
    if out.exists():
        raise UsageError(f"{out} exists", hint="Remove it or pass -o.")
    ref = _key_ref(entry, key)
    with token_session(module, split_token_from_key(ref, token), pin_file) as session:
        made = request_recovery(header, entry.card, reason, session, session.find_key(ref))
    write_private_file(out, (made.to_text() + "\n").encode())
    recovery = header.recovery
    if json_out:
        print_json({"request": made.id, "file": str(file), "output": str(out)})
        return
    console.print(f"recovery request {made.id[:16]} for {file} -> {out}")
    console.print(
        f"send it to the share holders: {recovery.threshold} of {len(recovery.shares)} must "
        "approve it ('hsm-vault recover approve REQUEST')"
    )


@recover_app.command("approve")
def approve(
    request_source: Annotated[
        str, typer.Argument(metavar="REQUEST", help="The request file (or its line, or -).")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where your share goes (REQUESTID-N.share)."),
    ] = None,
    key: KeyOpt = None,
    yes: YesOpt = False,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Approve a recovery request on your token: your share, re-wrapped to the requester.

    The requester's card is verified against the server's pinned policy and must not be
    revoked; the approval is recorded on the server before the share is written.
    """
    from hsm_vault.cards import CardStatus
    from hsm_vault.cli.card_server import _client_and_trust
    from hsm_vault.config import write_private_file
    from hsm_vault.recovery import SHARE_SUFFIX, approve_request

    parsed = _read_request(request_source)
    parsed.verify()
    body = parsed.body
    recovery = body.header.recovery
    assert recovery is not None
    entry = _own_entry(None, {e.key_id for e in recovery.shares})
    index = recovery.index_of(entry.card.key_id)
    out = output or Path(f"{parsed.id[:16]}-{index}{SHARE_SUFFIX}")
    if out.exists():
        raise UsageError(f"{out} exists", hint="Remove it or pass -o.")
    client, anchors, _config = _client_and_trust()
    with client:
        requester = client.fetch_card(body.requester.id, anchors.card_policy())
        if requester.revoked or requester.status is not CardStatus.APPROVED:
            raise RecoveryError(
                f"the requester's card {body.requester.id[:16]} is {requester.status}",
                hint="Only an approved card that is not revoked can receive a share.",
            )
        if not json_out:
            err_console.print(
                f"request {parsed.id[:16]} from {body.requester.identity} "
                f"(card {body.requester.id[:16]}), {body.created_at}\n"
                f"  reason: {body.reason}\n  file header sha256: {body.header_sha256}\n"
                f"  your share: {index} of {len(recovery.shares)} "
                f"({recovery.threshold} needed)"
            )
        if not yes:
            typer.confirm(
                f"Give your share to {body.requester.identity}?", default=False, abort=True
            )
        ref = _key_ref(entry, key)
        with token_session(module, split_token_from_key(ref, token), pin_file) as session:
            share = approve_request(parsed, entry.card, session, session.find_key(ref))
        record = client.record_recovery_approval(share.to_text())
    write_private_file(out, (share.to_text() + "\n").encode())
    if json_out:
        print_json({"share": share.id, "index": share.body.index, "output": str(out), **record})
        return
    console.print(
        f"share {share.body.index} for {body.requester.identity} -> {out} "
        f"(recorded on the server at {record['recorded_at']}); send it to the requester"
    )


@recover_app.command("file", hidden=True)
def recover_file(
    file: Annotated[Path, typer.Argument(help="The hsm-vault file to recover.")],
    shares: Annotated[
        Path, typer.Option("--shares", help="Folder with the approved shares (*.share).")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Plaintext output (default: FILE without .hsmv)."),
    ] = None,
    rewrap: Annotated[
        bool,
        typer.Option(
            "--rewrap",
            help="Instead of decrypting: give the file to your new card, in place (the "
            "payload bytes kept).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace an existing output.")
    ] = False,
    key: KeyOpt = None,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Recover FILE with the shares in DIR once enough holders approved: decrypt it, or
    with --rewrap give it to your new card."""
    from hsm_vault import recovery
    from hsm_vault.vault import default_decrypt_output, inspect_file, token_identities

    if rewrap and output is not None:
        raise UsageError("--rewrap changes FILE in place: give no -o")
    if not file.is_file():
        raise UsageError(f"{file} is not a file", hint="Check the path.")
    header, _ = inspect_file(file)
    found = recovery.read_shares(shares)
    if not found:
        raise RecoveryError(f"no shares (*.share) in {shares}")
    requesters = {s.body.requester_card_id for s in found}
    if len(requesters) != 1:
        raise RecoveryError("the shares are for different requesters' cards")
    entry = _own_entry(requesters.pop())
    dst = None if rewrap else (output or default_decrypt_output(file, None))
    ref = key or entry.key_uri
    chosen = split_token_from_key(ref, token)
    with token_session(module, chosen, pin_file) as session:
        identities = token_identities(session, ref)
        if rewrap:
            result = recovery.recover_rewrap(file, found, identities, entry.card)
            console.print(
                f"recovered {file}: now also for your card {entry.card.id[:16]} "
                f"({len(result.header.recipients)} recipient(s)), payload unchanged"
            )
            return
        recovery.recover_file(file, dst, found, identities, force=force)
    assert header.recovery is not None
    console.print(
        f"recovered {file} -> {dst} with {len(found)} share(s) ({header.recovery.threshold} needed)"
    )


def register(app: typer.Typer) -> None:
    """Add the `recover` command group."""
    app.add_typer(recover_app, name="recover")
