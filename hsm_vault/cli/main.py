"""The `hsm-vault` application: joins the command groups and turns errors into exit codes."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from hsm_vault import __version__
from hsm_vault.cli import account, card, crypt, key, server, store, token
from hsm_vault.cli.common import report_error
from hsm_vault.errors import HsmVaultError


class VaultGroup(TyperGroup):
    """The root command group: turns hsm-vault errors into `error:`/`hint:` and an exit code.

    Catching here (not in `run`) means CliRunner tests see exactly what a person sees.
    """

    def invoke(self, ctx: Any) -> Any:  # typer vendors its own click Context
        try:
            return super().invoke(ctx)
        except HsmVaultError as exc:
            raise typer.Exit(report_error(exc)) from None


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
    add_completion=False,
)

for group in (token, key, card, crypt, account, server, store):
    group.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hsm-vault {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """hsm-vault: keys on the token, files encrypted to signed cards."""


def run() -> None:
    """Console-script entry point."""
    app()
