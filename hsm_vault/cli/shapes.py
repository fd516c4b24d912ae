"""How each kind of object looks in `--json` output and in text, in one place.

Every command that prints an account (or a list of them) goes through here, whether the data
came from the API (`account list`) or straight from the database (`server users`), so both
print the same JSON shape: the API's `UserOut` (docs/openapi.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hsm_vault.cli.common import console, print_json

if TYPE_CHECKING:
    from hsm_vault.cards import Card, KeyringEntry, TrustPolicy


def print_list(kind: str, items: Sequence[dict[str, Any]], **extra: Any) -> None:
    """Every list in --json output has one shape: an object with the items under `kind`
    (a plural noun: "cards", "keys", "tokens", "users", "blobs") and any totals beside."""
    print_json({kind: list(items), **extra})


def card_json(card: Card, policy: TrustPolicy | None = None) -> dict[str, Any]:
    """A card: the one JSON shape of every command that prints one (docs/cli.md)."""
    checked = set(policy.checked_signers(card)) if policy is not None else set()
    snapshot = card.snapshot
    return {
        "id": card.id,
        "short_id": card.short_id,
        "identity": card.identity,
        "identity_type": card.identity_type.value,
        "key_type": card.key_type.value,
        "key_fingerprint_sha256": card.fingerprint,
        "wrap": {"method": snapshot.wrap_method.value, "oaep_hash": card.oaep_hash},
        "scope": [s.value for s in snapshot.scope],
        "data": dict(snapshot.data),
        "created_at": card.created_at,
        "signers": list(card.signers),
        "previous": card.previous_id,
        "provenance": snapshot.provenance.to_json(),
        "signatures": [
            {
                "signer": s.signer,
                "key_id": s.key_id.hex(),
                "algorithm": s.algorithm.value,
                "checked": s.signer in checked,
            }
            for s in card.signatures
        ],
    }


def keyring_entry_json(entry: KeyringEntry) -> dict[str, Any]:
    """A card with what the keyring knows of it (origin, status, revocation)."""
    summary = card_json(entry.card)
    summary.update(
        origin=entry.origin,
        added_at=entry.added_at,
        key_uri=entry.key_uri,
        status=entry.status,
        superseded_by=entry.superseded_by,
        revocation=(
            {
                "reason": entry.revocation.reason.value,
                "created_at": entry.revocation.created_at,
                "signer": entry.revocation.signer,
            }
            if entry.revocation is not None
            else None
        ),
    )
    return summary


def card_record_json(entry: Any) -> dict[str, Any]:
    """A card record as the server states it (pending, publish, approve, reject)."""
    return {
        "id": entry.id,
        "identity": entry.identity,
        "owner": entry.owner,
        "status": entry.status,
        "previous_id": entry.previous_id,
        "published_at": entry.published_at,
        "decided_by": entry.decided_by,
        "reject_reason": entry.reject_reason,
    }


def _when(value: Any) -> str:
    """An ISO timestamp cut to the minute, or '-'."""
    return str(value)[:16].replace("T", " ") if value else "-"


def print_accounts(users: Sequence[dict[str, Any]], *, json_out: bool) -> None:
    """Accounts with their API tokens and enrolment codes (JSON: `{"users": [UserOut...]}`)."""
    if json_out:
        print_list("users", users)
        return
    if not users:
        console.print("no accounts")
        return
    for user in users:
        state = "DISABLED" if user.get("disabled") else "enabled"
        console.print(
            f"{user['username']}  {user['role']}  identity {user['identity']}  {state}",
            markup=False,
        )
        for token in user.get("tokens", []):
            console.print(
                f"  token {token['id']:<5} {token['state']:<8} created {_when(token['created_at'])}"
                f"  last used {_when(token['last_used_at'])}"
                f"  expires {_when(token['expires_at'])}",
                markup=False,
            )
        for code in user.get("enrolment_codes", []):
            console.print(
                f"  enrolment code {code['state']:<8} created {_when(code['created_at'])}"
                f"  expires {_when(code['expires_at'])}  used {_when(code['used_at'])}",
                markup=False,
            )
