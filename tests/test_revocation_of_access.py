"""Issue 16 item 1: a stolen laptop's API token can be revoked, and accounts disabled.

`logout --all`, `account revoke-tokens/disable/enable` through the API (officers), the
`server ...` equivalents on the host, and token / enrolment-code state in both listings.
"""

from __future__ import annotations

import json

import pytest
from server_fixture import Account, RunningServer, unique
from typer.testing import CliRunner

from hsm_vault.cli.main import app
from hsm_vault.client import VaultClient
from hsm_vault.errors import AuthenticationFailed, PermissionDenied

runner = CliRunner()


def cli(account: Account | None, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=account.env() if account else None)
    return result.exit_code, result.output


def second_token(server: RunningServer, name: str) -> str:
    """Log `name` in on a second machine: a fresh code from the host, exchanged over HTTP."""
    code = json.loads(host(server, "enrol-code", name, "--json"))["enrolment_code"]
    with VaultClient(server.url) as client:
        return client.enrol(name, code).token


def host(server: RunningServer, *args: str) -> str:
    result = runner.invoke(app, ["server", *args, "--data", str(server.data_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def works(server: RunningServer, token: str) -> bool:
    with VaultClient(server.url, api_token=token) as client:
        try:
            client.whoami()
        except AuthenticationFailed:
            return False
    return True


def test_logout_all_revokes_every_machine(vault_server: RunningServer) -> None:
    laptop = vault_server.enrol(unique("lost"))
    desktop = second_token(vault_server, laptop.name)
    status, out = cli(laptop, "logout", "--all", "--json")
    assert status == 0, out
    assert json.loads(out)["revoked"] == 2
    assert not works(vault_server, laptop.token)
    assert not works(vault_server, desktop)


def test_an_officer_revokes_tokens_and_disables_through_the_api(
    vault_server: RunningServer,
) -> None:
    officer = vault_server.enrol(unique("olga"), role="officer")
    victim = vault_server.enrol(unique("vic"))
    other = second_token(vault_server, victim.name)
    host(vault_server, "enrol-code", victim.name)  # a pending code
    assert works(vault_server, other)  # used once: its last use is recorded

    status, out = cli(officer, "account", "list", "--json")
    assert status == 0, out
    row = next(u for u in json.loads(out)["users"] if u["username"] == victim.name)
    assert [t["state"] for t in row["tokens"]] == ["active", "active"]
    assert [bool(t["last_used_at"]) for t in row["tokens"]] == [True, False]  # newest first
    assert all(t["created_at"] < t["expires_at"] for t in row["tokens"])
    assert sorted(c["state"] for c in row["enrolment_codes"]) == ["pending", "used", "used"]

    status, out = cli(officer, "account", "revoke-tokens", victim.name)
    assert status == 0, out
    assert "revoked 2 API token(s)" in out
    assert not works(vault_server, victim.token) and not works(vault_server, other)
    status, out = cli(officer, "account", "list")
    assert f"{victim.name}  user" in out
    assert out.count("revoked ") >= 2

    fresh = second_token(vault_server, victim.name)
    status, out = cli(officer, "account", "disable", victim.name)
    assert status == 0 and "DISABLED" in out, out
    with (
        VaultClient(vault_server.url, api_token=fresh) as client,
        pytest.raises(AuthenticationFailed, match="disabled"),
    ):
        client.whoami()
    status, out = cli(officer, "account", "enable", victim.name, "--json")
    assert status == 0 and json.loads(out)["disabled"] is False, out
    assert works(vault_server, fresh)

    # A user cannot do any of this, and an officer cannot touch an admin.
    status, out = cli(victim, "account", "list")
    assert status != 0
    admin = vault_server.enrol(unique("root"), role="admin")
    with officer.client() as client, pytest.raises(PermissionDenied, match="admin"):
        client.set_user_disabled(admin.name, True)
    assert works(vault_server, admin.token)


def test_the_host_operator_revokes_and_disables(vault_server: RunningServer) -> None:
    user = vault_server.enrol(unique("host"))
    host(vault_server, "disable-user", user.name)
    assert not works(vault_server, user.token)
    host(vault_server, "enable-user", user.name)
    assert works(vault_server, user.token)
    assert "revoked 1 API token(s)" in host(vault_server, "revoke-tokens", user.name)
    assert not works(vault_server, user.token)
    rows = json.loads(host(vault_server, "users", "--json"))["users"]
    row = next(u for u in rows if u["username"] == user.name)
    assert row["tokens"][0]["state"] == "revoked"
    assert row["enrolment_codes"][0]["state"] == "used"
