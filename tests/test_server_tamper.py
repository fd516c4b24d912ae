"""A real server behind a real tampering proxy: the client must refuse what does not verify
against the pinned application key, and keep nothing from that answer."""

from __future__ import annotations

import pytest
from server_fixture import Account, RunningServer, unique
from typer.testing import CliRunner

from hsm_vault.cards import create_card
from hsm_vault.cli.main import app
from hsm_vault.client import VaultClient
from hsm_vault.config import Config
from hsm_vault.errors import ServerTrustError
from hsm_vault.token import open_session

runner = CliRunner()


@pytest.fixture
def approved(vault_server: RunningServer) -> tuple[Account, str]:
    """alice with one approved card on the server."""
    alice = vault_server.enrol(unique("alice"))
    officer = vault_server.enrol(unique("olga"), role="officer")
    label = f"t-{unique('k')}"
    with open_session("alice") as ts:
        key = ts.generate_key(label, __import__("hsm_vault").algorithms.KeyType.EC_P256)
        card = create_card(ts, key, alice.name)
    with alice.client() as client:
        client.publish_card(card)
    with officer.client() as client:
        client.approve_card(card.id)
    return alice, card.id


def _behind(account: Account, url: str) -> None:
    config = Config.load(account.config_path)
    config.server_url = url
    config.save(account.config_path)


def test_the_proxy_itself_changes_nothing(vault_server: RunningServer, proxy, approved) -> None:
    alice, card_id = approved
    bob = vault_server.enrol(unique("bob"))
    _behind(bob, proxy("pass"))
    result = runner.invoke(app, ["card", "find", alice.name], env=bob.env())
    assert result.exit_code == 0, result.output
    assert bob.keyring().get(card_id).card.id == card_id


@pytest.mark.parametrize("mode", ["swap-key", "forge-app"])
def test_a_tampered_search_answer_is_refused_and_nothing_is_kept(
    vault_server: RunningServer, proxy, approved, mode: str
) -> None:
    alice, card_id = approved
    bob = vault_server.enrol(unique("bob"))
    url = proxy(mode)
    _behind(bob, url)
    result = runner.invoke(app, ["card", "find", alice.name], env=bob.env())
    assert result.exit_code != 0
    assert "failed verification" in result.output
    assert "pinned application key" in result.output  # the hint
    assert bob.keyring().entries() == []

    with VaultClient(url, api_token=bob.token) as client:
        with pytest.raises(ServerTrustError):
            client.find_cards(alice.name, vault_server.card_trust)
        with pytest.raises(ServerTrustError):
            client.fetch_card(card_id, vault_server.card_trust)
        # The same answers straight from the server verify.
    with bob.client() as client:
        assert [v.card.id for v in client.find_cards(alice.name, vault_server.card_trust)] == [
            card_id
        ]


def test_login_through_a_key_swapping_proxy_is_refused(vault_server: RunningServer, proxy) -> None:
    url = proxy("swap-app")
    name = unique("carol")
    code = vault_server.add_user(name)
    result = runner.invoke(
        app,
        [
            "login",
            "--server",
            url,
            "--user",
            name,
            "--app-fingerprint",
            vault_server.app_fingerprint,
        ],
        env={"HSM_VAULT_ENROLMENT_CODE": code},
    )
    assert result.exit_code != 0
    assert "not the one you were given" in result.output
    assert Config.load().api_token is None
