"""The envelope with software identities: round trips, streaming, signatures, API rules."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from vectors.software_identity import SoftwareIdentity

from hsm_vault.algorithms import SignatureAlgorithm
from hsm_vault.envelope import (
    Recipient,
    SignerReference,
    Verifier,
    decrypt,
    encrypt,
    read_header,
)
from hsm_vault.envelope import envelope as envelope_module
from hsm_vault.errors import EnvelopeError, NoMatchingRecipient, PayloadError, SignatureError

CHUNK = 1024


@pytest.fixture(scope="module")
def identities() -> dict[str, SoftwareIdentity]:
    return {
        "p256": SoftwareIdentity(ec.generate_private_key(ec.SECP256R1())),
        "p384": SoftwareIdentity(ec.generate_private_key(ec.SECP384R1())),
        "rsa2048": SoftwareIdentity(rsa.generate_private_key(65537, 2048)),
    }


@pytest.fixture(params=[False, True], ids=["sequential", "overlapped"])
def overlapped(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test with the one-buffer stream and with the reader/writer threads."""
    monkeypatch.setattr(envelope_module, "is_large", lambda src, chunk_size: request.param)
    return bool(request.param)


def roundtrip(data: bytes, recipients: list[Recipient], identity: SoftwareIdentity) -> bytes:
    sealed = io.BytesIO()
    result = encrypt(io.BytesIO(data), sealed, recipients, chunk_size=CHUNK)
    assert result.ciphertext_size == len(sealed.getvalue())
    out = io.BytesIO()
    decrypt(io.BytesIO(sealed.getvalue()), out, [identity])
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7])
@pytest.mark.parametrize("kind", ["p256", "p384", "rsa2048"])
def test_roundtrip_sizes(identities: dict, kind: str, size: int, overlapped: bool) -> None:
    data = os.urandom(size)
    identity = identities[kind]
    assert roundtrip(data, [identity.recipient()], identity) == data


def test_mixed_recipients_each_can_decrypt(identities: dict) -> None:
    data = os.urandom(5000)
    recipients = [i.recipient() for i in identities.values()]
    for identity in identities.values():
        assert roundtrip(data, recipients, identity) == data


def test_file_key_is_fresh_per_file(identities: dict) -> None:
    recipient = identities["p256"].recipient()
    a, b = io.BytesIO(), io.BytesIO()
    encrypt(io.BytesIO(b"same"), a, [recipient])
    encrypt(io.BytesIO(b"same"), b, [recipient])
    assert a.getvalue() != b.getvalue()


def test_no_match_names_the_key_ids(identities: dict) -> None:
    sealed = io.BytesIO()
    encrypt(io.BytesIO(b"x"), sealed, [identities["p256"].recipient()])
    with pytest.raises(NoMatchingRecipient) as info:
        decrypt(io.BytesIO(sealed.getvalue()), io.BytesIO(), [identities["p384"]])
    assert identities["p256"].key_id.hex() in str(info.value)


def test_refuses_no_recipients_and_duplicates(identities: dict) -> None:
    with pytest.raises(EnvelopeError):
        encrypt(io.BytesIO(b""), io.BytesIO(), [])
    r = identities["p256"].recipient()
    with pytest.raises(EnvelopeError):
        encrypt(io.BytesIO(b""), io.BytesIO(), [r, r])


def test_recipient_rejects_a_wrong_key_id(identities: dict) -> None:
    r = identities["p256"].recipient()
    with pytest.raises(EnvelopeError):
        Recipient(r.spki_der, r.key_type, None, b"\x00" * 32)


class _Signer:
    def __init__(self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self.key = key
        self.spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        from hsm_vault.algorithms import key_type_of

        kt = key_type_of(key.public_key())
        alg = kt.signature_algorithm
        self.reference = SignerReference(
            hashlib.sha256(b"card" + self.spki).digest(),
            hashlib.sha256(self.spki).digest(),
            alg,
            SignerReference.length_for(kt),
        )

    def sign(self, message: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import padding

        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            h = (
                hashes.SHA256()
                if self.reference.algorithm is SignatureAlgorithm.ECDSA_SHA256
                else hashes.SHA384()
            )
            return self.key.sign(message, ec.ECDSA(h))
        return self.key.sign(
            message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
        )

    def verifier(self) -> Verifier:
        return Verifier(self.reference.card_id, self.spki, "sender")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: rsa.generate_private_key(65537, 2048),
    ],
    ids=["ecdsa-p256", "ecdsa-p384", "rsa-pss"],
)
@pytest.mark.parametrize("size", [0, CHUNK, 2 * CHUNK + 5])
def test_signed_roundtrip(identities: dict, make, size: int, overlapped: bool) -> None:
    signer = _Signer(make())
    data = os.urandom(size)
    sealed = io.BytesIO()
    encrypt(io.BytesIO(data), sealed, [identities["p256"].recipient()], signer, chunk_size=CHUNK)
    out = io.BytesIO()
    result = decrypt(io.BytesIO(sealed.getvalue()), out, [identities["p256"]], signer.verifier())
    assert out.getvalue() == data
    assert result.signer == signer.verifier()
    assert read_header(io.BytesIO(sealed.getvalue())).signer == signer.reference
    # A different expected sender fails before any plaintext is released.
    other = _Signer(ec.generate_private_key(ec.SECP256R1()))
    out = io.BytesIO()
    with pytest.raises(SignatureError):
        decrypt(io.BytesIO(sealed.getvalue()), out, [identities["p256"]], other.verifier())
    assert out.getvalue() == b""


