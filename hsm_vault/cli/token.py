"""`hsm-vault token ...`: the tokens a PKCS#11 module offers, and what each can do."""

from __future__ import annotations

from dataclasses import asdict

import typer
from rich.table import Table

from hsm_vault.cli.common import JsonOpt, ModuleOpt, TokenOpt, console, print_json
from hsm_vault.cli.shapes import print_list
from hsm_vault.config import Config

token_app = typer.Typer(
    help="Inspect tokens (slots, labels, serials, mechanisms).", no_args_is_help=True
)


@token_app.command("list")
def list_tokens(module: ModuleOpt = None, json_out: JsonOpt = False) -> None:
    """List the slots of the PKCS#11 module with their tokens. Needs no PIN."""
    from hsm_vault.token import list_tokens as tokens_of

    tokens = tokens_of(module, Config.load().module)
    if json_out:
        print_list("tokens", [{**asdict(t), "uri": t.uri} for t in tokens])
        return
    table = Table(
        title=f"tokens in {tokens[0].module}" if tokens else "no tokens", title_justify="left"
    )
    for column in ("slot", "label", "serial", "manufacturer", "model", "state"):
        table.add_column(column)
    for t in tokens:
        state = "initialised" if "TOKEN_INITIALIZED" in t.flags else "not initialised"
        if "USER_PIN_LOCKED" in t.flags:
            state += ", PIN LOCKED"
        elif "USER_PIN_COUNT_LOW" in t.flags:
            state += ", PIN tries low"
        table.add_row(
            str(t.slot_id), t.label or "-", t.serial or "-", t.manufacturer, t.model, state
        )
    console.print(table)


@token_app.command("info")
def info(token: TokenOpt = None, module: ModuleOpt = None, json_out: JsonOpt = False) -> None:
    """Show a token and which mechanisms hsm-vault needs it offers, per key type. Needs no PIN."""
    from hsm_vault.token import token_mechanisms

    config = Config.load()
    tok, mechanisms = token_mechanisms(token or config.token, module, config.module)
    ec_ok = all(v for k, v in mechanisms.items() if k.startswith(("EC_", "ECDSA", "ECDH")))
    rsa_ok = all(v for k, v in mechanisms.items() if k.startswith(("RSA", "SHA256_RSA")))
    if json_out:
        print_json(
            {
                "token": {**asdict(tok), "uri": tok.uri},
                "mechanisms": mechanisms,
                "key_types": {"ec": ec_ok, "rsa": rsa_ok},
            }
        )
        return
    console.print(
        f"token:        {tok.label} ({tok.manufacturer} {tok.model}, serial {tok.serial})"
    )
    console.print(f"uri:          {tok.uri}")
    console.print(f"flags:        {', '.join(tok.flags)}")
    console.print("mechanisms:")
    for name, offered in mechanisms.items():
        console.print(f"  {'yes' if offered else 'NO ':<4} {name}")
    console.print(f"EC keys (ec-p256, ec-p384): {'usable' if ec_ok else 'NOT usable'}")
    console.print(f"RSA keys (rsa-2048..4096):  {'usable' if rsa_ok else 'NOT usable'}")


def register(app: typer.Typer) -> None:
    """Add `token` to the application."""
    app.add_typer(token_app, name="token")
