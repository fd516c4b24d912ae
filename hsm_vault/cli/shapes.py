"""How each kind of object looks in `--json` output and in text, in one place.

Every command that prints an account (or a list of them) goes through here, whether the data
came from the API (`account list`) or straight from the database (`server users`), so both
print the same JSON shape: the API's `UserOut` (docs/openapi.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hsm_vault.cards import Card
from hsm_vault.cli.common import console, print_json
from hsm_vault.config import attestation_roots
from hsm_vault.errors import CardError
from hsm_vault.trust import verify_card_attestation

if TYPE_CHECKING:
    from hsm_vault.cards import KeyringEntry
    from hsm_vault.trust import TrustPolicy


def print_list(kind: str, items: Sequence[dict[str, Any]], **extra: Any) -> None:
    """Every list in --json output has one shape: an object with the items under `kind`
    (a plural noun: "cards", "keys", "tokens", "users", "blobs") and any totals beside."""
    print_json({kind: list(items), **extra})


def card_json(card: Card, policy: TrustPolicy | None = None) -> dict[str, Any]:
    """A card: the one JSON shape of every command that prints one (docs/cli.md)."""
    checked = set(policy.checked_signers(card)) if policy is not None else set()
    snapshot = card.snapshot
    roots = policy.attestation_roots if policy is not None else None
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
        **attestation_summary(card, roots),
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
        "approved_by": approvers(entry),
    }


def approvers(entry: Any) -> list[str]:
    """The officers whose approvals the card text carries (as stated; not verified here)."""
    try:
        card = Card.from_text(entry.card_text)
    except CardError:
        return []
    return [s.signer.partition(":")[2] for s in card.signatures if s.signer.startswith("officer:")]


def attestation_summary(card: Card, roots: tuple[Any, ...] | None = None) -> dict[str, Any]:
    """`attested` (true only when the card's attestation verifies to the roots trusted here:
    `roots`, else Yubico's and $HSM_VAULT_ATTESTATION_ROOTS), and what it attests."""
    stated = card.attestation
    if stated is None:
        return {"attested": False, "attestation": None}
    try:
        found = verify_card_attestation(card, attestation_roots() if roots is None else roots)
    except CardError as exc:
        return {"attested": False, "attestation": {**stated.stated(), "problem": exc.message}}
    return {
        "attested": True,
        "attestation": {**stated.stated(), "root": found.root if found else ""},
    }


def attestation_line(summary: dict[str, Any]) -> str:
    """One line for people: what `attestation_summary` found."""
    attested = summary["attestation"]
    if attested is None:
        return "not attested (the token offers no key attestation)"
    what = (
        f"YubiKey #{attested['serial']}, firmware {attested['firmware']}, PIN policy "
        f"{attested['pin_policy']}, touch policy {attested['touch_policy']}, "
        f"{attested['form_factor']}"
    )
    if summary["attested"]:
        return f"attested: {what} (root: {attested['root']})"
    return f"NOT attested: the card's attestation does not verify here ({attested['problem']})"


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