def test_stream_releases_only_verified_chunks(identities: dict, overlapped: bool) -> None:
    data = os.urandom(3 * CHUNK)
    sealed = io.BytesIO()
    encrypt(io.BytesIO(data), sealed, [identities["p256"].recipient()], chunk_size=CHUNK)
    damaged = bytearray(sealed.getvalue())
    damaged[-20] ^= 1  # inside the last chunk
    out = io.BytesIO()
    with pytest.raises(PayloadError):
        decrypt(io.BytesIO(bytes(damaged)), out, [identities["p256"]])
    assert out.getvalue() == data[: 2 * CHUNK]  # the two chunks that verified, nothing more


class _Trickle(io.RawIOBase):
    """A pipe that hands out at most 7 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        chunk = self._data.read(min(7, len(buffer)))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def read(self, n: int = -1) -> bytes:
        return self._data.read(min(7, n) if n >= 0 else 7)


def test_short_reads_like_a_pipe(identities: dict, overlapped: bool) -> None:
    data = os.urandom(2 * CHUNK + 3)
    sealed = io.BytesIO()
    encrypt(_Trickle(data), sealed, [identities["rsa2048"].recipient()], chunk_size=CHUNK)  # type: ignore[arg-type]
    out = io.BytesIO()
    decrypt(_Trickle(sealed.getvalue()), out, [identities["rsa2048"]])  # type: ignore[arg-type]
    assert out.getvalue() == data


def test_real_pipe_and_files(identities: dict, tmp_path) -> None:
    """Through an OS pipe (unknown length: the threaded path) and back from a file."""
    import threading

    data = os.urandom(5 * CHUNK * 64 + 3)
    read_end, write_end = os.pipe()

    def feed() -> None:
        with open(write_end, "wb") as w:
            w.write(data)

    feeder = threading.Thread(target=feed)
    feeder.start()
    sealed = tmp_path / "sealed"
    with open(read_end, "rb", buffering=0) as r, open(sealed, "wb", buffering=0) as out:
        encrypt(r, out, [identities["p384"].recipient()], chunk_size=CHUNK * 64)
    feeder.join()
    out_path = tmp_path / "plain"
    with open(sealed, "rb", buffering=0) as src, open(out_path, "wb", buffering=0) as out:
        decrypt(src, out, [identities["p384"]])
    assert out_path.read_bytes() == data


def test_every_single_bit_flip_and_truncation_is_detected(identities: dict) -> None:
    """Flip a bit in each byte of a signed two-chunk file, and cut it at every length: every
    variant fails with one of the envelope's errors (never another exception)."""
    from hsm_vault.errors import HeaderError

    signer = _Signer(ec.generate_private_key(ec.SECP256R1()))
    sealed = io.BytesIO()
    recipients = [identities["p256"].recipient()]
    encrypt(io.BytesIO(os.urandom(CHUNK + 100)), sealed, recipients, signer, chunk_size=CHUNK)
    good = sealed.getvalue()
    expected = (HeaderError, PayloadError, SignatureError, NoMatchingRecipient)
    variants = [good[:cut] for cut in range(len(good))]
    for i in range(len(good)):
        flipped = bytearray(good)
        flipped[i] ^= 1 << (i % 8)
        variants.append(bytes(flipped))
    for variant in variants:
        with pytest.raises(expected):
            decrypt(io.BytesIO(variant), io.BytesIO(), [identities["p256"]], signer.verifier())


def test_plaintext_size_is_the_inverse_of_payload_size_and_refuses_the_rest() -> None:
    from hsm_vault.envelope.stream import payload_size, plaintext_size
    from hsm_vault.errors import PayloadError

    chunk = 64
    sizes = {payload_size(n, chunk): n for n in range(0, 4 * chunk + 2)}
    for payload in range(0, payload_size(4 * chunk + 1, chunk) + 1):
        if payload in sizes:
            assert plaintext_size(payload, chunk) == sizes[payload]
        else:  # truncated or extended: no file has this payload size
            with pytest.raises(PayloadError):
                plaintext_size(payload, chunk)


def test_the_public_api_has_no_test_seams() -> None:
    import inspect

    import hsm_vault.envelope

    # Fixed randomness is for the vector generators only, through a private function.
    assert "randomness" not in inspect.signature(encrypt).parameters
    # A private key in memory ships with the tests, not with the package.
    assert not hasattr(hsm_vault.envelope, "SoftwareIdentity")


def test_each_kind_of_recipient_entry_is_its_own_type(identities: dict) -> None:
    from hsm_vault.envelope.format import ECRecipientEntry, RSARecipientEntry

    sealed = io.BytesIO()
    people = [identities["p256"], identities["rsa2048"]]
    encrypt(io.BytesIO(b"x"), sealed, [i.recipient() for i in people])
    ec_entry, rsa_entry = read_header(io.BytesIO(sealed.getvalue())).recipients
    assert isinstance(ec_entry, ECRecipientEntry)
    assert len(ec_entry.ephemeral_point) == 65
    assert not hasattr(ec_entry, "oaep_hash")
    assert isinstance(rsa_entry, RSARecipientEntry)
    assert rsa_entry.oaep_hash == "sha1"
    assert not hasattr(rsa_entry, "ephemeral_point")
