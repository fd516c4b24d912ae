"""The card directory on a real server, driven through the CLI and the client:
publish, approve (signed on the server's token), find (verified against the pinned key),
rotate, revoke; and the refusals: wrong identity, wrong role, bad signatures."""

from __future__ import annotations

import json
import uuid

import pytest
import requests
from server_fixture import Account, RunningServer, unique
from typer.testing import CliRunner

from hsm_vault.algorithms import KeyType
from hsm_vault.cards import (
    SELF,
    Card,
    CardSignature,
    RevocationReason,
    create_card,
    revoke_card,
)
from hsm_vault.cli.main import app
from hsm_vault.client import VaultClient
from hsm_vault.errors import (
    ConflictOnServer,
    NotFoundOnServer,
    PermissionDenied,
    RequestRejected,
)
from hsm_vault.token import open_session
from hsm_vault.trust import TrustPolicy, verify_card, verify_revocation

runner = CliRunner()


def cli(account: Account, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=account.env())
    return result.exit_code, result.output


def new_key(token: str, key_type: KeyType = KeyType.EC_P256) -> str:
    label = f"k-{uuid.uuid4().hex[:8]}"
    with open_session(token) as ts:
        ts.generate_key(label, key_type)
    return label


def make_card(
    token: str,
    identity: str,
    label: str | None = None,
    *,
    rotate_from: tuple[Card, str] | None = None,
    **kw,
) -> tuple[Card, str]:
    """A card for a new (or the given) key; `rotate_from` = (old card, its key label)."""
    label = label or new_key(token)
    with open_session(token) as ts:
        if rotate_from is not None:
            old, old_label = rotate_from
            kw["previous"] = (old, ts.find_key(old_label))
        return create_card(ts, ts.find_key(label), identity, **kw), label


@pytest.fixture
def people(vault_server: RunningServer) -> dict[str, Account]:
    return {
        "alice": vault_server.enrol(unique("alice")),
        "bob": vault_server.enrol(unique("bob")),
        "officer": vault_server.enrol(unique("olga"), role="officer"),
    }


def test_publish_approve_find_rotate_revoke_through_the_cli(
    vault_server: RunningServer, people: dict[str, Account]
) -> None:
    alice, bob, officer = people["alice"], people["bob"], people["officer"]
    label = new_key("alice")
    status, out = cli(
        alice, "card", "create", alice.name, "--key", label, "--token", "alice", "--json"
    )
    assert status == 0, out
    card_id = json.loads(out)["id"]

    status, out = cli(alice, "card", "publish", card_id[:12])
    assert status == 0, out
    assert "pending" in out

    # Not findable before approval; alice cannot approve her own card.
    status, out = cli(bob, "card", "find", alice.name)
    assert status != 0 and "no approved card" in out
    status, out = cli(alice, "card", "approve", card_id)
    assert status != 0 and "officer" in out

    status, out = cli(officer, "card", "pending", "--json")
    assert status == 0, out
    assert card_id in [row["id"] for row in json.loads(out)]
    status, out = cli(officer, "card", "approve", card_id[:10])
    assert status == 0, out
    assert "approved" in out

    status, out = cli(bob, "card", "find", alice.name, "--json")
    assert status == 0, out
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [card_id]
    assert rows[0]["signers"] == ["app", "self"]
    stored = bob.keyring().get(card_id)
    verify_card(stored.card, TrustPolicy.with_app_key(vault_server.app_spki))
    assert stored.status == "valid"

    # Rotation: a new card on a new key, signed by the old one; approval supersedes the old.
    new_label = new_key("alice")
    status, out = cli(
        alice,
        "card",
        "create",
        alice.name,
        "--key",
        new_label,
        "--token",
        "alice",
        "--rotate-from",
        card_id,
        "--old-key",
        label,
        "--json",
    )
    assert status == 0, out
    new_id = json.loads(out)["id"]
    assert cli(alice, "card", "publish", new_id)[0] == 0
    assert cli(officer, "card", "approve", new_id)[0] == 0
    with alice.client() as client:
        old = client.fetch_card(card_id, vault_server.card_trust)
        assert old.status == "superseded"
        assert client.get_card(card_id).superseded_by == new_id
        assert [v.card.id for v in client.find_cards(alice.name, vault_server.card_trust)] == [
            new_id
        ]
    status, out = cli(bob, "card", "find", alice.name, "--json")
    assert [r["id"] for r in json.loads(out)] == [new_id]
    assert bob.keyring().get(card_id).status == "superseded"

    # The owner revokes with a statement signed on her token.
    status, out = cli(alice, "card", "revoke", new_id, "--reason", "key-compromise")
    assert status == 0, out
    assert "signed by self" in out
    assert alice.keyring().get(new_id).status == "revoked"
    status, out = cli(bob, "card", "find", alice.name)
    assert status != 0 and "no approved card" in out
    # ... and bob's keyring learnt of the revocation while looking.
    assert bob.keyring().get(new_id).status == "revoked"
    with bob.client() as client:
        fetched = client.fetch_card(new_id, vault_server.card_trust)
    assert fetched.status == "revoked"
    assert fetched.revocation is not None and fetched.revocation.signer == SELF
    verify_revocation(fetched.revocation, fetched.card)

    # Revoking again conflicts.
    status, out = cli(alice, "card", "revoke", new_id)
    assert status != 0 and "revoked already" in out


