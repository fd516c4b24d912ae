"""Issue 16 item 10: shell completion (commands and values) and "Did you mean" for typos."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hsm_vault.cards import Keyring, create_card
from hsm_vault.token import open_session

HSM_VAULT = str(Path(sys.executable).parent / "hsm-vault")


def complete(line: str) -> list[str]:
    """What bash completion offers for the last word of `line`."""
    words = line.split(" ")
    done = subprocess.run(
        [HSM_VAULT],
        env={
            **os.environ,
            "_HSM_VAULT_COMPLETE": "complete_bash",
            "COMP_WORDS": line,
            "COMP_CWORD": str(len(words) - 1),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_commands_identities_and_token_labels_complete(token_keys) -> None:
    assert complete("hsm-vault enc") == ["encrypt"]
    assert "revoke-tokens" in complete("hsm-vault account re")
    with open_session("alice") as ts:
        key = ts.find_key("alice-p256")
        card = create_card(ts, key, "alice@example.org")
    Keyring().add(card, origin="own", key_uri=key.uri)
    assert complete("hsm-vault encrypt --to ali") == ["alice@example.org"]
    assert complete(f"hsm-vault encrypt --to {card.id[:6]}") == [card.id[:16]]
    assert complete("hsm-vault key list --token b") == ["bob"]


def test_the_install_option_is_offered_and_typos_get_one_suggestion() -> None:
    shown = subprocess.run([HSM_VAULT, "--help"], capture_output=True, text=True).stdout
    assert "--install-completion" in shown
    top = subprocess.run([HSM_VAULT, "encrpyt"], capture_output=True, text=True)
    assert top.returncode != 0 and "Did you mean" in top.stderr and "'encrypt'" in top.stderr
    sub = subprocess.run([HSM_VAULT, "card", "imprt"], capture_output=True, text=True)
    assert sub.stderr.count("Did you mean") == 1 and "'import'" in sub.stderr
