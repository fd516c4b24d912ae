"""What every command group shares: token options, PIN sources, JSON output, error reporting."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from hsm_vault.config import Config
from hsm_vault.errors import HsmVaultError, UsageError

if TYPE_CHECKING:
    from rich.console import Console


@functools.cache
def rich_console(*, stderr: bool) -> Console:
    """The rich Console for stdout or stderr, made on first use.

    Importing rich costs about 25 ms, which `encrypt` and `decrypt` do not spend unless they
    have something to draw. The console writes to whatever sys.stdout/stderr is at the time.
    """
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class _LazyConsole:
    """Stands for `rich_console(...)` in `console.print(...)` calls without importing rich.

    Only attribute access is forwarded: hand `rich_console(...)` itself to rich APIs.
    """

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr

    def __getattr__(self, name: str) -> Any:
        return getattr(rich_console(stderr=self._stderr), name)


console: Console = cast("Console", _LazyConsole(stderr=False))
err_console: Console = cast("Console", _LazyConsole(stderr=True))


def stderr_is_terminal() -> bool:
    """True when stderr is a terminal (progress bars and chatter go there), without rich."""
    return sys.stderr.isatty()


ModuleOpt = Annotated[
    str | None,
    typer.Option(
        "--module",
        help="PKCS#11 module path (default: $HSM_VAULT_PKCS11_MODULE, the config file, p11-kit).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        "-t",
        help="Token label, or a PKCS#11 URI such as 'pkcs11:token=alice'.",
        show_default=False,
    ),
]
PinFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--pin-file",
        help="Read the user PIN from the first line of this file (else $HSM_VAULT_PIN, "
        "else a hidden prompt). PINs are never taken on the command line.",
        show_default=False,
        exists=False,
    ),
]
ManagementKeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--management-key-file",
        help="PIV tokens: read the management key (48 hex digits) from the first line of this "
        "file (else $HSM_VAULT_MANAGEMENT_KEY, else a hidden prompt). Never on the command line.",
        show_default=False,
    ),
]
AllowDefaultManagementKeyOpt = Annotated[
    bool,
    typer.Option(
        "--allow-default-management-key",
        help="PIV tokens: accept the factory default management key (test cards only).",
    ),
]
SlotOpt = Annotated[
    str | None,
    typer.Option(
        "--slot",
        help="PIV tokens: the key in this slot (9a, 9c, 9d, 9e, 82-95), e.g. one made with "
        "yubico-piv-tool or ykman; the same as the key pkcs11:id=%03 for 9d.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def report_error(exc: HsmVaultError) -> int:
    """Print `error:` and `hint:` lines on stderr; return the exit code."""
    err_console.print(f"[bold red]error:[/] {exc.message}", markup=True)
    if exc.hint:
        err_console.print(f"[yellow]hint:[/] {exc.hint}", markup=True)
    return exc.exit_code


def print_json(obj: Any) -> None:
    """JSON on stdout, one document, for scripts (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


PROGRESS_THRESHOLD = 4 << 20


@contextmanager
def progress_bar(
    description: str, total: int | None, *, quiet: bool = False
) -> Iterator[Callable[[int], None] | None]:
    """A callback taking byte counts that draws a progress bar on a terminal (stderr) for
    large or unknown-size work; None (draw nothing) when quiet, small, or not a terminal."""
    if quiet or not stderr_is_terminal() or (total is not None and total < PROGRESS_THRESHOLD):
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=rich_console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def root_option(name: str, value: str | None) -> str | None:
    """`value` if the command's own option was given, else the same option given before the
    subcommand (`hsm-vault --module M token list`)."""
    if value is not None:
        return value
    import click

    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj.get(name) if isinstance(obj, dict) else None


@contextmanager
def token_session(
    module: str | None,
    token: str | None,
    pin_file: Path | None,
    *,
    management_key_file: Path | None = None,
    manage_keys: bool = False,
    allow_default_management_key: bool = False,
) -> Iterator[Any]:
    """Open a logged-in session on the chosen token, with config-file defaults.

    `manage_keys`: the session makes or destroys keys, so a PIV token is logged in with its
    management key (asked for only then); other tokens with the PIN as always.
    """
    from hsm_vault.token import PinSource, open_session  # keeps pkcs11 off paths without a token
    from hsm_vault.token.piv import management_key_source

    config = Config.load()
    with open_session(
        root_option("token", token),
        module=root_option("module", module),
        pin=PinSource(pin_file=pin_file),
        configured_module=config.module,
        configured_token=config.token,
        allow_unreported_local=config.allow_unreported_local,
        management_key=management_key_source(management_key_file) if manage_keys else None,
        allow_default_management_key=allow_default_management_key,
    ) as session:
        if session.default_management_key:
            err_console.print(
                "[yellow]warning:[/] this PIV token still has the factory default management "
                "key: anyone holding it can replace its keys (docs/yubikey.md)",
                markup=True,
            )
        yield session


def key_reference(key: str | None, slot: str | None, *, required: bool = True) -> Any:
    """The key a command names: a label or pkcs11: URI, or a PIV slot (`--slot 9d` is
    `pkcs11:id=%03`); None if neither is given and the key is not `required`."""
    if slot is not None:
        if key is not None:
            raise UsageError("name the key by --key (or KEY) or by --slot, not both")
        from hsm_vault.token.piv import slot_named

        return f"pkcs11:id={slot_named(slot).uri_id}"
    if key is None and required:
        raise UsageError("name a key: its label, a pkcs11: URI, or --slot on a PIV token")
    return key


def split_token_from_key(key: str | None, token: str | None) -> str | None:
    """The token to open for `key`: --token if given, else the token a key URI names
    (pkcs11:token=alice;object=k, or serial=, manufacturer=, model=), else None."""
    if token is None and key is not None and key.lower().startswith("pkcs11:"):
        from hsm_vault.token.uri import parse_uri

        uri = parse_uri(key)
        if uri.token or uri.serial or uri.manufacturer or uri.model:
            return key
    return token
