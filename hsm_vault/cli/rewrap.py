"""`hsm-vault rewrap`: change who can open files without re-encrypting them.

    hsm-vault rewrap FILE... [--add REF]... [--remove REF]... [--from-card OLD --to-card NEW]
    hsm-vault rewrap --from-card OLD --to-card NEW --store     (every readable blob for OLD)
    hsm-vault store rewrap NAME... [the same options]          (chosen blobs)

The token unwraps each file key once (one login for the batch); the new header is written
with the payload bytes copied as they are (files) or swapped on the server (blobs).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hsm_vault.cli.common import (
    ModuleOpt,
    PinFileOpt,
    TokenOpt,
    err_console,
    progress_bar,
    token_session,
)
from hsm_vault.errors import CardNotFound, HsmVaultError, UsageError

if TYPE_CHECKING:
    from hsm_vault.cards import Card, Keyring
    from hsm_vault.envelope.rewrap import RecipientChange

_KEY_ID = re.compile(r"^[0-9a-fA-F]{64}$")

AddOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--add",
        metavar="IDENTITY|CARD_ID|CARD_FILE",
        help="Give the files to this card too (verified as for encrypt --to). Repeatable.",
        show_default=False,
    ),
]
RemoveOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--remove",
        metavar="IDENTITY|CARD_ID|KEY_ID",
        help="Take this recipient out (an identity removes each of its cards). Repeatable.",
        show_default=False,
    ),
]
FromCardOpt = Annotated[
    str | None,
    typer.Option(
        "--from-card",
        metavar="CARD_ID|CARD_FILE",
        help="The card to replace (e.g. before a rotation); goes with --to-card.",
        show_default=False,
    ),
]
ToCardOpt = Annotated[
    str | None,
    typer.Option(
        "--to-card",
        metavar="IDENTITY|CARD_ID|CARD_FILE",
        help="The card that replaces --from-card.",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key", "-k", help="Unwrap with this token key (label or pkcs11: URI).", show_default=False
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no summary.")]


def _card_by_id_or_file(ref: str, keyring: Keyring) -> Card:
    """A card named exactly (id or card file), whatever its status: the card being replaced."""
    from hsm_vault.cards import Card, TrustPolicy, verify_card

    path = Path(ref)
    if path.is_file():
        card = Card.from_text(path.read_text().strip())
        verify_card(card, TrustPolicy.self_only())
        return card
    if not re.fullmatch(r"[0-9a-fA-F]{4,64}", ref):
        raise UsageError(
            f"--from-card takes a card id or a card file, not {ref!r}",
            hint="'hsm-vault card list' shows the ids of your cards.",
        )
    return keyring.get(ref).card


def _removed_key_ids(refs: list[str], keyring: Keyring) -> set[bytes]:
    """--remove values -> key ids: every card of an identity, a card by id, or a raw key id."""
    found: set[bytes] = set()
    for ref in refs:
        entries = keyring.find(ref)
        if entries:
            found |= {entry.card.key_id for entry in entries}
            continue
        try:
            found.add(keyring.get(ref).card.key_id)
            continue
        except (CardNotFound, UsageError):
            pass
        if _KEY_ID.fullmatch(ref):
            found.add(bytes.fromhex(ref))
            continue
        raise CardNotFound(
            f"no card in the keyring for {ref!r}",
            hint="Name an identity, a card id, or a key id as 'hsm-vault inspect' shows it.",
        )
    return found


def recipient_change(
    add: list[str] | None,
    remove: list[str] | None,
    from_card: str | None,
    to_card: str | None,
    *,
    require_removed: bool = True,
) -> RecipientChange:
    """The options of `rewrap` and `store rewrap` as one checked change."""
    from hsm_vault.cards import Keyring
    from hsm_vault.cli.crypt import resolve_recipients
    from hsm_vault.envelope.rewrap import RecipientChange

    if (from_card is None) != (to_card is None):
        raise UsageError("--from-card and --to-card go together")
    if not (add or remove or from_card):
        raise UsageError(
            "say what changes: --add, --remove, or --from-card with --to-card",
            hint="e.g. hsm-vault rewrap FILE.hsmv --remove carol",
        )
    keyring = Keyring()
    removed = _removed_key_ids(list(remove or ()), keyring)
    added_refs = list(add or ())
    if from_card is not None and to_card is not None:
        removed.add(_card_by_id_or_file(from_card, keyring).key_id)
        added_refs.append(to_card)
    added = resolve_recipients(added_refs) if added_refs else []
    return RecipientChange(frozenset(removed), tuple(added), require_removed=require_removed)


def _token_for(token: str | None, key: str | None, wanted: set[bytes]) -> str | None:
    from hsm_vault.cli.crypt import _own_token_for, _token_of

    return token or _token_of(key) or _own_token_for(wanted)


def _summary(where: str, before: int, after: int) -> str:
    return f"re-wrapped {where}: {before} -> {after} recipient(s), payload unchanged"


def rewrap(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="hsm-vault files, re-wrapped in place.", show_default=False),
    ] = None,
    add: AddOpt = None,
    remove: RemoveOpt = None,
    from_card: FromCardOpt = None,
    to_card: ToCardOpt = None,
    store: Annotated[
        bool,
        typer.Option(
            "--store",
            help="Instead of files: every blob on the server you can read that is for "
            "--from-card (yours and those shared with you).",
        ),
    ] = False,
    key: KeyOpt = None,
    quiet: QuietOpt = False,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Change a file's recipients without re-encrypting it: one unwrap on the token, a new
    header, the payload bytes kept.

    A removed recipient can no longer open the new file, but may have kept the old file or
    its file key: re-encrypt what must stay secret from them (docs/format.md). A signed file
    cannot be re-wrapped.
    """
    if store:
        if files:
            raise UsageError(
                "--store re-wraps blobs on the server: give no FILE",
                hint="Use 'hsm-vault store rewrap NAME...' for chosen blobs.",
            )
        if from_card is None:
            raise UsageError("--store needs --from-card OLD and --to-card NEW")
        change = recipient_change(add, remove, from_card, to_card, require_removed=False)
        rewrap_blobs(
            None, change, key=key, quiet=quiet, module=module, token=token, pin_file=pin_file
        )
        return
    if not files:
        raise UsageError("name the files to re-wrap", hint="e.g. hsm-vault rewrap *.hsmv --add bob")
    for path in files:  # before any PIN prompt
        if not path.is_file():
            raise UsageError(f"{path} is not a file", hint="Check the path.")
    change = recipient_change(add, remove, from_card, to_card)
    rewrap_files(files, change, key=key, quiet=quiet, module=module, token=token, pin_file=pin_file)


