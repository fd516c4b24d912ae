"""Issue 16: login's trust-on-first-use rules, blob names, user enumeration (real server)."""

from __future__ import annotations

import requests
from server_fixture import RunningServer, unique
from typer.testing import CliRunner

from hsm_vault.cli.main import app
from hsm_vault.client import VaultClient
from hsm_vault.config import config_path

runner = CliRunner()


def login(server: RunningServer, name: str, code: str, *extra: str) -> tuple[int, str]:
    result = runner.invoke(
        app,
        ["login", "--server", server.url, "--user", name, *extra],
        env={"HSM_VAULT_ENROLMENT_CODE": code},
    )
    return result.exit_code, result.output


def test_login_without_a_fingerprint_needs_trust_on_first_use(
    vault_server: RunningServer,
) -> None:
    name = unique("tofu")
    code = vault_server.add_user(name)
    status, out = login(vault_server, name, code, "--yes")
    assert status != 0
    assert vault_server.app_fingerprint in out and "out of band" in out
    assert "--trust-on-first-use" in out
    assert not config_path().exists()
    status, out = login(vault_server, name, code, "--trust-on-first-use")
    assert status == 0, out  # the code was not spent by the refusal
    assert vault_server.app_fingerprint in out


def test_a_short_fingerprint_asks_for_the_full_one(vault_server: RunningServer) -> None:
    name = unique("short")
    code = vault_server.add_user(name)
    status, out = login(
        vault_server, name, code, "--app-fingerprint", vault_server.app_fingerprint[:16]
    )
    assert status != 0
    assert "full 64-hex fingerprint" in out
    assert "not the one you were given" not in out and "security officer" not in out
