"""vault.py on real SoftHSM tokens: cards in, token keys out, files written safely."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hsm_vault.cards import Keyring, create_card
from hsm_vault.envelope import DEFAULT_CHUNK_SIZE
from hsm_vault.errors import (
    CardError,
    FileExistsRefused,
    HeaderError,
    NoMatchingRecipient,
    PayloadError,
    SignatureError,
    UsageError,
)
from hsm_vault.token import open_session
from hsm_vault.vault import (
    TokenSigner,
    decrypt_file,
    encrypt_file,
    inspect_file,
    recipient_for,
    token_identities,
    verifier_for,
)

TOKEN_OF = {"alice": "alice", "bob": "bob"}


def card_for(label: str, identity: str):
    token = label.split("-")[0]
    with open_session(token) as ts:
        key = ts.find_key(label)
        card = create_card(ts, key, identity)
    Keyring().add(card, origin="own", key_uri=key.uri)
    return card


def decrypt_with(token: str, src: Path, dst: Path, **kw):
    with open_session(token) as ts:
        return decrypt_file(src, dst, token_identities(ts), **kw)


@pytest.fixture
def cards(token_keys) -> dict:
    return {
        label: card_for(label, label.split("-")[0])
        for label in ("alice-p256", "alice-p384", "alice-rsa2048", "bob-p256", "bob-rsa3072")
    }


@pytest.mark.parametrize("label", ["alice-p256", "alice-p384", "alice-rsa2048", "bob-rsa3072"])
@pytest.mark.parametrize(
    "size", [0, 1, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE + 1], ids=["0", "1", "chunk", "chunk+1"]
)
def test_roundtrip_on_the_token(cards, tmp_path: Path, label: str, size: int) -> None:
    data = os.urandom(size)
    src, sealed, out = tmp_path / "in", tmp_path / "in.hsmv", tmp_path / "out"
    src.write_bytes(data)
    encrypt_file(src, sealed, [recipient_for(cards[label])])
    result = decrypt_with(label.split("-")[0], sealed, out)
    assert out.read_bytes() == data
    assert result.key_id == cards[label].key_id
    assert oct(out.stat().st_mode & 0o777) == oct(0o600)


def test_mixed_recipients_on_two_tokens(cards, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    src, sealed = tmp_path / "in", tmp_path / "in.hsmv"
    src.write_bytes(data)
    chosen = ["alice-p384", "bob-rsa3072", "alice-rsa2048", "bob-p256"]
    encrypt_file(src, sealed, [recipient_for(cards[c]) for c in chosen])
    header, size = inspect_file(sealed)
    assert size == len(data)
    assert [e.key_id for e in header.recipients] == [cards[c].key_id for c in chosen]
    for token in ("alice", "bob"):
        out = tmp_path / f"out-{token}"
        decrypt_with(token, sealed, out)
        assert out.read_bytes() == data


def test_no_matching_key_on_the_token(cards, tmp_path: Path) -> None:
    src, sealed = tmp_path / "in", tmp_path / "in.hsmv"
    src.write_bytes(b"for bob only")
    encrypt_file(src, sealed, [recipient_for(cards["bob-p256"])])
    with pytest.raises(NoMatchingRecipient) as info:
        decrypt_with("alice", sealed, tmp_path / "out")
    assert cards["bob-p256"].key_id.hex() in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("chunks", [2, 6], ids=["one-buffer", "threads"])
def test_failed_decrypt_leaves_no_output_and_keeps_the_old_target(
    cards, tmp_path: Path, chunks: int
) -> None:
    tmp_path = tmp_path / "work"  # a folder of its own, so that stray files would show
    tmp_path.mkdir()
    data = os.urandom(chunks * DEFAULT_CHUNK_SIZE + 5)
    src, sealed = tmp_path / "in", tmp_path / "in.hsmv"
    src.write_bytes(data)
    encrypt_file(src, sealed, [recipient_for(cards["alice-p256"])])
    damaged = bytearray(sealed.read_bytes())
    damaged[-3] ^= 0x80  # the last tag: the chunks before it verify and reach the temp file
    sealed.write_bytes(bytes(damaged))
    out = tmp_path / "out"
    with pytest.raises(PayloadError):
        decrypt_with("alice", sealed, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "in.hsmv"]
    out.write_bytes(b"precious")
    with pytest.raises(PayloadError):
        decrypt_with("alice", sealed, out, force=True)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "in.hsmv", "out"]
    damaged[20] ^= 1  # now the header
    sealed.write_bytes(bytes(damaged))
    with pytest.raises(HeaderError):
        decrypt_with("alice", sealed, out, force=True)
    assert out.read_bytes() == b"precious"


def test_encrypt_refuses_to_overwrite(cards, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"data")
    recipients = [recipient_for(cards["alice-p256"])]
    with pytest.raises(UsageError):
        encrypt_file(src, src, recipients, force=True)
    assert src.read_bytes() == b"data"
    out = tmp_path / "in.hsmv"
    out.write_bytes(b"old")
    with pytest.raises(FileExistsRefused):
        encrypt_file(src, out, recipients)
    assert out.read_bytes() == b"old"
    encrypt_file(src, out, recipients, force=True)
    assert out.read_bytes() != b"old"


@pytest.mark.parametrize("signer_label", ["alice-p256", "alice-p384", "bob-rsa3072"])
def test_sign_then_encrypt(cards, tmp_path: Path, signer_label: str) -> None:
    data = os.urandom(DEFAULT_CHUNK_SIZE + 99)
    src, sealed, out = tmp_path / "in", tmp_path / "in.hsmv", tmp_path / "out"
    src.write_bytes(data)
    signer_token = signer_label.split("-")[0]
    with open_session(signer_token) as ts:
        key = ts.find_key(signer_label)
        signer = TokenSigner(ts, key, cards[signer_label])
        encrypt_file(src, sealed, [recipient_for(cards["alice-p256"])], signer)
    result = decrypt_with("alice", sealed, out, verifier=verifier_for(cards[signer_label]))
    assert out.read_bytes() == data
    assert result.signer is not None and result.signer.name == signer_label.split("-")[0]
    # Required from someone else: refused, nothing written.
    other = "bob-p256" if signer_label != "bob-p256" else "alice-p256"
    with pytest.raises(SignatureError):
        decrypt_with("alice", sealed, tmp_path / "o2", verifier=verifier_for(cards[other]))
    assert not (tmp_path / "o2").exists()


def test_unsigned_file_asked_to_verify_fails(cards, tmp_path: Path) -> None:
    src, sealed = tmp_path / "in", tmp_path / "in.hsmv"
    src.write_bytes(b"hello")
    encrypt_file(src, sealed, [recipient_for(cards["alice-p256"])])
    with pytest.raises(SignatureError):
        decrypt_with("alice", sealed, tmp_path / "out", verifier=verifier_for(cards["bob-p256"]))
    assert not (tmp_path / "out").exists()


def test_encrypting_does_not_load_pkcs11(cards, tmp_path: Path) -> None:
    card = cards["bob-rsa3072"]
    src = tmp_path / "in"
    src.write_bytes(b"x" * 1000)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hsm_vault.cards import Keyring\n"
        "from hsm_vault.vault import encrypt_file, recipient_for\n"
        f"card = Keyring().resolve({card.id!r}).card\n"
        f"out = Path({str(tmp_path / 'out')!r})\n"
        f"encrypt_file(Path({str(src)!r}), out, [recipient_for(card)])\n"
        "assert 'pkcs11' not in sys.modules, 'pkcs11 was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
    assert (tmp_path / "out").stat().st_size > 1000


class _Generated(io.RawIOBase):
    """A deterministic byte stream of a given size, produced chunk by chunk (no file)."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = hashlib.sha512(b"seed").digest() * 16384  # 1 MiB pattern
        self.counter = 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left, len(self.block))
        if n <= 0:
            return 0
        view = memoryview(buffer)[:n]
        view[:] = self.block[:n]
        stamp = min(8, n)
        view[:stamp] = self.counter.to_bytes(8, "big")[:stamp]  # no two blocks alike
        self.counter += 1
        self.digest.update(view)
        self.left -= n
        return n


