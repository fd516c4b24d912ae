"""Approval that a compromised server cannot forge (issue 13), end to end: a real server with
`--approvals 2`, officers approving on their own SoftHSM tokens, clients that pin the policy.

One server for the module; the tests run in order and the last one forges a policy into the
server's database, so it stays last.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from server_fixture import HSM_VAULT, Account, RunningServer, start_server, unique
from typer.testing import CliRunner

from hsm_vault.algorithms import SignatureAlgorithm
from hsm_vault.cards import Card, CardSignature, key_id_of
from hsm_vault.errors import RequestRejected
from hsm_vault.token import open_session

runner = CliRunner()


def cli(account: Account, *args: str) -> tuple[int, str]:
    return account.cli(*args)


def new_card(account: Account, token: str) -> str:
    """`card create` on a new key of `token` in `account`'s keyring, then `card publish`."""
    return account.publish_new_card(token)[0]


@dataclass
class Officers:
    server: RunningServer
    olga: Account
    oscar: Account
    bob: Account

    def host(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`hsm-vault server ...` on the server host (its data folder and token)."""
        return subprocess.run(
            [HSM_VAULT, "server", *args, "--data", str(self.server.data_dir)],
            env=self.server.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def officers(softhsm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Officers]:
    folder = tmp_path_factory.mktemp("officers")
    env = {k: v for k, v in softhsm.env().items() if k != "HSM_VAULT_CONFIG"}
    server = start_server(folder, env, init_args=("--approvals", "2"))
    try:
        olga = server.enrol(unique("olga"), role="officer")
        oscar = server.enrol(unique("oscar"), role="officer")
        bob = server.enrol(unique("bob"))
        setup = Officers(server, olga, oscar, bob)
        # The ceremony: each officer publishes a card made on their token; the operator
        # compares its fingerprint and names it in the policy (signed by the app key alone).
        for account, token in ((olga, "carol"), (oscar, "bob")):
            new_card(account, token)
            done = setup.host("add-officer", account.name, "--yes", "--json")
            assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["policy_serial"] == 3
        # Once the policy names its officers, the ceremony is over.
        late = setup.host("add-officer", bob.name, "--yes")
        assert late.returncode != 0
        yield setup
    finally:
        server.stop()


def test_a_card_needs_two_officers_and_no_one_approves_their_own(officers: Officers) -> None:
    olga, oscar, bob = officers.olga, officers.oscar, officers.bob
    status, out = cli(bob, "whoami", "--json")
    assert status == 0, out
    policy = json.loads(out)["policy"]
    assert policy["serial"] == 3 and policy["approvals"] == 2
    assert [o["username"] for o in policy["officers"]] == sorted([olga.name, oscar.name])

    alice = officers.server.enrol(unique("alice"))
    card_id = new_card(alice, "alice")
    status, out = cli(olga, "card", "pending", "--json")
    assert status == 0, out
    row = next(r for r in json.loads(out)["cards"] if r["id"] == card_id)
    assert row["token_protected"] is True and len(row["key_fingerprint_sha256"]) == 64

    # An approval that does not verify is refused and nothing is stored.
    with olga.client() as client:
        me = client.policy().body.officer(olga.name)
        bogus = CardSignature(
            f"officer:{olga.name}",
            key_id_of(me.spki_der),
            SignatureAlgorithm.ECDSA_SHA256,
            b"\x30\x06\x02\x01\x01\x02\x01\x01",
        )
        with pytest.raises(RequestRejected, match="does not verify"):
            client.approve_card(card_id, bogus)
        assert Card.from_text(client.get_card(card_id).card_text).signers == ("self",)

    # One officer: recorded, still pending, not usable by clients.
    status, out = cli(olga, "card", "approve", card_id)
    assert status == 0, out
    assert "1 of 2" in out
    status, out = cli(bob, "card", "find", alice.name)
    assert status != 0 and "no approved card" in out
    status, out = cli(olga, "card", "approve", card_id)
    assert status != 0 and "approved card" in out and "already" in out

    # An officer approving their own card is refused by the server; nothing is stored.
    own = new_card(oscar, "bob")
    status, out = cli(oscar, "card", "approve", own)
    assert status != 0 and "already has an approved card" in out  # a second card: asked first
    status, out = cli(oscar, "card", "approve", own, "--yes")
    assert status != 0 and "own card" in out
    with oscar.client() as client:
        assert client.get_card(own).status == "pending"
        assert Card.from_text(client.get_card(own).card_text).signers == ("self",)
    # Officers see a pending card, and reject it: they do not revoke it.
    status, out = cli(olga, "card", "show", own)
    assert status == 0 and "pending" in out and oscar.name in out
    status, out = cli(olga, "card", "revoke", own, "--server-signs")
    assert status != 0 and "reject it instead" in out
    status, out = cli(olga, "card", "reject", own, "--reason", "a second card")
    assert status == 0, out

    # The second officer: approved, and every client verifies both approvals.
    status, out = cli(oscar, "card", "approve", card_id)
    assert status == 0, out
    assert "approved card" in out
    status, out = cli(bob, "card", "find", alice.name, "--json")
    assert status == 0, out
    signers = json.loads(out)["cards"][0]["signers"]
    assert signers == sorted(["app", "self", f"officer:{olga.name}", f"officer:{oscar.name}"])


def _app_key_sign(officers: Officers, message: bytes) -> tuple[bytes, Any]:
    settings = officers.server.settings()
    with open_session(settings.token) as ts:
        key = ts.find_key(settings.app_key)
        return ts.sign(key, message), key


def _db(officers: Officers) -> Any:
    from hsm_vault.server.db import make_engine, make_sessionmaker

    engine = make_engine(officers.server.settings().effective_database_url)
    return engine, make_sessionmaker(engine)


def test_a_card_signed_by_the_app_key_alone_is_refused_by_clients(
    officers: Officers, tmp_path: Path
) -> None:
    """A compromised server signs a card it made itself and puts it straight in its database."""
    from hsm_vault.server.db import CardRecord, CardStatus, utcnow

    mallory = officers.server.enrol(unique("mallory"))
    card_id = new_card(mallory, "alice")
    engine, sessions = _db(officers)
    try:
        with sessions() as db:
            record = db.get(CardRecord, card_id)
            card = Card.from_text(record.text)
            signature, key = _app_key_sign(officers, card.signing_message("app"))
            signed = card.with_signature(
                CardSignature(
                    "app", key_id_of(key.spki_der), key.key_type.signature_algorithm, signature
                )
            )
            record.text = signed.to_text()
            record.status = CardStatus.APPROVED.value
            record.decided_at = utcnow()
            db.commit()
    finally:
        engine.dispose()
    bob = officers.bob
    status, out = cli(bob, "card", "find", mallory.name)
    assert status != 0
    assert "0 of the 2 officer approvals" in out
    plain = tmp_path / "note.txt"
    plain.write_text("for mallory")
    status, out = cli(bob, "encrypt", "--to", mallory.name, str(plain))
    assert status != 0 and "officer approvals" in out
    assert not (tmp_path / "note.txt.hsmv").exists()


def test_a_policy_change_needs_the_quorum_and_a_forged_one_is_refused(officers: Officers) -> None:
    olga, oscar, bob = officers.olga, officers.oscar, officers.bob
    # A real change: olga proposes 1 approval per card, both officers sign on their tokens.
    status, out = cli(olga, "policy", "propose", "--approvals", "1")
    assert status == 0, out
    status, out = cli(olga, "policy", "sign", "--yes")
    assert status == 0, out
    assert "1 of 2" in out
    status, out = cli(oscar, "policy", "sign", "--yes", "--json")
    assert status == 0, out
    assert json.loads(out)["serial"] == 4 and json.loads(out)["in_force"] is True
    status, out = cli(bob, "policy", "show", "--json")
    assert status == 0, out
    assert json.loads(out)["serial"] == 4 and json.loads(out)["approvals"] == 1
    # The transparency log holds the ceremony, the quorum change and the approvals, and
    # every officer signature in it verifies.
    status, out = cli(bob, "log", "verify", "--json")
    assert status == 0, out
    assert json.loads(out)["policy_serial"] == 4 and json.loads(out)["events"]["card-approved"] >= 3

    # A forgery: policy 5 with no officers and no approvals, signed by the app key alone.
    from hsm_vault.cards.model import now_utc
    from hsm_vault.server.approvals import PolicyRecord, current_policy
    from hsm_vault.server.db import utcnow
    from hsm_vault.trust import SignedPolicy

    engine, sessions = _db(officers)
    try:
        with sessions() as db:
            held = current_policy(db)
            body = held.body.successor(
                created_at=now_utc(),
                approvals=0,
                remove=tuple(o.username for o in held.body.officers),
            )
            signature, key = _app_key_sign(officers, body.signing_message("app"))
            forged = SignedPolicy(body).with_signature(
                CardSignature(
                    "app", key_id_of(key.spki_der), key.key_type.signature_algorithm, signature
                )
            )
            db.add(PolicyRecord(serial=5, id=forged.id, text=forged.to_text(), created_at=utcnow()))
            db.commit()
    finally:
        engine.dispose()
    status, out = cli(bob, "policy", "show")
    assert status != 0
    assert "policy 5 carries 0 of the 1 officer signatures policy 4 requires" in out
    status, out = cli(bob, "card", "find", olga.name)
    assert status != 0 and "officer signatures" in out
    # A client that never pinned a policy walks the chain from policy 1 and refuses it too.
    newcomer = officers.server.enrol(unique("nina"))
    status, out = cli(newcomer, "whoami")
    assert status != 0 and "officer signatures" in out
