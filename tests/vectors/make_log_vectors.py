"""Generate the transparency log test vectors in tests/vectors/log/.

Run from the repository root:  .venv/bin/python tests/vectors/make_log_vectors.py [OUTDIR]

Deterministic (the keys and signing of make_card_vectors.py, fixed times).

- `merkle.json`: RFC 9162 hashing of the eight reference leaves of the certificate
  transparency test suites (the roots for every size are theirs, as published in
  transparency-dev/merkle testonly/constants.go), and every inclusion proof and every
  consistency proof of those trees (computed here; tests/test_log_vectors.py checks them
  against a second, literal implementation of the RFC's definitions).
- One `.txt` file per rule case, as the policy vectors: `rule`, `expect` (success, format
  failure, proof failure, fork, stale, withheld), `comment`, `check` (entry, head, advance,
  card), `app` (the pinned application key, hex DER SPKI), `now`, and the inputs.
The format and the rules L1-L9 are in docs/log.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from make_card_vectors import APP, MALLORY, add_sig, make_card, signer_for, spki

from hsm_vault.cards.canonical import b64url_encode
from hsm_vault.cards.model import CardSignature
from hsm_vault.trust import PolicyBody, SignedPolicy
from hsm_vault.trust.log import EntryKind, LogEntry, SignedTreeHead, TreeHead, sign_head
from hsm_vault.trust.merkle import MerkleTree, leaf_hash
from hsm_vault.trust.policy import sign_policy

OUT = Path(__file__).resolve().parent / "log"
AT = "2026-03-01T10:00:00Z"
NOW = "2026-03-01T12:00:00Z"
STALE = "2026-02-27T10:00:00Z"
REFERENCE_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                    "606162636465666768696a6b6c6d6e6f"]  # fmt: skip
REFERENCE_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
APP_SPKI = spki(APP)
APP_ID = __import__("hashlib").sha256(APP_SPKI).hexdigest()


def merkle_vectors() -> dict[str, Any]:
    leaves = [leaf_hash(bytes.fromhex(x)) for x in REFERENCE_LEAVES]
    tree = MerkleTree(leaves)
    assert [tree.root(n).hex() for n in range(9)] == REFERENCE_ROOTS
    return {
        "source": "leaves and roots: RFC 6962/9162 reference trees of the certificate "
        "transparency test suites (transparency-dev/merkle testonly/constants.go); proofs: "
        "computed by hsm_vault.trust.merkle, checked against the RFC definitions in tests",
        "leaves": REFERENCE_LEAVES,
        "roots": REFERENCE_ROOTS,
        "inclusion": [
            {"index": i, "size": n, "proof": [h.hex() for h in tree.inclusion_proof(i, n)]}
            for n in range(1, 9)
            for i in range(n)
        ],
        "consistency": [
            {"size1": m, "size2": n, "proof": [h.hex() for h in tree.consistency_proof(m, n)]}
            for n in range(1, 9)
            for m in range(1, n + 1)
        ],
    }


def policy_text() -> str:
    body = PolicyBody(1, APP_ID, 0, (), AT, None)
    return sign_policy(SignedPolicy(body), "app", APP_SPKI, _alg(), signer_for(APP)).to_text()


def _alg() -> Any:
    from make_card_vectors import alg_of

    return alg_of(APP)


def log_entries() -> list[LogEntry]:
    """A small log: policy 1, a user, alice's card approved, then revoked by the app key."""
    from hsm_vault.cards.model import RevocationReason
    from hsm_vault.cards.revocation import RevocationStatement

    card = add_sig(make_card(__import__("make_card_vectors").ALICE), "app", APP)
    message = RevocationStatement.signing_message(
        card.id, RevocationReason.KEY_COMPROMISE, AT, "app"
    )
    statement = RevocationStatement(
        card.id,
        RevocationReason.KEY_COMPROMISE,
        AT,
        CardSignature("app", bytes.fromhex(APP_ID), _alg(), signer_for(APP)(message)),
    )
    data = [
        (EntryKind.POLICY_ADOPTED, "server", {"policy": policy_text()}),
        (
            EntryKind.USER_ADDED,
            "admin",
            {"username": "alice", "identity": card.identity, "role": "user"},
        ),
        (EntryKind.CARD_APPROVED, "olga", {"card": card.to_text(), "owner": "alice"}),
        (EntryKind.TOKENS_REVOKED, "admin", {"username": "alice", "count": 2}),
        (EntryKind.CARD_REVOKED, "olga", {"card_id": card.id, "revocation": statement.to_text()}),
    ]
    return [LogEntry(i, kind, AT, actor, d) for i, (kind, actor, d) in enumerate(data)]


