"""Accounts on a real server: enrolment, login through the CLI, API tokens, roles, limits."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import time

import pytest
import requests
from server_fixture import RunningServer, unique
from typer.testing import CliRunner

from hsm_vault.algorithms import spki_fingerprint
from hsm_vault.cli.main import app
from hsm_vault.client import VaultClient, normalise_server_url
from hsm_vault.config import Config, config_path
from hsm_vault.errors import (
    AuthenticationFailed,
    NotFoundOnServer,
    PermissionDenied,
    RequestRejected,
    ServerUnreachable,
    TooLarge,
    UsageError,
)

runner = CliRunner()
PROBLEM = "application/problem+json"


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_app_key_is_the_key_on_the_server_token(vault_server: RunningServer) -> None:
    from hsm_vault.token import open_session

    body = requests.get(vault_server.url + "/v1/app", timeout=5).json()
    assert body["app_key"]["fingerprint"] == spki_fingerprint(vault_server.app_spki)
    assert body["app_key"]["algorithm"] == "ecdsa-sha256"
    label = vault_server.settings().app_key
    with open_session("server") as ts:
        key = ts.find_key(label)
    assert key.spki_der == vault_server.app_spki
    assert key.never_extractable and key.local


def test_login_whoami_logout_through_the_cli(vault_server: RunningServer) -> None:
    name = unique("alice")
    code = vault_server.add_user(name)
    status, out = cli(
        "login",
        "--server",
        vault_server.url,
        "--user",
        name,
        "--app-fingerprint",
        vault_server.app_fingerprint.upper(),
        env={"HSM_VAULT_ENROLMENT_CODE": code},
    )
    assert status == 0, out
    assert f"logged in to {vault_server.url} as {name}" in out
    path = config_path()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    config = Config.load()
    assert config.api_token and config.api_token.startswith("hsmv_")
    assert config.app_fingerprint == vault_server.app_fingerprint
    assert config.username == name

    status, out = cli("whoami", "--json")
    assert status == 0, out
    me = json.loads(out)
    assert (me["username"], me["role"], me["identity"]) == (name, "user", name)

    status, out = cli("logout")
    assert status == 0, out
    assert Config.load().api_token is None
    # The token is revoked on the server, not only forgotten here.
    with (
        VaultClient(vault_server.url, api_token=config.api_token) as client,
        pytest.raises(AuthenticationFailed, match="revoked"),
    ):
        client.whoami()
    status, out = cli("whoami")
    assert status != 0
    assert "login" in out


def test_login_refuses_a_different_application_key(vault_server: RunningServer) -> None:
    name = unique("mallory")
    code = vault_server.add_user(name)
    status, out = cli(
        "login",
        "--server",
        vault_server.url,
        "--user",
        name,
        "--app-fingerprint",
        "ab" * 32,
        env={"HSM_VAULT_ENROLMENT_CODE": code},
    )
    assert status != 0
    assert "not the one you were given" in out
    assert not config_path().exists()
    # The code was not spent: the check happens before enrolment.
    with VaultClient(vault_server.url) as client:
        assert client.enrol(name, code).username == name


def test_login_reads_the_code_from_a_file(vault_server: RunningServer, tmp_path) -> None:
    name = unique("carol")
    code_file = tmp_path / "code"
    code_file.write_text(vault_server.add_user(name, role="officer").lower() + "\n")
    status, out = cli(
        "login",
        "--server",
        vault_server.url + "/",
        "--user",
        name,
        "--code-file",
        str(code_file),
        "--trust-on-first-use",
    )
    assert status == 0, out
    assert "officer" in out
    assert Config.load().server_url == vault_server.url


def test_login_without_any_code_source_fails_cleanly(vault_server: RunningServer) -> None:
    status, out = cli(
        "login",
        "--server",
        vault_server.url,
        "--user",
        "nobody",
        "--app-fingerprint",
        vault_server.app_fingerprint,
    )
    assert status != 0
    assert "no enrolment code" in out


def test_enrolment_code_works_once(vault_server: RunningServer) -> None:
    name = unique("bob")
    code = vault_server.add_user(name)
    with VaultClient(vault_server.url) as client:
        client.enrol(name, code)
        with pytest.raises(AuthenticationFailed):
            client.enrol(name, code)


def test_enrolment_code_of_another_user_is_refused(vault_server: RunningServer) -> None:
    a, b = unique("a"), unique("b")
    code_a = vault_server.add_user(a)
    vault_server.add_user(b)
    with VaultClient(vault_server.url) as client, pytest.raises(AuthenticationFailed):
        client.enrol(b, code_a)


def _raw(server: RunningServer, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(server.url + path, headers=headers, timeout=5)


def test_no_bad_or_expired_token_is_401(vault_server: RunningServer) -> None:
    from hsm_vault.server.db import ApiToken, make_engine, make_sessionmaker, utcnow

    account = vault_server.enrol(unique("dave"))
    assert _raw(vault_server, "/v1/me", account.token).status_code == 200
    for token in (None, "hsmv_not-a-token", account.token + "x"):
        response = _raw(vault_server, "/v1/me", token)
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["status"] == 401

    engine = make_engine(vault_server.settings().effective_database_url)
    try:
        with make_sessionmaker(engine)() as db:
            for row in db.query(ApiToken).all():
                if row.user_id == _user_id(db, account.name):
                    row.expires_at = utcnow() - dt.timedelta(seconds=1)
            db.commit()
    finally:
        engine.dispose()
    response = _raw(vault_server, "/v1/me", account.token)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]
    with account.client() as client, pytest.raises(AuthenticationFailed, match="expired"):
        client.whoami()


def _user_id(db, name: str) -> int:
    from hsm_vault.server.db import User

    return db.query(User).filter(User.name == name).one().id


def test_api_tokens_and_codes_are_stored_hashed(vault_server: RunningServer) -> None:
    name = unique("erin")
    code = vault_server.add_user(name)
    with VaultClient(vault_server.url) as client:
        token = client.enrol(name, code).token
    raw = b"".join(
        p.read_bytes() for p in vault_server.data_dir.iterdir() if p.name.startswith("hsm-vault.db")
    )
    assert token.encode() not in raw
    assert code.replace("-", "").encode() not in raw
    assert code.encode() not in raw
    db_file = vault_server.data_dir / "hsm-vault.db"
    assert stat.S_IMODE(os.stat(db_file).st_mode) == 0o600


def test_roles_are_enforced(vault_server: RunningServer) -> None:
    user = vault_server.enrol(unique("frank"))
    admin = vault_server.enrol(unique("root"), role="admin")
    with user.client() as client:
        with pytest.raises(PermissionDenied, match="admin"):
            client.create_user(unique("x"))
        with pytest.raises(PermissionDenied, match="officer"):
            client.pending_cards()
    with admin.client() as client:
        name = unique("grace")
        code = client.create_user(name, role="officer")
        client.pending_cards()  # admin includes officer
    with VaultClient(vault_server.url) as client:
        assert client.enrol(name, code).role == "officer"


def test_errors_are_problem_documents(vault_server: RunningServer) -> None:
    account = vault_server.enrol(unique("heidi"))
    headers = {"Authorization": f"Bearer {account.token}"}
    missing = requests.get(vault_server.url + "/v1/nothing-here", timeout=5)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    assert set(missing.json()) >= {"type", "title", "status", "detail"}

    invalid = requests.post(vault_server.url + "/v1/enrol", json={"username": ""}, timeout=5)
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == PROBLEM
    assert invalid.json()["errors"]

    not_json = requests.post(
        vault_server.url + "/v1/cards",
        data=b"{",
        headers={**headers, "Content-Type": "application/json"},
        timeout=5,
    )
    assert not_json.status_code == 422
    assert not_json.headers["content-type"] == PROBLEM

    big = requests.post(
        vault_server.url + "/v1/cards", json={"card": "x" * 70000}, headers=headers, timeout=5
    )
    assert big.status_code == 413
    assert big.headers["content-type"] == PROBLEM

    def chunks():
        for _ in range(80):
            yield b"x" * 1024

    chunked = requests.post(
        vault_server.url + "/v1/cards",
        data=chunks(),
        headers={**headers, "Content-Type": "application/json"},
        timeout=5,
    )
    assert chunked.status_code == 413

    with account.client() as client:
        with pytest.raises(NotFoundOnServer):
            client.get_card("0" * 64)
        with pytest.raises(RequestRejected, match="card"):
            client.request("POST", "/v1/cards", json={"card": "hsmv-card-1:AAAA"})
        with pytest.raises(TooLarge):
            client.request("POST", "/v1/cards", json={"card": "y" * 100_000})


def test_failed_logins_back_off_but_never_lock_out_the_innocent(server_factory) -> None:
    server = server_factory("--auth-failures", "3", "--auth-address-failures", "3")
    bystander = server.enrol(unique("vera"))  # a colleague behind the same address
    name = unique("ivan")
    code = server.add_user(name)
    with VaultClient(server.url) as client:
        for _ in range(4):  # three allowed; the fourth starts the backoff
            with pytest.raises(AuthenticationFailed, match="wrong"):
                client.enrol(name, "WRONG-CODE")
        with pytest.raises(AuthenticationFailed, match="too many") as caught:
            client.enrol(name, code)  # the right code, but this address must wait for ivan
        assert "wait" in caught.value.hint
        other = unique("walt")  # another account from the same address is not held up
        assert client.enrol(other, server.add_user(other)).username == other
    for _ in range(4):
        _raw(server, "/v1/me", "hsmv_guess")
    refused = _raw(server, "/v1/me", "hsmv_guess")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    # Others' failures from the same address never refuse a valid token.
    assert _raw(server, "/v1/me", bystander.token).status_code == 200
    time.sleep(1.2)  # ivan's first backoff step is one second
    with VaultClient(server.url) as client:
        assert client.enrol(name, code).username == name


def test_server_data_survives_init_again_and_restart(server_factory, softhsm) -> None:
    import subprocess

    from server_fixture import HSM_VAULT, start_server

    server = server_factory()
    account = server.enrol(unique("judy"))
    server.stop()
    again = subprocess.run(
        # No options: the settings of the first init are kept (the same key, the same limits).
        [HSM_VAULT, "server", "init", "--data", str(server.data_dir)],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert "found" in again.stdout and server.app_fingerprint in again.stdout
    restarted = start_server(server.data_dir.parent, server.env, app_key=server.settings().app_key)
    try:
        assert restarted.app_fingerprint == server.app_fingerprint
        with VaultClient(restarted.url, api_token=account.token) as client:
            assert client.whoami()["username"] == account.name
    finally:
        restarted.stop()


def test_migrations_match_the_models(tmp_path) -> None:
    import importlib

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import hsm_vault.server.blob_models  # noqa: F401 - their tables are in the migrations
    from hsm_vault.server.db import Base, make_engine, migrate_to_head, schema_revision

    importlib.import_module("hsm_vault.server.approvals")  # the policy tables are migrated too
    importlib.import_module("hsm_vault.server.log")  # and the log tables
    importlib.import_module("hsm_vault.server.recovery")  # and the recovery approvals

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate_to_head(engine)
    migrate_to_head(engine)  # a second upgrade is a no-op
    assert schema_revision(engine) is not None
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_client_errors_for_unreachable_and_plain_http() -> None:
    from server_fixture import free_port

    with (
        VaultClient(f"http://127.0.0.1:{free_port()}", retries=0) as client,
        pytest.raises(ServerUnreachable),
    ):
        client.app_key()
    with pytest.raises(UsageError, match="plain HTTP"):
        normalise_server_url("http://vault.example.org")
    assert normalise_server_url("https://vault.example.org/") == "https://vault.example.org"


def test_server_add_user_cli_prints_a_code(server_factory) -> None:
    import subprocess

    from server_fixture import HSM_VAULT

    server = server_factory()
    name = unique("kim")
    result = subprocess.run(
        [
            HSM_VAULT,
            "server",
            "add-user",
            name,
            "--role",
            "officer",
            "--data",
            str(server.data_dir),
            "--json",
        ],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    code = json.loads(result.stdout)["enrolment_code"]
    with VaultClient(server.url) as client:
        assert client.enrol(name, code).role == "officer"
    clash = subprocess.run(
        [HSM_VAULT, "server", "add-user", name, "--data", str(server.data_dir)],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert clash.returncode != 0
    assert "exists already" in clash.stderr
    assert "Traceback" not in clash.stderr


def test_docs_openapi_json_is_up_to_date() -> None:
    from pathlib import Path

    result = CliRunner().invoke(app, ["server", "openapi"])
    assert result.exit_code == 0, result.output
    written = json.loads((Path(__file__).parent.parent / "docs" / "openapi.json").read_text())

    def without_operation_ids(document: dict) -> dict:
        # FastAPI names a route serving GET and HEAD after whichever method comes first in a
        # set, which varies between runs; everything else must be equal.
        for item in document["paths"].values():
            for operation in item.values():
                operation.pop("operationId", None)
        return document

    assert without_operation_ids(json.loads(result.stdout)) == without_operation_ids(written), (
        "docs/openapi.json is stale: run 'hsm-vault server openapi > docs/openapi.json'"
    )


def test_server_pin_comes_from_a_file_and_missing_pins_fail_cleanly(softhsm, tmp_path) -> None:
    import subprocess

    from server_fixture import HSM_VAULT, free_port

    env = {k: v for k, v in softhsm.env().items() if k != "HSM_VAULT_PIN"}
    data = tmp_path / "data"
    label = unique("app")
    missing = subprocess.run(
        [HSM_VAULT, "server", "init", "--data", str(data), "--app-key", label],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0
    assert "no PIN" in missing.stderr and "--pin-file" in missing.stderr
    assert "Traceback" not in missing.stderr

    pin_file = tmp_path / "server.pin"
    pin_file.write_text(softhsm.pin + "\n")
    pin_file.chmod(0o600)
    ok = subprocess.run(
        [
            HSM_VAULT,
            "server",
            "init",
            "--data",
            str(data),
            "--app-key",
            label,
            "--pin-file",
            str(pin_file),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["app_key_created"] is True
    # `server run` reads the PIN file named in server.json; a wrong PIN is a clean error.
    pin_file.write_text("wrong-pin\n")
    wrong = subprocess.run(
        [HSM_VAULT, "server", "run", "--data", str(data), "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode != 0
    assert "wrong PIN" in wrong.stderr
    assert "Traceback" not in wrong.stderr
