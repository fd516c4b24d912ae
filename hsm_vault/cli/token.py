"""`hsm-vault token ...`: the tokens PKCS#11 modules offer, and what each can do."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import typer
from rich.table import Table

from hsm_vault.cli.common import (
    JsonOpt,
    ModuleOpt,
    PinFileOpt,
    TokenOpt,
    console,
    print_json,
    root_option,
    token_session,
)
from hsm_vault.cli.shapes import print_list
from hsm_vault.config import Config

token_app = typer.Typer(
    help="Inspect tokens: slots, labels, serials, and what each token can do.",
    no_args_is_help=True,
)


def token_summary(t: Any) -> dict[str, Any]:
    """A token as plain data, for --json."""
    return {**asdict(t), "uri": t.uri, "model_name": t.model_name}


@token_app.command("list")
def list_tokens(module: ModuleOpt = None, json_out: JsonOpt = False) -> None:
    """List the tokens of the PKCS#11 module (without a module named: of every module in
    p11-kit's registry). Needs no PIN."""
    from hsm_vault.token import list_tokens as tokens_of

    tokens, search = tokens_of(root_option("module", module), Config.load().module)
    if json_out:
        print_list(
            "tokens",
            [token_summary(t) for t in tokens],
            modules=[{"path": c.path, "source": c.source} for c in search.choices],
            skipped=list(search.skipped),
        )
        return
    if not tokens:
        console.print(f"no tokens in {search.describe()}")
        console.print(
            "hint: choose the module of your token with --module PATH, "
            "HSM_VAULT_PKCS11_MODULE, or 'hsm-vault config set module PATH'"
        )
        raise typer.Exit(1)
    table = Table(title=f"tokens in {search.describe()}", title_justify="left")
    for column in ("module", "slot", "label", "serial", "manufacturer", "model", "state"):
        table.add_column(column)
    for t in tokens:
        state = "initialised" if "TOKEN_INITIALIZED" in t.flags else "not initialised"
        if "USER_PIN_LOCKED" in t.flags:
            state += ", PIN LOCKED"
        elif "USER_PIN_COUNT_LOW" in t.flags:
            state += ", PIN tries low"
        table.add_row(
            t.module.rsplit("/", 1)[-1],
            str(t.slot_id),
            t.label or "-",
            t.serial or "-",
            t.manufacturer,
            t.model,
            state,
        )
    console.print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@token_app.command("info")
def info(
    token: TokenOpt = None,
    module: ModuleOpt = None,
    pin_file: PinFileOpt = None,
    probe: bool = typer.Option(
        False, "--probe", help="Measure again, even if this token model was probed before."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Show a token and what it can do for hsm-vault: key types it generates, whether it can
    decrypt with each, how it signs. Logs in once to measure this with throw-away session
    keys; the result is kept per token model, so later runs are instant."""
    with token_session(module, token, pin_file) as ts:
        tok = ts.info
        caps = ts.capabilities(fresh=probe)
        mechanisms = ts.mechanisms()
    from hsm_vault.algorithms import KeyType

    key_types = {
        str(t): {
            "generate": caps.can_generate(t),
            "decrypt": caps.can_decrypt(t),
            "sign": caps.can_sign(t),
            "why_not": caps.why_unusable(t),
        }
        for t in KeyType
    }
    best = caps.best_key_type()
    if json_out:
        print_json(
            {
                "token": token_summary(tok),
                "capabilities": caps.as_json(),
                "key_types": key_types,
                "default_key_type": str(best) if best else None,
                "mechanisms_listed": mechanisms,
            }
        )
        return
    console.print(
        f"token:        {tok.label} ({tok.manufacturer} {tok.model}, serial {tok.serial})"
    )
    console.print(f"uri:          {tok.uri}")
    console.print(f"module:       {tok.module} ({tok.model_name}, firmware {tok.firmware})")
    console.print(f"flags:        {', '.join(tok.flags)}")
    console.print("key types (generate / decrypt / sign):")
    for name, row in key_types.items():
        line = f"  {name:<9} {_yes(row['generate']):<4} {_yes(row['decrypt']):<4} "
        line += _yes(row["sign"])
        if row["why_not"]:
            line += f"   ({row['why_not']})"
        console.print(line)
    console.print(f"default for 'key generate': {best or 'none (this token cannot decrypt)'}")
    console.print(
        f"ECDH point: {caps.ecdh or 'no ECDH'}; RSA-OAEP hashes: "
        f"{', '.join(caps.oaep_hashes) or 'none'}; RSA-PSS: {caps.pss or 'no'}; "
        f"reports CKA_LOCAL: {_yes(caps.reports_local)}"
    )
    unlisted = [name for name, offered in mechanisms.items() if not offered]
    if unlisted:
        console.print("not in the slot's mechanism list (the probe above says what works):")
        for name in unlisted:
            console.print(f"  {name}")


def register(app: typer.Typer) -> None:
    """Add `token` to the application."""
    app.add_typer(token_app, name="token")
