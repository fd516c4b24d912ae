"""Issue 16 items 11, 13: output to a pipe is never cut; `inspect` on a truncated file warns;
`softhsm/init-token` refuses a duplicate label."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hsm_vault.cards import Keyring, create_card
from hsm_vault.token import open_session

HSM_VAULT = str(Path(sys.executable).parent / "hsm-vault")
IDENTITY = "someone-with-a-rather-long-address@departments.example.org"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HSM_VAULT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "80"},
    )


def test_tables_are_not_cut_when_piped(token_keys) -> None:
    with open_session("alice") as ts:
        key = ts.find_key("alice-p256")
        card = create_card(ts, key, IDENTITY)
    Keyring().add(card, origin="own", key_uri=key.uri)
    done = run("card", "list")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if card.id[:8] in line)
    assert IDENTITY in row and "…" not in done.stdout


def test_inspect_warns_about_a_truncated_file(token_keys, tmp_path: Path) -> None:
    with open_session("alice") as ts:
        key = ts.find_key("alice-p256")
        card = create_card(ts, key, "alice")
    Keyring().add(card, origin="own", key_uri=key.uri)
    plain = tmp_path / "f"
    plain.write_bytes(os.urandom(5000))
    assert run("encrypt", "--to", card.id, str(plain)).returncode == 0
    sealed = tmp_path / "f.hsmv"
    whole = run("inspect", str(sealed))
    assert "5000 bytes of plaintext" in whole.stdout and "verified only by decrypt" in whole.stdout
    sealed.write_bytes(sealed.read_bytes()[:-5010])  # 6 bytes of the only chunk are left
    cut = run("inspect", str(sealed))
    assert "truncated or damaged" in cut.stderr
    assert "bytes of plaintext" not in cut.stdout


def test_init_token_refuses_a_second_token_with_the_same_label(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "softhsm" / "init-token"
    env = {**os.environ, "HSM_VAULT_PIN": "1234-5678"}
    first = subprocess.run([str(script), str(tmp_path), "dup"], env=env, capture_output=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(
        [str(script), str(tmp_path), "dup"], env=env, capture_output=True, text=True
    )
    assert again.returncode != 0 and "already has a token labelled 'dup'" in again.stderr
    conf = {**env, "SOFTHSM2_CONF": str(tmp_path / "softhsm2.conf")}
    slots = subprocess.run(
        ["softhsm2-util", "--show-slots"], env=conf, capture_output=True, text=True
    ).stdout
    assert slots.count("dup") == 1
