"""Recovery by 2 of 3 officers (issue 15), end to end on SoftHSM tokens and a real server.

Alice encrypts a file whose header carries the file key split 2-of-3 for three officers'
cards, then loses her key (it is deleted from her token). With a new card she requests
recovery; each officer approves on their own token; one share recovers nothing, two recover
the file, and `--rewrap` gives it to her new card. Bad shares and a tampered request are
refused with one-line errors, leaving the file untouched and no plaintext on disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from server_fixture import Account, RunningServer, start_server, unique
from typer.testing import CliRunner

from hsm_vault.cards.canonical import b64url_decode, b64url_encode, canonical_json
from hsm_vault.token import open_session

runner = CliRunner()


def cli(account: Account, *args: str) -> tuple[int, str]:
    return account.cli(*args)


def make_card(account: Account, token: str) -> tuple[str, str]:
    """A new key on `token`, `card create` in the account's keyring, `card publish`."""
    return account.publish_new_card(token)


@dataclass
class World:
    server: RunningServer
    alice: Account
    officers: list[Account]
    officer_cards: list[str]


@pytest.fixture(scope="module")
def world(softhsm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("recovery")
    env = {k: v for k, v in softhsm.env().items() if k != "HSM_VAULT_CONFIG"}
    server = start_server(folder, env)
    try:
        alice = server.enrol(unique("alice"))
        officers = [server.enrol(unique(n), role="officer") for n in ("olga", "oscar", "otto")]
        cards = [
            make_card(o, t)[0] for o, t in zip(officers, ("carol", "bob", "server"), strict=True)
        ]
        for i, card_id in enumerate(cards):  # each approved by another officer
            status, out = cli(officers[(i + 1) % 3], "card", "approve", card_id)
            assert status == 0, out
        # The officers and the 2-of-3 recovery rule (adopted at once under --approvals 0).
        names = [arg for o in officers for arg in ("--add-officer", o.name)]
        shares = [arg for o in officers for arg in ("--recovery-officer", o.name)]
        status, out = cli(
            officers[0], "policy", "propose", *names, *shares, "--recovery-threshold", "2"
        )
        assert status == 0, out
        status, out = cli(alice, "policy", "show", "--json")
        assert status == 0, out
        assert json.loads(out)["recovery"]["threshold"] == 2
        yield World(server, alice, officers, cards)
    finally:
        server.stop()


def encrypt_with_recovery(world: World, alice_card: str, src: Path) -> Path:
    """Alice encrypts `src` to her card; the policy adds the 2-of-3 officer shares."""
    status, out = cli(world.alice, "encrypt", "--to", alice_card, str(src))
    assert status == 0, out
    assert "recovery: any 2 of 3" in out
    return src.with_name(src.name + ".hsmv")


def tampered_text(text: str, change: Any) -> str:
    """A one-line document with `change(obj)` applied to its decoded JSON, re-encoded."""
    head, _, body = text.strip().partition(":")
    obj = json.loads(b64url_decode(body, "test"))
    change(obj)
    return f"{head}:{b64url_encode(canonical_json(obj))}"


def test_two_of_three_officers_recover_alices_file(world: World, tmp_path: Path) -> None:
    alice, (olga, oscar, otto) = world.alice, world.officers
    old_card, old_label = make_card(alice, "alice")
    status, out = cli(olga, "card", "approve", old_card)
    assert status == 0, out
    secret = tmp_path / "report.txt"
    secret.write_bytes(b"quarterly numbers\n" * 5000)
    sealed = encrypt_with_recovery(world, old_card, secret)
    other = tmp_path / "other.txt"
    other.write_text("another file")
    other_sealed = encrypt_with_recovery(world, old_card, other)
    original = sealed.read_bytes()
    secret.unlink()
    status, out = cli(alice, "encrypt", "--to", old_card, "--no-recovery", str(other), "-o", "x")
    assert status != 0 and "--no-recovery is not allowed" in out

    status, out = cli(alice, "inspect", str(sealed), "--json")
    assert status == 0, out
    recovery = json.loads(out)["recovery"]
    assert recovery["threshold"] == 2 and len(recovery["shares"]) == 3

    # Alice loses her token's key, and gets a new card.
    with open_session("alice") as ts:
        ts.delete_key(ts.find_key(old_label))
    new_card, _ = make_card(alice, "alice")
    status, out = cli(oscar, "card", "approve", new_card, "--yes")
    assert status == 0, out
    status, out = cli(alice, "decrypt", str(sealed), "-o", str(tmp_path / "x"))
    assert status != 0 and not (tmp_path / "x").exists()

    request = tmp_path / "report.recovery-request"
    status, out = cli(
        alice,
        "recover",
        "request",
        str(sealed),
        "--reason",
        "token lost",
        "--card",
        new_card,
        "-o",
        str(request),
    )
    assert status == 0, out

    # A tampered request (another reason, the id recomputed) is refused: no share is made.
    def new_reason(obj: dict[str, Any]) -> None:
        obj["body"]["reason"] = "the auditor asked"
        obj["id"] = __import__("hashlib").sha256(canonical_json(obj["body"])).hexdigest()

    forged = tmp_path / "forged.recovery-request"
    forged.write_text(tampered_text(request.read_text(), new_reason))
    shares = tmp_path / "shares"
    shares.mkdir()
    approve = ("recover", "approve", "--yes", "-o")
    status, out = cli(olga, *approve, str(shares / "f"), str(forged))
    assert status != 0 and "request signature does not verify" in out
    assert len(out.strip().splitlines()) == 2 and not (shares / "f").exists()

    status, out = cli(
        olga, "recover", "approve", str(request), "--yes", "-o", str(shares / "1.share")
    )
    assert status == 0, out
    status, out = cli(
        olga, "recover", "approve", str(request), "--yes", "-o", str(tmp_path / "again")
    )
    assert status != 0 and "is recorded" in out

    # One share recovers nothing; nor does it open another file.
    plain = tmp_path / "report.out"
    status, out = cli(alice, "recover", str(sealed), "--shares", str(shares), "-o", str(plain))
    assert status != 0 and "1 of the 2 shares needed" in out and not plain.exists()
    status, out = cli(
        oscar, "recover", "approve", str(request), "--yes", "-o", str(shares / "2.share")
    )
    assert status == 0, out
    status, out = cli(
        alice, "recover", str(other_sealed), "--shares", str(shares), "-o", str(plain)
    )
    assert status != 0 and "is for another file" in out and not plain.exists()

    # A share whose signature does not verify.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "1.share").write_text((shares / "1.share").read_text())

    def flip(obj: dict[str, Any]) -> None:
        sig = bytearray(b64url_decode(obj["signature"]["sig"], "test"))
        sig[-1] ^= 1
        obj["signature"]["sig"] = b64url_encode(bytes(sig))

    (bad / "2.share").write_text(tampered_text((shares / "2.share").read_text(), flip))
    status, out = cli(alice, "recover", str(sealed), "--shares", str(bad), "-o", str(plain))
    assert status != 0 and "share signature does not verify" in out and not plain.exists()
    assert sealed.read_bytes() == original

    # Two shares: the file opens, and --rewrap gives it to the new card.
    status, out = cli(alice, "recover", str(sealed), "--shares", str(shares), "-o", str(plain))
    assert status == 0, out
    assert plain.read_bytes() == b"quarterly numbers\n" * 5000
    status, out = cli(alice, "recover", str(sealed), "--shares", str(shares), "--rewrap")
    assert status == 0, out
    assert sealed.read_bytes()[-1000:] == original[-1000:]
    again = tmp_path / "again.out"
    status, out = cli(alice, "decrypt", str(sealed), "-o", str(again))
    assert status == 0, out
    assert again.read_bytes() == plain.read_bytes()

    # The server recorded both approvals.
    request_id = json.loads(b64url_decode(request.read_text().strip().partition(":")[2], "t"))["id"]
    with alice.client() as client:
        records = client.recovery_approvals(request_id)
    assert [(r["index"], r["approved_by"]) for r in records] == [(1, olga.name), (2, oscar.name)]
    assert otto.name not in {r["approved_by"] for r in records}
