"""Issue 16 item 9: a decrypt with the wrong token names the recipients and the right token."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from hsm_vault.cards import Keyring, create_card
from hsm_vault.cli.main import app
from hsm_vault.token import open_session

runner = CliRunner()


def test_the_wrong_token_points_to_the_token_holding_a_recipient_key(
    token_keys, tmp_path: Path
) -> None:
    with open_session("bob") as ts:
        key = ts.find_key("bob-p256")
        card = create_card(ts, key, "bob@example.org")
    Keyring().add(card, origin="own", key_uri=key.uri)
    source = tmp_path / "note.txt"
    source.write_text("for bob\n")
    assert runner.invoke(app, ["encrypt", "--to", card.id, str(source)]).exit_code == 0
    source.unlink()
    result = runner.invoke(app, ["decrypt", "--token", "alice", str(tmp_path / "note.txt.hsmv")])
    assert result.exit_code != 0
    assert "it is for: bob@example.org" in result.output
    assert "pass --token bob" in result.output
    assert not source.exists()
