"""`hsm-vault encrypt / decrypt / inspect` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hsm_vault.cards import Keyring, create_card, revoke_card
from hsm_vault.cli.main import app
from hsm_vault.token import open_session

HSM_VAULT = str(Path(sys.executable).parent / "hsm-vault")
runner = CliRunner()


def card_for(label: str, identity: str | None = None):
    token = label.split("-")[0]
    with open_session(token) as ts:
        key = ts.find_key(label)
        card = create_card(ts, key, identity or token)
    Keyring().add(card, origin="own", key_uri=key.uri)
    return card


def cli(*args: str, input: bytes | None = None):
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


def run(*args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HSM_VAULT, *args], input=stdin, capture_output=True, check=check, env=os.environ.copy()
    )


@pytest.fixture
def cards(token_keys) -> dict:
    return {
        label: card_for(label)
        for label in ("alice-p256", "alice-rsa2048", "bob-p256", "bob-rsa3072")
    }


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def test_encrypt_decrypt_files(cards, work: Path) -> None:
    src = work / "report.pdf"
    src.write_bytes(os.urandom(100_000))
    result = run(
        "encrypt", "--to", cards["alice-p256"].id, "--to", cards["bob-rsa3072"].id, str(src)
    )
    assert (work / "report.pdf.hsmv").exists(), result.stderr
    src.rename(work / "original")
    run("decrypt", "--token", "bob", str(work / "report.pdf.hsmv"))
    assert (work / "report.pdf").read_bytes() == (work / "original").read_bytes()


def test_pipes(cards, work: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 1)
    sealed = run("encrypt", "--to", cards["bob-p256"].id, stdin=data).stdout
    assert sealed[:4] == b"HSMV"
    plain = run("decrypt", "--token", "bob", stdin=sealed).stdout
    assert plain == data
    plain = run("decrypt", "--token", "bob", "-o", "-", stdin=sealed).stdout
    assert plain == data


@pytest.mark.parametrize("label", ["alice-p256", "alice-p384", "alice-rsa2048", "bob-rsa3072"])
@pytest.mark.parametrize(
    "size", [0, 1, 1024 * 1024, 1024 * 1024 + 1], ids=["0", "1", "chunk", "chunk+1"]
)
def test_pipes_each_key_type(token_keys, label: str, size: int) -> None:
    card = card_for(label)
    data = os.urandom(size)
    sealed = run("encrypt", "--to", card.id, stdin=data).stdout
    token = label.split("-")[0]
    assert run("decrypt", "--token", token, stdin=sealed).stdout == data


def test_pipes_mixed_recipients_on_two_tokens(token_keys) -> None:
    labels = ["alice-p384", "alice-rsa2048", "bob-p256", "bob-rsa3072"]
    ids = [card_for(label).id for label in labels]
    data = os.urandom(2 * 1024 * 1024 + 3)
    sealed = run("encrypt", *[arg for i in ids for arg in ("--to", i)], stdin=data).stdout
    for token in ("alice", "bob"):
        assert run("decrypt", "--token", token, stdin=sealed).stdout == data


def test_identity_with_several_valid_cards_is_refused(cards, token_keys, work: Path) -> None:
    card_for("alice-p256", "carol")
    card_for("alice-rsa2048", "carol")
    src = work / "f"
    src.write_bytes(b"x")
    result = run("encrypt", "--to", "carol", str(src), check=False)
    assert result.returncode != 0
    assert b"valid cards" in result.stderr
    assert not (work / "f.hsmv").exists()
    chosen = Keyring().find("carol")[0].card.id
    run("encrypt", "--to", chosen, str(src))
    assert (work / "f.hsmv").exists()


def test_revoked_card_is_refused(token_keys, work: Path) -> None:
    with open_session("bob") as ts:
        key = ts.find_key("bob-p256")
        card = create_card(ts, key, "dave")
        statement = revoke_card(ts, key, card, "superseded")
    keyring = Keyring()
    keyring.add(card)
    keyring.add_revocation(statement)
    src = work / "f"
    src.write_bytes(b"x")
    result = run("encrypt", "--to", "dave", str(src), check=False)
    assert result.returncode != 0 and b"revoked" in result.stderr
    result = run("encrypt", "--to", card.id, str(src), check=False)
    assert result.returncode != 0 and b"revoked" in result.stderr


def test_card_file_as_recipient(token_keys, work: Path) -> None:
    with open_session("bob") as ts:
        key = ts.find_key("bob-rsa3072")
        card = create_card(ts, key, "erin")
    card_file = work / "erin.card"
    card_file.write_text(card.to_text() + "\n")
    src = work / "f"
    src.write_bytes(b"to a card file")
    run("encrypt", "--to", str(card_file), "-o", str(work / "f.hsmv"), str(src))
    out = run("decrypt", "--token", "bob", "-o", "-", str(work / "f.hsmv")).stdout
    assert out == b"to a card file"


def test_encrypt_refuses_existing_output(cards, work: Path) -> None:
    src = work / "f"
    src.write_bytes(b"new")
    (work / "f.hsmv").write_bytes(b"old")
    result = run("encrypt", "--to", cards["alice-p256"].id, str(src), check=False)
    assert result.returncode != 0 and b"--force" in result.stderr
    assert (work / "f.hsmv").read_bytes() == b"old"
    result = run("encrypt", "--to", cards["alice-p256"].id, "-o", str(src), str(src), check=False)
    assert result.returncode != 0 and src.read_bytes() == b"new"
    run("encrypt", "--force", "--to", cards["alice-p256"].id, str(src))
    assert (work / "f.hsmv").read_bytes()[:4] == b"HSMV"


def test_decrypt_with_the_wrong_token_names_recipients_and_the_right_token(
    cards, work: Path
) -> None:
    src = work / "f"
    src.write_bytes(b"for bob")
    run("encrypt", "--to", cards["bob-p256"].id, str(src))
    result = run(
        "decrypt", "--token", "alice", str(work / "f.hsmv"), "-o", str(work / "out"), check=False
    )
    assert result.returncode != 0
    # The keyring knows the key is bob's (not a bare key id), and on which token it is.
    assert b"it is for: bob" in result.stderr and b"pass --token bob" in result.stderr
    assert not (work / "out").exists()


def test_decrypt_with_one_chosen_key(cards, work: Path) -> None:
    src = work / "f"
    src.write_bytes(b"two keys")
    run("encrypt", "--to", cards["alice-p256"].id, "--to", cards["alice-rsa2048"].id, str(src))
    out = run(
        "decrypt",
        "--key",
        "pkcs11:token=alice;object=alice-rsa2048",
        "-o",
        "-",
        str(work / "f.hsmv"),
    )
    assert out.stdout == b"two keys"


def test_key_uri_without_a_token_takes_the_token_from_the_keyring(cards, work: Path) -> None:
    # pkcs11:object=... names no token: the keyring says which token holds the card's key.
    src = work / "f"
    src.write_bytes(b"bob's")
    run("encrypt", "--to", cards["bob-p256"].id, str(src))
    out = run("decrypt", "--key", "pkcs11:object=bob-p256", "-o", "-", str(work / "f.hsmv"))
    assert out.stdout == b"bob's"


def test_tampered_file_fails_and_writes_nothing(cards, work: Path) -> None:
    src = work / "f"
    src.write_bytes(os.urandom(2_500_000))
    run("encrypt", "--to", cards["alice-p256"].id, str(src))
    sealed = work / "f.hsmv"
    damaged = bytearray(sealed.read_bytes())
    damaged[-100] ^= 4
    sealed.write_bytes(bytes(damaged))
    result = run("decrypt", "--token", "alice", str(sealed), "-o", str(work / "out"), check=False)
    assert result.returncode != 0 and b"error:" in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["f", "f.hsmv"]
    # To stdout, the verified chunks were streamed, then the command fails.
    result = run("decrypt", "--token", "alice", str(sealed), "-o", "-", check=False)
    assert result.returncode != 0
    assert result.stdout == src.read_bytes()[: 2 * 1024 * 1024]


def test_sign_and_verify(cards, work: Path) -> None:
    src = work / "f"
    src.write_bytes(b"signed by bob")
    alice = cards["alice-p256"].id
    run("encrypt", "--to", alice, "--sign-with", "pkcs11:token=bob;object=bob-rsa3072", str(src))
    card_bob = cards["bob-rsa3072"]
    # bob has two valid cards: name the one that signed.
    result = run(
        "decrypt", "--token", "alice", "--verify-from", card_bob.id, "-o", "-", str(work / "f.hsmv")
    )
    assert result.stdout == b"signed by bob"
    assert b"signed by bob" in result.stderr and card_bob.id[:16].encode() in result.stderr
    result = run(
        "decrypt",
        "--token",
        "alice",
        "--verify-from",
        cards["bob-p256"].id,
        "-o",
        str(work / "o"),
        str(work / "f.hsmv"),
        check=False,
    )
    assert result.returncode != 0 and not (work / "o").exists()
    # An unsigned file asked to be verified fails.
    run("encrypt", "--to", alice, "-o", str(work / "u.hsmv"), str(src))
    result = run(
        "decrypt",
        "--token",
        "alice",
        "--verify-from",
        card_bob.id,
        "-o",
        str(work / "o"),
        str(work / "u.hsmv"),
        check=False,
    )
    assert result.returncode != 0 and b"not signed" in result.stderr


def test_inspect_needs_no_token(cards, work: Path) -> None:
    src = work / "f"
    src.write_bytes(b"x" * 5000)
    run(
        "encrypt",
        "--to",
        cards["alice-p256"].id,
        "--to",
        cards["bob-rsa3072"].id,
        "--sign-with",
        "pkcs11:token=alice;object=alice-p256",
        str(src),
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("HSM_VAULT_PIN", "HSM_VAULT_PKCS11_MODULE")
    }
    result = subprocess.run(
        [HSM_VAULT, "inspect", "--json", str(work / "f.hsmv")],
        capture_output=True,
        check=True,
        env=env,
    )
    info = json.loads(result.stdout)
    assert info["plaintext_size"] == 5000
    assert [r["key_id"] for r in info["recipients"]] == [
        cards["alice-p256"].key_id.hex(),
        cards["bob-rsa3072"].key_id.hex(),
    ]
    assert [r["key_type"] for r in info["recipients"]] == ["ec-p256", "rsa-3072"]
    assert info["signer"]["card_id"] == cards["alice-p256"].id
    assert info["signer"]["identity"] == "alice"

    text = cli("inspect", str(work / "f.hsmv")).stdout
    assert "rsa-3072" in text and "5000 bytes" in text


def test_batch_decrypt_with_one_login(cards, work: Path) -> None:
    names = []
    for i in range(20):
        (work / f"f{i}").write_bytes(f"file {i}".encode())
        names.append(str(work / f"f{i}"))
    run("encrypt", "--to", cards["alice-p256"].id, *names)
    out = work / "out"
    out.mkdir()
    result = run(
        "decrypt", "--token", "alice", "--out-dir", str(out), *[n + ".hsmv" for n in names]
    )
    assert result.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"f{i}" for i in range(20))
    assert (out / "f7").read_bytes() == b"file 7"
    # One bad file: the others are still written, the command fails.
    (work / "f3.hsmv").write_bytes(b"garbage")
    out2 = work / "out2"
    out2.mkdir()
    result = run(
        "decrypt",
        "--token",
        "alice",
        "--out-dir",
        str(out2),
        *[n + ".hsmv" for n in names],
        check=False,
    )
    assert result.returncode != 0 and b"1 of 20 files failed" in result.stderr
    assert len(list(out2.iterdir())) == 19


def test_binary_output_to_terminal_is_refused_and_usage_errors(cards, work: Path) -> None:
    result = run("encrypt", str(work), check=False)
    assert result.returncode != 0 and b"--to" in result.stderr
    (work / "plain").write_bytes(b"x")
    result = run("decrypt", "--token", "alice", str(work / "plain"), check=False)
    assert result.returncode != 0 and b"-o" in result.stderr


def test_reader_closing_the_pipe_early(cards, work: Path) -> None:
    """`hsm-vault decrypt ... | head -c 10`: a clean error, no traceback, no crash at exit."""
    src = work / "f"
    src.write_bytes(os.urandom(20 * 1024 * 1024))
    run("encrypt", "--to", cards["alice-p256"].id, str(src))
    for args, stdin in (
        (["decrypt", "--token", "alice", "-o", "-", str(work / "f.hsmv")], work / "empty"),
        (["encrypt", "--to", cards["alice-p256"].id], src),
    ):
        (work / "empty").touch()
        with (
            open(stdin, "rb") as feed,
            subprocess.Popen(
                [HSM_VAULT, *args],
                stdin=feed,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=os.environ.copy(),
            ) as proc,
        ):
            assert proc.stdout is not None and proc.stderr is not None
            assert len(proc.stdout.read(10)) == 10
            proc.stdout.close()
            err = proc.stderr.read()
            proc.wait()
        assert proc.returncode == 1, err
        assert b"pipe was closed" in err and b"Traceback" not in err and b"Fatal" not in err


def test_a_missing_input_is_reported_before_any_pin_is_asked(
    softhsm, work: Path, monkeypatch
) -> None:
    monkeypatch.delenv("HSM_VAULT_PIN")
    result = cli("decrypt", "--token", "bob", str(work / "nothing.hsmv"))
    assert result.exit_code == 2
    assert "nothing.hsmv does not exist" in result.output
    assert "PIN" not in result.output
    assert list(work.iterdir()) == []


def run_on_terminal(*args: str) -> tuple[int, str]:
    """Run hsm-vault with stdout and stderr on a pseudo-terminal; return its exit code and
    everything it drew there."""
    import pty

    primary, secondary = pty.openpty()
    with subprocess.Popen(
        [HSM_VAULT, *args],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "100"},
    ) as proc:
        os.close(secondary)
        drawn = bytearray()
        while True:
            try:
                block = os.read(primary, 65536)
            except OSError:  # EIO: the process closed its end
                break
            if not block:
                break
            drawn += block
        os.close(primary)
    return proc.returncode, drawn.decode(errors="replace")


def test_progress_and_chatter_on_a_terminal(cards, work: Path) -> None:
    """On a terminal a large file shows a progress bar and a one-line summary."""
    src = work / "big"
    src.write_bytes(os.urandom(24 * 1024 * 1024))
    code, drawn = run_on_terminal("encrypt", "--to", cards["alice-p256"].id, str(src))
    assert code == 0, drawn
    assert "encrypting" in drawn and "MiB" in drawn  # the bar (rich erases it when done)
    assert f"encrypted {src} -> {src}.hsmv" in " ".join(drawn.split())
    code, drawn = run_on_terminal(
        "decrypt", "--token", "alice", "-o", str(work / "back"), str(work / "big.hsmv")
    )
    assert code == 0, drawn
    assert "decrypting" in drawn and "Traceback" not in drawn
    assert (work / "back").read_bytes() == src.read_bytes()
