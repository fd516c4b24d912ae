"""Generate the card test vectors in tests/vectors/cards/ (one file per case).

Run from the repository root:  .venv/bin/python tests/vectors/make_card_vectors.py [OUTDIR]

Deterministic: the keys are derived from fixed seeds (EC: the private scalar is a hash of the
seed; RSA: primes drawn from a seeded generator), ECDSA uses RFC 6979 deterministic nonces and
RSA-PSS a salt derived from the message, and every time is fixed. Running it twice writes the
same files. The keys stand in for token keys: a vector is a fixed input, and the live tests
sign through SoftHSM. The file format and the rules are in docs/cards.md (sections 8 and 9).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import random
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hsm_vault.algorithms import KeyType, SignatureAlgorithm
from hsm_vault.cards import (
    Card,
    CardSignature,
    TokenProvenance,
    build_snapshot,
    key_id_of,
    make_revocation,
    sign_card,
)
from hsm_vault.cards.canonical import b64url_encode, canonical_json

OUT = Path(__file__).resolve().parent / "cards"
CREATED = "2026-01-15T12:00:00Z"
PROVENANCE = TokenProvenance("SoftHSM project", "SoftHSM v2", "8d2f4a1c3b5e7a90", True, True, True)

# --- deterministic keys and signers ---------------------------------------------------------------


def _seed_int(seed: str) -> int:
    return int.from_bytes(hashlib.sha512(seed.encode()).digest(), "big")


def ec_key(seed: str, curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    order = {"secp256r1": 2**256, "secp384r1": 2**384}[curve.name]
    return ec.derive_private_key(_seed_int(seed) % (order - 2**200) + 1, curve)


def _is_probable_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53):
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


def rsa_key(seed: str, bits: int) -> rsa.RSAPrivateKey:
    rng = random.Random(seed)
    e = 65537

    def prime() -> int:
        while True:
            candidate = rng.getrandbits(bits // 2) | (3 << (bits // 2 - 2)) | 1
            if candidate % e != 1 and _is_probable_prime(candidate):
                return candidate

    while True:
        p, q = prime(), prime()
        if p != q and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, p * q),
    )
    return numbers.private_key()


def spki(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _mgf1(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def _pss_sign(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """RSA-PSS-SHA256 (salt 32) with a salt derived from the message: deterministic."""
    numbers = key.private_numbers()
    n, d = numbers.public_numbers.n, numbers.d
    mod_bits = n.bit_length()
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    m_hash = hashlib.sha256(message).digest()
    salt = hashlib.sha256(b"vector-salt" + message).digest()
    h = hashlib.sha256(b"\x00" * 8 + m_hash + salt).digest()
    db = b"\x00" * (em_len - 32 - 32 - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1(h, em_len - 33), strict=True))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    em = bytes(masked) + h + b"\xbc"
    return pow(int.from_bytes(em, "big"), d, n).to_bytes((mod_bits + 7) // 8, "big")


def signer_for(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    if isinstance(key, rsa.RSAPrivateKey):
        return lambda m: _pss_sign(key, m)
    chosen = hashes.SHA256() if key.curve.name == "secp256r1" else hashes.SHA384()
    return lambda m: key.sign(m, ec.ECDSA(chosen, deterministic_signing=True))


def alg_of(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> SignatureAlgorithm:
    if isinstance(key, rsa.RSAPrivateKey):
        return SignatureAlgorithm.RSA_PSS_SHA256
    if key.curve.name == "secp256r1":
        return SignatureAlgorithm.ECDSA_SHA256
    return SignatureAlgorithm.ECDSA_SHA384


KeyT = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

ALICE = ec_key("alice-p256", ec.SECP256R1())
ALICE_NEW = ec_key("alice-p256-2027", ec.SECP256R1())
ALICE_384 = ec_key("alice-p384", ec.SECP384R1())
BOB_RSA = rsa_key("bob-rsa2048", 2048)
APP = ec_key("server-app", ec.SECP256R1())
MALLORY = ec_key("mallory-p256", ec.SECP256R1())
OLGA = ec_key("olga-p256", ec.SECP256R1())
OSCAR = ec_key("oscar-p256", ec.SECP256R1())
K256 = ec.derive_private_key(_seed_int("secp256k1") % 2**250 + 1, ec.SECP256K1())
RSA1024 = rsa_key("rsa1024", 1024)


def key_type_of_key(key: KeyT) -> KeyType:
    if isinstance(key, rsa.RSAPrivateKey):
        return KeyType(f"rsa-{key.key_size}")
    return KeyType.EC_P256 if key.curve.name == "secp256r1" else KeyType.EC_P384


def make_card(
    key: KeyT,
    identity: str = "alice@example.org",
    *,
    provenance: TokenProvenance = PROVENANCE,
    previous: tuple[Card, KeyT] | None = None,
    **fields: Any,
) -> Card:
    snapshot = build_snapshot(
        identity=identity,
        spki_der=spki(key),
        key_type=key_type_of_key(key),
        provenance=provenance,
        oaep_hash=None if isinstance(key, ec.EllipticCurvePrivateKey) else "sha1",
        created_at=fields.pop("created_at", CREATED),
        previous_id=previous[0].id if previous else None,
        **fields,
    )
    card = sign_card(Card(snapshot), "self", spki(key), alg_of(key), signer_for(key))
    if previous is not None:
        old = previous[1]
        card = sign_card(card, "previous", spki(old), alg_of(old), signer_for(old))
    return card


def add_sig(card: Card, signer: str, key: KeyT) -> Card:
    return sign_card(card, signer, spki(key), alg_of(key), signer_for(key))


# --- text manipulation ---------------------------------------------------------------------------


def text_of(raw: bytes, version: str = "1") -> str:
    return f"hsmv-card-{version}:" + b64url_encode(raw)


def envelope(card: Card) -> dict[str, Any]:
    return copy.deepcopy(card.to_json())


def snapshot_id(snapshot: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(snapshot)).hexdigest()


def edited(
    card: Card,
    edit: Callable[[dict[str, Any]], None],
    *,
    fix_id: bool = True,
    resign: KeyT | None = None,
) -> str:
    """Apply `edit` to the envelope; recompute the id (and re-sign "self") when asked."""
    env = envelope(card)
    edit(env)
    if fix_id:
        # An edit that makes the snapshot unencodable leaves the id as it was (it does not matter).
        with contextlib.suppress(Exception):
            env["id"] = snapshot_id(env["snapshot"])
    if resign is not None:
        message = b"hsmv-card-sig-v1\nself\n" + bytes.fromhex(env["id"])
        for sig in env["signatures"]:
            if sig["signer"] == "self":
                sig["sig"] = b64url_encode(signer_for(resign)(message))
    return text_of(canonical_json(env))


def raw_json(obj: Any, **dumps: Any) -> bytes:
    return json.dumps(obj, **dumps).encode()


# --- the cases -----------------------------------------------------------------------------------

VECTORS: dict[str, dict[str, Any]] = {}


def vector(name: str, rule: str, expect: str, comment: str, card: str, **extra: Any) -> None:
    assert name not in VECTORS, name
    assert expect in ("success", "format failure", "verification failure")
    VECTORS[name] = {"rule": rule, "expect": expect, "comment": comment, "card": card, **extra}


def snap(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda env: edit(env["snapshot"])


def setitem(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(obj: dict[str, Any]) -> None:
        for part in path[:-1]:
            obj = obj[part]
        obj[path[-1]] = value

    return edit


def delitem(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(obj: dict[str, Any]) -> None:
        for part in path[:-1]:
            obj = obj[part]
        del obj[path[-1]]

    return edit


def build() -> None:
    # The team value is chosen so the envelope length is not a multiple of 3 (for f3).
    alice = next(
        c
        for c in (make_card(ALICE, data={"team": t}) for t in ("ops", "ops1", "ops12"))
        if len(canonical_json(c.to_json())) % 3
    )
    team = alice.snapshot.data["team"]
    text = alice.to_text()
    app_hex = spki(APP).hex()
    trust_app = [f"app {app_hex}"]

    # success
    vector("ok-ec-p256", "ok", "success", "P-256 card with a self signature", text)
    vector("ok-ec-p384", "ok", "success", "P-384 card", make_card(ALICE_384).to_text())
    vector(
        "ok-rsa-2048",
        "ok",
        "success",
        "RSA-2048 card, OAEP hash sha1 (what SoftHSM accepts), RSA-PSS self signature",
        make_card(BOB_RSA, "bob", identity_type="username").to_text(),
    )
    vector(
        "ok-unicode-email",
        "ok",
        "success",
        "non-ASCII identity in NFC, written as UTF-8 (not escaped)",
        make_card(ALICE, "zoë@exämple.org").to_text(),
    )
    vector(
        "ok-hostname",
        "ok",
        "success",
        "host name identity",
        make_card(ALICE, "backup-01.example.org", identity_type="hostname").to_text(),
    )
    app_signed = add_sig(alice, "app", APP)
    vector(
        "ok-app-required",
        "ok",
        "success",
        "app signature required and made by the trusted app key",
        app_signed.to_text(),
        trust=trust_app,
        require=["app"],
    )
    vector(
        "ok-app-trusted-not-required",
        "ok",
        "success",
        "app signature present and checked although not required",
        app_signed.to_text(),
        trust=trust_app,
    )
    vector(
        "ok-unchecked-signer",
        "ok",
        "success",
        "a signature by a signer the policy does not know is kept but not checked",
        alice.with_signature(
            CardSignature("officer:carol", key_id_of(spki(MALLORY)), "ecdsa-sha256", b"\x30\x00")
        ).to_text(),
    )
    rotated = make_card(ALICE_NEW, previous=(alice, ALICE), created_at="2027-01-15T12:00:00Z")
    vector(
        "ok-rotation",
        "ok",
        "success",
        "a new card naming the previous one, signed 'previous' by the previous card's key",
        rotated.to_text(),
        previous=text,
    )
    vector(
        "ok-rotation-without-previous-card",
        "ok",
        "success",
        "rotation signature present; the previous card is not at hand, so it is not checked",
        rotated.to_text(),
    )

    # F1, F2: prefix and version
    body = text.split(":", 1)[1]
    vector(
        "f1-wrong-prefix", "F1", "format failure", "prefix is not hsmv-card-", "hsmv-kard-1:" + body
    )
    vector("f1-no-colon", "F1", "format failure", "no colon after the prefix", "hsmv-card-1" + body)
    vector("f1-empty", "F1", "format failure", "empty text", "")
    vector("f2-unknown-version", "F2", "format failure", "text version 2", "hsmv-card-2:" + body)
    vector(
        "f2-version-01", "F2", "format failure", "text version written 01", "hsmv-card-01:" + body
    )

    # F3: base64url
    pad_text = text + "=" * (-len(body) % 4 or 2)
    vector("f3-padding", "F3", "format failure", "base64 padding characters", pad_text)
    vector(
        "f3-plus-slash",
        "F3",
        "format failure",
        "standard base64 '+' instead of '-'",
        text.replace("-", "+", 1) if "-" in body else text[:-1] + "+",
    )
    vector(
        "f3-inner-space",
        "F3",
        "format failure",
        "a space inside the base64",
        text[:40] + " " + text[40:],
    )
    vector(
        "f3-line-break",
        "F3",
        "format failure",
        "a line break inside the base64 (as \\n)",
        text[:40] + "\\n" + text[40:],
    )
    cut = len(body) - ((len(body) - 1) % 4)  # a length of 1 mod 4
    vector(
        "f3-length-1-mod-4",
        "F3",
        "format failure",
        "truncated to a length of 1 modulo 4",
        "hsmv-card-1:" + body[:cut],
    )
    raw = canonical_json(alice.to_json())
    good = b64url_encode(raw)
    if len(raw) % 3:
        last = good[-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        bumped = alphabet[alphabet.index(last) + 1]
        vector(
            "f3-nonzero-bits",
            "F3",
            "format failure",
            "non-zero unused bits in the last character",
            "hsmv-card-1:" + good[:-1] + bumped,
        )
    else:
        raise SystemExit("pick data so the envelope length is not a multiple of 3")

    # F4: not JSON, trailing garbage, truncation
    vector(
        "f4-truncated",
        "F4",
        "format failure",
        "export truncated on a 4-character boundary",
        "hsmv-card-1:" + body[: (len(body) // 2) // 4 * 4],
    )
    vector(
        "f4-trailing-garbage", "F4", "format failure", "bytes after the JSON", text_of(raw + b"x")
    )
    vector(
        "f4-trailing-newline-inside",
        "F4",
        "format failure",
        "a line break after the JSON, inside the base64",
        text_of(raw + b"\n"),
    )
    vector(
        "f4-padded-base64",
        "F4",
        "format failure",
        "four more base64 characters appended",
        text + "AAAA",
    )
    vector("f4-two-cards", "F4", "format failure", "two envelopes concatenated", text_of(raw + raw))
    vector(
        "f4-not-utf8",
        "F4",
        "format failure",
        "invalid UTF-8 in the JSON",
        text_of(raw.replace(b"alice@", b"al\xffce@")),
    )
    vector("f4-not-json", "F4", "format failure", "not JSON at all", text_of(b"hello card"))
    vector(
        "f4-json-array",
        "F4",
        "format failure",
        "JSON, but not an object",
        text_of(canonical_json([alice.to_json()])),
    )

    # F5: not canonical
    env = alice.to_json()
    vector(
        "f5-whitespace",
        "F5",
        "format failure",
        "JSON with spaces after separators",
        text_of(raw_json(env, sort_keys=True)),
    )
    vector(
        "f5-unsorted-keys",
        "F5",
        "format failure",
        "object keys not sorted",
        text_of(raw_json(dict(reversed(list(env.items()))), separators=(",", ":"))),
    )
    vector(
        "f5-escaped-non-ascii",
        "F5",
        "format failure",
        "a non-ASCII character written as \\u escape",
        text_of(
            canonical_json(make_card(ALICE, "zoë@example.org").to_json()).replace(
                "ë".encode(), b"\\u00eb"
            )
        ),
    )
    vector(
        "f5-escaped-slash",
        "F5",
        "format failure",
        "a needless escape (\\/) in a string",
        text_of(raw.replace(f'"{team}"'.encode(), f'"o\\/{team[1:]}"'.encode())),
    )

    # F6: duplicates, floats, constants
    vector(
        "f6-duplicate-key",
        "F6",
        "format failure",
        "the id key appears twice",
        text_of(raw.replace(b'{"id":', b'{"id":"x","id":', 1)),
    )
    vector(
        "f6-float-version",
        "F6",
        "format failure",
        "version written as 1.0",
        text_of(raw[: raw.rindex(b'"version":1')] + b'"version":1.0}'),
    )
    vector(
        "f6-nan",
        "F6",
        "format failure",
        "NaN as a value",
        text_of(raw[: raw.rindex(b'"version":1')] + b'"version":NaN}'),
    )

    # F7: versions
    vector(
        "f7-envelope-version-2",
        "F7",
        "format failure",
        "envelope version 2",
        edited(alice, setitem(("version",), 2)),
    )
    vector(
        "f7-snapshot-version-2",
        "F7",
        "format failure",
        "snapshot version 2",
        edited(alice, snap(setitem(("version",), 2))),
    )
    vector(
        "f7-version-string",
        "F7",
        "format failure",
        "version as a string",
        edited(alice, setitem(("version",), "1")),
    )

    vector(
        "f7-version-true",
        "F7",
        "format failure",
        "envelope version written as true (equal to 1 in some languages)",
        edited(alice, setitem(("version",), True)),
    )
    vector(
        "f7-snapshot-version-true",
        "F7",
        "format failure",
        "snapshot version written as true",
        edited(alice, snap(setitem(("version",), True))),
    )
    # F8: fields
    vector(
        "f8-envelope-extra",
        "F8",
        "format failure",
        "an extra envelope field",
        edited(alice, setitem(("comment",), "hi")),
    )
    vector(
        "f8-envelope-missing",
        "F8",
        "format failure",
        "no signatures field",
        edited(alice, delitem(("signatures",))),
    )
    vector(
        "f8-snapshot-extra",
        "F8",
        "format failure",
        "an extra snapshot field",
        edited(alice, snap(setitem(("expires",), "2030-01-01T00:00:00Z"))),
    )
    vector(
        "f8-snapshot-missing",
        "F8",
        "format failure",
        "no scope field",
        edited(alice, snap(delitem(("scope",)))),
    )
    vector(
        "f8-provenance-missing",
        "F8",
        "format failure",
        "provenance without serial",
        edited(alice, snap(delitem(("provenance", "serial")))),
    )
    vector(
        "f8-key-extra",
        "F8",
        "format failure",
        "an extra field in key",
        edited(alice, snap(setitem(("key", "usage"), "any"))),
    )
    vector(
        "f8-signature-extra",
        "F8",
        "format failure",
        "an extra field in a signature entry",
        edited(alice, lambda e: e["signatures"][0].update(note="x")),
    )
    vector(
        "f8-wrong-type",
        "F8",
        "format failure",
        "snapshot type is not hsmv-card",
        edited(alice, snap(setitem(("type",), "hsmv-key"))),
    )
    vector(
        "f8-snapshot-not-object",
        "F8",
        "format failure",
        "snapshot is a string",
        edited(alice, setitem(("snapshot",), "alice")),
    )

    # F9: identity
    def ident(value: str, kind: str | None = None) -> Callable[[dict[str, Any]], None]:
        def edit(s: dict[str, Any]) -> None:
            s["identity"] = value
            if kind is not None:
                s["identity_type"] = kind

        return snap(edit)

    for name, value, kind, comment in [
        ("f9-email-without-at", "alice.example.org", None, "an email identity without @"),
        ("f9-email-no-domain-dot", "alice@localhost", None, "an email domain without a dot"),
        ("f9-empty-identity", "", None, "empty identity"),
        ("f9-space-in-identity", "alice @example.org", None, "a space in the identity"),
        ("f9-bidi-control", "alice\u202e@example.org", None, "a right-to-left override character"),
        ("f9-line-break", "alice\n@example.org", None, "a line break in the identity"),
        ("f9-not-nfc", unicodedata.normalize("NFD", "zoë@example.org"), None, "identity not NFC"),
        ("f9-bad-username", "alice/admin", "username", "a / in a username"),
        ("f9-bad-hostname", "Backup.Example.org", "hostname", "upper case in a host name"),
        ("f9-unknown-identity-type", "alice@example.org", "phone", "unknown identity type"),
        ("f9-identity-too-long", "a" * 250 + "@example.org", None, "identity over 256 characters"),
    ]:
        vector(name, "F9", "format failure", comment, edited(alice, ident(value, kind)))
    vector(
        "f9-bad-custom-value",
        "F9",
        "format failure",
        "a control character in a custom value",
        edited(alice, snap(setitem(("data", "team"), "ops\u0007"))),
    )

    # F10: the public key
    compressed = ALICE.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    uncompressed_point = ALICE.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    spki_compressed = spki(ALICE).replace(
        b"\x03\x42\x00" + uncompressed_point, b"\x03\x22\x00" + compressed
    )
    unknown_oid = spki(ALICE).replace(
        bytes.fromhex("2a8648ce3d0201"), bytes.fromhex("2a8648ce3e0201")
    )
    spki_compressed = b"\x30" + bytes([len(spki_compressed) - 2]) + spki_compressed[2:]
    for name, edit, comment in [
        (
            "f10-spki-garbage",
            setitem(("key", "spki"), b64url_encode(b"\x30\x03\x02\x01\x01")),
            "the SPKI is not a public key",
        ),
        (
            "f10-spki-not-base64",
            setitem(("key", "spki"), "not base64!"),
            "the SPKI is not base64url",
        ),
        (
            "f10-spki-compressed-point",
            setitem(("key", "spki"), b64url_encode(spki_compressed)),
            "an EC key with a compressed point: not the canonical DER",
        ),
        (
            "f10-spki-trailing-byte",
            setitem(("key", "spki"), b64url_encode(spki(ALICE) + b"\x00")),
            "a byte after the SPKI DER",
        ),
        (
            "f10-secp256k1",
            setitem(("key", "spki"), b64url_encode(spki(K256))),
            "a secp256k1 key (unsupported curve)",
        ),
        (
            "f10-rsa-1024",
            lambda s: s.update(
                key={"algorithm": "rsa-2048", "spki": b64url_encode(spki(RSA1024))},
                wrap={"method": "rsa-oaep", "oaep_hash": "sha1"},
            ),
            "an RSA-1024 key (too small)",
        ),
        (
            "f10-spki-unknown-oid",
            setitem(("key", "spki"), b64url_encode(unknown_oid)),
            "an SPKI whose algorithm OID is unknown",
        ),
        (
            "f10-unknown-algorithm",
            setitem(("key", "algorithm"), "ed25519"),
            "unknown key algorithm",
        ),
        (
            "f10-algorithm-mismatch",
            setitem(("key", "algorithm"), "ec-p384"),
            "algorithm says P-384 but the key is P-256",
        ),
    ]:
        vector(name, "F10", "format failure", comment, edited(alice, snap(edit)))

    # F11: wrap parameters
    bob = make_card(BOB_RSA, "bob", identity_type="username")
    vector(
        "f11-ec-with-oaep-hash",
        "F11",
        "format failure",
        "an EC card with an OAEP hash",
        edited(alice, snap(setitem(("wrap",), {"method": "ecdh", "oaep_hash": "sha1"}))),
    )
    vector(
        "f11-ec-with-rsa-oaep",
        "F11",
        "format failure",
        "an EC card with the rsa-oaep method",
        edited(alice, snap(setitem(("wrap",), {"method": "rsa-oaep", "oaep_hash": "sha1"}))),
    )
    vector(
        "f11-rsa-with-ecdh",
        "F11",
        "format failure",
        "an RSA card with the ecdh method",
        edited(bob, snap(setitem(("wrap",), {"method": "ecdh"}))),
    )
    vector(
        "f11-rsa-unknown-oaep-hash",
        "F11",
        "format failure",
        "OAEP hash md5",
        edited(bob, snap(setitem(("wrap", "oaep_hash"), "md5"))),
    )
    vector(
        "f11-rsa-no-oaep-hash",
        "F11",
        "format failure",
        "RSA wrap without the OAEP hash",
        edited(bob, snap(setitem(("wrap",), {"method": "rsa-oaep"}))),
    )
    vector(
        "f11-unknown-method",
        "F11",
        "format failure",
        "unknown wrap method",
        edited(alice, snap(setitem(("wrap",), {"method": "kem"}))),
    )

    # F12: other snapshot fields
    for name, edit, comment in [
        ("f12-scope-empty", setitem(("scope",), []), "empty scope"),
        ("f12-scope-unknown", setitem(("scope",), ["admin", "encrypt"]), "unknown scope"),
        ("f12-scope-unsorted", setitem(("scope",), ["sign", "encrypt"]), "scope not sorted"),
        ("f12-scope-repeated", setitem(("scope",), ["encrypt", "encrypt"]), "scope repeated"),
        ("f12-scope-not-list", setitem(("scope",), "encrypt"), "scope is a string"),
        ("f12-data-bad-name", setitem(("data",), {"Team": "ops"}), "upper-case custom field name"),
        ("f12-data-int-value", setitem(("data",), {"team": 7}), "a custom value that is a number"),
        (
            "f12-data-too-many",
            setitem(("data",), {f"k{i:02d}": "v" for i in range(33)}),
            "33 custom fields",
        ),
        (
            "f12-data-too-long",
            setitem(("data",), {"team": "x" * 1025}),
            "custom value of 1025 characters",
        ),
        (
            "f12-time-format",
            setitem(("created_at",), "2026-01-15 12:00:00"),
            "time without T and Z",
        ),
        (
            "f12-time-offset",
            setitem(("created_at",), "2026-01-15T12:00:00+00:00"),
            "time with an offset",
        ),
        ("f12-time-invalid", setitem(("created_at",), "2026-02-30T12:00:00Z"), "February 30th"),
        ("f12-previous-upper", setitem(("previous",), "A" * 64), "previous id in upper case"),
        ("f12-previous-short", setitem(("previous",), "ab" * 16), "previous id of 32 hex digits"),
        (
            "f12-provenance-not-bool",
            setitem(("provenance", "local"), "yes"),
            "provenance local is a string",
        ),
        (
            "f12-provenance-long",
            setitem(("provenance", "model"), "m" * 65),
            "token model over 64 characters",
        ),
    ]:
        vector(name, "F12", "format failure", comment, edited(alice, snap(edit)))

    # F13: signature entries
    def sig0(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda env: env["signatures"][0].__setitem__(key, value)

    two = add_sig(alice, "app", APP)
    for name, edit, comment in [
        ("f13-signer-upper", sig0("signer", "Self"), "signer name in upper case"),
        ("f13-signer-space", sig0("signer", "my app"), "signer name with a space"),
        ("f13-key-id-short", sig0("key_id", "ab" * 16), "key id of 16 bytes"),
        ("f13-unknown-alg", sig0("alg", "ed25519"), "unknown signature algorithm"),
        ("f13-empty-sig", sig0("sig", ""), "empty signature"),
        ("f13-sig-bad-base64", sig0("sig", "MEQC+IF=="), "signature not base64url"),
        ("f13-signatures-not-list", setitem(("signatures",), {}), "signatures is an object"),
    ]:
        vector(name, "F13", "format failure", comment, edited(alice, edit))
    vector(
        "f13-unsorted-signatures",
        "F13",
        "format failure",
        "self before app (not sorted)",
        edited(two, lambda e: e["signatures"].reverse()),
    )
    vector(
        "f13-duplicate-signer",
        "F13",
        "format failure",
        "two self signatures",
        edited(alice, lambda e: e["signatures"].append(dict(e["signatures"][0]))),
    )

    # F14: id and size
    vector(
        "f14-id-upper",
        "F14",
        "format failure",
        "card id in upper case",
        edited(alice, lambda e: e.update(id=e["id"].upper()), fix_id=False),
    )
    vector(
        "f14-id-short",
        "F14",
        "format failure",
        "card id of 63 digits",
        edited(alice, lambda e: e.update(id=e["id"][:63]), fix_id=False),
    )
    vector(
        "f14-too-long",
        "F14",
        "format failure",
        "65537 characters of text",
        "hsmv-card-1:" + "A" * (65537 - 12),
    )

    # V1: every field changed, id not recomputed
    changes: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        ("identity", setitem(("identity",), "mallory@example.org")),
        ("key", setitem(("key", "spki"), b64url_encode(spki(MALLORY)))),
        ("scope", setitem(("scope",), ["encrypt"])),
        ("data", setitem(("data", "team"), "sales")),
        ("data-added", setitem(("data", "role"), "admin")),
        ("created-at", setitem(("created_at",), "2026-01-16T12:00:00Z")),
        ("previous", setitem(("previous",), "0" * 64)),
        ("provenance-serial", setitem(("provenance", "serial"), "0000000000000000")),
        ("provenance-model", setitem(("provenance", "model"), "YubiKey 5")),
        ("identity-type", lambda s: s.update(identity="alice", identity_type="username")),
    ]
    for field_name, edit in changes:
        vector(
            f"v1-changed-{field_name}",
            "V1",
            "verification failure",
            f"{field_name} changed after signing; stated id kept",
            edited(alice, snap(edit), fix_id=False),
        )
    vector(
        "v1-id-changed",
        "V1",
        "verification failure",
        "the stated id changed",
        edited(alice, lambda e: e.update(id="0" * 64), fix_id=False),
    )

    # V3: every field changed with the id recomputed: the self signature no longer fits
    for field_name, edit in changes:
        vector(
            f"v3-changed-{field_name}",
            "V3",
            "verification failure",
            f"{field_name} changed and the id recomputed; the self signature does not verify",
            edited(alice, snap(edit)),
        )
    sig = alice.signature_by("self")
    assert sig is not None
    for position in (0, 1, 7, len(sig.signature) // 2, len(sig.signature) - 1):
        flipped = bytearray(sig.signature)
        flipped[position] ^= 0x01
        vector(
            f"v3-flipped-sig-byte-{position}",
            "V3",
            "verification failure",
            f"self signature byte {position} flipped",
            alice.with_signature(
                CardSignature("self", sig.key_id, sig.algorithm, bytes(flipped))
            ).to_text(),
        )
    vector(
        "v3-self-by-other-key",
        "V3",
        "verification failure",
        "self signature made by another key, naming that key",
        add_sig(Card(alice.snapshot), "self", MALLORY).to_text(),
    )
    vector(
        "v3-self-wrong-key-id",
        "V3",
        "verification failure",
        "self signature valid but naming another key id",
        edited(alice, sig0("key_id", key_id_of(spki(MALLORY)).hex())),
    )
    vector(
        "v3-self-alg-mismatch",
        "V3",
        "verification failure",
        "self signature labelled rsa-pss-sha256 on an EC key",
        edited(alice, sig0("alg", "rsa-pss-sha256")),
    )
    bob_sig = bob.signature_by("self")
    assert bob_sig is not None
    vector(
        "v3-rsa-flipped",
        "V3",
        "verification failure",
        "RSA self signature, last byte flipped",
        bob.with_signature(
            CardSignature(
                "self",
                bob_sig.key_id,
                bob_sig.algorithm,
                bob_sig.signature[:-1] + bytes([bob_sig.signature[-1] ^ 1]),
            )
        ).to_text(),
    )

    # V2
    vector(
        "v2-no-signatures",
        "V2",
        "verification failure",
        "no signatures at all",
        Card(alice.snapshot).to_text(),
    )
    vector(
        "v2-only-app",
        "V2",
        "verification failure",
        "an app signature but no self signature",
        add_sig(Card(alice.snapshot), "app", APP).to_text(),
        trust=trust_app,
    )

    # V4
    unprotected = TokenProvenance(
        "SoftHSM project", "SoftHSM v2", "8d2f4a1c3b5e7a90", True, False, True
    )
    vector(
        "v4-extractable-key",
        "V4",
        "verification failure",
        "correctly signed, but the provenance says the key is extractable",
        make_card(ALICE, provenance=unprotected).to_text(),
    )

    # V5, V6: app signature
    vector(
        "v5-app-missing",
        "V5",
        "verification failure",
        "app signature required but absent",
        text,
        trust=trust_app,
        require=["app"],
    )
    vector(
        "v6-app-untrusted-key",
        "V6",
        "verification failure",
        "app signature made by a key that is not the trusted app key",
        add_sig(alice, "app", MALLORY).to_text(),
        trust=trust_app,
        require=["app"],
    )
    app_sig = app_signed.signature_by("app")
    assert app_sig is not None
    vector(
        "v6-app-flipped",
        "V6",
        "verification failure",
        "app signature last byte flipped",
        alice.with_signature(
            CardSignature(
                "app",
                app_sig.key_id,
                app_sig.algorithm,
                app_sig.signature[:-1] + bytes([app_sig.signature[-1] ^ 1]),
            )
        ).to_text(),
        trust=trust_app,
        require=["app"],
    )
    vector(
        "v6-self-replayed-as-app",
        "V6",
        "verification failure",
        "the self signature copied as an app signature (app key = card key): domain separation",
        alice.with_signature(
            CardSignature("app", sig.key_id, sig.algorithm, sig.signature)
        ).to_text(),
        trust=[f"app {spki(ALICE).hex()}"],
        require=["app"],
    )
    vector(
        "v6-trusted-not-required-bad",
        "V6",
        "verification failure",
        "a bad signature by a trusted signer fails even when that signer is not required",
        add_sig(alice, "app", MALLORY).to_text(),
        trust=trust_app,
    )

    # V7: rotation
    vector(
        "v7-rotation-no-previous-sig",
        "V7",
        "verification failure",
        "a card naming a previous card without the previous card's signature",
        Card(
            rotated.snapshot, tuple(s for s in rotated.signatures if s.signer == "self")
        ).to_text(),
        previous=text,
    )
    vector(
        "v7-rotation-no-previous-sig-alone",
        "V7",
        "verification failure",
        "the same, checked without the previous card",
        Card(
            rotated.snapshot, tuple(s for s in rotated.signatures if s.signer == "self")
        ).to_text(),
    )
    forged = add_sig(Card(rotated.snapshot, (rotated.signature_by("self"),)), "previous", MALLORY)  # type: ignore[arg-type]
    vector(
        "v7-rotation-previous-by-wrong-key",
        "V7",
        "verification failure",
        "the 'previous' signature made by a key other than the previous card's",
        forged.to_text(),
        previous=text,
    )
    other = make_card(ALICE, "alice@example.org", created_at="2026-01-16T12:00:00Z")
    vector(
        "v7-rotation-wrong-previous-card",
        "V7",
        "verification failure",
        "the previous card given is not the one the card names",
        rotated.to_text(),
        previous=other.to_text(),
    )
    vector(
        "v7-previous-sig-without-rotation",
        "V7",
        "verification failure",
        "a 'previous' signature on a card that names no previous card",
        add_sig(alice, "previous", ALICE_NEW).to_text(),
    )
    stolen = make_card(MALLORY, "mallory@example.org", previous=(alice, ALICE))
    vector(
        "v7-rotation-identity-changed",
        "V7",
        "verification failure",
        "a rotation that changes the identity",
        stolen.to_text(),
        previous=text,
    )
    vector(
        "v7-previous-given-no-rotation",
        "V7",
        "verification failure",
        "a previous card given for a card that rotates nothing",
        text,
        previous=other.to_text(),
    )

    # Revocations
    def revocation(card: Card, reason: str, signer: str, key: KeyT) -> str:
        return make_revocation(
            card.id,
            reason,
            signer,
            spki(key),
            alg_of(key),
            signer_for(key),
            created_at="2026-06-01T08:00:00Z",
        ).to_text()

    rev_self = revocation(alice, "key-compromise", "self", ALICE)
    vector(
        "ok-revocation-self",
        "ok",
        "success",
        "revoked by the card's own key",
        text,
        revocation=rev_self,
    )
    vector(
        "ok-revocation-app",
        "ok",
        "success",
        "revoked by the trusted app key",
        text,
        revocation=revocation(alice, "superseded", "app", APP),
        trust=trust_app,
    )
    vector(
        "ok-revocation-unspecified",
        "ok",
        "success",
        "reason unspecified",
        text,
        revocation=revocation(alice, "unspecified", "self", ALICE),
    )
    rev_raw = json.loads(b64url_decode_any(rev_self.split(":", 1)[1]))

    def rev_text(obj: Any, version: str = "1") -> str:
        return f"hsmv-revocation-{version}:" + b64url_encode(canonical_json(obj))

    vector(
        "r1-version-true",
        "R1",
        "format failure",
        "revocation version written as true",
        text,
        revocation=rev_text({**rev_raw, "version": True}),
    )
    vector(
        "r1-wrong-prefix",
        "R1",
        "format failure",
        "not hsmv-revocation-",
        text,
        revocation="hsmv-revoke-1:" + rev_self.split(":", 1)[1],
    )
    vector(
        "r1-unknown-version",
        "R1",
        "format failure",
        "revocation text version 2",
        text,
        revocation="hsmv-revocation-2:" + rev_self.split(":", 1)[1],
    )
    vector(
        "r1-body-version",
        "R1",
        "format failure",
        "revocation version 2 inside",
        text,
        revocation=rev_text({**rev_raw, "version": 2}),
    )
    vector(
        "r1-unknown-reason",
        "R1",
        "format failure",
        "reason 'lost'",
        text,
        revocation=rev_text({**rev_raw, "reason": "lost"}),
    )
    vector(
        "r1-extra-field",
        "R1",
        "format failure",
        "an extra field",
        text,
        revocation=rev_text({**rev_raw, "note": "x"}),
    )
    vector(
        "r1-not-canonical",
        "R1",
        "format failure",
        "JSON with white space",
        text,
        revocation="hsmv-revocation-1:"
        + b64url_encode(json.dumps(rev_raw, sort_keys=True).encode()),
    )
    vector(
        "r1-bad-base64",
        "R1",
        "format failure",
        "padding in the base64",
        text,
        revocation=rev_self + "==",
    )
    vector(
        "r2-other-card",
        "R2",
        "verification failure",
        "a revocation of another card",
        other.to_text(),
        revocation=rev_self,
    )
    vector(
        "r2-untrusted-signer",
        "R2",
        "verification failure",
        "signed as app, app not trusted",
        text,
        revocation=revocation(alice, "superseded", "app", APP),
    )
    vector(
        "r2-self-by-other-key",
        "R2",
        "verification failure",
        "signed 'self' by another key",
        text,
        revocation=revocation(alice, "key-compromise", "self", MALLORY),
    )
    vector(
        "r2-app-untrusted-key",
        "R2",
        "verification failure",
        "signed as app by a key not trusted",
        text,
        revocation=revocation(alice, "superseded", "app", MALLORY),
        trust=trust_app,
    )
    vector(
        "r2-reason-changed",
        "R2",
        "verification failure",
        "reason changed after signing",
        text,
        revocation=rev_text({**rev_raw, "reason": "superseded"}),
    )
    vector(
        "r2-time-changed",
        "R2",
        "verification failure",
        "created_at changed after signing",
        text,
        revocation=rev_text({**rev_raw, "created_at": "2026-06-02T08:00:00Z"}),
    )


def officer_policy(approvals: int, *officers: tuple[str, str, Card, KeyT]) -> str:
    """A policy (serial 2, app-signed) naming `officers` (username, identity, card, key)."""
    from hsm_vault.trust import PolicyBody, PolicyOfficer, SignedPolicy
    from hsm_vault.trust.policy import sign_policy

    body = PolicyBody(
        serial=2,
        app_key_id=key_id_of(spki(APP)).hex(),
        approvals=approvals,
        officers=tuple(
            PolicyOfficer(name, identity, card.id, key_type_of_key(key), spki(key))
            for name, identity, card, key in sorted(officers, key=lambda o: o[0])
        ),
        created_at=CREATED,
        previous="0" * 64,
    )
    policy = sign_policy(SignedPolicy(body), "app", spki(APP), alg_of(APP), signer_for(APP))
    return policy.to_text()


def build_officers() -> None:
    """V8, V9 and officer signatures under V6: cards checked against a signed server policy."""
    olga_card = add_sig(make_card(OLGA, "olga", identity_type="username"), "app", APP)
    oscar_card = add_sig(make_card(OSCAR, "oscar", identity_type="username"), "app", APP)
    olga = ("olga", "olga", olga_card, OLGA)
    oscar = ("oscar", "oscar", oscar_card, OSCAR)
    both = officer_policy(2, olga, oscar)
    one = officer_policy(1, olga, oscar)
    trust_app = [f"app {spki(APP).hex()}"]
    alice = add_sig(make_card(ALICE), "app", APP)
    approved = add_sig(add_sig(alice, "officer:olga", OLGA), "officer:oscar", OSCAR)
    common = {"trust": trust_app, "require": ["app"]}
    vector(
        "ok-officers-approved",
        "ok",
        "success",
        "self, app and the two officer approvals the policy requires",
        approved.to_text(),
        policy=both,
        **common,
    )
    vector(
        "ok-officer-card-named",
        "ok",
        "success",
        "an officer's own card, named in the policy, needs no officer approvals",
        olga_card.to_text(),
        policy=both,
        **common,
    )
    vector(
        "v8-one-of-two-approvals",
        "V8",
        "verification failure",
        "one officer approval where the policy requires two",
        add_sig(alice, "officer:olga", OLGA).to_text(),
        policy=both,
        **common,
    )
    vector(
        "v8-app-alone",
        "V8",
        "verification failure",
        "the application key alone (what a compromised server can make)",
        alice.to_text(),
        policy=one,
        **common,
    )
    vector(
        "v8-unknown-officer",
        "V8",
        "verification failure",
        "approved by someone the policy does not name: not counted",
        add_sig(alice, "officer:mallory", MALLORY).to_text(),
        policy=one,
        **common,
    )
    olga_rotated = add_sig(
        make_card(ALICE_NEW, "olga", identity_type="username", previous=(olga_card, OLGA)),
        "app",
        APP,
    )
    vector(
        "v9-approved-by-owner",
        "V9",
        "verification failure",
        "olga's new card approved by olga (and oscar): no one approves their own card",
        add_sig(add_sig(olga_rotated, "officer:olga", OLGA), "officer:oscar", OSCAR).to_text(),
        policy=both,
        **common,
    )
    vector(
        "v6-officer-by-wrong-key",
        "V6",
        "verification failure",
        "an officer:oscar signature made by another key",
        add_sig(add_sig(alice, "officer:olga", OLGA), "officer:oscar", MALLORY).to_text(),
        policy=both,
        **common,
    )


# --- attestation (V10, V11, F15) ----------------------------------------------------------------

ATTEST_ROOT = rsa_key("attestation-test-root", 2048)
ATTEST_DEVICE = rsa_key("attestation-test-device-f9", 2048)
YUBICO = "1.3.6.1.4.1.41482.3."
ATTESTED_FIELDS = {
    "serial": 31800223,
    "firmware": "5.4.3",
    "pin_policy": "once",
    "touch_policy": "never",
    "form_factor": "usb-a-keychain",
}


def _certificate(
    subject: str, issuer: str, public: Any, signer: Any, serial: int, extensions: Any = ()
) -> bytes:
    """A deterministic certificate: RSA PKCS#1 v1.5 signatures, fixed serial and dates."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
    )
    for oid, value in extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(YUBICO + oid), value), critical=False
        )
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


