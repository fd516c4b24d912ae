"""`hsm-vault store put/get/list/info/rm` against a real server (local blob folder)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_harness import HSM_VAULT, BlobServer, start_blob_server
from typer.testing import CliRunner

from hsm_vault.cli.main import app
from hsm_vault.client.blobs import upload_stream
from hsm_vault.config import Config
from hsm_vault.envelope.format import MAGIC

MiB = 1024 * 1024
runner = CliRunner()


@pytest.fixture(scope="module")
def server(softhsm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobServer]:
    data = tmp_path_factory.mktemp("store-cli")
    settings = {"store": str(data / "blobs"), "max_blob_bytes": 64 * MiB}
    with start_blob_server(data, settings, env=softhsm.env()) as running:
        yield running


def login_as(server: BlobServer, user: str) -> None:
    """Write the client config (HSM_VAULT_HOME is per test) as `hsm-vault login` would."""
    Config(server_url=server.url, api_token=server.tokens[user], username=user).save()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=True)


def fake_envelope(size: int) -> bytes:
    # Starts like an hsm-vault file, so `put` does not warn; the server finds no valid header.
    return MAGIC + os.urandom(size)


def test_put_list_get_rm(server: BlobServer, tmp_path: Path) -> None:
    login_as(server, "alice")
    source = tmp_path / "report.pdf.hsmv"
    source.write_bytes(fake_envelope(5 * MiB))

    result = invoke("store", "put", str(source))
    assert result.exit_code == 0, result.output
    assert "stored report.pdf.hsmv" in result.output

    result = invoke("store", "put", str(source), "--name", "copy.hsmv", "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["size"] == source.stat().st_size
    assert meta["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert meta["owner"] == "alice"

    result = invoke("store", "list", "--json")
    listed = json.loads(result.stdout)
    assert sorted(b["name"] for b in listed["blobs"]) == ["copy.hsmv", "report.pdf.hsmv"]
    assert listed["used_bytes"] == 2 * source.stat().st_size
    result = invoke("store", "list")
    assert "report.pdf.hsmv" in result.output and "copy.hsmv" in result.output

    out = tmp_path / "back.hsmv"
    result = invoke("store", "get", "copy.hsmv", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == source.read_bytes()

    result = invoke("store", "get", "copy.hsmv", "-o", str(out))
    assert result.exit_code != 0
    assert "exists already" in result.output and "--force" in result.output
    out.write_bytes(b"changed")
    result = invoke("store", "get", "copy.hsmv", "-o", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == source.read_bytes()

    result = invoke("store", "info", "copy.hsmv", "--json")
    assert json.loads(result.stdout)["sha256"] == meta["sha256"]

    for name in ("copy.hsmv", "report.pdf.hsmv"):
        assert invoke("store", "rm", name).exit_code == 0
    assert json.loads(invoke("store", "list", "--json").stdout)["blobs"] == []
    result = invoke("store", "info", "copy.hsmv")
    assert result.exit_code != 0 and "no blob named 'copy.hsmv'" in result.output


def test_get_into_a_folder_uses_the_blob_name(server: BlobServer, tmp_path: Path) -> None:
    login_as(server, "alice")
    upload_stream(server.client("alice"), "in-folder", io.BytesIO(b"abc"))
    result = invoke("store", "get", "in-folder", "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "in-folder").read_bytes() == b"abc"
    invoke("store", "rm", "in-folder")


def test_put_refuses_a_plaintext_file_without_plaintext(server: BlobServer, tmp_path: Path) -> None:
    login_as(server, "alice")
    source = tmp_path / "notes.txt"
    source.write_text("not encrypted\n")
    result = invoke("store", "put", str(source))
    assert result.exit_code != 0
    assert "not an hsm-vault encrypted file" in result.output and "--plaintext" in result.output
    assert json.loads(invoke("store", "list", "--json").stdout)["blobs"] == []
    result = invoke("store", "put", str(source), "--plaintext")
    assert result.exit_code == 0, result.output
    assert "the server can read it" in result.output
    invoke("store", "rm", "notes.txt")


def test_errors_are_one_line_with_a_hint(server: BlobServer, tmp_path: Path) -> None:
    upload_stream(server.client("alice"), "private", io.BytesIO(b"alice's"))
    login_as(server, "carol")
    env = {**os.environ, **server.env, "HSM_VAULT_HOME": os.environ["HSM_VAULT_HOME"]}
    done = subprocess.run(
        [HSM_VAULT, "store", "get", "alice/private", "-o", str(tmp_path / "x")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "error:" in done.stderr and "hint:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()
    done = subprocess.run(
        [HSM_VAULT, "store", "rm", "alice/private"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "error:" in done.stderr
    login_as(server, "alice")
    assert invoke("store", "rm", "private").exit_code == 0


def test_not_logged_in(tmp_path: Path) -> None:
    result = invoke("store", "list")
    assert result.exit_code != 0
    assert "hsm-vault login" in result.output


# --- the whole flow through the CLI: fetch a card, encrypt --upload, decrypt --from-store ----


def login_pinned(server: BlobServer, user: str) -> None:
    """As `hsm-vault login` leaves it: API token, and the application key pinned."""
    from hsm_vault.algorithms import spki_fingerprint
    from hsm_vault.client import VaultClient

    with VaultClient(server.url) as client:
        app = client.app_key()
    Config(
        server_url=server.url,
        api_token=server.tokens[user],
        username=user,
        app_fingerprint=spki_fingerprint(app.spki_der),
        app_key_spki=base64.b64encode(app.spki_der).decode(),
    ).save()


def publish_card(server: BlobServer, user: str, token: str, key_label: str) -> str:
    """`card create` + `card publish` as `user` (the test server approves at once)."""
    login_pinned(server, user)
    made = invoke("card", "create", user, "--key", key_label, "--token", token, "--json")
    assert made.exit_code == 0, made.output
    card_id = json.loads(made.stdout)["id"]
    published = invoke("card", "publish", card_id)
    assert published.exit_code == 0, published.output
    return card_id


def test_encrypt_upload_then_decrypt_from_store(
    server: BlobServer, token_keys: dict, tmp_path: Path, vault_home: Path, monkeypatch: Any
) -> None:
    homes = {name: tmp_path / f"home-{name}" for name in ("alice", "bob")}
    for home in homes.values():
        home.mkdir()
    monkeypatch.setenv("HSM_VAULT_HOME", str(homes["bob"]))
    publish_card(server, "bob", "bob", "bob-rsa3072")

    # alice has never seen bob's card: encrypt fetches and verifies it from the server,
    # then streams the ciphertext into the blob store (no local .hsmv is written).
    monkeypatch.setenv("HSM_VAULT_HOME", str(homes["alice"]))
    login_pinned(server, "alice")
    plain = tmp_path / "minutes.txt"
    plain.write_bytes(os.urandom(2 * MiB + 5))
    result = invoke("encrypt", "--to", "bob", "--upload", str(plain))
    assert result.exit_code == 0, result.output
    assert "blob alice/minutes.txt.hsmv" in result.output
    assert not (tmp_path / "minutes.txt.hsmv").exists()
    listed = json.loads(invoke("card", "list", "--json").stdout)
    assert [c["identity"] for c in listed["cards"]] == ["bob"]

    # bob decrypts while downloading; the token is found from his own card in the keyring.
    monkeypatch.setenv("HSM_VAULT_HOME", str(homes["bob"]))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bob-minutes.txt"
    result = invoke("decrypt", "--from-store", "alice/minutes.txt.hsmv", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == plain.read_bytes()

    # a failed decrypt from the store leaves nothing behind and keeps an existing file.
    out.write_bytes(b"keep me")
    result = invoke(
        "decrypt",
        "--from-store",
        "alice/minutes.txt.hsmv",
        "-o",
        str(out),
        "--force",
        "--key",
        "bob-p256",
        "--token",
        "bob",
    )
    assert result.exit_code == 1
    assert "is a recipient of this file" in result.output
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    monkeypatch.setenv("HSM_VAULT_HOME", str(homes["alice"]))
    assert invoke("store", "rm", "minutes.txt.hsmv").exit_code == 0


def test_decrypt_finds_the_token_from_the_keyring(
    softhsm: Any, token_keys: dict, tmp_path: Path
) -> None:
    # Four tokens on this machine: without --token, decrypt uses the one holding the key of
    # the user's own card that the file is for.
    made = invoke("card", "create", "alice@example.org", "--key", "alice-p384", "-t", "alice")
    assert made.exit_code == 0, made.output
    plain = tmp_path / "note.txt"
    plain.write_text("for alice\n")
    assert invoke("encrypt", "--to", "alice@example.org", str(plain)).exit_code == 0
    plain.unlink()
    result = invoke("decrypt", str(tmp_path / "note.txt.hsmv"))
    assert result.exit_code == 0, result.output
    assert plain.read_text() == "for alice\n"