def rewrap_files(
    files: list[Path],
    change: RecipientChange,
    *,
    key: str | None,
    quiet: bool,
    module: str | None,
    token: str | None,
    pin_file: Path | None,
) -> None:
    """Re-wrap local files in place, one login for all; failures are reported per file."""
    from hsm_vault.cli.crypt import _run_batch
    from hsm_vault.rewrap import rewrap_file
    from hsm_vault.vault import recipient_key_ids, token_identities

    wanted: set[bytes] = set()
    for path in files:
        with contextlib.suppress(HsmVaultError):  # the re-wrap itself says what is wrong
            wanted |= recipient_key_ids(path)
    total = sum(path.stat().st_size for path in files)
    with (
        token_session(module, _token_for(token, key, wanted), pin_file) as session,
        progress_bar("re-wrapping", total, quiet=quiet) as progress,
    ):
        identities = token_identities(session, key)

        def one(src: Path | None, _dst: Path | None) -> None:
            assert src is not None
            before = len(recipient_key_ids(src))
            result = rewrap_file(src, identities, change, progress=progress)
            if quiet:
                return
            if result.changed:
                err_console.print(_summary(str(src), before, len(result.header.recipients)))
            else:
                err_console.print(f"{src}: unchanged (already for those recipients)")

        _run_batch([(path, None) for path in files], one)


def rewrap_blobs(
    names: list[str] | None,
    change: RecipientChange,
    *,
    key: str | None,
    quiet: bool,
    module: str | None,
    token: str | None,
    pin_file: Path | None,
) -> None:
    """Re-wrap blobs on the server: only headers travel; the server swaps them atomically.

    `names` None: every blob the caller can read that names a key `change` removes.
    """
    from hsm_vault.cli.crypt import _run_batch
    from hsm_vault.client import client_from_config
    from hsm_vault.client.blobs import list_blobs, read_blob_header, replace_blob_header
    from hsm_vault.envelope import read_header
    from hsm_vault.envelope.rewrap import new_key_ids, rewrap
    from hsm_vault.vault import token_identities

    client = client_from_config()
    sizes: dict[str, int] = {}
    if names is None:
        blobs, _ = list_blobs(client, shared=True)
        removed = {key_id.hex() for key_id in change.remove}
        names = [b.full_name for b in blobs if removed & set(b.recipients)]
        sizes = {b.full_name: b.size for b in blobs}
        if not names:
            err_console.print("no blob you can read is for that card: nothing to do")
            return
    headers = {}
    for name in names:  # headers first: no PIN prompt for a batch with nothing to do
        raw, sha256 = read_blob_header(client, name)
        headers[name] = (read_header(io.BytesIO(raw)), sha256)
    wanted = {e.key_id for header, _ in headers.values() for e in header.recipients}
    total = sum(sizes.values()) if sizes else None
    with (
        token_session(module, _token_for(token, key, wanted), pin_file) as session,
        progress_bar("re-wrapping blobs", total, quiet=quiet) as progress,
    ):
        identities = token_identities(session, key)

        def one(src: Path | None, _dst: Path | None) -> None:
            name = str(src)
            header, sha256 = headers[name]
            if new_key_ids(header, change) == [e.key_id for e in header.recipients]:
                if not quiet:
                    err_console.print(f"{name}: unchanged (already for those recipients)")
                return
            new = rewrap(header, identities, change)
            meta = replace_blob_header(client, name, new.raw, sha256)
            if progress is not None:
                progress(sizes.get(name, 0))
            if not quiet:
                where = f"blob {meta.full_name}"
                err_console.print(_summary(where, len(header.recipients), len(meta.recipients)))

        _run_batch([(Path(name), None) for name in names], one)


def register(app: typer.Typer) -> None:
    """Add `rewrap` as a top-level command."""
    app.command("rewrap")(rewrap)