ROOT_NAME = "Card Vectors Attestation Root (tests only)"
ATTEST_ROOT_DER = _certificate(ROOT_NAME, ROOT_NAME, ATTEST_ROOT.public_key(), ATTEST_ROOT, 1)
DEVICE_DER = _certificate(
    "Yubico PIV Attestation", ROOT_NAME, ATTEST_DEVICE.public_key(), ATTEST_ROOT, 2
)


def attestation_chain(key: KeyT, signer: Any = ATTEST_DEVICE, pin: int = 2) -> tuple[bytes, bytes]:
    """(attestation certificate of `key`'s public key, device certificate), as a YubiKey
    5.4.3 with serial 31800223 makes them: PIN policy `pin` (2: once), touch never."""
    extensions = [
        ("3", bytes([5, 4, 3])),
        ("7", bytes([0x02, 0x04, 0x01, 0xE5, 0x3B, 0x9F])),
        ("8", bytes([pin, 1])),
        ("9", bytes([0x01])),
    ]
    attestation = _certificate(
        "YubiKey PIV Attestation 9d",
        "Yubico PIV Attestation",
        key.public_key(),
        signer,
        3,
        extensions,
    )
    return attestation, DEVICE_DER


def attested_card(key: KeyT, chain: tuple[bytes, bytes] | None = None, **stated: Any) -> Card:
    from hsm_vault.cards import CardAttestation

    fields = {**ATTESTED_FIELDS, **stated}
    return make_card(
        key,
        provenance=TokenProvenance(
            "Yubico (www.yubico.com)", "YubiKey YK5", "31800223", True, True, True
        ),
        attestation=CardAttestation(chain=chain or attestation_chain(key), **fields),
    )


