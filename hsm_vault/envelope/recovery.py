"""Recovery entries in a header: the file key split into shares, each wrapped to a holder.

A version 2 header carries, besides its recipients, `threshold` of `n` shares (docs/format.md
"Recovery entries"): the 32-byte file key is cut into two 16-byte halves, each split with
Shamir's scheme over GF(2^128) by pycryptodome (`Crypto.Protocol.SecretSharing.Shamir`), and
share i is the i-th share of the first half followed by the i-th share of the second. Each
share is wrapped to its holder's key exactly as a file key is wrapped to a recipient. With a
threshold of 1 every share is the file key itself (a recovery card). Fewer than `threshold`
shares say nothing about the key: for every possible key there is a polynomial through them.

Normal decryption never looks at these entries. Pure: no I/O, no token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from Crypto.Protocol.SecretSharing import Shamir

from hsm_vault.envelope.format import FILE_KEY_LENGTH, MAX_SHARES, recovery_value
from hsm_vault.envelope.recipients import Randomness, Recipient, wrap_file_key
from hsm_vault.errors import EnvelopeError

SHARE_LENGTH = FILE_KEY_LENGTH
_HALF = FILE_KEY_LENGTH // 2


@dataclass(frozen=True)
class RecoveryPlan:
    """Who can recover the files a client writes: any `threshold` of `holders` (in order: the
    first holds share 1). One holder and a threshold of 1 is a recovery card."""

    threshold: int
    holders: tuple[Recipient, ...]

    def __post_init__(self) -> None:
        holders = tuple(self.holders)
        if not 1 <= len(holders) <= MAX_SHARES:
            raise EnvelopeError(f"a recovery plan has 1 to {MAX_SHARES} holders")
        if not 1 <= self.threshold <= len(holders):
            raise EnvelopeError(f"the recovery threshold must be 1 to {len(holders)}")
        ids = [h.key_id for h in holders]
        if len(set(ids)) != len(ids):
            raise EnvelopeError("a recovery holder is named twice")
        object.__setattr__(self, "holders", holders)


def split_file_key(file_key: bytes, threshold: int, count: int) -> list[bytes]:
    """`count` shares of `file_key` (share i + 1 at position i), any `threshold` of which
    rebuild it."""
    if len(file_key) != FILE_KEY_LENGTH:
        raise EnvelopeError("a file key is 32 bytes")
    halves = [Shamir.split(threshold, count, file_key[i : i + _HALF]) for i in (0, _HALF)]
    shares = []
    for position, (first, second) in enumerate(zip(*halves, strict=True)):
        if first[0] != position + 1 or second[0] != position + 1:
            raise EnvelopeError("unexpected share numbering from the secret sharing library")
        shares.append(first[1] + second[1])
    return shares


def combine_shares(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The file key from at least `threshold` shares by index. With fewer, refuses: a wrong
    result would be indistinguishable from any other key."""
    if len(shares) < threshold:
        raise EnvelopeError(
            f"{len(shares)} of the {threshold} recovery shares needed",
            hint="Collect more officers' approvals of the request.",
        )
    if any(len(value) != SHARE_LENGTH for value in shares.values()):
        raise EnvelopeError("a recovery share is not 32 bytes")
    chosen = sorted(shares.items())[:threshold]
    halves = [
        Shamir.combine([(index, value[i : i + _HALF]) for index, value in chosen])
        for i in (0, _HALF)
    ]
    return halves[0] + halves[1]


def recovery_structure_for(plan: RecoveryPlan, file_key: bytes, randomness: Randomness) -> Any:
    """The header's Recovery structure for `plan`: fresh shares, each wrapped to its holder."""
    values = split_file_key(file_key, plan.threshold, len(plan.holders))
    entries = [
        wrap_file_key(holder, value, randomness)
        for holder, value in zip(plan.holders, values, strict=True)
    ]
    return recovery_value(plan.threshold, entries)
