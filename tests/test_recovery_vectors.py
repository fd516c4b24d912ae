"""Recovery requests and shares (tests/vectors/recovery/) give the outcome each vector states,
and Shamir shares of a file key behave as docs/format.md says."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vectors.software_identity import SoftwareIdentity

from hsm_vault.envelope import read_header
from hsm_vault.envelope.recovery import combine_shares, split_file_key
from hsm_vault.errors import EnvelopeError, RecoveryError, RecoveryFormatError
from hsm_vault.trust.recovery import RecoveryRequest, RecoveryShare

VECTORS = Path(__file__).parent / "vectors" / "recovery"
GENERATOR = Path(__file__).parent / "vectors" / "make_recovery_vectors.py"
ALL = sorted(VECTORS.glob("*.txt"))


def check(path: Path) -> None:
    head, _, text = path.read_text().partition("\n\n")
    fields = dict(line.split(": ", 1) for line in head.splitlines())
    if fields["kind"] == "request":
        RecoveryRequest.from_text(text).verify()
        return
    header = read_header(io.BytesIO(base64.b64decode(fields["header"])))
    requester = SoftwareIdentity.from_der(bytes.fromhex(fields["requester"]))
    RecoveryShare.from_text(text).verify_for(header, {requester.key_id})


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_vector(path: Path) -> None:
    expect = path.read_text().splitlines()[0].removeprefix("expect: ")
    if expect == "success":
        check(path)
        return
    with pytest.raises(RecoveryError) as raised:
        check(path)
    assert isinstance(raised.value, RecoveryFormatError) == (expect == "format failure")


def test_every_rule_has_a_vector_and_the_generator_reproduces_them(tmp_path: Path) -> None:
    spec = (Path(__file__).parent.parent / "docs" / "trust.md").read_text()
    rules = {f"R{n}" for n in range(1, 11)}
    assert all(f"**{r}**" in spec for r in rules)
    comments = " ".join(p.read_text().splitlines()[1] for p in ALL)
    assert all(f"{r}:" in comments or f"{r}-" in comments for r in rules)
    subprocess.run([sys.executable, str(GENERATOR), str(tmp_path)], check=True, capture_output=True)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.txt")} == {
        p.name: p.read_bytes() for p in ALL
    }


def test_any_k_shares_rebuild_the_key_and_fewer_are_refused() -> None:
    key = os.urandom(32)
    shares = dict(enumerate(split_file_key(key, 3, 5), start=1))
    assert combine_shares({i: shares[i] for i in (1, 3, 5)}, 3) == key
    assert combine_shares({i: shares[i] for i in (2, 4, 5)}, 3) == key
    with pytest.raises(EnvelopeError, match="2 of the 3"):
        combine_shares({1: shares[1], 2: shares[2]}, 3)
    # k - 1 shares and any guess for the k-th give some key: the k - 1 do not narrow it.
    guesses = {combine_shares({1: shares[1], 2: shares[2], 3: os.urandom(32)}, 3) for _ in range(4)}
    assert key not in guesses and len(guesses) == 4
    # With a threshold of 1 (a recovery card) every share is the key itself.
    assert split_file_key(key, 1, 2) == [key, key]