def attestation_policy(require: bool) -> str:
    """A version 2 policy (serial 2, app-signed, no officers) with the attestation rule."""
    from hsm_vault.trust import PolicyBody, SignedPolicy
    from hsm_vault.trust.policy import sign_policy

    body = PolicyBody(
        serial=2,
        app_key_id=key_id_of(spki(APP)).hex(),
        approvals=0,
        officers=(),
        created_at=CREATED,
        previous="0" * 64,
        version=2,
        require_attestation=require,
    )
    policy = sign_policy(SignedPolicy(body), "app", spki(APP), alg_of(APP), signer_for(APP))
    return policy.to_text()


def build_attestation() -> None:
    """V10, V11 and F15: cards that state an attestation, checked against a test root."""
    root = {"attestation_root": [ATTEST_ROOT_DER.hex()]}
    attested = attested_card(ALICE)
    vector(
        "ok-attested",
        "ok",
        "success",
        "an attested card whose chain verifies to the trusted test root",
        attested.to_text(),
        **root,
    )
    vector(
        "ok-not-attested",
        "ok",
        "success",
        "a card that states no attestation, with no rule requiring one",
        make_card(ALICE).to_text(),
        **root,
    )
    app_trust = {"trust": [f"app {spki(APP).hex()}"], "require": ["app"]}
    vector(
        "ok-attested-policy-requires",
        "ok",
        "success",
        "an attested card under a version 2 policy that requires attestation",
        add_sig(attested, "app", APP).to_text(),
        policy=attestation_policy(True),
        **app_trust,
        **root,
    )
    vector(
        "v11-not-attested-policy-requires",
        "V11",
        "verification failure",
        "an app-signed card without attestation under a policy that requires it",
        add_sig(make_card(ALICE), "app", APP).to_text(),
        policy=attestation_policy(True),
        **app_trust,
        **root,
    )
    vector(
        "v10-root-not-trusted",
        "V10",
        "verification failure",
        "the chain ends at a root the verifier does not trust (here: Yubico's alone)",
        attested.to_text(),
    )
    vector(
        "v10-another-key-attested",
        "V10",
        "verification failure",
        "the chain attests mallory's key, not the card's (an attestation copied from elsewhere)",
        attested_card(ALICE, chain=attestation_chain(MALLORY)).to_text(),
        **root,
    )
    vector(
        "v10-not-signed-by-device",
        "V10",
        "verification failure",
        "the attestation certificate is signed by a key other than the device certificate's",
        attested_card(ALICE, chain=attestation_chain(ALICE, signer=ATTEST_ROOT)).to_text(),
        **root,
    )
    vector(
        "v10-stated-policy-differs",
        "V10",
        "verification failure",
        "the card states PIN policy always where its attestation says once",
        attested_card(ALICE, pin_policy="always").to_text(),
        **root,
    )
    vector(
        "v10-stated-serial-differs",
        "V10",
        "verification failure",
        "the card states another device serial than its attestation",
        attested_card(ALICE, serial=1).to_text(),
        **root,
    )
    bad = [
        (
            "f15-one-certificate",
            "a chain of one certificate",
            ("chain",),
            [b64url_encode(DEVICE_DER)],
        ),
        (
            "f15-not-a-certificate",
            "a chain entry that is not DER X.509",
            ("chain",),
            [b64url_encode(b"0\x00"), b64url_encode(DEVICE_DER)],
        ),
        ("f15-unknown-pin-policy", "an unknown PIN policy", ("pin_policy",), "sometimes"),
        ("f15-bad-firmware", "firmware that is not x.y.z", ("firmware",), "5.4"),
        ("f15-negative-serial", "a negative serial", ("serial",), -1),
        ("f15-bad-form-factor", "a form factor with spaces", ("form_factor",), "usb a"),
        ("f15-extra-field", "an unknown attestation field", ("root",), "Yubico"),
    ]
    for name, comment, path, value in bad:
        vector(
            name,
            "F15",
            "format failure",
            comment,
            edited(attested, snap(setitem(("attestation", *path), value)), resign=ALICE),
            **root,
        )
    vector(
        "f15-attestation-null",
        "F15",
        "format failure",
        "attestation null (an unattested card has no attestation field)",
        edited(attested, snap(setitem(("attestation",), None)), resign=ALICE),
        **root,
    )


def b64url_decode_any(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def write(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.txt"):
        old.unlink()
    for name, v in sorted(VECTORS.items()):
        lines = [f"rule: {v['rule']}", f"expect: {v['expect']}", f"comment: {v['comment']}"]
        lines.append(f"card: {v['card']}")
        if "previous" in v:
            lines.append(f"previous: {v['previous']}")
        lines += [f"trust: {t}" for t in v.get("trust", [])]
        lines += [f"require: {r}" for r in v.get("require", [])]
        if "policy" in v:
            lines.append(f"policy: {v['policy']}")
        lines += [f"attestation-root: {r}" for r in v.get("attestation_root", [])]
        if "revocation" in v:
            lines.append(f"revocation: {v['revocation']}")
        for line in lines:
            assert "\n" not in line and "\r" not in line, (name, line[:40])
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(VECTORS)} vectors to {out}", file=sys.stderr)


if __name__ == "__main__":
    # An optional argument writes elsewhere (the determinism test compares the two folders).
    build()
    build_officers()
    build_attestation()
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