def test_officer_revokes_with_the_application_key(
    vault_server: RunningServer, people: dict[str, Account]
) -> None:
    alice, bob, officer = people["alice"], people["bob"], people["officer"]
    card, _ = make_card("alice", alice.name)
    with alice.client() as client:
        client.publish_card(card)
    with officer.client() as client:
        client.approve_card(card.id)
    with bob.client() as client, pytest.raises(PermissionDenied):
        client.revoke_card(card.id, reason="key-compromise")
    status, out = cli(officer, "card", "revoke", card.id, "--reason", "key-compromise")
    assert status == 0, out
    assert "signed by app" in out
    with bob.client() as client:
        fetched = client.fetch_card(card.id, vault_server.card_trust)
    assert fetched.revocation is not None
    assert fetched.revocation.signer == "app"
    assert fetched.revocation.reason is RevocationReason.KEY_COMPROMISE
    verify_revocation(
        fetched.revocation, fetched.card, TrustPolicy.with_app_key(vault_server.app_spki)
    )


def test_a_user_cannot_publish_for_another_identity(
    people: dict[str, Account], vault_server: RunningServer
) -> None:
    alice, bob = people["alice"], people["bob"]
    card, _ = make_card("bob", alice.name)  # bob's key, alice's name
    with bob.client() as client, pytest.raises(PermissionDenied, match="own identity"):
        client.publish_card(card)
    with people["officer"].client() as client, pytest.raises(NotFoundOnServer):
        client.get_card(card.id)


def test_users_cannot_approve_reject_or_revoke_others_cards(
    people: dict[str, Account],
) -> None:
    alice, bob, officer = people["alice"], people["bob"], people["officer"]
    card, _ = make_card("alice", alice.name)
    with alice.client() as client:
        client.publish_card(card)
    with bob.client() as client:
        with pytest.raises(PermissionDenied):
            client.approve_card(card.id)
        with pytest.raises(PermissionDenied):
            client.reject_card(card.id, "no")
        # A pending card of someone else is not even visible.
        with pytest.raises(NotFoundOnServer):
            client.revoke_card(card.id, reason="unspecified")
    with officer.client() as client:
        client.approve_card(card.id)
        with pytest.raises(ConflictOnServer):
            client.approve_card(card.id)
    from hsm_vault.cards import make_revocation

    bobs_label = new_key("bob")
    with open_session("bob") as ts:
        # bob signs a "self" revocation with his own key: it does not verify for alice's card.
        key = ts.find_key(bobs_label)

        forged = make_revocation(
            card.id,
            "unspecified",
            "self",
            key.spki_der,
            key.key_type.signature_algorithm,
            lambda m: ts.sign(key, m),
        )
    with bob.client() as client, pytest.raises(PermissionDenied, match="owner or an officer"):
        client.revoke_card(card.id, statement=forged)
    with alice.client() as client, pytest.raises(RequestRejected, match="does not verify"):
        client.revoke_card(card.id, statement=forged)
    # Without a statement, the owner is told to sign one on her token.
    with alice.client() as client, pytest.raises(RequestRejected, match="statement"):
        client.revoke_card(card.id)


