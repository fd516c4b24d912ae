"""Where a PIN comes from: a PIN file, the environment, or a hidden prompt. Never argv.

A `Pin` never shows its value in `repr` or `str`, so it cannot leak through a log line, an
exception message or a traceback's locals.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hsm_vault.errors import PinUnavailable

PIN_ENV = "HSM_VAULT_PIN"


class Pin:
    """A PIN value that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The PIN itself, to hand to the token; do not store or print the result."""
        return self._value

    def __repr__(self) -> str:
        return "Pin(<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("a Pin cannot be pickled")


@dataclass(frozen=True)
class PinSource:
    """How to obtain the user PIN when a login is needed (only then: no prompt otherwise).

    Order: `pin_file` if given, then the environment variable, then a hidden prompt when
    standard input is a terminal.
    """

    pin_file: Path | None = None
    env_var: str = PIN_ENV
    prompt: str = "PIN for token {token}: "
    interactive: bool = True
    what: str = "PIN"
    """What the secret is called in errors ('PIN', 'PIV management key')."""
    hint: str | None = None
    """The hint of `PinUnavailable` when there is none (default: the PIN's)."""

    def get(self, token_label: str) -> Pin:
        if self.pin_file is not None:
            try:
                text = self.pin_file.read_text()
            except OSError as exc:
                raise PinUnavailable(
                    f"cannot read {self.what} file {self.pin_file}: {exc.strerror}",
                    hint=self.hint,
                ) from None
            value = text.splitlines()[0] if text else ""
            if not value:
                raise PinUnavailable(f"{self.what} file {self.pin_file} is empty", hint=self.hint)
            return Pin(value)
        from_env = os.environ.get(self.env_var)
        if from_env:
            return Pin(from_env)
        if self.interactive and sys.stdin.isatty():
            typed = getpass.getpass(self.prompt.format(token=token_label))
            if typed:
                return Pin(typed)
        raise PinUnavailable(f"no {self.what} for token {token_label!r}", hint=self.hint)
