"""The `hsm-vault` application: joins the command groups and turns errors into exit codes.

Each command module is imported only when one of its commands runs (or when the whole list is
shown by `--help`): building every command and importing every module cost about 70 ms, more
than `encrypt` itself spends on a small file.
"""

from __future__ import annotations

import gc
import importlib
from typing import Any

import click
import typer
from typer.core import TyperGroup

from hsm_vault import __version__
from hsm_vault.errors import HsmVaultError

# Top-level command -> the module under hsm_vault.cli whose `register(app)` adds it.
# The order is the order of `hsm-vault --help`.
COMMAND_MODULES = {
    "token": "token",
    "key": "key",
    "card": "card",
    "encrypt": "crypt",
    "decrypt": "crypt",
    "inspect": "crypt",
    "rewrap": "rewrap",
    "recover": "recover",
    "export": "export",
    "login": "account",
    "logout": "account",
    "whoami": "account",
    "account": "account",
    "server": "server",
    "store": "store",
    "config": "config",
    "policy": "policy",
    "log": "log",
}


class VaultGroup(TyperGroup):
    """The root command group.

    It loads command modules on demand, and turns hsm-vault errors into `error:`/`hint:` and an
    exit code. Catching here (not in `run`) means CliRunner tests see exactly what a person sees.
    """

    def list_commands(self, ctx: Any) -> list[str]:
        return [
            *COMMAND_MODULES,
            *(n for n in super().list_commands(ctx) if n not in COMMAND_MODULES),
        ]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in COMMAND_MODULES:
            module = importlib.import_module(f"hsm_vault.cli.{COMMAND_MODULES[cmd_name]}")
            holder = typer.Typer()
            module.register(holder)
            for name, loaded in typer.main.get_group(holder).commands.items():
                _suggest_once(loaded)
                self.add_command(loaded, name)
            command = super().get_command(ctx, cmd_name)
        return command

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        # Commands load on demand, so the suggestion must come from the whole list.
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:
            raise click.exceptions.NoSuchCommand(
                args[0], possibilities=self.list_commands(ctx), ctx=ctx
            ) from exc

    def invoke(self, ctx: Any) -> Any:  # typer vendors its own click Context
        try:
            return super().invoke(ctx)
        except HsmVaultError as exc:
            from hsm_vault.cli.common import report_error

            raise typer.Exit(report_error(exc)) from None


def _suggest_once(command: Any) -> None:
    """click already says "Did you mean ...?" for a mistyped subcommand; typer would say it
    a second time."""
    if isinstance(command, TyperGroup):
        command.suggest_commands = False
        for sub in command.commands.values():
            _suggest_once(sub)


app = typer.Typer(
    name="hsm-vault",
    cls=VaultGroup,
    help=(
        "End-to-end encrypted storage whose private keys never leave a PKCS#11 token.\n\n"
        "Keys are generated on the token and never leave it; cards (identity + public key) "
        "are signed through the token; files are encrypted to cards and decrypted on the token."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    suggest_commands=False,
    # --install-completion / --show-completion; values complete from hsm_vault.cli.complete.
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hsm-vault {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    module: str | None = typer.Option(
        None,
        "--module",
        help="PKCS#11 module for every token command (the same as each command's --module).",
        show_default=False,
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        "-t",
        help="Token for every token command (the same as each command's --token).",
        show_default=False,
    ),
) -> None:
    """hsm-vault: keys on the token, files encrypted to signed cards."""
    ctx.obj = {"module": module, "token": token}


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    finally:
        # On the way out the interpreter's last garbage collection walks every object the
        # imports made, about 18 ms of a 0.1 s command; freezing them skips that walk. What
        # needs closing (token sessions, files) is closed by its `with` block before this.
        gc.freeze()