def test_a_card_with_a_bad_self_signature_is_422_and_not_stored(
    people: dict[str, Account], vault_server: RunningServer
) -> None:
    alice, officer = people["alice"], people["officer"]
    card, _ = make_card("alice", alice.name)
    own = card.signature_by(SELF)
    assert own is not None
    flipped = bytearray(own.signature)
    flipped[-3] ^= 0x01
    bad = Card(card.snapshot, (CardSignature(SELF, own.key_id, own.algorithm, bytes(flipped)),))
    with alice.client() as client, pytest.raises(RequestRejected, match="does not verify"):
        client.publish_card(bad)
    response = requests.post(
        vault_server.url + "/v1/cards",
        json={"card": bad.to_text()},
        headers={"Authorization": f"Bearer {alice.token}"},
        timeout=5,
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    with officer.client() as client:
        assert card.id not in [e.id for e in client.pending_cards()]
        with pytest.raises(NotFoundOnServer):
            client.get_card(card.id)


def test_published_cards_may_not_bring_their_own_app_signature(
    people: dict[str, Account],
) -> None:
    alice = people["alice"]
    card, label = make_card("alice", alice.name)
    with open_session("alice") as ts:
        key = ts.find_key(label)
        fake_app = card.with_signature(
            CardSignature(
                "app",
                card.key_id,
                key.key_type.signature_algorithm,
                ts.sign(key, card.signing_message("app")),
            )
        )
    with alice.client() as client, pytest.raises(RequestRejected, match="app"):
        client.publish_card(fake_app)


def test_rejected_cards_are_not_findable(
    people: dict[str, Account], vault_server: RunningServer
) -> None:
    alice, officer = people["alice"], people["officer"]
    card, _ = make_card("alice", alice.name)
    with alice.client() as client:
        client.publish_card(card)
        with pytest.raises(ConflictOnServer):
            client.publish_card(card)
    status, out = cli(officer, "card", "reject", card.id, "--reason", "call me first")
    assert status == 0, out
    with alice.client() as client:
        entry = client.get_card(card.id)
        assert (entry.status, entry.reject_reason) == ("rejected", "call me first")
        assert client.find_cards(alice.name, vault_server.card_trust) == []


def test_rotation_must_be_signed_by_the_previous_key_and_owned(
    people: dict[str, Account],
) -> None:
    alice, bob, officer = people["alice"], people["bob"], people["officer"]
    old, old_label = make_card("alice", alice.name)
    with alice.client() as client:
        client.publish_card(old)
    with officer.client() as client:
        client.approve_card(old.id)
    # bob names alice's card as his previous one: refused.
    labels = [new_key("alice") for _ in range(3)]
    with open_session("alice") as ts:
        bobs = create_card(ts, ts.find_key(labels[0]), bob.name)
    from dataclasses import replace

    stolen = Card(replace(bobs.snapshot, previous_id=old.id))
    with bob.client() as client, pytest.raises(RequestRejected):
        client.publish_card(stolen)
    # A rotation whose "previous" signature is by a key other than the old card's: refused.
    with open_session("alice") as ts:
        other = ts.find_key(labels[1])
        newer = create_card(
            ts, ts.find_key(labels[2]), alice.name, previous=(old, ts.find_key(old_label))
        )
        wrong_prev = newer.with_signature(
            CardSignature(
                "previous",
                old.key_id,
                other.key_type.signature_algorithm,
                ts.sign(other, newer.signing_message("previous")),
            )
        )
    with alice.client() as client:
        with pytest.raises(RequestRejected, match="does not verify"):
            client.publish_card(wrong_prev)
        assert client.publish_card(newer).status == "pending"
    # Two rotations of one card: once the first is approved, the second cannot be.
    fork, _ = make_card("alice", alice.name, rotate_from=(old, old_label))
    with alice.client() as client:
        client.publish_card(fork)
    with officer.client() as client:
        client.approve_card(newer.id)
        with pytest.raises(ConflictOnServer, match="superseded"):
            client.approve_card(fork.id)


def test_auto_approve_server_signs_at_once(server_factory) -> None:
    server = server_factory("--auto-approve")
    alice = server.enrol(unique("alice"))
    label = new_key("alice", KeyType.RSA_2048)
    status, out = cli(
        alice, "card", "create", alice.name, "--key", label, "--token", "alice", "--json"
    )
    assert status == 0, out
    card_id = json.loads(out)["id"]
    status, out = cli(alice, "card", "publish", card_id)
    assert status == 0, out
    assert "approved" in out
    entry = alice.keyring().get(card_id)
    assert "app" in entry.card.signers
    verify_card(entry.card, TrustPolicy.with_app_key(server.app_spki))


def test_unverified_search_needs_a_login(vault_server: RunningServer) -> None:
    with VaultClient(vault_server.url) as client:
        response = requests.get(vault_server.url + "/v1/cards", params={"identity": "x"}, timeout=5)
        assert response.status_code == 401
        assert client.app_key().fingerprint == vault_server.app_fingerprint


def test_owner_revocation_via_python_client(
    people: dict[str, Account], vault_server: RunningServer
) -> None:
    alice, officer = people["alice"], people["officer"]
    card, label = make_card("alice", alice.name)
    with alice.client() as client:
        client.publish_card(card)
    with officer.client() as client:
        client.approve_card(card.id)
    with open_session("alice") as ts:
        statement = revoke_card(ts, ts.find_key(label), card, "superseded")
    with alice.client() as client:
        entry = client.revoke_card(card.id, statement=statement)
        assert entry.status == "revoked"
        assert entry.revocation_text == statement.to_text()


def test_fetch_identity_for_encrypt_uses_the_logged_in_server(
    people: dict[str, Account], vault_server: RunningServer, monkeypatch
) -> None:
    from hsm_vault.client import fetch_identity

    alice, bob, officer = people["alice"], people["bob"], people["officer"]
    card, _ = make_card("alice", alice.name)
    with alice.client() as client:
        client.publish_card(card)
    with officer.client() as client:
        client.approve_card(card.id)
    monkeypatch.setenv("HSM_VAULT_HOME", str(bob.home))
    entries = fetch_identity(alice.name)
    assert [e.card.id for e in entries] == [card.id]
    assert bob.keyring().resolve(alice.name).card.id == card.id


def test_refresh_learns_revocations_and_replacements(
    people: dict[str, Account], vault_server: RunningServer
) -> None:
    alice, bob, officer = people["alice"], people["bob"], people["officer"]
    first, first_label = make_card("alice", alice.name)
    second, _ = make_card("alice", alice.name)
    with alice.client() as client:
        client.publish_card(first)
        client.publish_card(second)
    with officer.client() as client:
        client.approve_card(first.id)
        client.approve_card(second.id)
    assert cli(bob, "card", "find", alice.name)[0] == 0
    # Alice rotates the first card and the officer revokes the second.
    rotated, _ = make_card("alice", alice.name, rotate_from=(first, first_label))
    with alice.client() as client:
        client.publish_card(rotated)
    with officer.client() as client:
        client.approve_card(rotated.id)
        client.revoke_card(second.id, reason="key-compromise")
    status, out = cli(bob, "card", "refresh", "--json")
    assert status == 0, out
    rows = {row["id"]: row for row in json.loads(out)}
    assert rows[first.id]["status"] == "superseded"
    assert rows[first.id]["superseded_by"] == rotated.id
    assert rows[second.id]["status"] == "revoked"
    keyring = bob.keyring()
    assert keyring.get(second.id).status == "revoked"
    assert keyring.get(first.id).status == "superseded"
    assert keyring.resolve(alice.name).card.id == rotated.id
