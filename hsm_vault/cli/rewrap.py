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
    from collections.abc import Callable

    from hsm_vault.cards import Card, Keyring
    from hsm_vault.envelope import Header
    from hsm_vault.envelope.rewrap import RecipientChange
    from hsm_vault.vault import BatchFailure

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
    from hsm_vault.cards import Card
    from hsm_vault.config import attestation_roots
    from hsm_vault.trust import TrustPolicy, verify_card

    path = Path(ref)
    if path.is_file():
        card = Card.from_text(path.read_text().strip())
        verify_card(card, TrustPolicy.self_only(attestation_roots()))
        return card
    if not re.fullmatch(r"[0-9a-fA-F]{4,64}", ref):
        raise UsageError(
            f"--from-card takes a card id or a card file, not {ref!r}",
            hint="'hsm-vault card list' shows the ids of your cards.",
        )
    return keyring.get(ref).card


def _removed_key_ids(ref: str, keyring: Keyring) -> frozenset[bytes]:
    """A --remove value -> key ids: every card of an identity, a card by id, or a key id."""
    entries = keyring.find(ref)
    if entries:
        return frozenset(entry.card.key_id for entry in entries)
    with contextlib.suppress(CardNotFound, UsageError):
        return frozenset({keyring.get(ref).card.key_id})
    if _KEY_ID.fullmatch(ref):
        return frozenset({bytes.fromhex(ref)})
    raise CardNotFound(
        f"no card in the keyring for {ref!r}",
        hint="Name an identity, a card id, or a key id as 'hsm-vault inspect' shows it.",
    )


def recipient_change(
    add: list[str] | None,
    remove: list[str] | None,
    from_card: str | None,
    to_card: str | None,
    *,
    require_removed: bool = True,
) -> tuple[RecipientChange, frozenset[bytes]]:
    """The options of `rewrap` and `store rewrap` as one checked change, and the key id of
    the --from-card (whose token is the natural one to unwrap with)."""
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
    replaced: frozenset[bytes] = frozenset()
    required = [(ref, _removed_key_ids(ref, keyring)) for ref in remove or ()]
    added_refs = list(add or ())
    if from_card is not None and to_card is not None:
        old = _card_by_id_or_file(from_card, keyring)
        replaced = frozenset({old.key_id})
        required.append((f"card {old.id[:16]} ({old.identity})", replaced))
        added_refs.append(to_card)
    added = resolve_recipients(added_refs) if added_refs else []
    removed = frozenset().union(*(key_ids for _, key_ids in required))
    change = RecipientChange(
        removed, tuple(added), required=tuple(required) if require_removed else ()
    )
    return change, replaced


def _token_for(
    token: str | None, key: str | None, wanted: set[bytes], prefer: frozenset[bytes]
) -> str | None:
    """--token, the token of --key, else the one token holding your card being replaced
    (`prefer`), else the one holding any of your cards the files name."""
    from hsm_vault.card_refs import own_token_for
    from hsm_vault.cards import Keyring
    from hsm_vault.cli.common import split_token_from_key

    chosen = split_token_from_key(key, token)
    if chosen:
        return chosen
    keyring = Keyring()
    return own_token_for(wanted & prefer, keyring) or own_token_for(wanted, keyring)


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
    """Change who can open files without re-encrypting them (payload bytes kept).

    The token unwraps each file key once (one login for every file); a new header is written
    and the payload bytes are copied as they are.

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
        change, replaced = recipient_change(add, remove, from_card, to_card, require_removed=False)
        rewrap_blobs(
            None,
            change,
            replaced=replaced,
            key=key,
            quiet=quiet,
            module=module,
            token=token,
            pin_file=pin_file,
        )
        return
    if not files:
        raise UsageError("name the files to re-wrap", hint="e.g. hsm-vault rewrap *.hsmv --add bob")
    for path in files:  # before any PIN prompt
        if not path.is_file():
            raise UsageError(f"{path} is not a file", hint="Check the path.")
    change, replaced = recipient_change(add, remove, from_card, to_card)
    rewrap_files(
        files,
        change,
        replaced=replaced,
        key=key,
        quiet=quiet,
        module=module,
        token=token,
        pin_file=pin_file,
    )


def _plan(
    items: list[str], header_of: Callable[[str], Header], change: RecipientChange, quiet: bool
) -> tuple[list[str], set[bytes], list[BatchFailure]]:
    """Check every item's header against `change` before any login: (items that change,
    the key ids they name, failures). A single item's failure is raised at once."""
    from hsm_vault.envelope.rewrap import new_key_ids
    from hsm_vault.vault import BatchFailure

    todo: list[str] = []
    wanted: set[bytes] = set()
    failures: list[BatchFailure] = []
    for item in items:
        try:
            header = header_of(item)
            after = new_key_ids(header, change)
        except HsmVaultError as exc:
            if len(items) == 1:
                raise
            failures.append(BatchFailure(Path(item), exc))
            err_console.print(f"[bold red]error:[/] {item}: {exc.message}", markup=True)
            continue
        before = [entry.key_id for entry in header.recipients]
        if after == before:
            if not quiet:
                err_console.print(f"{item}: unchanged (already for those recipients)")
            continue
        todo.append(item)
        wanted |= set(before)
    return todo, wanted, failures


