"""`hsm-vault store`: keep ciphertext on the server's blob store.

    hsm-vault store put FILE [--name NAME] [--replace]
    hsm-vault store get NAME [-o OUT] [--force]      (NAME or OWNER/NAME)
    hsm-vault store list [--shared] [--json]
    hsm-vault store info NAME [--json]
    hsm-vault store rm NAME
    hsm-vault store rewrap NAME... [--add REF] [--remove REF] [--from-card OLD --to-card NEW]

Uploads stream from the file and downloads stream to a temporary file beside the target, so
neither holds a whole file in memory; a progress bar shows on a terminal for large transfers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hsm_vault.cli.common import (
    JsonOpt,
    ModuleOpt,
    PinFileOpt,
    TokenOpt,
    console,
    err_console,
    print_json,
    progress_bar,
)
from hsm_vault.errors import UsageError

#: Transfers at least this large get a progress bar (on a terminal).

store_app = typer.Typer(
    name="store",
    help="Keep encrypted files on the server's blob store (the server never sees plaintext).",
    no_args_is_help=True,
)


def _client() -> Any:
    """The logged-in server client from the config file."""
    from hsm_vault.client import client_from_config

    return client_from_config()


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@store_app.command("put")
def put(
    file: Annotated[Path, typer.Argument(help="The file to upload (normally FILE.hsmv).")],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Blob name (default: the file's name).")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a blob of the same name.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Upload FILE to the blob store, streamed."""
    from hsm_vault.client.blobs import upload_file
    from hsm_vault.envelope.format import MAGIC

    if not file.is_file():
        raise UsageError(f"{file} is not a file", hint="Give the path of an encrypted file.")
    with open(file, "rb") as probe:
        if probe.read(len(MAGIC)) != MAGIC:
            err_console.print(
                f"[yellow]warning:[/] {file} is not an hsm-vault encrypted file: it is stored as "
                "it is, and the server can read it."
            )
    client = _client()
    size = file.stat().st_size
    with progress_bar(f"upload {file.name}", size) as progress:
        meta = upload_file(client, file, name, replace=replace, progress=progress)
    if json_out:
        print_json(meta.to_json())
        return
    console.print(f"stored {meta.name} ({_human(meta.size)}, sha256 {meta.sha256[:16]}..)")
    if meta.recipients:
        console.print(f"readable by the owner and {len(meta.recipients)} recipient key(s)")


@store_app.command("get")
def get(
    name: Annotated[str, typer.Argument(help="Blob name, or OWNER/NAME for a shared blob.")],
    out: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write it (default: NAME here)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Download a blob, streamed; OUT appears only once every byte has arrived and verified."""
    from hsm_vault.client.blobs import blob_meta, download_file, split_blob_name

    _, bare = split_blob_name(name)
    target = out if out is not None else Path(bare)
    if target.is_dir():
        target = target / bare
    if target.exists() and not force:
        from hsm_vault.errors import FileExistsRefused

        raise FileExistsRefused(f"{target} exists already")
    client = _client()
    meta = blob_meta(client, name)
    with progress_bar(f"download {bare}", meta.size) as progress:
        written = download_file(client, name, target, force=force, progress=progress)
    err_console.print(f"wrote {target} ({_human(written)})")


@store_app.command("list")
def list_(
    shared: Annotated[
        bool, typer.Option("--shared", help="Also list blobs others encrypted to your cards.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """List your blobs (name, size, created-at, recipients)."""
    from rich.table import Table

    from hsm_vault.client.blobs import list_blobs

    blobs, used = list_blobs(_client(), shared=shared)
    if json_out:
        print_json({"blobs": [b.to_json() for b in blobs], "used_bytes": used})
        return
    if not blobs:
        console.print("no blobs")
        return
    table = Table(box=None)
    for column in ("name", "size", "created", "recipients", "sha256"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for blob in blobs:
        shown = blob.full_name if shared else blob.name
        table.add_row(
            shown,
            _human(blob.size),
            blob.created_at.strftime("%Y-%m-%d %H:%M"),
            str(len(blob.recipients)) if blob.envelope_version is not None else "-",
            blob.sha256[:16],
        )
    console.print(table)
    console.print(f"{_human(used)} used")


@store_app.command("info")
def info(
    name: Annotated[str, typer.Argument(help="Blob name, or OWNER/NAME for a shared blob.")],
    json_out: JsonOpt = False,
) -> None:
    """Show a blob's metadata: size, SHA-256, created-at, owner, recipients' key ids."""
    from hsm_vault.client.blobs import blob_meta

    meta = blob_meta(_client(), name)
    if json_out:
        print_json(meta.to_json())
        return
    console.print(f"name        {meta.full_name}")
    console.print(f"size        {meta.size} bytes")
    console.print(f"sha256      {meta.sha256}")
    console.print(f"created-at  {meta.created_at.isoformat()}")
    if meta.envelope_version is None:
        console.print("format      not an hsm-vault envelope (owner only)")
    for key_id in meta.recipients:
        console.print(f"recipient   {key_id}")


@store_app.command("rm")
def rm(name: Annotated[str, typer.Argument(help="One of your blobs.")]) -> None:
    """Delete one of your blobs (only the owner may)."""
    from hsm_vault.client.blobs import delete_blob

    delete_blob(_client(), name)
    err_console.print(f"deleted {name}")


@store_app.command("rewrap")
def rewrap(
    names: Annotated[
        list[str], typer.Argument(help="Blob names (OWNER/NAME for a blob shared with you).")
    ],
    add: Annotated[
        list[str] | None,
        typer.Option(
            "--add", help="Give the blobs to this card too. Repeatable.", show_default=False
        ),
    ] = None,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", help="Take this recipient out. Repeatable.", show_default=False),
    ] = None,
    from_card: Annotated[
        str | None, typer.Option("--from-card", help="Card to replace.", show_default=False)
    ] = None,
    to_card: Annotated[
        str | None, typer.Option("--to-card", help="Card replacing it.", show_default=False)
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", "-k", help="Unwrap with this token key.", show_default=False),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary.")] = False,
    module: ModuleOpt = None,
    token: TokenOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Change who can read blobs without re-encrypting them (payload bytes kept).

    Only the new header is sent; the server swaps it in atomically and updates who may read
    the blob (see 'hsm-vault rewrap --help').
    """
    from hsm_vault.cli.rewrap import recipient_change, rewrap_blobs

    change, replaced = recipient_change(add, remove, from_card, to_card)
    rewrap_blobs(
        names,
        change,
        replaced=replaced,
        key=key,
        quiet=quiet,
        module=module,
        token=token,
        pin_file=pin_file,
    )


def register(app: typer.Typer) -> None:
    """Add `store` to the application."""
    app.add_typer(store_app, name="store")
