"""Re-wrap as pure format code: a new header under the same file key, payload untouched."""

from __future__ import annotations

import io
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from vectors.software_identity import SoftwareIdentity

from hsm_vault.envelope import decrypt, encrypt, read_header
from hsm_vault.envelope.format import recipient_infos
from hsm_vault.envelope.rewrap import RecipientChange, check_rewrap, rewrap
from hsm_vault.errors import EnvelopeError, HeaderError, NoMatchingRecipient


@pytest.fixture(scope="module")
def people() -> dict[str, SoftwareIdentity]:
    return {
        "alice": SoftwareIdentity(ec.generate_private_key(ec.SECP256R1())),
        "bob": SoftwareIdentity(ec.generate_private_key(ec.SECP384R1())),
        "carol": SoftwareIdentity(rsa.generate_private_key(65537, 2048)),
    }


def _sealed(plaintext: bytes, *who: SoftwareIdentity) -> bytes:
    out = io.BytesIO()
    encrypt(io.BytesIO(plaintext), out, [w.recipient() for w in who], chunk_size=1024)
    return out.getvalue()


def _opens(data: bytes, identity: SoftwareIdentity) -> bytes:
    out = io.BytesIO()
    decrypt(io.BytesIO(data), out, [identity])
    return out.getvalue()


def test_rewrap_keeps_payload_and_untouched_entries(people) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    plaintext = os.urandom(5000)
    data = _sealed(plaintext, alice, carol)
    old = read_header(io.BytesIO(data))
    change = RecipientChange(frozenset({carol.key_id}), (bob.recipient(),))
    new = rewrap(old, [alice], change)
    rewrapped = new.raw + data[len(old.raw) :]
    assert [e.key_id for e in new.recipients] == [alice.key_id, bob.key_id]
    assert _opens(rewrapped, bob) == plaintext
    assert _opens(rewrapped, alice) == plaintext
    with pytest.raises(NoMatchingRecipient):
        _opens(rewrapped, carol)
    body = slice(13, -32)
    kept = recipient_infos(old.raw[body])[alice.key_id]
    assert recipient_infos(new.raw[body])[alice.key_id] == kept
    check_rewrap(old, new)  # the owner may do anything that fits the payload
    check_rewrap(old, new, only={carol.key_id, bob.key_id})  # a swap of carol's own entries
    with pytest.raises(HeaderError, match="only their own"):
        check_rewrap(old, new, only={bob.key_id})


def test_refusals(people) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    data = _sealed(b"x", alice)
    header = read_header(io.BytesIO(data))
    with pytest.raises(EnvelopeError, match="last recipient"):
        rewrap(header, [alice], RecipientChange(frozenset({alice.key_id})))
    with pytest.raises(EnvelopeError, match="not a recipient"):
        rewrap(
            header,
            [alice],
            RecipientChange(
                frozenset({bob.key_id}),
                (carol.recipient(),),
                required=(("bob", frozenset({bob.key_id})),),
            ),
        )
    with pytest.raises(NoMatchingRecipient):  # a file you cannot open
        rewrap(header, [bob], RecipientChange(add=(carol.recipient(),)))
    other = read_header(io.BytesIO(_sealed(b"y", alice)))
    with pytest.raises(HeaderError, match="payload"):
        check_rewrap(header, other)
