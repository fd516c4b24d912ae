"""Generate the server policy test vectors in tests/vectors/policy/ (one file per case).

Run from the repository root:  .venv/bin/python tests/vectors/make_policy_vectors.py [OUTDIR]

Deterministic (the keys and signing of make_card_vectors.py, fixed times). Each file has
`rule`, `expect` (success, format failure, verification failure), `comment`, `app` (the
pinned application key, hex DER SPKI), optionally `held` (the policy the client has pinned)
and `policy` (the one offered). Without `held` the policy is checked as policy 1 of a server.
The format and the rules P1-P8 are in docs/trust.md.
"""

from __future__ import annotations

import copy
import hashlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from make_card_vectors import (
    APP,
    CREATED,
    MALLORY,
    OLGA,
    OSCAR,
    add_sig,
    alg_of,
    key_type_of_key,
    make_card,
    signer_for,
    spki,
)

from hsm_vault.cards import key_id_of
from hsm_vault.cards.canonical import b64url_encode, canonical_json
from hsm_vault.trust import PolicyBody, PolicyOfficer, SignedPolicy
from hsm_vault.trust.policy import sign_policy

OUT = Path(__file__).resolve().parent / "policy"
LATER = "2026-02-01T09:00:00Z"
VECTORS: dict[str, dict[str, str]] = {}


def vector(name: str, rule: str, expect: str, comment: str, policy: str, held: str = "") -> None:
    assert name not in VECTORS, name
    assert expect in ("success", "format failure", "verification failure")
    VECTORS[name] = {"rule": rule, "expect": expect, "comment": comment, "policy": policy}
    if held:
        VECTORS[name]["held"] = held


def sign(policy: SignedPolicy, signer: str, key: Any) -> SignedPolicy:
    return sign_policy(policy, signer, spki(key), alg_of(key), signer_for(key))


def officer(name: str, key: Any) -> PolicyOfficer:
    card = add_sig(make_card(key, name, identity_type="username"), "app", APP)
    return PolicyOfficer(name, name, card.id, key_type_of_key(key), spki(key))


def text_of(obj: dict[str, Any], version: int = 1) -> str:
    return f"hsmv-policy-{version}:" + b64url_encode(canonical_json(obj))


def edited(policy: SignedPolicy, edit: Any, *, fix_id: bool = True) -> str:
    obj = copy.deepcopy(policy.to_json())
    edit(obj)
    if fix_id:
        obj["id"] = hashlib.sha256(canonical_json(obj["policy"])).hexdigest()
    return text_of(obj, policy.version)


