"""Issue 16: login's trust-on-first-use rules, blob names, user enumeration (real server)."""

from __future__ import annotations

import pytest
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


def test_blob_names_are_matched_in_full_on_both_sides(vault_server: RunningServer) -> None:
    from hsm_vault.client.blobs import split_blob_name
    from hsm_vault.errors import UsageError

    account = vault_server.enrol(unique("names"))
    headers = {"Authorization": f"Bearer {account.token}"}
    answer = requests.put(
        vault_server.url + "/v1/blobs/report%0A", data=b"abc", headers=headers, timeout=10
    )
    assert answer.status_code == 422
    assert "invalid blob name" in answer.json()["detail"]
    listed = requests.get(vault_server.url + "/v1/blobs", headers=headers, timeout=10).json()
    assert listed["blobs"] == []
    with pytest.raises(UsageError, match="invalid blob name"):
        split_blob_name("report\n")


def test_blob_routes_do_not_tell_which_users_exist(vault_server: RunningServer) -> None:
    asker = vault_server.enrol(unique("asker"))
    real = vault_server.enrol(unique("real")).name
    ghost = unique("ghost")
    headers = {"Authorization": f"Bearer {asker.token}"}
    answers = {}
    for owner in (real, ghost):
        for method, path in (("GET", "/meta"), ("GET", ""), ("DELETE", "")):
            answer = requests.request(
                method,
                f"{vault_server.url}/v1/blobs/x{path}",
                params={"owner": owner},
                headers=headers,
                timeout=10,
            )
            answers[owner, method, path] = (
                answer.status_code,
                answer.text.replace(owner, "OWNER"),
            )
    for method, path in (("GET", "/meta"), ("GET", ""), ("DELETE", "")):
        assert answers[real, method, path] == answers[ghost, method, path]
        assert answers[real, method, path][0] == 404


def test_a_reused_enrolment_code_says_to_ask_for_a_new_one(vault_server: RunningServer) -> None:
    name = unique("reuse")
    code = vault_server.add_user(name)
    with VaultClient(vault_server.url) as client:
        client.enrol(name, code)
    status, out = login(vault_server, name, code, "--app-fingerprint", vault_server.app_fingerprint)
    assert status != 0
    assert "works once" in out and "enrol-code" in out
    assert "Log in again" not in out


def test_encrypt_to_an_identity_the_server_lacks_says_so(
    vault_server: RunningServer, tmp_path
) -> None:
    account = vault_server.enrol(unique("sender"))
    source = tmp_path / "report.txt"
    source.write_text("hello\n")
    nobody = unique("carol")
    result = runner.invoke(app, ["encrypt", "--to", nobody, str(source)], env=account.env())
    assert result.exit_code != 0
    assert f"no approved card for {nobody!r} on {vault_server.url}" in result.output
    assert "card pending" in result.output
    assert not (tmp_path / "report.txt.hsmv").exists()


def test_publishing_a_card_for_another_identity_says_make_one_for_yours(
    vault_server: RunningServer, token_keys
) -> None:
    from hsm_vault.cards import create_card
    from hsm_vault.token import open_session

    account = vault_server.enrol(unique("bob"))
    with open_session("bob") as ts:
        key = ts.find_key("bob-p256")
        card = create_card(ts, key, account.name + "@example.org")
    account.keyring().add(card, origin="own", key_uri=key.uri)
    result = runner.invoke(app, ["card", "publish", card.id], env=account.env())
    assert result.exit_code != 0
    assert "own identity" in result.output
    assert "card create IDENTITY" in result.output and "role" not in result.output
