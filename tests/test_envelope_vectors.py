"""Every envelope test vector (tests/vectors/envelope/) gives the outcome it states."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from vectors.software_identity import SoftwareIdentity

from hsm_vault.envelope import Verifier, decrypt
from hsm_vault.envelope import envelope as envelope_module
from hsm_vault.errors import HeaderError, NoMatchingRecipient, PayloadError, SignatureError

VECTORS = Path(__file__).parent / "vectors" / "envelope"
GENERATOR = Path(__file__).parent / "vectors" / "make_envelope_vectors.py"
OUTCOMES: dict[str, type[Exception] | None] = {
    "success": None,
    "no match": NoMatchingRecipient,
    "header failure": HeaderError,
    "payload failure": PayloadError,
    "signature failure": SignatureError,
}


@dataclass
class Case:
    expect: str
    comment: str
    identities: list[SoftwareIdentity]
    verifier: Verifier | None
    payload_sha256: str | None
    data: bytes


def load(path: Path) -> Case:
    head, _, body = path.read_text().partition("\n\n")
    fields: dict[str, list[str]] = {}
    for line in head.splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    verifier = None
    if "verify-from" in fields:
        card_id, spki = fields["verify-from"][0].split()
        verifier = Verifier(bytes.fromhex(card_id), bytes.fromhex(spki), "sender")
    return Case(
        expect=fields["expect"][0],
        comment=fields["comment"][0],
        identities=[SoftwareIdentity.from_der(bytes.fromhex(h)) for h in fields["identity"]],
        verifier=verifier,
        payload_sha256=fields.get("payload-sha256", [None])[0],
        data=base64.b64decode("".join(body.split())),
    )


ALL = sorted(VECTORS.glob("*.txt"))


def test_vectors_exist_for_every_outcome() -> None:
    expects = {load(path).expect for path in ALL}
    assert expects == set(OUTCOMES)
    assert len(ALL) >= 80


@pytest.mark.parametrize("overlapped", [False, True], ids=["sequential", "overlapped"])
@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_vector(path: Path, overlapped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both payload readers (one buffer; reader and writer threads) give the same outcome."""
    monkeypatch.setattr(envelope_module, "is_large", lambda src, chunk_size: overlapped)
    case = load(path)
    expected = OUTCOMES[case.expect]
    out = io.BytesIO()
    if expected is None:
        result = decrypt(io.BytesIO(case.data), out, case.identities, case.verifier)
        assert hashlib.sha256(out.getvalue()).hexdigest() == case.payload_sha256
        assert (result.signer is not None) == (case.verifier is not None)
        return
    with pytest.raises(expected):
        decrypt(io.BytesIO(case.data), out, case.identities, case.verifier)
    if expected is not PayloadError and expected is not SignatureError:
        # Header failures and no-match release nothing at all.
        assert out.getvalue() == b""


def test_every_rule_of_the_spec_has_a_vector() -> None:
    spec = (Path(__file__).parent.parent / "docs" / "format.md").read_text()
    rules = {line.split("|")[1].strip() for line in spec.splitlines() if line.startswith("| ")}
    rules = {r for r in rules if r[:1] in "HNPS" and r[1:].isdigit()}
    comments = " ".join(load(path).comment for path in ALL)
    missing = sorted(r for r in rules if f"{r}:" not in comments and f"{r}/" not in comments)
    assert rules and not missing, f"rules without a vector: {missing}"


def test_generator_reproduces_the_checked_in_vectors(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(GENERATOR), str(tmp_path)], check=True, capture_output=True)
    generated = {p.name: p.read_bytes() for p in tmp_path.glob("*.txt")}
    checked_in = {p.name: p.read_bytes() for p in ALL}
    assert generated == checked_in
