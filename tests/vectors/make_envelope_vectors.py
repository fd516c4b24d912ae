#!/usr/bin/env python3
"""Generate the envelope test vectors in tests/vectors/envelope/ from fixed inputs.

    .venv/bin/python tests/vectors/make_envelope_vectors.py [OUTDIR]

Every input is derived from fixed seeds (identity keys, file keys, salts, ephemeral keys, the
OAEP seeds, deterministic ECDSA), so running this again writes byte-identical files; the test
suite checks that. Each vector is one text file:

    expect: success | no match | header failure | payload failure | signature failure
    comment: what the case exercises (and the docs/format.md rule)
    identity: <hex PKCS#8 DER private key>         (one or more; test keys only)
    verify-from: <card id hex> <SPKI DER hex>      (optional: require this signer)
    payload-sha256: <hex>                           (success only)
    <blank line>
    <base64 of the whole file, 76 columns>

The generator checks every vector against the reader before writing it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import cms
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from software_identity import SoftwareIdentity

from hsm_vault.algorithms import KeyType, SignatureAlgorithm
from hsm_vault.envelope import (
    Randomness,
    Recipient,
    SignerReference,
    Verifier,
    decrypt,
    key_id_of,
)
from hsm_vault.envelope.envelope import _encrypt_from_parts, header_mac, payload_key
from hsm_vault.envelope.format import (
    MAC_LENGTH,
    PREFIX_LENGTH,
    _HeaderBody,
    encode_prefix,
)
from hsm_vault.envelope.stream import nonce
from hsm_vault.errors import (
    HeaderError,
    NoMatchingRecipient,
    PayloadError,
    SignatureError,
)

CHUNK = 1024  # small chunks so that a few KiB cover every chunk boundary
OUT = Path(__file__).resolve().parent / "envelope"


def _stream(seed: bytes, n: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed + struct.pack(">Q", counter)).digest()
        counter += 1
    return out[:n]


def _ec_key(seed: str, curve: ec.EllipticCurve, order: int) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(_stream(b"ec " + seed.encode(), 64), "big") % (order - 1) + 1
    return ec.derive_private_key(scalar, curve)


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P384_ORDER = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
    16,
)
ORDERS = {KeyType.EC_P256: P256_ORDER, KeyType.EC_P384: P384_ORDER}
CURVES = {KeyType.EC_P256: ec.SECP256R1(), KeyType.EC_P384: ec.SECP384R1()}
SMALL_PRIMES = [p for p in range(3, 2000) if all(p % q for q in range(2, int(p**0.5) + 1))]


def _is_probable_prime(n: int, seed: bytes) -> bool:
    if any(n % p == 0 for p in SMALL_PRIMES):
        return n in SMALL_PRIMES
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for i in range(40):
        a = int.from_bytes(_stream(seed + struct.pack(">I", i), 64), "big") % (n - 3) + 2
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(seed: str, bits: int) -> int:
    counter = 0
    while True:
        raw = _stream(f"prime {seed} {counter}".encode(), bits // 8)
        candidate = int.from_bytes(raw, "big") | (3 << (bits - 2)) | 1
        if candidate % 65537 != 1 and _is_probable_prime(candidate, raw):
            return candidate
        counter += 1


def _rsa_key(seed: str, bits: int) -> rsa.RSAPrivateKey:
    p, q = _prime(seed + " p", bits // 2), _prime(seed + " q", bits // 2)
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q),
        public_numbers=rsa.RSAPublicNumbers(e, p * q),
    )
    return numbers.private_key()


def _mgf1(seed: bytes, length: int, hash_name: str) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.new(hash_name, seed + struct.pack(">I", counter)).digest()
        counter += 1
    return out[:length]


class FixedRandomness(Randomness):
    """Deterministic randomness for vectors: never use outside this script."""

    def __init__(self, seed: str) -> None:
        self.seed = seed.encode()
        self.count = 0

    def _next(self, n: int) -> bytes:
        self.count += 1
        return _stream(self.seed + struct.pack(">I", self.count), n)

    def random_bytes(self, n: int) -> bytes:
        return self._next(n)

    def ephemeral_key(self, key_type: KeyType) -> ec.EllipticCurvePrivateKey:
        scalar = int.from_bytes(self._next(64), "big") % (ORDERS[key_type] - 1) + 1
        return ec.derive_private_key(scalar, CURVES[key_type])

    def rsa_oaep_encrypt(self, public: rsa.RSAPublicKey, hash_name: str, message: bytes) -> bytes:
        # RFC 8017 section 7.1.1 with a fixed seed (cryptography always draws a random one).
        k = public.key_size // 8
        h_len = hashlib.new(hash_name).digest_size
        l_hash = hashlib.new(hash_name, b"").digest()
        db = l_hash + b"\x00" * (k - len(message) - 2 * h_len - 2) + b"\x01" + message
        seed = self._next(h_len)
        masked_db = bytes(
            a ^ b for a, b in zip(db, _mgf1(seed, k - h_len - 1, hash_name), strict=True)
        )
        masked_seed = bytes(
            a ^ b for a, b in zip(seed, _mgf1(masked_db, h_len, hash_name), strict=True)
        )
        em = int.from_bytes(b"\x00" + masked_seed + masked_db, "big")
        numbers = public.public_numbers()
        return pow(em, numbers.e, numbers.n).to_bytes(k, "big")


class FixedSigner:
    """A software signer with deterministic ECDSA (RFC 6979) for signed vectors."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, card_id: bytes) -> None:
        self.key = key
        self.spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.reference = SignerReference(
            card_id=card_id,
            key_id=key_id_of(self.spki),
            algorithm=SignatureAlgorithm.ECDSA_SHA256,
            signature_length=64,
        )

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))

    def verifier(self) -> Verifier:
        return Verifier(self.reference.card_id, self.spki, "sender")


