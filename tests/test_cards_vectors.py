"""Every vector file in tests/vectors/cards/ does what it says (docs/cards.md section 9)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.x509 import load_der_x509_certificate

from hsm_vault.cards import Card, RevocationStatement
from hsm_vault.errors import CardFormatError, CardVerificationError
from hsm_vault.trust import SignedPolicy, TrustPolicy, verify_card, verify_revocation

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "cards"
SPEC = ROOT / "docs" / "cards.md"
FILES = sorted(VECTORS.glob("*.txt"))


def read_vector(path: Path) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(": ")
        if not sep and line.endswith(":"):
            key, value = line[:-1], ""
        fields.setdefault(key, []).append(value)
    return fields


def run_vector(fields: dict[str, list[str]]) -> None:
    """Do what the vector asks; raise what the code raises."""
    trusted: dict[str, list[bytes]] = {}
    for entry in fields.get("trust", []):
        signer, spki_hex = entry.split(" ")
        trusted.setdefault(signer, []).append(bytes.fromhex(spki_hex))
    # Attestation roots the verifier trusts (DER, hex); none given: Yubico's pinned root only.
    roots = tuple(
        load_der_x509_certificate(bytes.fromhex(r)) for r in fields.get("attestation-root", [])
    )
    policy = TrustPolicy(
        required=frozenset(fields.get("require", [])),
        trusted={k: tuple(v) for k, v in trusted.items()},
        attestation_roots=roots or None,
    )
    if "policy" in fields:
        # A signed server policy: the app key, the officers' approvals and the attestation
        # rule it requires.
        signed = SignedPolicy.from_text(fields["policy"][0])
        policy = signed.card_trust(trusted["app"][0], roots or None)
    if "revocation" in fields:
        card = Card.from_text(fields["card"][0])
        statement = RevocationStatement.from_text(fields["revocation"][0])
        verify_revocation(statement, card, policy)
        return
    card = Card.from_text(fields["card"][0])
    previous = Card.from_text(fields["previous"][0]) if "previous" in fields else None
    verify_card(card, policy, previous=previous)
    # A card that verifies exports to exactly the text it was read from.
    assert card.to_text() == fields["card"][0].strip()


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_vector(path: Path) -> None:
    fields = read_vector(path)
    expect = fields["expect"][0]
    if expect == "success":
        run_vector(fields)
        return
    wanted = {"format failure": CardFormatError, "verification failure": CardVerificationError}[
        expect
    ]
    with pytest.raises(wanted) as info:
        run_vector(fields)
    # The exact class, not a sibling, and a message a person can act on.
    assert type(info.value) is wanted
    assert info.value.message and "\n" not in info.value.message


def test_there_are_vectors() -> None:
    assert len(FILES) > 100


def test_every_rule_has_a_vector() -> None:
    rules = set(re.findall(r"^- \*\*([A-Z]\d+)\*\*", SPEC.read_text(), flags=re.MULTILINE))
    assert {"F1", "F14", "V1", "V7", "V8", "V9", "R1", "R2"} <= rules
    covered = {read_vector(p)["rule"][0] for p in FILES}
    assert rules - covered == set(), f"rules without a vector: {sorted(rules - covered)}"
    assert covered - rules - {"ok"} == set()


def test_generator_is_deterministic(tmp_path: Path) -> None:
    """The generator reproduces the committed vectors byte for byte."""
    script = ROOT / "tests" / "vectors" / "make_card_vectors.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, cwd=ROOT)
    generated = sorted(tmp_path.glob("*.txt"))
    assert [p.name for p in generated] == [p.name for p in FILES]
    for path in generated:
        assert path.read_bytes() == (VECTORS / path.name).read_bytes(), path.name
