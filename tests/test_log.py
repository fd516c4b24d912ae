"""The transparency log (issue 14), end to end: a real server on 127.0.0.1, SoftHSM tokens,
and the server's database edited from outside as a compromised server would.

One server for the module; the tests run in order, and the one that rewrites an entry of
the server's log stays last. The restored-backup test runs a second server process on an
older copy of the data folder (same token, same application key).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from server_fixture import (
    HSM_VAULT,
    Account,
    RunningServer,
    free_port,
    start_server,
    unique,
    wait_for_http,
)
from typer.testing import CliRunner

from hsm_vault.algorithms import KeyType
from hsm_vault.cards import Card, CardSignature, create_card, key_id_of
from hsm_vault.config import Config
from hsm_vault.token import open_session

runner = CliRunner()


def cli(account: Account, *args: str) -> tuple[int, str]:
    return account.cli(*args)


def new_card(account: Account, token: str) -> str:
    """`card create` on a new key of `token`, then `card publish`; returns the card id."""
    return account.publish_new_card(token)[0]


@dataclass
class Directory:
    server: RunningServer
    alice: Account
    bob: Account
    olga: Account
    alice_card: str

    def db(self) -> tuple[Any, Any]:
        from hsm_vault.server.db import make_engine, make_sessionmaker

        engine = make_engine(self.server.settings().effective_database_url)
        return engine, make_sessionmaker(engine)


@pytest.fixture(scope="module")
def directory(softhsm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directory]:
    folder = tmp_path_factory.mktemp("log")
    env = {k: v for k, v in softhsm.env().items() if k != "HSM_VAULT_CONFIG"}
    server = start_server(folder, env)
    try:
        alice = server.enrol(unique("alice"))
        bob = server.enrol(unique("bob"))
        olga = server.enrol(unique("olga"), role="officer")
        card_id = new_card(alice, "alice")
        status, out = cli(olga, "card", "approve", card_id, "--yes")
        assert status == 0, out
        yield Directory(server, alice, bob, olga, card_id)
    finally:
        server.stop()


def test_verify_passes_on_an_honest_server_and_heads_compare(directory: Directory) -> None:
    bob = directory.bob
    status, out = cli(bob, "card", "find", directory.alice.name)
    assert status == 0, out
    status, out = cli(bob, "log", "verify", "--json")
    assert status == 0, out
    report = json.loads(out)
    assert report["verified"] is True
    assert report["events"]["card-approved"] == 1 and report["events"]["user-added"] == 3
    assert report["events"]["policy-adopted"] == 1
    status, out = cli(bob, "log", "head", "--json")
    head = json.loads(out)
    assert status == 0 and head["size"] == report["size"]
    # A colleague compares: the same root passes, another one is refused.
    status, out = cli(directory.alice, "log", "head", "--expect-head", head["root"])
    assert status == 0, out
    status, out = cli(directory.alice, "log", "head", "--expect-head", "ab" * 32)
    assert status != 0 and "security officer" in out
    # An older head line (bob's) is extended by the current one after more events.
    directory.server.add_user(unique("carol"))
    status, out = cli(directory.alice, "log", "head", "--expect-head", head["head"])
    assert status == 0, out
    status, out = cli(directory.olga, "log", "show", "--since", "0", "--json")
    assert status == 0, out
    kinds = [e["kind"] for e in json.loads(out)["entries"]]
    assert kinds[0] == "policy-adopted" and "card-approved" in kinds and kinds[-1] == "user-added"


def _app_signed(directory: Directory, card: Card) -> Card:
    settings = directory.server.settings()
    with open_session(settings.token) as ts:
        key = ts.find_key(settings.app_key)
        signature = ts.sign(key, card.signing_message("app"))
    return card.with_signature(
        CardSignature("app", key_id_of(key.spki_der), key.key_type.signature_algorithm, signature)
    )


def test_a_card_the_server_inserts_is_refused_unless_logged_and_then_monitored(
    directory: Directory,
) -> None:
    """The server binds a key of its own to alice: without a log entry clients refuse it;
    with one, `log monitor alice` shows it to alice."""
    from hsm_vault.server import log
    from hsm_vault.server.db import CardRecord, CardStatus, User, utcnow

    alice, bob = directory.alice, directory.bob
    with open_session("carol") as ts:
        key = ts.generate_key(f"m-{uuid.uuid4().hex[:8]}", KeyType.EC_P256)
        card = _app_signed(directory, create_card(ts, key, alice.name))
    engine, sessions = directory.db()
    try:
        with sessions() as db:
            owner = db.query(User).filter_by(name=alice.name).one()
            db.add(
                CardRecord(
                    id=card.id,
                    owner_id=owner.id,
                    identity=alice.name,
                    text=card.to_text(),
                    status=CardStatus.APPROVED.value,
                    published_at=utcnow(),
                    decided_at=utcnow(),
                    decided_by="server",
                )
            )
            db.commit()
        status, out = cli(bob, "card", "find", alice.name)
        assert status != 0 and "without its log proofs" in out
        assert "security officer" in out
        with sessions() as db:
            log.card_approved(db, db.get(CardRecord, card.id), "server")
            db.commit()
    finally:
        engine.dispose()
    status, out = cli(alice, "log", "monitor", alice.name, "--json")
    assert status == 0, out
    rows = {row["id"]: row for row in json.loads(out)["cards"]}
    assert set(rows) == {directory.alice_card, card.id}
    assert rows[card.id]["status"] == "approved"
    status, out = cli(alice, "log", "monitor", alice.name)
    assert card.id[:16] in out and "alert your officer" in out


def test_a_withheld_revocation_is_refused_by_a_client_that_saw_it(directory: Directory) -> None:
    olga, bob = directory.olga, directory.bob
    carl = directory.server.enrol(unique("carl"))
    card_id = new_card(carl, "bob")
    status, out = cli(olga, "card", "approve", card_id, "--yes")
    assert status == 0, out
    status, out = cli(olga, "card", "revoke", card_id, "--server-signs")
    assert status == 0, out
    status, out = cli(bob, "log", "head")  # bob sees a head holding the revocation
    assert status == 0, out
    # The server withholds it: the card is served as approved, its revocation dropped.
    from hsm_vault.server.db import CardRecord, CardStatus

    engine, sessions = directory.db()
    try:
        with sessions() as db:
            record = db.get(CardRecord, card_id)
            record.status = CardStatus.APPROVED.value
            record.revocation = None
            record.revoked_at = None
            record.status_index = None
            db.commit()
    finally:
        engine.dispose()
    status, out = cli(bob, "card", "find", carl.name)
    assert status != 0, out
    assert "withholds its revocation or rotation" in out and "security officer" in out
    assert bob.keyring().find(carl.name) == []


def _sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (the backup API)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def test_a_server_restored_from_an_older_backup_is_refused(
    directory: Directory, tmp_path: Path
) -> None:
    server, bob = directory.server, directory.bob
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy(server.data_dir / "server.json", backup / "server.json")
    _sqlite_copy(server.data_dir / "hsm-vault.db", backup / "hsm-vault.db")
    server.add_user(unique("dora"))  # the log grows after the backup...
    status, out = cli(bob, "log", "head")  # ...and bob sees the newer head
    assert status == 0, out
    port = free_port()
    log_file = tmp_path / "restored.log"
    with log_file.open("wb") as sink:
        restored = subprocess.Popen(
            [HSM_VAULT, "server", "run", "--data", str(backup), "--port", str(port)],
            env=server.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/v1/app", restored, log_file)
        config = Config.load(bob.config_path)
        config.server_url = url
        config.save(bob.config_path)
        status, out = cli(bob, "card", "find", directory.alice.name)
        assert status != 0
        assert "a rollback" in out and "security officer" in out
        # Once the officers confirm the restore, the user drops the kept head.
        status, out = cli(bob, "log", "forget", "--yes")
        assert status == 0, out
        status, out = cli(bob, "card", "find", directory.alice.name)
        assert status == 0, out
    finally:
        restored.terminate()
        restored.wait(timeout=10)
        config = Config.load(bob.config_path)
        config.server_url = server.url
        config.save(bob.config_path)


def test_an_edited_entry_fails_verify_by_index_and_clients_refuse(directory: Directory) -> None:
    """Last: it rewrites the owner named in alice's approval entry in the server's database."""
    from hsm_vault.server.db import CardRecord
    from hsm_vault.server.log import LogEntryRecord

    bob = directory.bob
    engine, sessions = directory.db()
    try:
        with sessions() as db:
            index = db.get(CardRecord, directory.alice_card).log_index
            record = db.get(LogEntryRecord, index)
            body = json.loads(record.body)
            body["owner"] = bob.name
            record.body = json.dumps(body, sort_keys=True, separators=(",", ":"))
            db.commit()
    finally:
        engine.dispose()
    status, out = cli(bob, "log", "verify")
    assert status != 0
    assert f"entry {index} of the log was rewritten" in out and "security officer" in out
    status, out = cli(bob, "card", "find", directory.alice.name)
    assert status != 0
    assert f"log entry {index}" in out and "not in its signed log" in out