def _der(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


KEYS = {
    "p256": _ec_key("alice p256", ec.SECP256R1(), P256_ORDER),
    "p384": _ec_key("alice p384", ec.SECP384R1(), P384_ORDER),
    "p256-other": _ec_key("mallory p256", ec.SECP256R1(), P256_ORDER),
    "rsa2048": _rsa_key("bob rsa2048", 2048),
}
SENDER = FixedSigner(_ec_key("carol signer", ec.SECP256R1(), P256_ORDER), b"\xca" * 32)
OTHER_SENDER = FixedSigner(_ec_key("dave signer", ec.SECP256R1(), P256_ORDER), b"\xda" * 32)
PLAIN = _stream(b"plaintext", 2500)  # chunks of 1024 + 1024 + 452


def ident(name: str) -> SoftwareIdentity:
    return SoftwareIdentity(KEYS[name])


@dataclass
class Built:
    """An encrypted file and the secrets the generator used to build it."""

    data: bytes
    file_key: bytes
    salt: bytes
    header_len: int


def build(
    seed: str,
    plaintext: bytes,
    recipients: list[Recipient],
    signer: FixedSigner | None = None,
) -> Built:
    rng = FixedRandomness(seed)
    out = io.BytesIO()
    result = _encrypt_from_parts(
        io.BytesIO(plaintext),
        out,
        recipients,
        signer,
        recovery=None,
        chunk_size=CHUNK,
        progress=None,
        randomness=rng,
    )
    again = FixedRandomness(seed)
    file_key = again.random_bytes(32)
    salt = again.random_bytes(32)
    return Built(out.getvalue(), file_key, salt, len(result.header.raw))


@dataclass
class Vector:
    name: str
    expect: str
    comment: str
    data: bytes
    identities: list[str]
    verify: FixedSigner | None = None
    plaintext: bytes | None = None
    extra: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"expect: {self.expect}", f"comment: {self.comment}"]
        lines += [f"identity: {_der(KEYS[name]).hex()}" for name in self.identities]
        if self.verify is not None:
            ref = self.verify.reference
            lines.append(f"verify-from: {ref.card_id.hex()} {self.verify.spki.hex()}")
        if self.plaintext is not None:
            lines.append(f"payload-sha256: {hashlib.sha256(self.plaintext).hexdigest()}")
        encoded = base64.b64encode(self.data).decode()
        body = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]
        return "\n".join([*lines, "", *body, ""])


