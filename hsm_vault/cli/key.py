"""`hsm-vault key ...`: generate, list, show, export the public half of, and delete token keys.

There is deliberately no command that exports a private key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hsm_vault.algorithms import KeyType
from hsm_vault.cli.common import (
    JsonOpt,
    ModuleOpt,
    PinFileOpt,
    TokenOpt,
    YesOpt,
    console,
    print_json,
    split_token_from_key,
    token_session,
)
from hsm_vault.cli.shapes import print_list
from hsm_vault.errors import FileExistsRefused, UsageError

key_app = typer.Typer(
    help="Manage key pairs on a token. Private keys are made on the token and never leave it.",
    no_args_is_help=True,
)

KeyArg = Annotated[
    str, typer.Argument(help="Key label, or a PKCS#11 URI (pkcs11:token=T;object=L).")
]


def key_summary(key: Any) -> dict[str, Any]:
    """A key as plain data, for --json and for `key show`."""
    return {
        "label": key.label,
        "id": key.key_id.hex(),
        "type": str(key.key_type),
        "bits": key.key_type.bits,
        "uri": key.uri,
        "token": key.token.label,
        "fingerprint_sha256": key.fingerprint,
        "capabilities": list(key.capabilities),
        "attributes": {
            "local": key.local,
            "never_extractable": key.never_extractable,
            "always_sensitive": key.always_sensitive,
            "sensitive": key.sensitive,
            "extractable": key.extractable,
        },
    }


@key_app.command("generate")
def generate(
    label: Annotated[str, typer.Argument(help="Label for the new key (unique on the token).")],
    key_type: Annotated[
        KeyType, typer.Option("--type", help="Key type.", case_sensitive=False)
    ] = KeyType.EC_P256,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Generate a key pair ON the token: sensitive, non-extractable, with a unique id.

    The token's CKA_LOCAL, CKA_NEVER_EXTRACTABLE and CKA_ALWAYS_SENSITIVE are read back; a key
    the token did not protect is deleted again and the command fails.
    """
    with token_session(module, token, pin_file) as ts:
        if not json_out and key_type.value.startswith("rsa-4096"):
            console.print("generating an RSA-4096 key on the token; this can take a while...")
        key = ts.generate_key(label, key_type)
    if json_out:
        print_json(key_summary(key))
        return
    console.print(f"generated {key.key_type} key {key.label!r} on token {key.token.label!r}")
    console.print(f"  uri:         {key.uri}")
    console.print(f"  fingerprint: {key.fingerprint}")
    console.print("  local, never extractable, always sensitive: yes")


@key_app.command("list")
def list_keys(
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the key pairs on a token."""
    with token_session(module, token, pin_file) as ts:
        keys = ts.keys()
        label = ts.info.label
    if json_out:
        print_list("keys", [key_summary(k) for k in keys])
        return
    if not keys:
        console.print(f"no keys on token {label!r}; make one with 'hsm-vault key generate LABEL'")
        return
    table = Table(title=f"keys on token {label!r}", title_justify="left")
    for column in ("label", "type", "id", "protected", "fingerprint (sha256)"):
        table.add_column(column)
    for k in keys:
        table.add_row(
            k.label,
            str(k.key_type),
            k.key_id.hex(),
            "yes" if k.protected else "NO",
            k.fingerprint[:16],
        )
    console.print(table)


@key_app.command("show")
def show(
    key: KeyArg,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a key: type, size, id, URI, protection attributes and SHA-256 fingerprint."""
    with token_session(module, split_token_from_key(key, token), pin_file) as ts:
        info = ts.find_key(key)
    summary = key_summary(info)
    if json_out:
        print_json(summary)
        return
    for name in ("label", "type", "bits", "id", "uri", "token", "fingerprint_sha256"):
        console.print(f"{name + ':':<20}{summary[name]}")
    console.print(f"{'capabilities:':<20}{', '.join(info.capabilities)}")
    for name, value in summary["attributes"].items():
        console.print(f"{name + ':':<20}{'yes' if value else 'no'}")


@key_app.command("export-public")
def export_public(
    key: KeyArg,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")
    ] = None,
    der: Annotated[bool, typer.Option("--der", help="DER instead of PEM.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Export the PUBLIC key as a SubjectPublicKeyInfo (PEM, or DER with --der)."""
    if der and out is None:
        raise UsageError("DER is binary: use --out FILE with --der")
    if out is not None and out.exists() and not force:
        raise FileExistsRefused(f"{out} exists")
    with token_session(module, split_token_from_key(key, token), pin_file) as ts:
        info = ts.find_key(key)
    data = info.spki_der if der else info.public_pem()
    if out is None:
        typer.echo(data.decode(), nl=False)
    else:
        out.write_bytes(data)
        console.print(f"wrote the public key of {info.label!r} to {out}")


@key_app.command("delete")
def delete(
    key: KeyArg,
    yes: YesOpt = False,
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
) -> None:
    """Delete a key pair from the token. There is no undo: files encrypted to it are lost."""
    with token_session(module, split_token_from_key(key, token), pin_file) as ts:
        info = ts.find_key(key)
        if not yes and not typer.confirm(
            f"Delete key {info.label!r} ({info.key_type}, {info.fingerprint[:16]}) from token "
            f"{info.token.label!r}? Files encrypted to it can no longer be decrypted",
            default=False,
        ):
            raise typer.Exit(1)
        ts.delete_key(info)
    console.print(f"deleted key {info.label!r} from token {info.token.label!r}")


def register(app: typer.Typer) -> None:
    """Add `key` to the application."""
    app.add_typer(key_app, name="key")
