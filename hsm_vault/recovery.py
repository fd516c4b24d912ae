"""The recovery ceremony: requests, approvals on the holders' tokens, and recovering a file.

1. The requester (who lost the key a file is for) signs a `RecoveryRequest` on their new
   token: the file's header, their new card, a reason.
2. Each holder of a recovery share approves on their own token: the token unwraps the
   holder's share from the header, and it is at once wrapped again to the requester's card
   key (`approve_request`); the share value exists only in memory between the two.
3. With `threshold` shares, the requester's token unwraps each, the shares rebuild the file
   key, the header MAC proves it is the file's key, and the file is decrypted (`recover_file`)
   or given to the requester's card without decrypting it (`recover_rewrap`).

Formats and rules: docs/trust.md (`hsm_vault.trust.recovery`, pure); header entries:
docs/format.md (`hsm_vault.envelope.recovery`). This module does not import python-pkcs11.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hsm_vault.cards.model import now_utc
from hsm_vault.envelope import DecryptResult, Header, Identity, Randomness, read_header
from hsm_vault.envelope.envelope import decrypt_with_file_key, header_mac
from hsm_vault.envelope.format import MAC_LENGTH
from hsm_vault.envelope.recipients import unwrap_file_key, wrap_file_key
from hsm_vault.envelope.recovery import RecoveryPlan, combine_shares
from hsm_vault.envelope.rewrap import RecipientChange
from hsm_vault.errors import HeaderError, RecoveryError, UsageError
from hsm_vault.rewrap import RewrapResult, rewrap_file_with_key
from hsm_vault.trust.recovery import (
    RecoveryRequest,
    RecoveryShare,
    RequestBody,
    ShareBody,
    header_digest,
    make_request,
    make_share,
)
from hsm_vault.vault import TokenIdentity, _atomic_output, _check_output, open_input, recipient_for

if TYPE_CHECKING:
    from hsm_vault.cards import Card
    from hsm_vault.token import KeyInfo, TokenSession

SHARE_SUFFIX = ".share"
MAX_SHARE_FILE = 1 << 23


def recovery_plan(holders: Sequence[Card], threshold: int) -> RecoveryPlan:
    """The plan for these holder cards (share i + 1 for `holders[i]`)."""
    return RecoveryPlan(threshold, tuple(recipient_for(card) for card in holders))


def request_recovery(
    header: Header, requester: Card, reason: str, session: TokenSession, key: KeyInfo
) -> RecoveryRequest:
    """A request for the file of `header`, signed on the requester's token with `key`."""
    if key.spki_der != requester.spki_der:
        raise UsageError(f"token key {key.label!r} is not the key of card {requester.id[:16]}")
    recipient_for(requester)  # a card the shares can be wrapped to
    body = RequestBody(header, requester, reason, now_utc())
    return make_request(body, key.key_type.signature_algorithm, lambda m: session.sign(key, m))


def approve_request(
    request: RecoveryRequest, holder: Card, session: TokenSession, key: KeyInfo
) -> RecoveryShare:
    """Unwrap the holder's share on their token and wrap it to the requester's card key.

    The request's signature is checked here; the caller has checked that the requester's
    card is one it trusts (server and officer signatures, not revoked).
    """
    request.verify()
    header = request.body.header
    recovery = header.recovery
    assert recovery is not None  # RequestBody refuses a header without recovery entries
    index = recovery.index_of(holder.key_id)
    if index is None:
        raise RecoveryError(
            f"card {holder.id[:16]} holds no recovery share of this file",
            hint="Approve with the card whose key holds a share ('hsm-vault inspect' FILE).",
        )
    if key.spki_der != holder.spki_der:
        raise UsageError(f"token key {key.label!r} is not the key of card {holder.id[:16]}")
    requester = recipient_for(request.body.requester)
    share = unwrap_file_key(recovery.shares[index - 1], TokenIdentity(session, key))
    wrapped = wrap_file_key(requester, share, Randomness()).dump()
    body = ShareBody(
        request_id=request.id,
        header_sha256=request.body.header_sha256,
        requester_card_id=request.body.requester.id,
        index=index,
        threshold=recovery.threshold,
        holder=holder,
        wrapped=wrapped,
        created_at=now_utc(),
    )
    return make_share(body, key.key_type.signature_algorithm, lambda m: session.sign(key, m))


def read_shares(folder: Path) -> list[RecoveryShare]:
    """Every `*.share` file in `folder`, parsed (a malformed one is refused, naming it)."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", hint="Pass --shares DIR with the shares.")
    shares = []
    for path in sorted(folder.glob(f"*{SHARE_SUFFIX}")):
        try:
            if path.stat().st_size > MAX_SHARE_FILE:
                raise RecoveryError(f"{path.name} is too large for a share")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        try:
            shares.append(RecoveryShare.from_text(text))
        except RecoveryError as exc:
            raise type(exc)(f"{path.name}: {exc.message}", hint=exc.hint) from None
    return shares


def recover_file_key(
    header: Header, shares: Sequence[RecoveryShare], identities: Sequence[Identity]
) -> bytes:
    """Check every share against the file and the requester's keys (rules R7-R11), unwrap
    them on the requester's token, rebuild the file key and prove it with the header MAC."""
    recovery = header.recovery
    if recovery is None:
        raise RecoveryError(
            "the file has no recovery entries",
            hint="Only files written under a recovery policy can be recovered.",
        )
    by_id = {identity.key_id: identity for identity in identities}
    values: dict[int, bytes] = {}
    for share in shares:
        entry = share.verify_for(header, by_id)
        if share.body.index in values:
            raise RecoveryError(f"two shares have the index {share.body.index}")
        values[share.body.index] = unwrap_file_key(entry, by_id[entry.key_id])
    if len(values) < recovery.threshold:
        raise RecoveryError(
            f"{len(values)} of the {recovery.threshold} shares needed to recover the file",
            hint="Ask more holders to approve the request ('hsm-vault recover approve').",
        )
    file_key = combine_shares(values, recovery.threshold)
    expected = header_mac(file_key, header.raw[:-MAC_LENGTH])
    if not hmac.compare_digest(expected, header.mac):
        raise RecoveryError("the shares do not rebuild this file's key (a share is wrong)")
    return file_key


def recover_file(
    src: Path,
    dst: Path | None,
    shares: Sequence[RecoveryShare],
    identities: Sequence[Identity],
    *,
    force: bool = False,
) -> DecryptResult:
    """Decrypt `src` with the file key the shares rebuild; output appears only when verified."""
    _check_output(src, dst, force)
    with open_input(src) as source:
        header = read_header(source)
        file_key = recover_file_key(header, shares, identities)
        with _atomic_output(dst, 0o600, force=force) as out:
            return decrypt_with_file_key(source, out, header, file_key)


def recover_rewrap(
    path: Path,
    shares: Sequence[RecoveryShare],
    identities: Sequence[Identity],
    requester: Card,
) -> RewrapResult:
    """Give `path` to the requester's card in place, without decrypting it."""
    with open_input(path) as source:
        header = read_header(source)
    file_key = recover_file_key(header, shares, identities)
    if header_digest(header) != shares[0].body.header_sha256:
        raise HeaderError("the file changed during the recovery")
    return rewrap_file_with_key(path, file_key, RecipientChange(add=(recipient_for(requester),)))
