"""Which card a reference means (`--to`, `--verify-from`, `--sign-with`) and which token
holds your key: decided in hsm_vault.card_refs, reached here without the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cards_vectors import VECTORS, read_vector

from hsm_vault.card_refs import card_from_ref, card_or_fetch, own_card_for, own_token_for
from hsm_vault.cards import Card, Keyring, Origin, RevocationStatement
from hsm_vault.errors import CardNotFound, CardRevoked, CardVerificationError


def _vector(name: str, field: str = "card") -> str:
    return read_vector(VECTORS / name)[field][0]


@pytest.fixture
def alice() -> Card:
    return Card.from_text(_vector("ok-ec-p256.txt"))


def test_a_card_file_is_checked_and_refused_once_revoked(tmp_path: Path, alice: Card) -> None:
    keyring = Keyring(tmp_path / "cards")
    good = tmp_path / "alice.card"
    good.write_text(alice.to_text() + "\n")
    assert card_from_ref(str(good), keyring, roots=()) == alice
    forged = tmp_path / "forged.card"
    forged.write_text(_vector("v3-changed-data.txt"))
    with pytest.raises(CardVerificationError):
        card_from_ref(str(forged), keyring, roots=())
    keyring.add(alice)
    keyring.add_revocation(
        RevocationStatement.from_text(_vector("ok-revocation-self.txt", "revocation"))
    )
    with pytest.raises(CardRevoked):
        card_from_ref(str(good), keyring, roots=())


def test_an_identity_the_keyring_lacks_is_fetched_only_with_a_fetch(
    tmp_path: Path, alice: Card
) -> None:
    keyring = Keyring(tmp_path / "cards")
    with pytest.raises(CardNotFound):
        card_or_fetch(alice.identity, keyring)
    asked: list[str] = []

    def nothing(ref: str, into: Keyring) -> list[object]:
        asked.append(ref)
        return []

    with pytest.raises(CardNotFound, match=r"on vault\.example nor in the keyring"):
        card_or_fetch(alice.identity, keyring, nothing, server="vault.example")

    def directory(ref: str, into: Keyring) -> list[object]:
        asked.append(ref)
        return [into.add(alice)] if ref == alice.identity else []

    assert card_or_fetch(alice.identity, keyring, directory) == alice
    assert card_or_fetch(alice.identity, keyring, directory) == alice  # kept: asked once
    assert asked == [alice.identity, alice.identity]


def test_own_card_and_token_come_from_the_keyring(tmp_path: Path, alice: Card) -> None:
    keyring = Keyring(tmp_path / "cards")
    with pytest.raises(CardNotFound):
        own_card_for(alice.spki_der, keyring)
    keyring.add(alice)
    assert own_card_for(alice.spki_der, keyring) == alice
    # An imported card says nothing of where the key is; your own card's key URI does.
    assert own_token_for({alice.key_id}, keyring) is None
    keyring.add(alice, origin=Origin.OWN, key_uri="pkcs11:token=alice-yk;object=k")
    assert own_token_for({alice.key_id}, keyring) == "alice-yk"
    assert own_token_for({b"\x00" * 32}, keyring) is None
