"""Shell completion of values: identities and card ids, token labels, blob names.

Each function takes what has been typed so far and returns candidates; it never prompts,
never prints, and returns nothing when its source is unavailable (no keyring, no module, no
login), because a completion that fails must fail silently.
"""

from __future__ import annotations

from hsm_vault.errors import HsmVaultError


def recipients(incomplete: str) -> list[str]:
    """Identities and card ids in the keyring (for --to, --verify-from, card references)."""
    from hsm_vault.cards import Keyring

    try:
        entries = Keyring().entries()
    except (HsmVaultError, OSError):
        return []
    found = {e.card.identity for e in entries} | {e.card.id[:16] for e in entries}
    return sorted(c for c in found if c.startswith(incomplete))


def token_labels(incomplete: str) -> list[str]:
    """Labels of the initialised tokens of the module (no PIN asked)."""
    from hsm_vault.config import Config
    from hsm_vault.token import list_tokens

    try:
        tokens, _ = list_tokens(None, Config.load().module)
    except (HsmVaultError, OSError):
        return []
    return sorted({t.label for t in tokens if t.label and t.label.startswith(incomplete)})


def blob_names(incomplete: str) -> list[str]:
    """Your blob names on the server you are logged in to, and OWNER/NAME of shared ones."""
    from hsm_vault.client import client_from_config
    from hsm_vault.client.blobs import list_blobs
    from hsm_vault.config import Config

    try:
        config = Config.load()
        with client_from_config(config) as client:
            blobs, _ = list_blobs(client, shared=True)
    except (HsmVaultError, OSError):
        return []
    names = {b.name if b.owner == config.username else b.full_name for b in blobs}
    return sorted(n for n in names if n.startswith(incomplete))
