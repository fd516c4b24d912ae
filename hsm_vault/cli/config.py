"""`hsm-vault config ...`: the defaults kept in the config file (module, token, ...)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from hsm_vault.cli.common import JsonOpt, console, print_json
from hsm_vault.config import Config, config_path
from hsm_vault.errors import UsageError

config_app = typer.Typer(
    help="Show and set defaults in the config file: the PKCS#11 module, the token, ...",
    no_args_is_help=True,
)

# Settings a person may set here, with what they mean. Login state is set by `login`.
SETTINGS = {
    "module": "PKCS#11 module path used when --module and HSM_VAULT_PKCS11_MODULE are not set",
    "token": "token label or pkcs11: URI used when --token is not given",
    "allow-unreported-local": "token model whose keys count as made on the token although it "
    "reports CKA_LOCAL false (NSS softokn); an officer's decision, one model per entry",
}

NameArg = Annotated[str, typer.Argument(help=f"One of: {', '.join(SETTINGS)}.")]


def _attribute(name: str) -> str:
    if name not in SETTINGS:
        raise UsageError(f"unknown setting {name!r}; settings are: {', '.join(SETTINGS)}")
    return name.replace("-", "_")


@config_app.command("set")
def set_value(name: NameArg, value: Annotated[str, typer.Argument(help="The new value.")]) -> None:
    """Set a default (allow-unreported-local adds one model to the list)."""
    attribute = _attribute(name)
    config = Config.load()
    if attribute == "module":
        if not os.path.isfile(value):
            raise UsageError(f"PKCS#11 module {value} does not exist")
        value = os.path.abspath(value)
    if attribute == "allow_unreported_local":
        if value not in config.allow_unreported_local:
            config.allow_unreported_local = (*config.allow_unreported_local, value)
    else:
        setattr(config, attribute, value)
    config.save()
    console.print(f"{name} = {value}  (in {config_path()})")


@config_app.command("unset")
def unset_value(name: NameArg) -> None:
    """Remove a default."""
    attribute = _attribute(name)
    config = Config.load()
    setattr(config, attribute, () if attribute == "allow_unreported_local" else None)
    config.save()
    console.print(f"{name} unset  (in {config_path()})")


@config_app.command("show")
def show(json_out: JsonOpt = False) -> None:
    """Show the defaults and where the config file is (the API token is never shown)."""
    config = Config.load()
    values = {name: getattr(config, name.replace("-", "_")) or None for name in SETTINGS}
    values["allow-unreported-local"] = list(config.allow_unreported_local)
    if json_out:
        print_json({"path": str(config_path()), "settings": values})
        return
    console.print(f"config file: {config_path()}")
    for name, value in values.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        console.print(f"  {name + ':':<24}{shown or '-'}")


@config_app.command("path")
def path() -> None:
    """Print the config file's path."""
    typer.echo(str(config_path()))


def register(app: typer.Typer) -> None:
    """Add `config` to the application."""
    app.add_typer(config_app, name="config")
