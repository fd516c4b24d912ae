"""`hsm-vault export --cms`: an hsm-vault file as a standard CMS message, so no lock-in.

    hsm-vault export --cms FILE.hsmv [-o FILE.p7m] [--to REF]... [--enveloped]

The output opens with any CMS implementation that holds a recipient's key, e.g.
`openssl cms -decrypt -engine pkcs11 -keyform engine -inkey 'pkcs11:...' -in FILE.p7m
-inform DER`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hsm_vault.cli.common import (
    ModuleOpt,
    PinFileOpt,
    TokenOpt,
    err_console,
    progress_bar,
    stderr_is_terminal,
    token_session,
)
from hsm_vault.errors import UsageError


def export(
    file: Annotated[Path, typer.Argument(help="An hsm-vault file.", show_default=False)],
    cms: Annotated[
        bool, typer.Option("--cms", help="Write CMS (the one export format there is).")
    ] = False,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Output file (default FILE.p7m), or '-' for stdout."),
    ] = None,
    to: Annotated[
        list[str] | None,
        typer.Option(
            "--to",
            "-r",
            metavar="IDENTITY|CARD_ID|CARD_FILE",
            help="Recipients of the CMS message (default: the file's own, from the keyring).",
            show_default=False,
        ),
    ] = None,
    enveloped: Annotated[
        bool,
        typer.Option(
            "--enveloped",
            help="RFC 5652 EnvelopedData with AES-256-CBC (no integrity: for CMS readers "
            "without AuthEnvelopedData) instead of RFC 5083 AuthEnvelopedData with AES-256-GCM.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace an existing output.")
    ] = False,
    key: Annotated[
        str | None,
        typer.Option("--key", "-k", help="Unwrap with this token key.", show_default=False),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress and no summary.")
    ] = False,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Export FILE.hsmv as a standard CMS message (opens with openssl cms -decrypt).

    The content is encrypted again under a fresh content key wrapped to each recipient's
    card; the plaintext never touches the disk.
    """
    from hsm_vault.card_refs import own_token_for
    from hsm_vault.cards import Keyring
    from hsm_vault.cli.common import split_token_from_key
    from hsm_vault.cli.crypt import _refuse_terminal, resolve_recipients
    from hsm_vault.envelope.cms_export import CMSKind
    from hsm_vault.export import SUFFIX, export_cms_file
    from hsm_vault.vault import recipient_key_ids, token_identities

    if not cms:
        raise UsageError("say which format: --cms", hint="hsm-vault export --cms FILE.hsmv")
    if not file.is_file():
        raise UsageError(f"{file} is not a file", hint="Check the path.")
    if output == "-":
        dst = None
        _refuse_terminal(dst)
    else:
        dst = Path(output) if output else file.with_name(file.name.removesuffix(".hsmv") + SUFFIX)
    recipients = resolve_recipients(to) if to else None
    chosen = split_token_from_key(key, token) or own_token_for(recipient_key_ids(file), Keyring())
    kind = CMSKind.ENVELOPED if enveloped else CMSKind.AUTH_ENVELOPED
    with (
        token_session(module, chosen, pin_file) as session,
        progress_bar("exporting", file.stat().st_size, quiet=quiet) as progress,
    ):
        result = export_cms_file(
            file,
            dst,
            token_identities(session, key),
            recipients,
            kind=kind,
            force=force,
            progress=progress,
            keyring_entries=Keyring().entries(),
        )
    if dst is not None and not quiet and stderr_is_terminal():
        names = ", ".join(r.name or r.key_id.hex()[:16] for r in result.recipients)
        err_console.print(f"exported {file} -> {dst} ({kind.value} for {names})")


def register(app: typer.Typer) -> None:
    """Add `export` as a top-level command."""
    app.command("export")(export)