class _Hashing(io.RawIOBase):
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.digest.update(data)
        self.size += len(data)
        return len(data)


@pytest.mark.slow
def test_several_hundred_mib_in_constant_memory(cards, tmp_path: Path) -> None:
    from hsm_vault.envelope import decrypt, encrypt

    size = 300 * 1024 * 1024 + 12345
    source = _Generated(size)
    sealed = tmp_path / "big.hsmv"
    recipients = [recipient_for(cards["alice-p256"]), recipient_for(cards["bob-rsa3072"])]
    with open(sealed, "wb", buffering=0) as out:
        encrypt(source, out, recipients)  # type: ignore[arg-type]
    sink = _Hashing()
    with open_session("bob") as ts, open(sealed, "rb", buffering=0) as src:
        decrypt(src, sink, token_identities(ts))  # type: ignore[arg-type]
    assert sink.size == size
    assert sink.digest.digest() == source.digest.digest()


def test_a_card_that_states_no_scope_is_not_for_encryption(cards) -> None:
    # Duck-typed cards reach recipient_for too (card files, server entries): a missing scope
    # must refuse, never default to "encrypt".
    from types import SimpleNamespace

    card = cards["alice-p256"]
    scopeless = SimpleNamespace(
        snapshot=SimpleNamespace(), id=card.id, identity=card.identity, spki_der=card.spki_der
    )
    with pytest.raises(CardError, match="not for encryption"):
        recipient_for(scopeless)  # type: ignore[arg-type]
