"""How each kind of object looks in `--json` output and in text, in one place.

Every command that prints an account (or a list of them) goes through here, whether the data
came from the API (`account list`) or straight from the database (`server users`), so both
print the same JSON shape: the API's `UserOut` (docs/openapi.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hsm_vault.cli.common import console, print_json


def _when(value: Any) -> str:
    """An ISO timestamp cut to the minute, or '-'."""
    return str(value)[:16].replace("T", " ") if value else "-"


def print_accounts(users: Sequence[dict[str, Any]], *, json_out: bool) -> None:
    """Accounts with their API tokens and enrolment codes (JSON: a list of `UserOut`)."""
    if json_out:
        print_json(list(users))
        return
    if not users:
        console.print("no accounts")
        return
    for user in users:
        state = "DISABLED" if user.get("disabled") else "enabled"
        console.print(
            f"{user['username']}  {user['role']}  identity {user['identity']}  {state}",
            markup=False,
        )
        for token in user.get("tokens", []):
            console.print(
                f"  token {token['id']:<5} {token['state']:<8} created {_when(token['created_at'])}"
                f"  last used {_when(token['last_used_at'])}"
                f"  expires {_when(token['expires_at'])}",
                markup=False,
            )
        for code in user.get("enrolment_codes", []):
            console.print(
                f"  enrolment code {code['state']:<8} created {_when(code['created_at'])}"
                f"  expires {_when(code['expires_at'])}  used {_when(code['used_at'])}",
                markup=False,
            )
