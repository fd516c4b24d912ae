"""Re-wrapping: a new header for the same file key, payload bytes untouched (docs/format.md).

The recipe is pyca's `MultiFernet.rotate` applied to a header: unwrap the file key once (with
any identity that is a recipient), then write a header for a new recipient set. Entries kept
are copied byte for byte, so whoever re-wraps needs the cards of the recipients added only;
added recipients get fresh entries; the payload parameters stay, so the payload still opens.
`rewrap_header` takes the file key itself, so that a key recovered some other way (a
recovery ceremony) goes through the same code.

Pure: no I/O, no token. `check_rewrap` is what the server applies to a header swap.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from asn1crypto import cms

from hsm_vault.envelope.envelope import Header, header_mac, unwrap
from hsm_vault.envelope.format import (
    MAC_LENGTH,
    PREFIX_LENGTH,
    encode_body,
    encode_prefix,
    parse_body,
    recipient_infos,
    recovery_structure,
)
from hsm_vault.envelope.recipients import Identity, Randomness, Recipient, wrap_file_key
from hsm_vault.errors import EnvelopeError, HeaderError


@dataclass(frozen=True)
class RecipientChange:
    """Which key ids leave a file and which recipients join it."""

    remove: frozenset[bytes] = frozenset()
    add: tuple[Recipient, ...] = ()
    #: (what the person named, its key ids): the header must name one of each, or the
    #: re-wrap is refused ("carol" may stand for several cards, of which one is in the file).
    required: tuple[tuple[str, frozenset[bytes]], ...] = ()
    _added_ids: frozenset[bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ids = [r.key_id for r in self.add]
        if len(set(ids)) != len(ids):
            raise EnvelopeError("the same recipient is added twice", hint="Name each one once.")
        if self.remove & set(ids):
            raise EnvelopeError(
                "a recipient is both added and removed", hint="Name it in one of the two only."
            )
        object.__setattr__(self, "_added_ids", frozenset(ids))

    def applies_to(self, key_ids: Collection[bytes]) -> bool:
        """Whether a file with these recipients would change."""
        present = set(key_ids)
        return bool(self.remove & present) or bool(self._added_ids - present)


def _body(header: Header) -> bytes:
    return header.raw[PREFIX_LENGTH:-MAC_LENGTH]


def new_key_ids(header: Header, change: RecipientChange) -> list[bytes]:
    """The recipients' key ids after `change`; raises what a re-wrap would refuse.

    Refuses a signed header (the signature covers the header), a header that names none of
    the keys of a `change.required` entry, and a result with no recipient.
    """
    if header.signer is not None:
        raise EnvelopeError(
            "the file is signed, and its signature covers the header a re-wrap replaces",
            hint="Decrypt it and encrypt it again (--sign-with to sign the new file).",
        )
    present = [entry.key_id for entry in header.recipients]
    for name, key_ids in change.required:
        if not key_ids & set(present):
            raise EnvelopeError(
                f"{name} is not a recipient of the file",
                hint="'hsm-vault inspect FILE' lists the file's recipients.",
            )
    kept = [key_id for key_id in present if key_id not in change.remove]
    kept += [r.key_id for r in change.add if r.key_id not in kept]
    if not kept:
        raise EnvelopeError(
            "that would remove the file's last recipient",
            hint="Add the new recipient in the same re-wrap (--add or --to-card).",
        )
    return kept


def rewrap_header(
    header: Header,
    file_key: bytes,
    change: RecipientChange,
) -> Header:
    """The header for `change`, under `file_key` (which must be the header's own).

    The payload parameters are the old ones and kept entries are copied as they are, so the
    payload bytes that follow the old header follow the new one unchanged.
    """
    expected = header_mac(file_key, header.raw[:-MAC_LENGTH])
    if not hmac.compare_digest(expected, header.mac):
        raise HeaderError("the header MAC does not verify under that file key")
    wanted = new_key_ids(header, change)
    old = recipient_infos(_body(header))
    rng = Randomness()
    added = {r.key_id: r for r in change.add}
    entries: list[Any] = []
    for key_id in wanted:
        if key_id in old:
            entries.append(cms.RecipientInfo.load(old[key_id]))
        else:
            entries.append(wrap_file_key(added[key_id], file_key, rng))
    # Recovery entries are copied as they are: the shares are of the same file key.
    body = encode_body(entries, header.payload, header.signer, recovery_structure(_body(header)))
    prefix_and_body = encode_prefix(len(body), header.version) + body
    return Header(
        parse_body(body, header.version), prefix_and_body + header_mac(file_key, prefix_and_body)
    )


def rewrap(
    header: Header,
    identities: Sequence[Identity],
    change: RecipientChange,
) -> Header:
    """Unwrap the file key once with one of `identities`, then `rewrap_header`.

    Checks the change before the token is used, so a refused change costs no unwrap.
    """
    new_key_ids(header, change)
    file_key, _ = unwrap(header, identities)
    return rewrap_header(header, file_key, change)


def _recovery_der(header: Header) -> bytes | None:
    structure = recovery_structure(_body(header))
    return None if structure is None else bytes(structure.dump(force=True))


def check_rewrap(old: Header, new: Header, *, only: Collection[bytes] | None = None) -> None:
    """Refuse `new` unless it can be a re-wrap of `old` (what the server checks on a swap).

    Same payload parameters, no signer and the same recovery entries, so the payload still
    opens under the new header for whoever can unwrap it. With `only` (the key ids of a
    caller who is a recipient but not the owner), the entries of every other key must stay
    byte for byte as they were: such a caller can change only their own entries. The MAC
    cannot be checked without the file key.
    """
    if new.payload != old.payload:
        raise HeaderError("the new header changes the payload parameters")
    if old.signer is not None or new.signer is not None:
        raise HeaderError("a signed file cannot be re-wrapped (the signature covers the header)")
    if _recovery_der(old) != _recovery_der(new):
        raise HeaderError("a re-wrap keeps the recovery entries as they are")
    if only is None:
        return
    mine = set(only)
    before = {k: v for k, v in recipient_infos(_body(old)).items() if k not in mine}
    after = {k: v for k, v in recipient_infos(_body(new)).items() if k not in mine}
    if before != after:
        raise HeaderError("a recipient who is not the owner may change only their own entries")
