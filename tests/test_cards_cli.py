"""`hsm-vault card ...` as alice and bob run it: two SoftHSM tokens, two separate homes."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hsm_vault.cards import Card, Keyring
from hsm_vault.cards.canonical import b64url_decode, b64url_encode, canonical_json
from hsm_vault.cli.main import app
from hsm_vault.config import Config
from hsm_vault.token import open_session

runner = CliRunner()


def hv(home: Path, *args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input, env={"HSM_VAULT_HOME": str(home)})


def keyring_ids(home: Path) -> set[str]:
    return {e.card.id for e in Keyring(home / "data" / "cards").entries()}


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path]:
    alice, bob = tmp_path / "alice-home", tmp_path / "bob-home"
    alice.mkdir()
    bob.mkdir()
    return alice, bob


@pytest.fixture
def alice_card(homes, token_keys) -> str:
    """alice creates a card on her token and exports it; the export line."""
    alice_home, _ = homes
    made = hv(
        alice_home,
        "card",
        "create",
        "alice@example.org",
        "--key",
        "alice-p256",
        "--token",
        "alice",
        "--data",
        "team=ops",
        "--data",
        "room=4.12",
        "--json",
    )
    assert made.exit_code == 0, made.output
    info = json.loads(made.output)
    assert info["origin"] == "own" and info["status"] == "valid"
    assert info["key_uri"].startswith("pkcs11:") and "alice-p256" in info["key_uri"]
    assert info["data"] == {"room": "4.12", "team": "ops"}
    exported = hv(alice_home, "card", "export", info["id"][:12])
    assert exported.exit_code == 0, exported.output
    line = exported.output.strip()
    assert "\n" not in line and line == info["card"]
    return line


def test_alice_exports_bob_imports_and_verifies(homes, alice_card: str, tmp_path: Path) -> None:
    alice_home, bob_home = homes
    card = Card.from_text(alice_card)
    imported = hv(bob_home, "card", "import", alice_card)
    assert imported.exit_code == 0, imported.output
    assert "alice@example.org" in imported.output and card.short_id in imported.output
    assert "self (ecdsa-sha256, verified)" in imported.output
    assert keyring_ids(bob_home) == {card.id}

    verified = hv(bob_home, "card", "verify", alice_card, "--json")
    assert verified.exit_code == 0, verified.output
    data = json.loads(verified.output)
    assert data["valid"] is True and data["signatures"][0]["checked"] is True

    # Fingerprints: the same on both sides, and the key's own fingerprint as `key list` shows.
    fp_alice = json.loads(
        hv(alice_home, "card", "fingerprint", "alice@example.org", "--json").output
    )
    fp_bob = json.loads(hv(bob_home, "card", "fingerprint", card.id[:8], "--json").output)
    assert fp_alice == fp_bob
    assert fp_bob["id"] == card.id and fp_bob["short_id"] == card.short_id
    with open_session("alice") as ts:
        assert fp_bob["key_fingerprint_sha256"] == ts.find_key("alice-p256").fingerprint
    plain = hv(bob_home, "card", "fingerprint", card.id[:8])
    assert card.short_id in plain.output and card.id in plain.output

    listed = json.loads(hv(bob_home, "card", "list", "--json").output)
    assert [c["id"] for c in listed["cards"]] == [card.id] and listed["problems"] == []
    assert listed["cards"][0]["origin"] == "imported"
    shown = hv(bob_home, "card", "show", "alice@example.org")
    assert shown.exit_code == 0 and "team = ops" in shown.output and "imported" in shown.output

    # From a file and from stdin too; importing again is harmless.
    path = tmp_path / "alice.card"
    assert hv(alice_home, "card", "export", card.id[:8], "--out", str(path)).exit_code == 0
    assert path.read_text().strip() == alice_card
    refused = hv(alice_home, "card", "export", card.id[:8], "--out", str(path))
    assert refused.exit_code != 0 and "--force" in refused.output
    assert hv(bob_home, "card", "import", str(path)).exit_code == 0
    assert hv(bob_home, "card", "import", "-", input=alice_card + "\n").exit_code == 0
    assert keyring_ids(bob_home) == {card.id}

    # A corrupt entry is reported on stderr, and the rest of the keyring still lists.
    (bob_home / "data" / "cards" / ("f" * 64 + ".json")).write_text("{broken")
    with_problem = hv(bob_home, "card", "list", "--json")
    assert with_problem.exit_code == 0
    assert "warning:" in with_problem.stderr
    listed = json.loads(with_problem.stdout)
    assert [c["id"] for c in listed["cards"]] == [card.id] and len(listed["problems"]) == 1
    (bob_home / "data" / "cards" / ("f" * 64 + ".json")).unlink()

    assert hv(bob_home, "card", "remove", card.id[:8], input="n\n").exit_code != 0
    removed = hv(bob_home, "card", "remove", card.id[:8], "--yes")
    assert removed.exit_code == 0 and keyring_ids(bob_home) == set()
    gone = hv(bob_home, "card", "show", "alice@example.org")
    assert gone.exit_code == 1 and "error:" in gone.output and "hint:" in gone.output


def _envelope(line: str) -> dict:
    return json.loads(b64url_decode(line.split(":", 1)[1], "card"))


def _reencode(env: dict) -> str:
    return "hsmv-card-1:" + b64url_encode(canonical_json(env))


def _damaged(line: str) -> dict[str, str]:
    """The damage a card can come to harm by, each as a case name -> text."""
    cases: dict[str, str] = {}
    env = _envelope(line)
    changes = {
        "identity": "mallory@example.org",
        "identity_type": "username",
        "created_at": "2027-01-01T00:00:00Z",
        "previous": "0" * 64,
        "scope": ["encrypt"],
        "data": {"team": "sales", "room": "4.12"},
    }
    for field, value in changes.items():
        for fix_id in (False, True):
            changed = json.loads(json.dumps(env))
            changed["snapshot"][field] = value
            if field == "identity_type":
                changed["snapshot"]["identity"] = "alice"
            if fix_id:
                changed["id"] = (
                    __import__("hashlib").sha256(canonical_json(changed["snapshot"])).hexdigest()
                )
            cases[f"{field}-{'rehashed' if fix_id else 'same-id'}"] = _reencode(changed)
    changed = json.loads(json.dumps(env))
    changed["snapshot"]["provenance"]["serial"] = "ffff"
    cases["provenance"] = _reencode(changed)
    other_key = json.loads(json.dumps(env))
    with open_session("bob") as ts:
        bob_spki = ts.find_key("bob-p256").spki_der
    other_key["snapshot"]["key"]["spki"] = b64url_encode(bob_spki)
    cases["key"] = _reencode(other_key)
    sig = b64url_decode(env["signatures"][0]["sig"], "sig")
    for index in range(len(sig)):
        flipped = json.loads(json.dumps(env))
        damaged = bytearray(sig)
        damaged[index] ^= 0x01
        flipped["signatures"][0]["sig"] = b64url_encode(bytes(damaged))
        cases[f"sig-byte-{index}"] = _reencode(flipped)
    body = line.split(":", 1)[1]
    for cut in (1, 2, 3, 4, 5, 17, len(body) // 2, len(body) - 1):
        cases[f"truncated-{cut}"] = line[:-cut]
    cases["padded-equals"] = line + "=="
    cases["padded-base64"] = line + "AAAA"
    cases["padded-bytes"] = "hsmv-card-1:" + b64url_encode(b64url_decode(body, "b") + b"\x00")
    cases["padded-text"] = line + " trailing words"
    cases["base64-plus"] = line[:30] + "+" + line[31:]
    standard = "hsmv-card-1:" + base64.b64encode(b64url_decode(body, "b")).decode()
    if standard != line:  # the same text when it needs neither padding nor + or /
        cases["base64-standard-alphabet"] = standard
    cases["base64-char-changed"] = line[:60] + ("A" if line[60] != "A" else "B") + line[61:]
    cases["unknown-version-prefix"] = "hsmv-card-2:" + body
    unknown = json.loads(json.dumps(env))
    unknown["version"] = 2
    cases["unknown-version-envelope"] = _reencode(unknown)
    cases["non-canonical-json"] = "hsmv-card-1:" + b64url_encode(json.dumps(env).encode())
    no_self = json.loads(json.dumps(env))
    no_self["signatures"] = []
    cases["no-signature"] = _reencode(no_self)
    return cases


def test_every_kind_of_damage_is_rejected_and_nothing_stored(homes, alice_card: str) -> None:
    _, bob_home = homes
    cases = _damaged(alice_card)
    assert len(cases) > 80
    for name, text in cases.items():
        for command in ("import", "verify"):
            result = hv(bob_home, "card", command, text)
            assert result.exit_code != 0, (name, command)
            assert "error:" in result.output, (name, result.output)
            assert "Traceback" not in result.output
        assert keyring_ids(bob_home) == set(), name
    # The undamaged card still imports (the cases failed for their damage, not by accident).
    assert hv(bob_home, "card", "import", alice_card).exit_code == 0


def test_messages_say_what_is_wrong(homes, alice_card: str) -> None:
    _, bob_home = homes
    cases = _damaged(alice_card)
    expected = {
        "identity-same-id": "card id does not match",
        "identity-rehashed": "self signature does not verify",
        "sig-byte-10": "self signature does not verify",
        "truncated-17": "card",
        "unknown-version-prefix": "unknown card version '2'",
        "unknown-version-envelope": "unknown card envelope version 2",
        "non-canonical-json": "not in canonical form",
        "base64-plus": "not valid base64url",
        "no-signature": "no self signature",
    }
    for name, phrase in expected.items():
        result = hv(bob_home, "card", "import", cases[name])
        assert phrase in result.output, (name, result.output)


def test_rotation_from_the_cli(homes, token_keys, alice_card: str) -> None:
    alice_home, bob_home = homes
    old = Card.from_text(alice_card)
    label = f"alice-next-{uuid.uuid4().hex[:8]}"
    made = hv(alice_home, "key", "generate", label, "--token", "alice")
    assert made.exit_code == 0, made.output
    try:
        missing = hv(
            alice_home,
            "card",
            "create",
            "alice@example.org",
            "--key",
            label,
            "--token",
            "alice",
            "--rotate-from",
            old.id[:8],
        )
        assert missing.exit_code == 2 and "--old-key" in missing.output
        rotated = hv(
            alice_home,
            "card",
            "create",
            "alice@example.org",
            "--key",
            label,
            "--token",
            "alice",
            "--rotate-from",
            old.id[:8],
            "--old-key",
            "alice-p256",
            "--json",
        )
        assert rotated.exit_code == 0, rotated.output
        new = Card.from_text(json.loads(rotated.output)["card"])
    finally:
        hv(alice_home, "key", "delete", label, "--token", "alice", "--yes")
    assert new.previous_id == old.id and new.signers == ("previous", "self")
    listed = {
        c["id"]: c["status"]
        for c in json.loads(hv(alice_home, "card", "list", "--json").output)["cards"]
    }
    assert listed == {old.id: "superseded", new.id: "valid"}
    assert (
        json.loads(hv(alice_home, "card", "show", "alice@example.org", "--json").output)["id"]
        == new.id
    )

    # bob checks the rotation against the old card he already holds.
    assert hv(bob_home, "card", "import", alice_card).exit_code == 0
    assert hv(bob_home, "card", "verify", new.to_text(), "--previous", old.id[:8]).exit_code == 0
    assert hv(bob_home, "card", "import", new.to_text()).exit_code == 0
    # A rotated card without the old key's signature is rejected, and not stored.
    unsigned = Card(new.snapshot, tuple(s for s in new.signatures if s.signer == "self"))
    hv(bob_home, "card", "remove", new.id, "--yes")
    refused = hv(bob_home, "card", "import", unsigned.to_text())
    assert refused.exit_code == 1 and "earlier card's key" in refused.output
    assert keyring_ids(bob_home) == {old.id}


def test_revocation_from_the_cli(homes, alice_card: str, tmp_path: Path) -> None:
    alice_home, bob_home = homes
    card = Card.from_text(alice_card)
    assert hv(bob_home, "card", "import", alice_card).exit_code == 0
    out = tmp_path / "revocation.txt"
    made = hv(
        alice_home,
        "card",
        "sign-revocation",
        card.id[:8],
        "--key",
        "alice-p256",
        "--token",
        "alice",
        "--reason",
        "key-compromise",
        "--out",
        str(out),
    )
    assert made.exit_code == 0, made.output
    assert (
        json.loads(hv(alice_home, "card", "show", card.id, "--json").output)["status"] == "revoked"
    )
    taken = hv(bob_home, "card", "import-revocation", str(out))
    assert taken.exit_code == 0, taken.output
    assert "key-compromise" in taken.output
    status = json.loads(hv(bob_home, "card", "show", card.id[:8], "--json").output)
    assert status["status"] == "revoked" and status["revocation"]["reason"] == "key-compromise"
    gone = hv(bob_home, "card", "export", "alice@example.org")
    assert gone.exit_code == 1 and "revoked" in gone.output


def test_create_refuses_bad_input_and_require_needs_a_pinned_key(homes, token_keys) -> None:
    alice_home, _ = homes
    bad = hv(
        alice_home,
        "card",
        "create",
        "alice@example.org",
        "--key",
        "alice-p256",
        "--token",
        "alice",
        "--data",
        "no-equals-sign",
    )
    assert bad.exit_code == 2 and "name=value" in bad.output
    bad = hv(
        alice_home, "card", "create", "not an email", "--key", "alice-p256", "--token", "alice"
    )
    assert bad.exit_code == 1 and "error:" in bad.output
    assert keyring_ids(alice_home) == set()
    assert hv(alice_home, "card", "verify", "hsmv-card-1:AAAA", "--require", "app").exit_code == 2


def test_app_signature_required_against_the_pinned_key(homes, alice_card: str) -> None:
    _, bob_home = homes
    from hsm_vault.algorithms import KeyType
    from hsm_vault.cards import CardSignature, key_id_of

    card = Card.from_text(alice_card)
    with open_session("server") as server:
        app_key = server.generate_key(f"app-{uuid.uuid4().hex[:8]}", KeyType.EC_P256)
        signed = card.with_signature(
            CardSignature(
                "app",
                key_id_of(app_key.spki_der),
                app_key.key_type.signature_algorithm,
                server.sign(app_key, card.signing_message("app")),
            )
        )
        server.delete_key(app_key)
    config_path = bob_home / "config" / "config.json"
    pinned = base64.b64encode(app_key.spki_der).decode()
    # The pinned key is checked against the pinned fingerprint, for `card import` as for
    # every other caller (one loader of trust anchors): an altered key is refused.
    Config(app_key_spki=pinned, app_fingerprint="00" * 32).save(config_path)
    altered = hv(bob_home, "card", "import", signed.to_text(), "--require", "app")
    assert altered.exit_code == 1
    assert "does not match the pinned fingerprint" in altered.output
    Config(app_key_spki=pinned, app_fingerprint=app_key.fingerprint).save(config_path)
    unsigned = hv(bob_home, "card", "import", alice_card, "--require", "app")
    assert unsigned.exit_code == 1 and "required 'app' signature" in unsigned.output
    assert keyring_ids(bob_home) == set()
    ok = hv(bob_home, "card", "import", signed.to_text(), "--require", "app")
    assert ok.exit_code == 0, ok.output
    assert "app (ecdsa-sha256, verified)" in ok.output