def rebuild_header(built: Built, mutate: Callable[[_HeaderBody], None]) -> bytes:
    """Re-encode the header body after `mutate`, with a correct length and MAC."""
    raw = built.data
    body_len = built.header_len - PREFIX_LENGTH - MAC_LENGTH
    body = _HeaderBody.load(raw[PREFIX_LENGTH : PREFIX_LENGTH + body_len])
    mutate(body)
    new_body = body.dump(force=True)
    return with_body(built, new_body)


def with_body(built: Built, new_body: bytes) -> bytes:
    prefix_and_body = encode_prefix(len(new_body)) + new_body
    header = prefix_and_body + header_mac(built.file_key, prefix_and_body)
    return header + built.data[built.header_len :]


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def chunks_of(built: Built, trailer: int = 0) -> list[bytes]:
    payload = built.data[built.header_len : len(built.data) - trailer]
    size = CHUNK + 16
    return [payload[i : i + size] for i in range(0, len(payload), size)]


def seal_chunks(built: Built, plains: list[tuple[bytes, bool]]) -> bytes:
    aead = AESGCM(payload_key(built.file_key, built.salt))
    return b"".join(aead.encrypt(nonce(i, last), p, None) for i, (p, last) in enumerate(plains))


def vectors() -> list[Vector]:
    p256, p384, rsa2048 = ident("p256"), ident("p384"), ident("rsa2048")
    v: list[Vector] = []

    def ok(
        name: str, comment: str, data: bytes, ids: list[str], plain: bytes, **kw: object
    ) -> None:
        v.append(Vector(name, "success", comment, data, ids, plaintext=plain, **kw))  # type: ignore[arg-type]

    def fail(
        name: str, expect: str, comment: str, data: bytes, ids: list[str], **kw: object
    ) -> None:
        v.append(Vector(name, expect, comment, data, ids, **kw))  # type: ignore[arg-type]

    base = build("base", PLAIN, [p256.recipient()])
    h = base.header_len
    ok("success_p256", "EC P-256 recipient, three chunks", base.data, ["p256"], PLAIN)
    for name, size in (
        ("empty", 0),
        ("one_byte", 1),
        ("one_chunk", CHUNK),
        ("chunk_plus_one", CHUNK + 1),
    ):
        plain = PLAIN[:size]
        ok(
            f"success_{name}",
            f"{size} bytes of plaintext",
            build(name, plain, [p256.recipient()]).data,
            ["p256"],
            plain,
        )
    ok(
        "success_p384",
        "EC P-384 recipient",
        build("p384", PLAIN, [p384.recipient()]).data,
        ["p384"],
        PLAIN,
    )
    ok(
        "success_rsa_oaep_sha1",
        "RSA-2048, OAEP SHA-1 (SoftHSM)",
        build("rsa1", PLAIN, [rsa2048.recipient("sha1")]).data,
        ["rsa2048"],
        PLAIN,
    )
    ok(
        "success_rsa_oaep_sha256",
        "RSA-2048, OAEP SHA-256",
        build("rsa256", PLAIN, [rsa2048.recipient("sha256")]).data,
        ["rsa2048"],
        PLAIN,
    )
    multi = build("multi", PLAIN, [p256.recipient(), rsa2048.recipient(), p384.recipient()])
    ok(
        "success_multi_rsa",
        "three recipients of mixed types; the RSA key opens it",
        multi.data,
        ["rsa2048"],
        PLAIN,
    )
    ok(
        "success_multi_p384",
        "three recipients of mixed types; the P-384 key opens it",
        multi.data,
        ["p384"],
        PLAIN,
    )
    signed = build("signed", PLAIN, [p256.recipient()], SENDER)
    ok(
        "success_signed",
        "signed by the sender; signature required and verified",
        signed.data,
        ["p256"],
        PLAIN,
        verify=SENDER,
    )
    ok(
        "success_signed_unverified",
        "signed file read without asking for a signer",
        signed.data,
        ["p256"],
        PLAIN,
    )
    signed_full = build("signed-full", PLAIN[: 2 * CHUNK], [p256.recipient()], SENDER)
    ok(
        "success_signed_full_last_chunk",
        "signed, last chunk full-size (payload end found from the trailer length)",
        signed_full.data,
        ["p256"],
        PLAIN[: 2 * CHUNK],
        verify=SENDER,
    )

    fail(
        "nomatch_wrong_key",
        "no match",
        "N1: the identity is not a recipient",
        base.data,
        ["p256-other"],
    )
    fail(
        "nomatch_multi",
        "no match",
        "N1: a P-256 key that none of three entries names",
        multi.data,
        ["p256-other"],
    )

    # Header rules.
    fail(
        "header_bad_magic",
        "header failure",
        "H1: first byte of the magic changed",
        flip(base.data, 0),
        ["p256"],
    )
    fail(
        "header_text_mode",
        "header failure",
        "H1: CR LF turned into LF by a text-mode copy",
        base.data[:4] + base.data[5:],
        ["p256"],
    )
    fail(
        "header_version_2",
        "header failure",
        "H2: version byte 02",
        base.data[:8] + b"\x02" + base.data[9:],
        ["p256"],
    )
    for cut, where in (
        (0, "empty file"),
        (5, "inside the magic"),
        (8, "after the magic"),
        (9, "after the version"),
        (11, "inside the body length"),
        (PREFIX_LENGTH, "after the prefix"),
        (PREFIX_LENGTH + 40, "inside the body"),
        (h - MAC_LENGTH, "after the body"),
        (h - 5, "inside the MAC"),
    ):
        fail(
            f"header_truncated_{cut}",
            "header failure",
            f"H3: truncated at byte {cut}, {where}",
            base.data[:cut],
            ["p256"],
        )
    fail(
        "header_length_zero",
        "header failure",
        "H4: body length 0",
        base.data[:9] + b"\x00\x00\x00\x00" + base.data[13:],
        ["p256"],
    )
    fail(
        "header_length_huge",
        "header failure",
        "H4: body length over 1 MiB",
        base.data[:9] + struct.pack(">I", (1 << 20) + 1) + base.data[13:],
        ["p256"],
    )
    body = base.data[PREFIX_LENGTH : h - MAC_LENGTH]
    fail(
        "header_body_trailing",
        "header failure",
        "H5: a byte after the DER body (length and MAC fixed up)",
        with_body(base, body + b"\x00"),
        ["p256"],
    )
    fail(
        "header_body_ber_length",
        "header failure",
        "H5: BER long-form length where DER needs short form",
        with_body(base, _ber_long_length(body)),
        ["p256"],
    )
    fail(
        "header_body_length_plus_one",
        "header failure",
        "H5: body length one more than the DER body (MAC byte taken in)",
        base.data[:9] + struct.pack(">I", h - MAC_LENGTH - PREFIX_LENGTH + 1) + base.data[13:],
        ["p256"],
    )

    def no_recipients(b: _HeaderBody) -> None:
        b["recipients"] = []

    fail(
        "header_no_recipients",
        "header failure",
        "H6: empty recipient list",
        rebuild_header(base, no_recipients),
        ["p256"],
    )

    def kari_v2(b: _HeaderBody) -> None:
        b["recipients"][0].chosen["version"] = "v2"

    fail(
        "header_kari_version",
        "header failure",
        "H7: KeyAgreeRecipientInfo version 2",
        rebuild_header(base, kari_v2),
        ["p256"],
    )

    def kari_ukm(b: _HeaderBody) -> None:
        b["recipients"][0].chosen["ukm"] = b"\x00" * 8

    fail(
        "header_kari_ukm",
        "header failure",
        "H7: ukm present",
        rebuild_header(base, kari_ukm),
        ["p256"],
    )

    def kari_wrap128(b: _HeaderBody) -> None:
        b["recipients"][0].chosen["key_encryption_algorithm"]["parameters"] = (
            cms.KeyEncryptionAlgorithm({"algorithm": "aes128_wrap"})
        )

    fail(
        "header_kari_aes128_wrap",
        "header failure",
        "H7: key wrap id-aes128-wrap",
        rebuild_header(base, kari_wrap128),
        ["p256"],
    )

    def kari_sha1kdf(b: _HeaderBody) -> None:
        b["recipients"][0].chosen["key_encryption_algorithm"]["algorithm"] = "1.3.133.16.840.63.0.2"

    fail(
        "header_kari_sha1kdf",
        "header failure",
        "H7: dhSinglePass-stdDH-sha1kdf-scheme",
        rebuild_header(base, kari_sha1kdf),
        ["p256"],
    )

    def curve_p384(b: _HeaderBody) -> None:
        b["recipients"][0].chosen["originator"].chosen["algorithm"]["parameters"] = _named(
            "secp384r1"
        )

    fail(
        "header_kari_curve_mismatch",
        "header failure",
        "H7: curve says P-384, point is P-256",
        rebuild_header(base, curve_p384),
        ["p256"],
    )

    rsa_base = build("rsa-base", PLAIN, [rsa2048.recipient("sha1")])

    def oaep_sha512(b: _HeaderBody) -> None:
        params = b["recipients"][0].chosen["key_encryption_algorithm"]["parameters"]
        params["hash_algorithm"] = {"algorithm": "sha512"}
        params["mask_gen_algorithm"] = {"algorithm": "mgf1", "parameters": {"algorithm": "sha512"}}

    fail(
        "header_ktri_oaep_sha512",
        "header failure",
        "H7: OAEP with SHA-512",
        rebuild_header(rsa_base, oaep_sha512),
        ["rsa2048"],
    )

    def oaep_mgf_mismatch(b: _HeaderBody) -> None:
        params = b["recipients"][0].chosen["key_encryption_algorithm"]["parameters"]
        params["mask_gen_algorithm"] = {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}}

    fail(
        "header_ktri_mgf_mismatch",
        "header failure",
        "H7: OAEP SHA-1 with MGF1-SHA-256",
        rebuild_header(rsa_base, oaep_mgf_mismatch),
        ["rsa2048"],
    )

    def oaep_label(b: _HeaderBody) -> None:
        params = b["recipients"][0].chosen["key_encryption_algorithm"]["parameters"]
        params["p_source_algorithm"] = {"algorithm": "p_specified", "parameters": b"label"}

    fail(
        "header_ktri_oaep_label",
        "header failure",
        "H7: OAEP with a label",
        rebuild_header(rsa_base, oaep_label),
        ["rsa2048"],
    )

    def ktri_v0(b: _HeaderBody) -> None:
        b["recipients"][0].chosen["version"] = "v0"

    fail(
        "header_ktri_version",
        "header failure",
        "H7: KeyTransRecipientInfo version 0",
        rebuild_header(rsa_base, ktri_v0),
        ["rsa2048"],
    )

    def short_key_id(b: _HeaderBody) -> None:
        rid = b["recipients"][0].chosen["recipient_encrypted_keys"][0]["rid"].chosen
        rid["subject_key_identifier"] = rid["subject_key_identifier"].native[:31]

    fail(
        "header_key_id_short",
        "header failure",
        "H8: a 31-byte key id",
        rebuild_header(base, short_key_id),
        ["p256"],
    )
    dup = build("dup", PLAIN, [p256.recipient()])

    def duplicate(b: _HeaderBody) -> None:
        entry = b["recipients"][0]
        b["recipients"] = [entry.copy(), entry.copy()]

    fail(
        "header_duplicate_key_id",
        "header failure",
        "H8: two entries with the same key id",
        rebuild_header(dup, duplicate),
        ["p256"],
    )

    def off_curve(b: _HeaderBody) -> None:
        key = b["recipients"][0].chosen["originator"].chosen
        point = bytearray(key["public_key"].native)
        point[-1] ^= 1
        key["public_key"] = bytes(point)

    fail(
        "header_point_off_curve",
        "header failure",
        "H9: ephemeral point not on the curve",
        rebuild_header(base, off_curve),
        ["p256"],
    )

    def bad_algorithm(b: _HeaderBody) -> None:
        b["payload"]["algorithm"] = "chacha20-poly1305-stream"

    fail(
        "header_payload_algorithm",
        "header failure",
        "H10: unknown payload algorithm",
        rebuild_header(base, bad_algorithm),
        ["p256"],
    )

    def odd_chunk(b: _HeaderBody) -> None:
        b["payload"]["chunk_size"] = 1000

    fail(
        "header_chunk_size_not_power",
        "header failure",
        "H10: chunk size 1000",
        rebuild_header(base, odd_chunk),
        ["p256"],
    )

    def big_chunk(b: _HeaderBody) -> None:
        b["payload"]["chunk_size"] = 1 << 23

    fail(
        "header_chunk_size_too_big",
        "header failure",
        "H10: chunk size 8 MiB",
        rebuild_header(base, big_chunk),
        ["p256"],
    )

    def short_salt(b: _HeaderBody) -> None:
        b["payload"]["salt"] = b["payload"]["salt"].native[:31]

    fail(
        "header_salt_short",
        "header failure",
        "H10: 31-byte salt",
        rebuild_header(base, short_salt),
        ["p256"],
    )

    def signer_alg(b: _HeaderBody) -> None:
        b["signer"]["algorithm"] = "ed25519"

    fail(
        "header_signer_algorithm",
        "header failure",
        "H11: unknown signature algorithm",
        rebuild_header(signed, signer_alg),
        ["p256"],
    )

    def signer_len(b: _HeaderBody) -> None:
        b["signer"]["signature_length"] = 72

    fail(
        "header_signer_length",
        "header failure",
        "H11: ECDSA P-256 trailer of 72 bytes",
        rebuild_header(signed, signer_len),
        ["p256"],
    )

    wrapped_at = base.data.find(_wrapped_key(base))
    fail(
        "header_wrapped_key_flipped",
        "header failure",
        "H12/H13: a bit of the wrapped key flipped (AES key unwrap check fails)",
        flip(base.data, wrapped_at + 3),
        ["p256"],
    )

    def wrapped_flip(b: _HeaderBody) -> None:
        rek = b["recipients"][0].chosen["recipient_encrypted_keys"][0]
        rek["encrypted_key"] = flip(rek["encrypted_key"].native, 7)

    fail(
        "header_wrapped_key_flipped_mac_fixed",
        "header failure",
        "H12: wrapped key flipped, MAC recomputed",
        rebuild_header(base, wrapped_flip),
        ["p256"],
    )
    rsa_ct = rsa_base.data.find(_wrapped_key(rsa_base))
    fail(
        "header_rsa_key_flipped",
        "header failure",
        "H12: a bit of the RSA-OAEP ciphertext flipped",
        flip(rsa_base.data, rsa_ct + 100),
        ["rsa2048"],
    )
    fail(
        "header_mac_flipped",
        "header failure",
        "H13: a bit of the MAC flipped",
        flip(base.data, h - 1),
        ["p256"],
    )
    fail(
        "header_salt_flipped",
        "header failure",
        "H13: a bit of the payload salt flipped (body changed, MAC not)",
        flip(base.data, h - MAC_LENGTH - 1),
        ["p256"],
    )
    other_entry = multi.data.find(_wrapped_key(multi, 2))
    fail(
        "header_other_entry_altered",
        "header failure",
        "H13: an entry for another recipient altered; the MAC covers every entry",
        flip(multi.data, other_entry + 5),
        ["p256"],
    )

    def drop_entry(b: _HeaderBody) -> None:
        b["recipients"] = [b["recipients"][0]]

    dropped = rebuild_header(multi, drop_entry)
    fail(
        "header_entry_removed",
        "header failure",
        "H13: an entry removed, old MAC kept",
        _keep_old_mac(multi, dropped),
        ["p256"],
    )

    # Payload rules.
    c = chunks_of(base)
    header = base.data[:h]
    fail(
        "payload_flip_chunk0",
        "payload failure",
        "P1: a bit flipped in chunk 0",
        flip(base.data, h + 10),
        ["p256"],
    )
    fail(
        "payload_flip_chunk1",
        "payload failure",
        "P1: a bit flipped in chunk 1",
        flip(base.data, h + CHUNK + 16 + 10),
        ["p256"],
    )
    fail(
        "payload_flip_last",
        "payload failure",
        "P1: a bit flipped in the last chunk",
        flip(base.data, len(base.data) - 30),
        ["p256"],
    )
    fail(
        "payload_flip_tag",
        "payload failure",
        "P1: a bit flipped in the last tag",
        flip(base.data, len(base.data) - 1),
        ["p256"],
    )
    fail(
        "payload_swapped",
        "payload failure",
        "P1: chunks 0 and 1 swapped",
        header + c[1] + c[0] + c[2],
        ["p256"],
    )
    fail(
        "payload_repeated",
        "payload failure",
        "P1: chunk 0 repeated",
        header + c[0] + c[0] + c[1] + c[2],
        ["p256"],
    )
    fail(
        "payload_dropped", "payload failure", "P1: chunk 1 dropped", header + c[0] + c[2], ["p256"]
    )
    other = build("base-other-file", PLAIN, [p256.recipient()])
    fail(
        "payload_spliced",
        "payload failure",
        "P1: chunk 1 from another file to the same key",
        header + c[0] + chunks_of(other)[1] + c[2],
        ["p256"],
    )
    for cut, where in (
        (h, "no payload"),
        (h + 8, "inside chunk 0's ciphertext"),
        (h + CHUNK + 16, "after chunk 0"),
        (h + 2 * (CHUNK + 16), "after chunk 1"),
        (h + 2 * (CHUNK + 16) + 10, "inside the last chunk (10 bytes)"),
        (len(base.data) - 1, "one byte short"),
    ):
        fail(
            f"payload_truncated_{cut - h}",
            "payload failure",
            f"P2: truncated {where}",
            base.data[:cut],
            ["p256"],
        )
    one = build("one_chunk", PLAIN[:CHUNK], [p256.recipient()])
    fail(
        "payload_truncated_full_chunk",
        "payload failure",
        "P2: a 2-chunk file cut after its full first chunk",
        build("chunk_plus_one", PLAIN[: CHUNK + 1], [p256.recipient()]).data[
            : one.header_len + CHUNK + 16
        ],
        ["p256"],
    )
    fail(
        "payload_appended_byte",
        "payload failure",
        "P3: one byte appended",
        base.data + b"\x00",
        ["p256"],
    )
    fail(
        "payload_appended_16",
        "payload failure",
        "P3: 16 bytes appended",
        base.data + b"\x00" * 16,
        ["p256"],
    )
    fail(
        "payload_appended_chunk",
        "payload failure",
        "P3: the last chunk appended again",
        base.data + c[2],
        ["p256"],
    )
    fail(
        "payload_empty_last_chunk",
        "payload failure",
        "P4: an empty last chunk after two full chunks",
        header
        + seal_chunks(
            base, [(PLAIN[:CHUNK], False), (PLAIN[CHUNK : 2 * CHUNK], False), (b"", True)]
        ),
        ["p256"],
    )
    fail(
        "payload_last_flag_missing",
        "payload failure",
        "P2: every chunk sealed as not last",
        header
        + seal_chunks(
            base,
            [
                (PLAIN[:CHUNK], False),
                (PLAIN[CHUNK : 2 * CHUNK], False),
                (PLAIN[2 * CHUNK :], False),
            ],
        ),
        ["p256"],
    )
    fail(
        "payload_early_last_flag",
        "payload failure",
        "P3: chunk 0 sealed as last, more follows",
        header
        + seal_chunks(
            base,
            [(PLAIN[:CHUNK], True), (PLAIN[CHUNK : 2 * CHUNK], False), (PLAIN[2 * CHUNK :], True)],
        ),
        ["p256"],
    )
    fail(
        "payload_signed_trailer_cut",
        "payload failure",
        "P2: signed file missing its last trailer byte",
        signed.data[:-1],
        ["p256"],
        verify=SENDER,
    )
    fail(
        "payload_signed_trailer_dropped",
        "payload failure",
        "P2: signed file without its trailer",
        signed.data[:-64],
        ["p256"],
    )

    # Signature rules.
    fail(
        "signature_unsigned",
        "signature failure",
        "S1: a signature required, the file is unsigned",
        base.data,
        ["p256"],
        verify=SENDER,
    )
    fail(
        "signature_other_signer",
        "signature failure",
        "S2: signed by another card than the one required",
        build("signed-other", PLAIN, [p256.recipient()], OTHER_SENDER).data,
        ["p256"],
        verify=SENDER,
    )
    fail(
        "signature_trailer_flipped",
        "signature failure",
        "S3: a bit of the signature flipped",
        flip(signed.data, len(signed.data) - 10),
        ["p256"],
        verify=SENDER,
    )
    forged = build("signed-forged", PLAIN, [p256.recipient()], _Impostor())
    fail(
        "signature_forged",
        "signature failure",
        "S3: header names the sender's card, signature by another key",
        forged.data,
        ["p256"],
        verify=SENDER,
    )
    return v