def build() -> None:
    app_id = key_id_of(spki(APP)).hex()
    genesis_body = PolicyBody(1, app_id, 2, (), CREATED, None)
    genesis = sign(SignedPolicy(genesis_body), "app", APP)
    olga, oscar = officer("olga", OLGA), officer("oscar", OSCAR)
    p2 = sign(SignedPolicy(genesis_body.successor(created_at=CREATED, add=(olga,))), "app", APP)
    p3 = sign(SignedPolicy(p2.body.successor(created_at=CREATED, add=(oscar,))), "app", APP)
    p4_body = p3.body.successor(created_at=LATER, approvals=1)
    p4 = sign(
        sign(sign(SignedPolicy(p4_body), "officer:olga", OLGA), "officer:oscar", OSCAR), "app", APP
    )
    held = p3.to_text()

    vector(
        "ok-genesis",
        "ok",
        "success",
        "policy 1: 2 approvals, no officers yet, app-signed",
        genesis.to_text(),
    )
    vector(
        "ok-bootstrap-add-officer",
        "ok",
        "success",
        "during the bootstrap (fewer officers than approvals) the app key alone signs",
        p2.to_text(),
        genesis.to_text(),
    )
    vector(
        "ok-quorum-change",
        "ok",
        "success",
        "policy 4 signed by the app key and both officers of policy 3",
        p4.to_text(),
        held,
    )

    # P1: the text, encoding and envelope
    vector(
        "p1-wrong-prefix",
        "P1",
        "format failure",
        "not hsmv-policy-",
        "hsmv-card-1:" + p4.to_text().partition(":")[2],
    )
    vector(
        "p1-unknown-version",
        "P1",
        "format failure",
        "hsmv-policy-3:",
        "hsmv-policy-3:" + p4.to_text().partition(":")[2],
    )
    vector(
        "p1-text-version-not-envelope",
        "P1",
        "format failure",
        "hsmv-policy-2: on a version 1 envelope",
        "hsmv-policy-2:" + p4.to_text().partition(":")[2],
    )
    vector(
        "p1-not-canonical",
        "P1",
        "format failure",
        "JSON with spaces",
        "hsmv-policy-1:" + b64url_encode(b'{"id": "x"}'),
    )
    vector(
        "p1-extra-field",
        "P1",
        "format failure",
        "an unknown envelope field",
        edited(p4, lambda o: o.update(extra=1)),
    )
    # P2: the body
    vector(
        "p2-serial-zero",
        "P2",
        "format failure",
        "serial 0",
        edited(genesis, lambda o: o["policy"].update(serial=0)),
    )
    vector(
        "p2-approvals-too-many",
        "P2",
        "format failure",
        "17 approvals",
        edited(genesis, lambda o: o["policy"].update(approvals=17)),
    )
    vector(
        "p2-officers-unsorted",
        "P2",
        "format failure",
        "officers not sorted by user name",
        edited(p3, lambda o: o["policy"]["officers"].reverse()),
    )
    vector(
        "p2-officer-upper-case",
        "P2",
        "format failure",
        "an officer name in upper case",
        edited(p2, lambda o: o["policy"]["officers"][0].update(username="Olga")),
    )
    vector(
        "p2-previous-on-policy-1",
        "P2",
        "format failure",
        "policy 1 naming a previous one",
        edited(genesis, lambda o: o["policy"].update(previous="0" * 64)),
    )
    vector(
        "p2-unknown-signer",
        "P2",
        "format failure",
        "a signer neither app nor officer:*",
        edited(p4, lambda o: o["signatures"][0].update(signer="admin")),
    )
    # P3: the id
    vector(
        "p3-id-changed",
        "P3",
        "verification failure",
        "the stated id is not the body's",
        edited(p4, lambda o: o.update(id="0" * 64), fix_id=False),
    )
    vector(
        "p3-body-changed",
        "P3",
        "verification failure",
        "approvals changed after signing, id left as it was",
        edited(p4, lambda o: o["policy"].update(approvals=0), fix_id=False),
    )
    # P4: the application key
    no_app = sign(sign(SignedPolicy(p4_body), "officer:olga", OLGA), "officer:oscar", OSCAR)
    vector(
        "p4-no-app-signature",
        "P4",
        "verification failure",
        "signed by the officers only",
        no_app.to_text(),
        held,
    )
    vector(
        "p4-app-by-other-key",
        "P4",
        "verification failure",
        "an 'app' signature by another key",
        sign(no_app, "app", MALLORY).to_text(),
        held,
    )
    other_server = PolicyBody(1, key_id_of(spki(MALLORY)).hex(), 1, (), CREATED, None)
    vector(
        "p4-other-server",
        "P4",
        "verification failure",
        "policy 1 of another server's application key",
        sign(SignedPolicy(other_server), "app", MALLORY).to_text(),
    )
    # P5: the serial and the chain
    vector(
        "p5-same-serial",
        "P5",
        "verification failure",
        "a policy 3 offered to a client holding policy 3",
        p3.to_text(),
        held,
    )
    vector(
        "p5-older",
        "P5",
        "verification failure",
        "policy 2 offered after policy 3",
        p2.to_text(),
        held,
    )
    skip = sign(SignedPolicy(PolicyBody(5, app_id, 1, p4_body.officers, LATER, p4.id)), "app", APP)
    vector(
        "p5-skips",
        "P5",
        "verification failure",
        "policy 5 offered to a client holding policy 3",
        skip.to_text(),
        held,
    )
    vector(
        "p5-genesis-not-1",
        "P5",
        "verification failure",
        "a first policy whose serial is not 1",
        p2.to_text(),
    )
    # P6: officer signatures
    vector(
        "p6-unknown-officer",
        "P6",
        "verification failure",
        "signed by mallory, who is not an officer of policy 3",
        sign(sign(SignedPolicy(p4_body), "officer:mallory", MALLORY), "app", APP).to_text(),
        held,
    )
    vector(
        "p6-officer-bad-signature",
        "P6",
        "verification failure",
        "an officer:oscar signature made by another key",
        sign(
            sign(sign(SignedPolicy(p4_body), "officer:olga", OLGA), "officer:oscar", MALLORY),
            "app",
            APP,
        ).to_text(),
        held,
    )
    # P7: the quorum
    vector(
        "p7-app-alone",
        "P7",
        "verification failure",
        "the application key alone, a higher serial (a forged policy)",
        sign(SignedPolicy(p4_body), "app", APP).to_text(),
        held,
    )
    back = p3.body.successor(created_at=LATER, approvals=3)
    vector(
        "p7-back-to-bootstrap",
        "P7",
        "verification failure",
        "the quorum signs a policy needing 3 approvals from 2 officers (the app key alone "
        "would then sign the next change)",
        sign(
            sign(sign(SignedPolicy(back), "officer:olga", OLGA), "officer:oscar", OSCAR), "app", APP
        ).to_text(),
        held,
    )
    vector(
        "p7-one-of-two",
        "P7",
        "verification failure",
        "one of the two officers",
        sign(sign(SignedPolicy(p4_body), "officer:olga", OLGA), "app", APP).to_text(),
        held,
    )


