"""Every command pays for what it imports before it reads a byte (docs/performance.md).

The root command group loads a command module only when one of its commands runs, and rich
only when something is drawn; these tests run real commands in a fresh interpreter and look
at what it imported.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from hsm_vault.cards import Keyring, create_card
from hsm_vault.cli.main import COMMAND_MODULES, app
from hsm_vault.token import open_session

# Runs the CLI in-process as the console script does, then lists the modules it imported.
_PROBE = """
import json, sys
from hsm_vault.cli.main import app
try:
    app(args=sys.argv[2:], prog_name="hsm-vault")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""

COMMAND_PACKAGES = {f"hsm_vault.cli.{m}" for m in COMMAND_MODULES.values()}
NEVER_ON_THE_CLIENT = {"fastapi", "sqlalchemy", "uvicorn", "alembic", "boto3"}


def imported_by(tmp_path: Path, *args: str) -> set[str]:
    report = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", _PROBE, str(report), *args],
        check=True,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
    )
    result = json.loads(report.read_text())
    assert result["code"] in (0, None), result["code"]
    return {
        name.split(".")[0] if not name.startswith("hsm_vault") else name
        for name in result["modules"]
    }


def test_version_loads_no_command_module(tmp_path: Path) -> None:
    modules = imported_by(tmp_path, "--version")
    assert not modules & COMMAND_PACKAGES
    assert not modules & {"rich", "cryptography", "asn1crypto", "pkcs11", "requests"}


def test_encrypt_and_decrypt_load_only_what_they_use(token_keys, tmp_path: Path) -> None:
    with open_session("bob") as ts:
        key = ts.find_key("bob-p256")
        card = create_card(ts, key, "bob")
    Keyring().add(card, origin="own", key_uri=key.uri)
    src, dst = tmp_path / "in.txt", tmp_path / "in.txt.hsmv"
    src.write_bytes(b"start-up " * 1000)

    modules = imported_by(tmp_path, "encrypt", "--to", "bob", "-o", str(dst), str(src))

    assert dst.stat().st_size > src.stat().st_size
    assert modules & COMMAND_PACKAGES == {"hsm_vault.cli.crypt"}
    # no token, no network, nothing drawn: no python-pkcs11, requests or rich
    assert not modules & ({"pkcs11", "requests", "rich"} | NEVER_ON_THE_CLIENT)

    back = tmp_path / "back.txt"
    modules = imported_by(tmp_path, "decrypt", "--token", "bob", "-o", str(back), str(dst))

    assert back.read_bytes() == src.read_bytes()
    assert modules & COMMAND_PACKAGES == {"hsm_vault.cli.crypt"}
    assert "pkcs11" in modules and not modules & ({"requests", "rich"} | NEVER_ON_THE_CLIENT)


def test_help_still_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = [line.split()[1] for line in result.output.splitlines() if line.startswith("│ ")]
    assert [name for name in listed if name in COMMAND_MODULES] == list(COMMAND_MODULES)


def test_the_command_table_matches_the_modules() -> None:
    """Every command a module registers is listed under that module, and each one runs."""
    for module_name in set(COMMAND_MODULES.values()):
        holder = typer.Typer()
        importlib.import_module(f"hsm_vault.cli.{module_name}").register(holder)
        registered = set(typer.main.get_group(holder).commands)
        assert registered == {c for c, m in COMMAND_MODULES.items() if m == module_name}
    for name in COMMAND_MODULES:
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage: hsm-vault " + name in " ".join(result.output.split())