class _Impostor(FixedSigner):
    """Claims SENDER's card and key id but signs with another key."""

    def __init__(self) -> None:
        super().__init__(_ec_key("impostor", ec.SECP256R1(), P256_ORDER), SENDER.reference.card_id)
        self.reference = SENDER.reference


def _named(curve: str) -> object:
    from asn1crypto import keys

    return keys.ECDomainParameters(name="named", value=curve)


def _ber_long_length(body: bytes) -> bytes:
    """The outer SEQUENCE with a long-form length (valid BER, not DER)."""
    assert body[0] == 0x30 and body[1] & 0x80
    n = body[1] & 0x7F
    length = int.from_bytes(body[2 : 2 + n], "big")
    return b"\x30\x84" + length.to_bytes(4, "big") + body[2 + n :]


def _wrapped_key(built: Built, index: int = 0) -> bytes:
    body = _HeaderBody.load(built.data[PREFIX_LENGTH : built.header_len - MAC_LENGTH])
    entry = body["recipients"][index]
    if entry.name == "kari":
        return bytes(entry.chosen["recipient_encrypted_keys"][0]["encrypted_key"].native)
    return bytes(entry.chosen["encrypted_key"].native)


def _keep_old_mac(built: Built, rebuilt: bytes) -> bytes:
    """`rebuilt` with its fresh MAC replaced by the original file's MAC."""
    body_len = struct.unpack(">I", rebuilt[9:13])[0]
    end = PREFIX_LENGTH + body_len
    old_mac = built.data[built.header_len - MAC_LENGTH : built.header_len]
    return rebuilt[:end] + old_mac + rebuilt[end + MAC_LENGTH :]


