"""The server on PostgreSQL (`--database-url`), driven end to end through the real CLI.

`server init` / `add-user` / `run` against a private PostgreSQL cluster, then as users would:
login with a pinned fingerprint, publish and approve a card, find it as someone else, a blob
round trip; and a second `server init` on the same database keeps the accounts.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres_fixture import PostgresCluster, postgres  # noqa: F401 - fixture
from server_fixture import HSM_VAULT, free_port, unique, wait_for_http

from hsm_vault.envelope.format import MAGIC


def head_revision() -> str:
    """The newest migration, as `server init` should report it."""
    from alembic.script import ScriptDirectory

    from hsm_vault.server.db import MIGRATIONS_DIR

    return str(ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head())


def hsm(env: dict[str, str], *args: str, home: Path | None = None, **extra: str) -> str:
    """Run `hsm-vault ARGS` (as the person whose HSM_VAULT_HOME is `home`); returns stdout."""
    run_env = {**env, **extra}
    if home is not None:
        run_env["HSM_VAULT_HOME"] = str(home)
    done = subprocess.run(
        [HSM_VAULT, *args], env=run_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"hsm-vault {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture
def env(softhsm: Any) -> dict[str, str]:
    environment = dict(softhsm.env())
    environment.pop("HSM_VAULT_CONFIG", None)
    return environment


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Server processes started by the test, terminated at its end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_server_on_postgresql_end_to_end(
    postgres: PostgresCluster,  # noqa: F811 - fixture
    env: dict[str, str],
    running: list[subprocess.Popen[bytes]],
    token_keys: dict,
    tmp_path: Path,
) -> None:
    database = f"hsmvault_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(database)
    data = tmp_path / "server-data"
    app_key = unique("app-pg")
    db = ("--data", str(data), "--database-url", url)

    init = json.loads(
        hsm(
            env,
            "server",
            "init",
            *db,
            "--token",
            "server",
            "--app-key",
            app_key,
            "--approvals",
            "0",
            "--json",
        )
    )
    assert init["app_key_created"] is True
    assert init["schema_revision"] == head_revision()
    # The schema is in PostgreSQL, and nothing fell back to SQLite in the data folder.
    tables = postgres.psql(database, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
    assert {"users", "cards", "blobs", "alembic_version"} <= set(tables.split())
    assert not (data / "hsm-vault.db").exists()

    people = {"olga": "officer", "alice": "user", "bob": "user"}
    codes = {
        name: json.loads(hsm(env, "server", "add-user", name, "--role", role, *db, "--json"))[
            "enrolment_code"
        ]
        for name, role in people.items()
    }

    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [HSM_VAULT, "server", "run", *db, "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running.append(process)
    server = f"http://127.0.0.1:{port}"
    wait_for_http(server + "/v1/app", process, log)

    homes = {name: tmp_path / "home" / name for name in people}
    for name, home in homes.items():
        home.mkdir(parents=True)
        login = ["login", "--server", server, "--user", name]
        pinned = ["--app-fingerprint", init["fingerprint"], "--json"]
        hsm(env, *login, *pinned, home=home, HSM_VAULT_ENROLMENT_CODE=codes[name])
        config = json.loads((home / "config" / "config.json").read_text())
        assert config["username"] == name and config["app_fingerprint"] == init["fingerprint"]

    # A card: alice publishes, the officer approves, bob finds it verified by the app key.
    made = hsm(
        env,
        "card",
        "create",
        "alice",
        "--key",
        "alice-p256",
        "--token",
        "alice",
        "--json",
        home=homes["alice"],
    )
    card_id = json.loads(made)["id"]
    assert "pending" in hsm(env, "card", "publish", card_id, home=homes["alice"])
    pending = json.loads(hsm(env, "card", "pending", "--json", home=homes["olga"]))["cards"]
    assert [row["id"] for row in pending] == [card_id]
    assert "approved" in hsm(env, "card", "approve", card_id, home=homes["olga"])
    found = json.loads(hsm(env, "card", "find", "alice", "--json", home=homes["bob"]))["cards"]
    assert [row["id"] for row in found] == [card_id]
    assert found[0]["signers"] == ["app", "self"]

    # A blob round trip through the store (its records live in PostgreSQL too).
    source = tmp_path / "notes.hsmv"
    source.write_bytes(MAGIC + os.urandom(300_000))
    stored = json.loads(hsm(env, "store", "put", str(source), "--json", home=homes["alice"]))
    assert stored["size"] == source.stat().st_size and stored["owner"] == "alice"
    back = tmp_path / "back.hsmv"
    hsm(env, "store", "get", "notes.hsmv", "-o", str(back), home=homes["alice"])
    assert back.read_bytes() == source.read_bytes()
    count = postgres.psql(database, "SELECT count(*) FROM blobs")
    assert count.strip() == "1"

    process.terminate()
    process.wait(timeout=10)

    # `server init` again on the same database: the key is found, the accounts are kept.
    again = json.loads(hsm(env, "server", "init", *db, "--json"))
    assert again["app_key_created"] is False
    assert again["fingerprint"] == init["fingerprint"]
    assert again["schema_revision"] == head_revision()
    users = json.loads(
        hsm(env, "server", "users", "--database-url", url, "--data", str(data), "--json")
    )
    assert {(u["username"], u["role"]) for u in users["users"]} == set(people.items())


def test_migrations_match_the_models_on_postgresql(
    postgres: PostgresCluster,  # noqa: F811 - fixture
) -> None:
    import importlib

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import hsm_vault.server.blob_models  # noqa: F401 - their tables are in the migrations
    from hsm_vault.server.db import Base, make_engine, migrate_to_head, schema_revision

    importlib.import_module("hsm_vault.server.approvals")  # the policy tables are migrated too
    importlib.import_module("hsm_vault.server.log")  # and the log tables
    importlib.import_module("hsm_vault.server.recovery")  # and the recovery approvals

    engine = make_engine(postgres.create_database())
    try:
        migrate_to_head(engine)
        migrate_to_head(engine)  # a second upgrade is a no-op
        assert schema_revision(engine) == head_revision()
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
