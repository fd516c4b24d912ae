"""Card states are enums shared by every side: the server's directory and the client read the
same `CardStatus`; the keyring's origin and status are `Origin` and `KeyringStatus`."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cards_vectors import VECTORS, read_vector

from hsm_vault.cards import Card, CardStatus, Keyring, KeyringStatus, Origin
from hsm_vault.client import CardEntry
from hsm_vault.errors import ServerError, UsageError


def _record(status: str) -> dict[str, object]:
    return {
        "id": "0" * 64,
        "identity": "a@example.org",
        "owner": "a",
        "status": status,
        "card": "hsmv-card-1:x",
    }


def test_the_server_and_the_client_share_one_card_status() -> None:
    from hsm_vault.server.db import CardStatus as ServerCardStatus

    assert ServerCardStatus is CardStatus
    for status in CardStatus:
        assert CardEntry.from_json(_record(status.value)).status is status
    with pytest.raises(ServerError, match="unknown status"):
        CardEntry.from_json(_record("approved-ish"))


def test_keyring_origin_and_status_are_enums(tmp_path: Path) -> None:
    card = Card.from_text(read_vector(VECTORS / "ok-ec-p256.txt")["card"][0])
    keyring = Keyring(tmp_path / "cards")
    with pytest.raises(UsageError):
        keyring.add(card, origin="mine")  # type: ignore[arg-type]
    entry = keyring.add(card)
    assert entry.origin is Origin.IMPORTED
    assert entry.status is KeyringStatus.VALID
    # Stored as the plain string, read back as the enum; "own" wins over "imported".
    assert '"origin": "imported"' in entry.path.read_text()
    keyring.add(card, origin=Origin.OWN)
    (again,) = Keyring(tmp_path / "cards").entries()
    assert again.origin is Origin.OWN