def build_v2() -> None:
    """Version 2: the attestation rule, the optional recovery and log-head-age rules, P8."""
    from hsm_vault.trust.policy import RecoveryCard, RecoveryShares

    app_id = key_id_of(spki(APP)).hex()
    olga, oscar = officer("olga", OLGA), officer("oscar", OSCAR)
    recovery_card = add_sig(make_card(MALLORY, "recovery", identity_type="username"), "app", APP)
    genesis = sign(
        SignedPolicy(
            PolicyBody(
                1,
                app_id,
                0,
                (),
                CREATED,
                None,
                version=2,
                require_attestation=True,
                recovery=RecoveryCard(recovery_card.id),
                max_head_age=300,
            )
        ),
        "app",
        APP,
    )
    vector(
        "ok-v2-genesis",
        "ok",
        "success",
        "version 2 policy 1: attestation required, a recovery card, log heads at most 300 s old",
        genesis.to_text(),
    )
    v1_body = PolicyBody(1, app_id, 2, (), CREATED, None)
    p2 = sign(SignedPolicy(v1_body.successor(created_at=CREATED, add=(olga, oscar))), "app", APP)
    p3_body = replace(
        p2.body.successor(created_at=LATER, require_attestation=True),
        recovery=RecoveryShares(2, ("olga", "oscar")),
        max_head_age=3600,
    )
    p3 = sign(
        sign(sign(SignedPolicy(p3_body), "officer:olga", OLGA), "officer:oscar", OSCAR), "app", APP
    )
    vector(
        "ok-v1-to-v2",
        "ok",
        "success",
        "a version 1 policy followed by a version 2 one: attestation, 2-of-2 officer shares",
        p3.to_text(),
        p2.to_text(),
    )
    p4_body = PolicyBody(4, app_id, 2, p3.body.officers, LATER, p3.id)
    p4 = sign(
        sign(sign(SignedPolicy(p4_body), "officer:olga", OLGA), "officer:oscar", OSCAR), "app", APP
    )
    vector(
        "p8-back-to-v1",
        "P8",
        "verification failure",
        "after a version 2 policy, a version 1 one (it would drop the attestation rule)",
        p4.to_text(),
        p3.to_text(),
    )

    def body_edit(name: str, value: Any) -> Any:
        def edit(obj: dict[str, Any]) -> None:
            obj["policy"][name] = value

        return edit

    def body_drop(name: str) -> Any:
        return lambda obj: obj["policy"].pop(name)

    cases = [
        (
            "p2-v2-no-attestation-field",
            "version 2 without require_attestation",
            genesis,
            body_drop("require_attestation"),
        ),
        (
            "p2-v2-attestation-not-bool",
            "require_attestation 1, not true",
            genesis,
            body_edit("require_attestation", 1),
        ),
        (
            "p2-v2-recovery-null",
            "recovery null (absent unless set)",
            genesis,
            body_edit("recovery", None),
        ),
        (
            "p2-v2-head-age-null",
            "max_head_age null (absent unless set)",
            genesis,
            body_edit("max_head_age", None),
        ),
        ("p2-v2-head-age-zero", "max_head_age 0", genesis, body_edit("max_head_age", 0)),
        (
            "p2-v2-head-age-text",
            "max_head_age as a string",
            genesis,
            body_edit("max_head_age", "300"),
        ),
        (
            "p2-v2-recovery-unknown-method",
            "an unknown recovery method",
            genesis,
            body_edit("recovery", {"method": "email"}),
        ),
        (
            "p2-v2-recovery-card-bad-id",
            "a recovery card id that is not hex",
            genesis,
            body_edit("recovery", {"method": "card", "card_id": "x"}),
        ),
        (
            "p2-v2-shares-not-officer",
            "a share holder who is not an officer",
            p3,
            body_edit(
                "recovery",
                {"method": "officer-shares", "officers": ["mallory", "olga"], "threshold": 2},
            ),
        ),
        (
            "p2-v2-shares-threshold-zero",
            "threshold 0",
            p3,
            body_edit(
                "recovery",
                {"method": "officer-shares", "officers": ["olga", "oscar"], "threshold": 0},
            ),
        ),
        (
            "p2-v2-shares-threshold-above-n",
            "threshold 3 of 2",
            p3,
            body_edit(
                "recovery",
                {"method": "officer-shares", "officers": ["olga", "oscar"], "threshold": 3},
            ),
        ),
        (
            "p2-v2-shares-unsorted",
            "share holders not sorted",
            p3,
            body_edit(
                "recovery",
                {"method": "officer-shares", "officers": ["oscar", "olga"], "threshold": 1},
            ),
        ),
        (
            "p2-v2-unknown-field",
            "a rule this version does not define",
            genesis,
            body_edit("max_age", 1),
        ),
        (
            "p2-v1-with-attestation",
            "a version 1 body stating require_attestation",
            sign(SignedPolicy(v1_body), "app", APP),
            body_edit("require_attestation", True),
        ),
        (
            "p2-v2-body-in-v1-envelope",
            "a version 2 body in a version 1 envelope",
            genesis,
            lambda obj: obj.update(version=1),
        ),
    ]
    for name, comment, policy, edit in cases:
        text = edited(policy, edit)
        if name == "p2-v2-body-in-v1-envelope":
            text = "hsmv-policy-1:" + text.partition(":")[2]
        rule = "P1" if name == "p2-v2-body-in-v1-envelope" else "P2"
        held = p2.to_text() if policy is p3 else ""
        vector(
            name.replace("p2-", "p1-", rule == "P1"), rule, "format failure", comment, text, held
        )


def write(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.txt"):
        old.unlink()
    for name, v in sorted(VECTORS.items()):
        lines = [f"rule: {v['rule']}", f"expect: {v['expect']}", f"comment: {v['comment']}"]
        lines.append(f"app: {spki(APP).hex()}")
        if "held" in v:
            lines.append(f"held: {v['held']}")
        lines.append(f"policy: {v['policy']}")
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(VECTORS)} vectors to {out}", file=sys.stderr)


if __name__ == "__main__":
    build()
    build_v2()
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
