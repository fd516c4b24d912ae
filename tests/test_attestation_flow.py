"""Key attestation end to end: a card made on the virtual YubiKey through ykcs11 says
"attested", a `--require-attestation` server publishes it and refuses the others, and clients
of that server refuse unattested cards (docs/cards.md 2a, docs/trust.md 1a).

One server and one device for the module; the tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsm_vault.algorithms import KeyType
from hsm_vault.cards import Card, build_snapshot, sign_card
from tests.server_fixture import Account, RunningServer, start_server, unique
from tests.virtual_yubikey.fixture import VirtualYubiKey

HSM_VAULT = str(Path(sys.executable).parent / "hsm-vault")
SLOT = "82"  # a retired key-management slot: test_piv.py uses 9d, 9c, 94 and 95


class Flow:
    """The server, its accounts, and how each person runs hsm-vault."""

    def __init__(self, yk: VirtualYubiKey, softhsm: Any, server: RunningServer) -> None:
        self.yk, self.softhsm, self.server = yk, softhsm, server
        self.roots = {"HSM_VAULT_ATTESTATION_ROOTS": str(yk.root_ca)}
        self.officer = server.enrol(unique("olga"), role="officer")
        self.people: dict[str, Account] = {}
        for who in ("alice", "bob", "carol", "mallory"):
            name = unique(who)
            self.people[who] = server.enrol(name, identity=f"{name}@example.org")
        self.work = server.data_dir.parent / "work"
        self.work.mkdir()

    def identity(self, who: str) -> str:
        return f"{self.people[who].name}@example.org"

    def run(
        self, account: Account, *args: str, yubikey: bool = False, ok: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        base = self.yk.env() if yubikey else self.softhsm.env()
        done = subprocess.run(
            [HSM_VAULT, *args],
            capture_output=True,
            text=True,
            cwd=self.work,
            env={**base, **self.roots, **account.env(), **env},
            timeout=120,
        )
        if ok:
            assert done.returncode == 0, done.stderr
        else:
            assert done.returncode != 0, done.stdout
            assert "Traceback" not in done.stderr and done.stderr.startswith("error: ")
        return done

    def as_(self, who: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(self.people[who], *args, **kw)


@pytest.fixture(scope="module")
def flow(
    virtual_yubikey: VirtualYubiKey, softhsm: Any, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    folder = tmp_path_factory.mktemp("attest-server")
    env = {**softhsm.env(), "HSM_VAULT_ATTESTATION_ROOTS": str(virtual_yubikey.root_ca)}
    env.pop("HSM_VAULT_CONFIG", None)
    server = start_server(folder, env, init_args=("--require-attestation",))
    try:
        yield Flow(virtual_yubikey, softhsm, server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def alice_card(flow: Flow) -> dict[str, Any]:
    """A key generated on the virtual YubiKey, and its card: attested."""
    flow.as_(
        "alice",
        "key",
        "generate",
        "--slot",
        SLOT,
        "--force",
        "--token",
        flow.yk.token_label,
        "--allow-default-management-key",
        yubikey=True,
        HSM_VAULT_MANAGEMENT_KEY=flow.yk.management_key,
    )
    made = flow.as_(
        "alice",
        "card",
        "create",
        flow.identity("alice"),
        "--slot",
        SLOT,
        "--token",
        flow.yk.token_label,
        "--json",
        yubikey=True,
    )
    card: dict[str, Any] = json.loads(made.stdout)
    return card


def test_server_policy_requires_attestation(flow: Flow) -> None:
    shown = json.loads(flow.as_("bob", "policy", "show", "--json").stdout)
    assert shown["require_attestation"] is True and shown["version"] == 2
    assert flow.as_("bob", "policy", "show").stdout.count("attestation  required") == 1


def test_card_create_on_the_yubikey_says_attested(flow: Flow, alice_card: dict) -> None:
    assert alice_card["attested"] is True
    assert alice_card["attestation"] == {
        "serial": flow.yk.serial,
        "firmware": "5.4.3",
        "pin_policy": "once",
        "touch_policy": "never",
        "form_factor": "usb-a-keychain",
        "root": "Virtual YubiKey PIV Test Root CA (tests only)",
    }
    shown = flow.as_("alice", "card", "show", alice_card["id"], yubikey=True).stdout
    assert f"attested: YubiKey #{flow.yk.serial}, firmware 5.4.3, PIN policy once" in shown
    # Where the test root is not trusted, the same card does not count as attested.
    bare = flow.as_(
        "alice",
        "card",
        "show",
        alice_card["id"],
        "--json",
        yubikey=True,
        HSM_VAULT_ATTESTATION_ROOTS="",
    )
    assert json.loads(bare.stdout)["attested"] is False


def test_publish_approve_find_encrypt_decrypt(flow: Flow, alice_card: dict) -> None:
    published = json.loads(flow.as_("alice", "card", "publish", alice_card["id"], "--json").stdout)
    assert published["status"] == "pending"
    pending = json.loads(flow.run(flow.officer, "card", "pending", "--json").stdout)
    row = next(r for r in pending if r["id"] == alice_card["id"])
    assert row["attested"] is True and row["attestation"]["serial"] == flow.yk.serial
    flow.run(flow.officer, "card", "approve", alice_card["id"], "--yes")
    found = json.loads(flow.as_("bob", "card", "find", flow.identity("alice"), "--json").stdout)
    assert [(r["id"], r["attested"]) for r in found] == [(alice_card["id"], True)]
    (flow.work / "plan.txt").write_text("attested eyes only")
    flow.as_("bob", "encrypt", "--to", flow.identity("alice"), "plan.txt")
    (flow.work / "plan.txt").unlink()
    flow.as_("alice", "decrypt", "plan.txt.hsmv", yubikey=True)
    assert (flow.work / "plan.txt").read_text() == "attested eyes only"


def test_an_unattested_softhsm_card_is_refused_by_the_server(flow: Flow) -> None:
    flow.as_("carol", "key", "generate", "carol-attest", "--token", "carol")
    made = json.loads(
        flow.as_(
            "carol",
            "card",
            "create",
            flow.identity("carol"),
            "--key",
            "carol-attest",
            "--token",
            "carol",
            "--json",
        ).stdout
    )
    assert made["attested"] is False and made["attestation"] is None
    refused = flow.as_("carol", "card", "publish", made["id"], ok=False)
    assert "not attested" in refused.stderr and "requires key attestation" in refused.stderr


def test_a_card_with_a_forged_attestation_is_refused(flow: Flow, alice_card: dict) -> None:
    """Mallory copies alice's attestation into a card for a key of his own."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    real = Card.from_text(alice_card["card"])
    snapshot = build_snapshot(
        identity=flow.identity("mallory"),
        spki_der=spki,
        key_type=KeyType.EC_P256,
        provenance=real.snapshot.provenance,
        attestation=real.attestation,
    )
    forged = sign_card(
        Card(snapshot),
        "self",
        spki,
        KeyType.EC_P256.signature_algorithm,
        lambda m: key.sign(m, ec.ECDSA(hashes.SHA256())),
    )
    refused = flow.as_("bob", "card", "import", forged.to_text(), ok=False)
    assert "attestation does not verify" in refused.stderr
    assert "another public key" in refused.stderr
    flow.people["mallory"].keyring().add(forged, origin="own")
    refused = flow.as_("mallory", "card", "publish", forged.id, ok=False)
    assert "attestation does not verify" in refused.stderr


def test_clients_refuse_unattested_cards_from_that_server(flow: Flow) -> None:
    """The officers turn the rule off (a v2 policy), approve carol's unattested card, and turn
    it back on: clients of the server then refuse that card."""
    off = json.loads(
        flow.run(flow.officer, "policy", "propose", "--require-attestation", "no", "--json").stdout
    )
    assert off["require_attestation"] is False and off["version"] == 2
    carol = json.loads(flow.as_("carol", "card", "list", "--json").stdout)["cards"][0]
    flow.as_("carol", "card", "publish", carol["id"])
    flow.run(flow.officer, "card", "approve", carol["id"], "--yes")
    flow.as_("bob", "card", "find", flow.identity("carol"))  # valid while the rule is off
    flow.run(flow.officer, "policy", "propose", "--require-attestation", "yes")
    refused = flow.as_("bob", "card", "find", flow.identity("carol"), ok=False)
    assert "not attested" in refused.stderr and "requires key attestation" in refused.stderr
    # The attested card stays valid under the rule.
    flow.as_("bob", "card", "find", flow.identity("alice"))