def head_of(entries: list[LogEntry], size: int, at: str = AT, key: Any = APP) -> SignedTreeHead:
    tree = MerkleTree(e.leaf_hash for e in entries)
    return sign_head(TreeHead(APP_ID, size, tree.root(size), at), signer_for(key))


def write(out: Path, name: str, fields: dict[str, Any]) -> None:
    lines = [f"{k}: {v}" for k, v in fields.items()]
    (out / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def cases(out: Path) -> None:
    entries = log_entries()
    tree = MerkleTree(e.leaf_hash for e in entries)
    base = {"app": APP_SPKI.hex(), "now": NOW}
    for entry in entries:
        write(out, f"ok-entry-{entry.index}-{entry.kind.value}", {
            "rule": "ok", "expect": "success", "check": "entry",
            "comment": f"a {entry.kind.value} entry and its leaf hash",
            **base, "entry": entry.to_bytes().decode(), "leaf": entry.leaf_hash.hex(),
        })  # fmt: skip
    good = entries[2].to_json()
    bad_entries = {
        "l1-entry-unknown-kind": {**good, "kind": "card-stolen"},
        "l1-entry-extra-field": {**good, "note": "x"},
        "l1-entry-version-2": {**good, "version": 2},
        "l1-entry-time": {**good, "at": "2026-03-01 10:00:00"},
    }
    for name, obj in bad_entries.items():
        write(out, name, {
            "rule": "L1", "expect": "format failure", "check": "entry",
            "comment": name.removeprefix("l1-entry-").replace("-", " "), **base,
            "entry": json.dumps(obj, sort_keys=True, separators=(",", ":")),
        })  # fmt: skip
    write(out, "l1-entry-not-canonical", {
        "rule": "L1", "expect": "format failure", "check": "entry",
        "comment": "spaces after separators: not the canonical bytes", **base,
        "entry": json.dumps(good, sort_keys=True),
    })  # fmt: skip
    head = head_of(entries, 5)
    write(out, "ok-head", {
        "rule": "ok", "expect": "success", "check": "head", "comment": "the head of 5 entries",
        **base, "head": head.to_text(), "size": 5, "root": tree.root().hex(),
    })  # fmt: skip
    note = head.note().decode()
    write(out, "l4-head-prefix", {
        "rule": "L4", "expect": "format failure", "check": "head", "comment": "version 2",
        **base, "head": head.to_text().replace("hsmv-head-1:", "hsmv-head-2:"),
    })  # fmt: skip
    write(out, "l4-head-size", {
        "rule": "L4", "expect": "format failure", "check": "head", "comment": "size with a zero",
        **base, "head": "hsmv-head-1:" + b64url_encode(note.replace("\n5\n", "\n05\n").encode()),
    })  # fmt: skip
    write(out, "l5-head-other-key", {
        "rule": "L5", "expect": "proof failure", "check": "head",
        "comment": "signed by another key than the pinned application key", **base,
        "head": head_of(entries, 5, key=MALLORY).to_text(),
    })  # fmt: skip
    forged = SignedTreeHead(TreeHead(APP_ID, 4, tree.root(5), AT), head.signature)
    write(out, "l5-head-bad-signature", {
        "rule": "L5", "expect": "proof failure", "check": "head",
        "comment": "the size changed under the signature", **base, "head": forged.to_text(),
    })  # fmt: skip
    write(out, "l6-head-stale", {
        "rule": "L6", "expect": "stale", "check": "head",
        "comment": "signed 50 hours before now (the default maximum age is 24 h)", **base,
        "head": head_of(entries, 5, at=STALE).to_text(),
    })  # fmt: skip
    held = head_of(entries, 2)
    common = {**base, "held": held.to_text(), "held_frontier": _hex(tree.frontier(2).hashes)}
    write(out, "ok-advance", {
        "rule": "ok", "expect": "success", "check": "advance",
        "comment": "from 2 to 5 entries: consistency proof and the 3 entries in between",
        **common, "head": head.to_text(), "consistency": _hex(tree.consistency_proof(2, 5)),
        "entries": json.dumps([e.to_bytes().decode() for e in entries[2:]]),
    })  # fmt: skip
    write(out, "l7-rollback", {
        "rule": "L7", "expect": "fork", "check": "advance",
        "comment": "the server offers 1 entry to a client that holds 2 (a restored backup)",
        **common, "head": head_of(entries, 1).to_text(), "consistency": "[]", "entries": "[]",
    })  # fmt: skip
    other = [*entries[:1], LogEntry(1, EntryKind.USER_ADDED, AT, "admin",
             {"username": "mallory", "identity": "alice@example.org", "role": "user"}),
             *entries[2:]]  # fmt: skip
    other_tree = MerkleTree(e.leaf_hash for e in other)
    write(out, "l7-fork", {
        "rule": "L7", "expect": "fork", "check": "advance",
        "comment": "entry 1 rewritten: the new head is not an extension of the held one",
        **common, "head": head_of(other, 5).to_text(),
        "consistency": _hex(other_tree.consistency_proof(2, 5)),
        "entries": json.dumps([e.to_bytes().decode() for e in other[2:]]),
    })  # fmt: skip
    swapped = [entries[2], entries[3], entries[4].to_json() | {"actor": "mallory"}]
    write(out, "l7-rewritten-new-entry", {
        "rule": "L7", "expect": "fork", "check": "advance",
        "comment": "the proof holds but entry 4 as sent is not the one in the head",
        **common, "head": head.to_text(), "consistency": _hex(tree.consistency_proof(2, 5)),
        "entries": json.dumps([swapped[0].to_bytes().decode(), swapped[1].to_bytes().decode(),
                               json.dumps(swapped[2], sort_keys=True, separators=(",", ":"))]),
    })  # fmt: skip
    approval = {"index": 2, "entry": entries[2].to_bytes().decode(),
                "proof": [h.hex() for h in tree.inclusion_proof(2, 5)]}  # fmt: skip
    revocation = {"index": 4, "entry": entries[4].to_bytes().decode(),
                  "proof": [h.hex() for h in tree.inclusion_proof(4, 5)]}  # fmt: skip
    card_text = entries[2].data["card"]
    state = {**base, "held": head.to_text(), "held_frontier": _hex(tree.frontier(5).hashes),
             "card": card_text}  # fmt: skip
    write(out, "ok-card-revoked", {
        "rule": "ok", "expect": "success", "check": "card",
        "comment": "a revoked card with its approval and revocation proofs", **state,
        "status": "revoked", "revocation": entries[4].data["revocation"],
        "log": json.dumps({"approval": approval, "status": revocation}), "known": "{}",
    })  # fmt: skip
    write(out, "l8-withheld", {
        "rule": "L8", "expect": "withheld", "check": "card",
        "comment": "served as approved while this client saw its revocation at entry 4",
        **state, "status": "approved", "revocation": "",
        "log": json.dumps({"approval": approval, "status": None}),
        "known": json.dumps({entries[2].card().id: 4}),
    })  # fmt: skip
    bad_proof = {**approval, "proof": approval["proof"][::-1]}
    write(out, "l8-bad-inclusion", {
        "rule": "L8", "expect": "proof failure", "check": "card",
        "comment": "the inclusion proof's hashes out of order", **state,
        "status": "approved", "revocation": "",
        "log": json.dumps({"approval": bad_proof, "status": None}), "known": "{}",
    })  # fmt: skip
    write(out, "l8-no-proof", {
        "rule": "L8", "expect": "proof failure", "check": "card",
        "comment": "an approved card without log proofs", **state,
        "status": "approved", "revocation": "", "log": "null", "known": "{}",
    })  # fmt: skip


def _hex(hashes: Any) -> str:
    return json.dumps([h.hex() for h in hashes])


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.mkdir(parents=True, exist_ok=True)
    (out / "merkle.json").write_text(json.dumps(merkle_vectors(), indent=1) + "\n")
    cases(out)


if __name__ == "__main__":
    main()
