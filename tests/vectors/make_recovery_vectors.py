#!/usr/bin/env python3
"""Generate the recovery vectors in tests/vectors/recovery/ from fixed inputs (docs/trust.md).

    .venv/bin/python tests/vectors/make_recovery_vectors.py [OUTDIR]

Keys, cards and signatures come from make_card_vectors.py (fixed seeds, deterministic ECDSA);
file keys, salts, ephemeral keys and the Shamir coefficients from a SHA-256 counter, so running
this again writes byte-identical files (the suite checks that). Each vector is one text file:

    expect: success | format failure | verification failure
    comment: RULE: what the case exercises
    kind: request | share
    header: <base64 of the file's header>        (shares: the file the share is checked for)
    requester: <hex PKCS#8 DER>                  (shares: the requester's key, test key only)
    <blank line>
    <the one-line request or share>
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).parent))
import Crypto.Protocol.SecretSharing as secret_sharing
from make_card_vectors import ALICE_NEW, OLGA, OSCAR, alg_of, ec_key, make_card, signer_for
from software_identity import SoftwareIdentity

from hsm_vault.cards.canonical import b64url_decode, b64url_encode, canonical_json
from hsm_vault.envelope import (
    DEFAULT_CHUNK_SIZE,
    Randomness,
    Recipient,
    read_header,
)
from hsm_vault.envelope.envelope import _encrypt_from_parts
from hsm_vault.envelope.recipients import wrap_file_key
from hsm_vault.envelope.recovery import RecoveryPlan
from hsm_vault.trust.recovery import (
    RequestBody,
    ShareBody,
    header_digest,
    make_request,
    make_share,
)

OUT = Path(__file__).parent / "recovery"
CREATED = "2026-03-01T09:00:00Z"
OTTO = ec_key("otto-p256", ec.SECP256R1())
ALICE_OLD = ec_key("alice-p256-lost", ec.SECP256R1())


class Counter:
    def __init__(self, seed: str) -> None:
        self.seed, self.n = seed.encode(), 0

    def bytes(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.n += 1
            out += hashlib.sha256(self.seed + self.n.to_bytes(8, "big")).digest()
        return out[:n]


class FixedRandomness(Randomness):
    def __init__(self, seed: str) -> None:
        self.counter = Counter(seed)

    def random_bytes(self, n: int) -> bytes:
        return self.counter.bytes(n)

    def ephemeral_key(self, key_type: Any) -> ec.EllipticCurvePrivateKey:
        value = int.from_bytes(self.counter.bytes(32), "big") % (2**255) + 1
        return ec.derive_private_key(value, key_type.curve)


def sealed(seed: str, holders: list[Any], threshold: int) -> Any:
    """A file for ALICE_OLD with `threshold`-of-holders recovery; its header."""
    rng = FixedRandomness(seed)
    secret_sharing.rng = rng.counter.bytes  # Shamir's coefficients, for reproducible vectors
    plan = RecoveryPlan(threshold, tuple(SoftwareIdentity(k).recipient() for k in holders))
    out = io.BytesIO()
    result = _encrypt_from_parts(
        io.BytesIO(b"recovered"),
        out,
        [SoftwareIdentity(ALICE_OLD).recipient()],
        None,
        recovery=plan,
        chunk_size=DEFAULT_CHUNK_SIZE,
        progress=None,
        randomness=rng,
    )
    return result.header


def pkcs8(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).hex()


VECTORS: dict[str, dict[str, str]] = {}


def vector(name: str, expect: str, comment: str, kind: str, text: str, header: Any = None) -> None:
    VECTORS[name] = {"expect": expect, "comment": comment, "kind": kind, "text": text}
    if header is not None:
        VECTORS[name]["header"] = base64.b64encode(header.raw).decode()


def edited(text: str, change: Callable[[dict[str, Any]], None], *, reid: bool = False) -> str:
    head, _, body = text.partition(":")
    obj = json.loads(b64url_decode(body, "vector"))
    change(obj)
    if reid:
        obj["id"] = hashlib.sha256(canonical_json(obj["body"])).hexdigest()
    return f"{head}:{b64url_encode(canonical_json(obj))}"


def build() -> None:
    olga, oscar = make_card(OLGA, "olga"), make_card(OSCAR, "oscar")
    alice = make_card(ALICE_NEW, "alice")
    header = sealed("file-1", [OLGA, OSCAR, OTTO], 2)
    other = sealed("file-2", [OLGA, OSCAR, OTTO], 2)
    body = RequestBody(header, alice, "token lost", CREATED)
    request = make_request(body, alg_of(ALICE_NEW), signer_for(ALICE_NEW))
    text = request.to_text()
    vector("request-ok", "success", "R1-R4: a request signed by the requester", "request", text)
    vector(
        "r1-request-prefix",
        "format failure",
        "R1: wrong prefix",
        "request",
        text.replace("hsmv-recovery-request-1", "hsmv-recovery-reqest-1"),
    )
    vector(
        "r1-request-extra-field",
        "format failure",
        "R1: a field the format does not define",
        "request",
        edited(text, lambda o: o["body"].update(extra=1), reid=True),
    )
    vector(
        "r2-request-id",
        "verification failure",
        "R2: the stated id is not the body's",
        "request",
        edited(text, lambda o: o["body"].update(reason="audit")),
    )
    no_recovery = io.BytesIO()
    _encrypt_from_parts(
        io.BytesIO(b"x"),
        no_recovery,
        [SoftwareIdentity(ALICE_OLD).recipient()],
        None,
        recovery=None,
        chunk_size=DEFAULT_CHUNK_SIZE,
        progress=None,
        randomness=FixedRandomness("file-3"),
    )
    plain_header = read_header(io.BytesIO(no_recovery.getvalue())).raw
    vector(
        "r3-request-no-recovery",
        "format failure",
        "R3: a header without recovery entries",
        "request",
        edited(text, lambda o: o["body"].update(header=b64url_encode(plain_header)), reid=True),
    )
    vector(
        "r4-request-reason-changed",
        "verification failure",
        "R4: the reason changed and the id recomputed: the signature no longer verifies",
        "request",
        edited(text, lambda o: o["body"].update(reason="audit"), reid=True),
    )

    mallory = ec_key("mallory-requester", ec.SECP256R1())
    shares = []
    for holder_key, holder_card, index in ((OLGA, olga, 1), (OSCAR, oscar, 2)):
        share_value = hashlib.sha256(f"share-{index}".encode()).digest()
        wrapped = wrap_file_key(
            Recipient.from_card(alice), share_value, FixedRandomness(f"wrap-{index}")
        ).dump()
        share_body = ShareBody(
            request.id, header_digest(header), alice.id, index, 2, holder_card, wrapped, CREATED
        )
        shares.append(make_share(share_body, alg_of(holder_key), signer_for(holder_key)))
    good = shares[0].to_text()
    vector(
        "share-ok",
        "success",
        "R5-R10: share 1 from its holder, for the requester",
        "share",
        good,
        header,
    )
    vector(
        "r5-share-index-zero",
        "format failure",
        "R5: a share index outside 1 to 64",
        "share",
        edited(good, lambda o: o["body"].update(index=0), reid=True),
        header,
    )
    vector(
        "r6-share-id",
        "verification failure",
        "R6: the stated id is not the body's",
        "share",
        edited(good, lambda o: o["body"].update(index=2)),
        header,
    )
    vector(
        "r7-share-other-file",
        "verification failure",
        "R7: a share for another file",
        "share",
        good,
        other,
    )
    vector(
        "r8-share-wrong-holder",
        "verification failure",
        "R8: share 3 of the file is not the signer's to give",
        "share",
        make_share(
            ShareBody(
                request.id,
                header_digest(header),
                alice.id,
                3,
                2,
                olga,
                shares[0].body.wrapped,
                CREATED,
            ),
            alg_of(OLGA),
            signer_for(OLGA),
        ).to_text(),
        header,
    )

    def flip(o: dict[str, Any]) -> None:
        sig = bytearray(b64url_decode(o["signature"]["sig"], "vector"))
        sig[-1] ^= 1
        o["signature"]["sig"] = b64url_encode(bytes(sig))

    vector(
        "r9-share-signature",
        "verification failure",
        "R9: the signature does not verify",
        "share",
        edited(good, flip),
        header,
    )
    other_requester = Recipient.from_spki(
        mallory.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    stolen = wrap_file_key(other_requester, b"\x01" * 32, FixedRandomness("wrap-m")).dump()
    vector(
        "r10-share-other-requester",
        "verification failure",
        "R10: the share is wrapped to another card's key",
        "share",
        make_share(
            ShareBody(request.id, header_digest(header), alice.id, 1, 2, olga, stolen, CREATED),
            alg_of(OLGA),
            signer_for(OLGA),
        ).to_text(),
        header,
    )


def write(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    requester = pkcs8(ALICE_NEW)
    for name, v in sorted(VECTORS.items()):
        lines = [f"expect: {v['expect']}", f"comment: {v['comment']}", f"kind: {v['kind']}"]
        if "header" in v:
            lines += [f"header: {v['header']}", f"requester: {requester}"]
        lines += ["", v["text"]]
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(VECTORS)} vectors to {out}", file=sys.stderr)


if __name__ == "__main__":
    build()
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
