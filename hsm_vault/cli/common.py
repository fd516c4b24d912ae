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
from hsm_vault.errors import HsmVaultError

if TYPE_CHECKING:
    from rich.console import Console


@functools.cache
def rich_console(*, stderr: bool) -> Console:
    """The rich Console for stdout or stderr, made on first use.

    Importing rich costs about 25 ms, which `encrypt` and `decrypt` do not spend unless they
    have something to draw. The console writes to whatever sys.stdout/stderr is at the time.
    """
    from rich.console import Console

    # Not a terminal (a file, a pipe, a pager): never cut or wrap data to 80 columns.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else NOT_A_TERMINAL_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


#: The width tables get when output is not a terminal: wide enough for any row.
NOT_A_TERMINAL_WIDTH = 1 << 16


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


def _complete_token(incomplete: str) -> list[str]:
    from hsm_vault.cli.complete import token_labels

    return token_labels(incomplete)


TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        "-t",
        help="Token label, or a PKCS#11 URI such as 'pkcs11:token=alice'.",
        show_default=False,
        autocompletion=_complete_token,
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


@contextmanager
def token_session(module: str | None, token: str | None, pin_file: Path | None) -> Iterator[Any]:
    """Open a logged-in session on the chosen token, with config-file defaults."""
    from hsm_vault.token import PinSource, open_session  # keeps pkcs11 off paths without a token

    config = Config.load()
    with open_session(
        token,
        module=module,
        pin=PinSource(pin_file=pin_file),
        configured_module=config.module,
        configured_token=config.token,
    ) as session:
        yield session


def split_token_from_key(key: str, token: str | None) -> str | None:
    """A key URI may name its token (pkcs11:token=alice;object=k); use it if --token is not set."""
    if token is None and key.lower().startswith("pkcs11:"):
        from hsm_vault.token.uri import parse_uri

        uri = parse_uri(key)
        if uri.token or uri.serial:
            return key
    return token