def _run(
    todo: list[str], failures: list[BatchFailure], total: int, work: Callable[[str], None]
) -> None:
    """Run `work` on each item; report failures per item and fail at the end."""
    from hsm_vault.vault import BatchFailure, batch_failed

    for item in todo:
        try:
            work(item)
        except HsmVaultError as exc:
            if total == 1:
                raise
            failures.append(BatchFailure(Path(item), exc))
            err_console.print(f"[bold red]error:[/] {item}: {exc.message}", markup=True)
    if failures:
        raise batch_failed(failures, total)


def rewrap_files(
    files: list[Path],
    change: RecipientChange,
    *,
    replaced: frozenset[bytes] = frozenset(),
    key: str | None,
    quiet: bool,
    module: str | None,
    token: str | None,
    pin_file: Path | None,
) -> None:
    """Re-wrap local files in place, one login for all; failures are reported per file."""
    from hsm_vault.rewrap import rewrap_file
    from hsm_vault.vault import inspect_file, token_identities

    names = [str(path) for path in files]
    before: dict[str, int] = {}

    def header_of(name: str) -> Header:
        header = inspect_file(Path(name))[0]
        before[name] = len(header.recipients)
        return header

    todo, wanted, failures = _plan(names, header_of, change, quiet)
    if not todo:
        _run([], failures, len(names), lambda _: None)
        return
    total = sum(Path(name).stat().st_size for name in todo)
    with (
        token_session(module, _token_for(token, key, wanted, replaced), pin_file) as session,
        progress_bar("re-wrapping", total, quiet=quiet) as progress,
    ):
        identities = token_identities(session, key)

        def one(name: str) -> None:
            result = rewrap_file(Path(name), identities, change, progress=progress)
            if not quiet:
                err_console.print(_summary(name, before[name], len(result.header.recipients)))

        _run(todo, failures, len(names), one)


def rewrap_blobs(
    names: list[str] | None,
    change: RecipientChange,
    *,
    replaced: frozenset[bytes] = frozenset(),
    key: str | None,
    quiet: bool,
    module: str | None,
    token: str | None,
    pin_file: Path | None,
) -> None:
    """Re-wrap blobs on the server: only headers travel; the server swaps them atomically.

    `names` None: every blob the caller can read that names a key `change` removes.
    """
    from hsm_vault.client import client_from_config
    from hsm_vault.client.blobs import list_blobs, read_blob_header, replace_blob_header
    from hsm_vault.envelope import read_header
    from hsm_vault.envelope.rewrap import rewrap
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
    headers: dict[str, tuple[Header, str]] = {}

    def header_of(name: str) -> Header:
        raw, sha256 = read_blob_header(client, name)
        headers[name] = (read_header(io.BytesIO(raw)), sha256)
        return headers[name][0]

    todo, wanted, failures = _plan(names, header_of, change, quiet)
    if not todo:
        _run([], failures, len(names), lambda _: None)
        return
    total = sum(sizes.get(name, 0) for name in todo) if sizes else None
    with (
        token_session(module, _token_for(token, key, wanted, replaced), pin_file) as session,
        progress_bar("re-wrapping blobs", total, quiet=quiet) as progress,
    ):
        identities = token_identities(session, key)

        def one(name: str) -> None:
            header, sha256 = headers[name]
            new = rewrap(header, identities, change)
            meta = replace_blob_header(client, name, new.raw, sha256)
            if progress is not None:
                progress(sizes.get(name, 0))
            if not quiet:
                where = f"blob {meta.full_name}"
                err_console.print(_summary(where, len(header.recipients), len(meta.recipients)))

        _run(todo, failures, len(names), one)


def register(app: typer.Typer) -> None:
    """Add `rewrap` as a top-level command."""
    app.command("rewrap")(rewrap)
