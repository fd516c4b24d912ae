"""Export an hsm-vault file as a standard CMS message (`hsm-vault export --cms`).

The token unwraps the file key once; the payload is decrypted chunk by verified chunk straight
into a `CMSWriter`, which encrypts it again under a fresh content key wrapped to the chosen
cards. Plaintext exists only in memory, a chunk at a time; the output goes to a temporary file
renamed into place only when the whole input verified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from hsm_vault.cards.status import KeyringStatus
from hsm_vault.envelope import Header, Identity, Recipient, decrypt, read_header
from hsm_vault.envelope.cms_export import CMSKind, CMSWriter
from hsm_vault.envelope.stream import Progress
from hsm_vault.errors import CardNotFound, CardRevoked
from hsm_vault.vault import (
    _atomic_output,
    _check_output,
    _public_mode,
    open_input,
    recipient_for,
)

if TYPE_CHECKING:
    from hsm_vault.cards import KeyringEntry

SUFFIX = ".p7m"


@dataclass(frozen=True)
class ExportResult:
    header: Header
    plaintext_size: int
    recipients: tuple[Recipient, ...]


def recipients_of(header: Header, entries: Iterable[KeyringEntry]) -> list[Recipient]:
    """The file's own recipients as CMS recipients, from keyring entries (card + status).

    Raises if a recipient's card is missing from the keyring or revoked: an export to fewer
    people than the file names should be asked for by name (--to).
    """
    by_key: dict[bytes, KeyringEntry] = {}
    for entry in entries:
        card = entry.card
        if card.key_id not in by_key or entry.status is KeyringStatus.VALID:
            by_key[card.key_id] = entry
    chosen = []
    for item in header.recipients:
        found = by_key.get(item.key_id)
        if found is None:
            raise CardNotFound(
                f"the keyring has no card for recipient key {item.key_id.hex()[:16]}",
                hint="Import that card, or choose the recipients with --to.",
            )
        card = found.card
        if found.status is KeyringStatus.REVOKED:
            raise CardRevoked(
                f"recipient {card.identity} (card {card.id[:16]}) is revoked",
                hint="Choose the recipients with --to.",
            )
        chosen.append(recipient_for(card))
    return chosen


def export_cms_file(
    src: Path,
    dst: Path | None,
    identities: Sequence[Identity],
    recipients: Sequence[Recipient] | None,
    *,
    kind: CMSKind = CMSKind.AUTH_ENVELOPED,
    force: bool = False,
    progress: Progress | None = None,
    keyring_entries: Iterable[KeyringEntry] = (),
) -> ExportResult:
    """Write `src` (an hsm-vault file) as a CMS message to `dst` (stdout if None).

    `recipients` None: the file's own recipients, whose cards come from `keyring_entries`.
    """
    _check_output(src, dst, force)
    with open_input(src) as source:
        header = read_header(source)
        chosen = list(recipients) if recipients else recipients_of(header, keyring_entries)
        with _atomic_output(dst, _public_mode(), force=force) as out:
            writer = CMSWriter(out, chosen, kind)
            sink = cast(BinaryIO, writer)  # a write-only raw stream is all decrypt needs
            result = decrypt(source, sink, identities, header=header, progress=progress)
            writer.finish()
    return ExportResult(header, result.plaintext_size, tuple(chosen))