OUTCOMES = {
    "success": None,
    "no match": NoMatchingRecipient,
    "header failure": HeaderError,
    "payload failure": PayloadError,
    "signature failure": SignatureError,
}


def check(vector: Vector) -> None:
    """Run the reader on a vector and insist on the expected outcome."""
    identities = [ident(name) for name in vector.identities]
    verifier = vector.verify.verifier() if vector.verify else None
    out = io.BytesIO()
    expected = OUTCOMES[vector.expect]
    try:
        decrypt(io.BytesIO(vector.data), out, identities, verifier)
    except (HeaderError, PayloadError, NoMatchingRecipient, SignatureError) as exc:
        if expected is None or type(exc) is not expected:
            raise AssertionError(f"{vector.name}: expected {vector.expect}, got {exc!r}") from exc
        return
    if expected is not None:
        raise AssertionError(f"{vector.name}: expected {vector.expect}, got success")
    assert out.getvalue() == vector.plaintext, vector.name


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else OUT
    out.mkdir(parents=True, exist_ok=True)
    built = vectors()
    names = [vector.name for vector in built]
    assert len(set(names)) == len(names), "duplicate vector names"
    for old in out.glob("*.txt"):
        old.unlink()
    for vector in built:
        check(vector)
        (out / f"{vector.name}.txt").write_text(vector.text())
    print(f"wrote {len(built)} vectors to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
