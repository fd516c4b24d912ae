"""The transparency log's pure code: RFC 9162 Merkle vectors, every rule's vector in
tests/vectors/log/ (docs/log.md), and the audit of a whole log."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hsm_vault.errors import LogForkError, LogFormatError, LogProofError, LogStale, LogWithheld
from hsm_vault.trust.log import (
    CardLog,
    LogEntry,
    LogState,
    SignedTreeHead,
    advance,
    audit,
    check_fresh,
    parse_hashes,
    verify_card_log,
)
from hsm_vault.trust.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "log"
SPEC = ROOT / "docs" / "log.md"
FILES = sorted(VECTORS.glob("*.txt"))
EXPECT = {
    "format failure": LogFormatError,
    "proof failure": LogProofError,
    "fork": LogForkError,
    "stale": LogStale,
    "withheld": LogWithheld,
}


# --- RFC 9162, literally: MTH, PATH and PROOF as the RFC defines them ------------------------


def mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


def test_merkle_reference_vectors() -> None:
    vectors = json.loads((VECTORS / "merkle.json").read_text())
    leaves = [leaf_hash(bytes.fromhex(x)) for x in vectors["leaves"]]
    tree = MerkleTree(leaves)
    for size, root in enumerate(vectors["roots"]):
        assert tree.root(size).hex() == root == mth(leaves[:size]).hex()
        assert Frontier().extend(leaves[:size]).root().hex() == root
        assert tree.frontier(size).root().hex() == root
    for case in vectors["inclusion"]:
        i, n, proof = case["index"], case["size"], [bytes.fromhex(h) for h in case["proof"]]
        assert proof == path(i, leaves[:n])
        verify_inclusion(leaves[i], i, n, proof, tree.root(n))
        if n < 8:  # the proof in a tree of n entries does not show it in the next tree
            with pytest.raises(LogProofError):
                verify_inclusion(leaves[i], i, n + 1, proof, tree.root(n + 1))
        if proof:
            with pytest.raises(LogProofError):
                verify_inclusion(leaves[i], i, n, proof[:-1], tree.root(n))
    for case in vectors["consistency"]:
        m, n, proof = case["size1"], case["size2"], [bytes.fromhex(h) for h in case["proof"]]
        assert proof == (subproof(m, leaves[:n], True) if m < n else [])
        verify_consistency(m, n, tree.root(m), tree.root(n), proof)
        if m < n:
            with pytest.raises(LogProofError):
                verify_consistency(m, n, tree.root(m), tree.root(n - 1), proof)
            with pytest.raises(LogProofError):
                verify_consistency(m, n, leaf_hash(b"x"), tree.root(n), proof)


def test_proofs_agree_with_the_rfc_on_larger_trees() -> None:
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(70)]
    tree = MerkleTree(leaves)
    for n in (1, 2, 3, 31, 32, 33, 64, 70):
        assert tree.root(n) == mth(leaves[:n])
        for i in {0, n // 2, n - 1}:
            assert tree.inclusion_proof(i, n) == path(i, leaves[:n])
        for m in {1, n // 3 or 1, n - 1 or 1, n}:
            proof = tree.consistency_proof(m, n)
            assert proof == (subproof(m, leaves[:n], True) if m < n else [])
            verify_consistency(m, n, tree.root(m), tree.root(n), proof)


def read_vector(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(": ")
        fields[key] = value
    return fields


def _state(fields: dict[str, str], status: dict[str, int] | None = None) -> LogState:
    head = SignedTreeHead.from_text(fields["held"])
    frontier = Frontier(head.size, parse_hashes(json.loads(fields["held_frontier"])))
    return LogState(head, frontier, status or {})


def run_vector(fields: dict[str, str]) -> None:
    app = bytes.fromhex(fields["app"])
    now = datetime.strptime(fields["now"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    check = fields["check"]
    if check == "entry":
        entry = LogEntry.from_text(fields["entry"])
        assert entry.to_bytes().decode() == fields["entry"]
        assert entry.leaf_hash.hex() == fields["leaf"]
    elif check == "head":
        head = SignedTreeHead.from_text(fields["head"])
        assert head.to_text() == fields["head"]
        head.verify(app)
        check_fresh(head, now, 24 * 3600)
        assert (head.size, head.root.hex()) == (int(fields["size"]), fields["root"])
    elif check == "advance":
        entries = [LogEntry.from_text(t) for t in json.loads(fields["entries"])]
        head = SignedTreeHead.from_text(fields["head"])
        proof = parse_hashes(json.loads(fields["consistency"]))
        state = advance(_state(fields), head, proof, entries, app, now)
        assert state.head == head
    else:
        from hsm_vault.cards import Card

        state = _state(fields, json.loads(fields["known"]))
        raw = json.loads(fields["log"])
        verify_card_log(
            state,
            Card.from_text(fields["card"]),
            fields["status"],
            fields["revocation"] or None,
            None,
            None if raw is None else CardLog.from_json(raw),
        )


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_log_vector(path: Path) -> None:
    fields = read_vector(path)
    if fields["expect"] == "success":
        run_vector(fields)
        return
    wanted = EXPECT[fields["expect"]]
    with pytest.raises(wanted) as info:
        run_vector(fields)
    assert type(info.value) is wanted
    assert info.value.message and "\n" not in info.value.message


def test_every_log_rule_has_a_vector() -> None:
    rules = set(re.findall(r"^- \*\*(L\d+)\*\*", SPEC.read_text(), flags=re.MULTILINE))
    assert {"L1", "L9"} <= rules
    covered = {read_vector(p)["rule"] for p in FILES} | {"L2", "L3", "L9"}  # merkle.json, audit
    assert rules - covered == set(), f"rules without a vector: {sorted(rules - covered)}"


def test_log_generator_is_deterministic(tmp_path: Path) -> None:
    script = ROOT / "tests" / "vectors" / "make_log_vectors.py"
    out = tmp_path / "log"
    subprocess.run([sys.executable, str(script), str(out)], check=True, cwd=script.parent)
    generated = sorted(p.name for p in out.iterdir())
    assert generated == sorted(p.name for p in VECTORS.iterdir())
    for name in generated:
        assert (out / name).read_bytes() == (VECTORS / name).read_bytes(), name


def _small_log() -> tuple[list[LogEntry], SignedTreeHead, bytes]:
    fields = read_vector(VECTORS / "ok-advance.txt")
    entries = [
        LogEntry.from_text(read_vector(p)["entry"]) for p in sorted(VECTORS.glob("ok-entry-*"))
    ]
    return entries, SignedTreeHead.from_text(fields["head"]), bytes.fromhex(fields["app"])


def test_audit_of_a_whole_log() -> None:
    """L9: the small log verifies; a rewritten entry or a broken signature is named."""
    entries, head, app = _small_log()
    report = audit(entries, head, app)
    (card,) = report.cards.values()
    assert card.status == "revoked" and card.status_at == 4 and report.users == {"alice": "user"}
    with pytest.raises(LogProofError, match="do not make up its signed head"):
        audit([*entries[:3], LogEntry(3, entries[3].kind, entries[3].at, "eve", entries[3].data),
               entries[4]], head, app)  # fmt: skip
    card_text = entries[2].data["card"]
    broken = card_text[:-6] + ("A" if card_text[-6] != "A" else "B") + card_text[-5:]
    tampered = LogEntry(
        2, entries[2].kind, entries[2].at, "olga", {**entries[2].data, "card": broken}
    )
    with pytest.raises(LogProofError, match="log entry 2 does not verify"):
        audit([*entries[:2], tampered, *entries[3:]], head, app)
    with pytest.raises(LogProofError, match="log entry 1 is missing or out of order"):
        audit([entries[0], entries[2]], head, app)


def test_the_signed_policy_sets_the_maximum_head_age() -> None:
    """L6: the pinned policy's max_head_age wins over the 24 h default; the user's setting can
    only make it shorter. A head 3 hours old is refused under a 2-hour policy."""
    from hsm_vault.client.logsync import max_age_seconds
    from hsm_vault.config import Config
    from hsm_vault.trust import PolicyBody, SignedPolicy

    body = PolicyBody(1, "ab" * 32, 0, (), "2026-03-01T10:00:00Z", None, version=2)
    strict = SignedPolicy(PolicyBody(**{**body.__dict__, "max_head_age": 7200}))
    assert max_age_seconds(Config(), None) == 24 * 3600
    assert max_age_seconds(Config(), SignedPolicy(body)) == 24 * 3600
    assert max_age_seconds(Config(), strict) == 7200
    assert max_age_seconds(Config(log_max_age_hours=1), strict) == 3600
    assert max_age_seconds(Config(log_max_age_hours=48), strict) == 7200
    fields = read_vector(VECTORS / "ok-head.txt")
    head = SignedTreeHead.from_text(fields["head"])
    later = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)  # the head was signed at 10:00
    check_fresh(head, later, 24 * 3600)
    with pytest.raises(LogStale, match="2 h accepted"):
        check_fresh(head, later, max_age_seconds(Config(), strict))
