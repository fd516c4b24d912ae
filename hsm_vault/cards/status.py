"""The states of a card, shared by every side that stores or reads them.

`CardStatus` is a card's state in the server's directory (the server stores it, the client
reads it from the API); `Origin` and `KeyringStatus` are what the local keyring records and
concludes about a card. Each is a `StrEnum`: it compares, prints and serialises as the plain
string the database, the API and the keyring files hold.
"""

from __future__ import annotations

from enum import StrEnum


class CardStatus(StrEnum):
    """A card's state in the server's directory."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    REVOKED = "revoked"


class Origin(StrEnum):
    """Where a keyring card came from."""

    #: Made here; its key is on one of the user's tokens (`key_uri`).
    OWN = "own"
    IMPORTED = "imported"


class KeyringStatus(StrEnum):
    """What the keyring knows of a card's state."""

    VALID = "valid"
    #: A verified newer card replaces it.
    SUPERSEDED = "superseded"
    #: A verified revocation statement is stored for it.
    REVOKED = "revoked"
