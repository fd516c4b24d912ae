"""`hsm-vault rewrap` and `store rewrap` end to end on SoftHSM tokens and a real server.

Bob's new token lives in a SoftHSM folder of its own, so "decrypts with the new token only" is
literal: the processes that use it cannot see his old token at all.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import init_token
from store_harness import BlobServer, start_blob_server
from typer.testing import CliRunner

from hsm_vault.cards import Keyring, create_card, revoke_card
from hsm_vault.cli.main import app
from hsm_vault.client.blobs import blob_meta, download_stream, upload_from_writer
from hsm_vault.config import Config
from hsm_vault.envelope import Recipient, encrypt, read_header
from hsm_vault.errors import PermissionDenied
from hsm_vault.token import open_session

HSM_VAULT = str(Path(sys.executable).parent / "hsm-vault")
runner = CliRunner()


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def own_card(token: str, identity: str, key_type: str = "ec-p256", previous=None) -> Any:
    """A fresh key on `token` and its card, kept in the keyring as one's own."""
    from hsm_vault.algorithms import KeyType

    label = f"rw-{uuid.uuid4().hex[:8]}"
    with open_session(token) as ts:
        key = ts.generate_key(label, KeyType(key_type))
        if previous is not None:
            previous = (previous, ts.find_key(previous.key_label))
        card = create_card(ts, key, identity, previous=previous)
    Keyring().add(card, origin="own", key_uri=key.uri)
    object.__setattr__(card, "key_label", label)  # for a later rotation in this test
    return card


def payload_of(data: bytes) -> bytes:
    return data[len(read_header(io.BytesIO(data)).raw) :]


@pytest.fixture(scope="module")
def new_token(softhsm, tmp_path_factory) -> dict[str, str]:
    """Bob's new token, in a SoftHSM folder of its own: the environment that reaches it."""
    folder = tmp_path_factory.mktemp("bob-new-token")
    init_token(folder, "bob-new")
    return {**softhsm.env(), "SOFTHSM2_CONF": str(folder / "softhsm2.conf")}


def on_new_token(env: dict[str, str], *args: str, check: bool = True) -> Any:
    return subprocess.run(
        [HSM_VAULT, *args],
        env={**env, "HSM_VAULT_HOME": os.environ["HSM_VAULT_HOME"]},
        capture_output=True,
        check=check,
        timeout=120,
    )


def test_rewrap_from_old_to_new_token_then_remove_carol(new_token, tmp_path: Path) -> None:
    bob_old = own_card("bob", "bob")
    carol = own_card("carol", "carol")
    on_new_token(new_token, "key", "generate", "bob-2027", "--token", "bob-new")
    made = on_new_token(new_token, "card", "create", "bob", "--key", "bob-2027", "--json")
    bob_new = json.loads(made.stdout)["id"]
    work = tmp_path / "work"
    work.mkdir()
    plaintext = os.urandom(3 * 1024 * 1024 + 7)
    sealed = work / "plan.txt.hsmv"
    with open(sealed, "wb") as out:
        encrypt(io.BytesIO(plaintext), out, [Recipient.from_card(c) for c in (bob_old, carol)])
    payload = payload_of(sealed.read_bytes())

    result = cli("rewrap", str(sealed), "--from-card", bob_old.id, "--to-card", bob_new)
    assert result.exit_code == 0, result.output
    assert "2 -> 2 recipient(s)" in result.output
    assert payload_of(sealed.read_bytes()) == payload
    opened = on_new_token(new_token, "decrypt", str(sealed), "-o", "-")
    assert opened.stdout == plaintext
    result = cli("decrypt", str(sealed), "--token", "bob", "-o", str(work / "no"))
    assert result.exit_code != 0 and "is a recipient of this file" in result.output

    done = on_new_token(new_token, "rewrap", str(sealed), "--remove", "carol", "-t", "bob-new")
    assert b"2 -> 1 recipient(s)" in done.stderr
    result = cli("decrypt", str(sealed), "--token", "carol", "-o", str(work / "no"))
    assert result.exit_code != 0 and "is a recipient of this file" in result.output
    assert on_new_token(new_token, "decrypt", str(sealed), "-o", "-").stdout == plaintext
    assert payload_of(sealed.read_bytes()) == payload

    # Bad input: one line, the file untouched, nothing left beside it.
    before = sealed.read_bytes()
    dave = own_card("bob", "dave")
    with open_session("bob") as ts:
        Keyring().add_revocation(revoke_card(ts, ts.find_key(dave.key_label), dave, "superseded"))
    for args, message in [
        (("--remove", "bob"), "last recipient"),
        (("--add", "dave"), "revoked"),
        (("--add", "carol", "--token", "bob"), "is a recipient of this file"),  # cannot open it
        (("--remove", "carol"), "carol is not a recipient"),
    ]:
        result = cli("rewrap", str(sealed), *args)
        assert result.exit_code != 0, args
        assert message in result.output and "Traceback" not in result.output
        assert sealed.read_bytes() == before
    assert sorted(p.name for p in work.iterdir()) == ["plan.txt.hsmv"]


# --- the blob store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(softhsm, tmp_path_factory) -> Iterator[BlobServer]:
    data = tmp_path_factory.mktemp("rewrap-store")
    with start_blob_server(data, {"store": str(data / "blobs")}, env=softhsm.env()) as running:
        yield running


def publish(server: BlobServer, user: str, card: Any) -> None:
    answer = requests.post(
        f"{server.url}/v1/cards",
        json={"card": card.to_text()},
        headers=server.headers(user),
        timeout=30,
    )
    assert answer.status_code == 201, answer.text


def login_as(server: BlobServer, user: str) -> None:
    Config(server_url=server.url, api_token=server.tokens[user], username=user).save()


def test_store_rewrap_after_a_rotation(server: BlobServer, token_keys) -> None:
    alice = own_card("alice", "alice")
    bob_old = own_card("bob", "bob")
    publish(server, "bob", bob_old)
    plaintext = os.urandom(2 * 1024 * 1024 + 5)
    _, meta = upload_from_writer(
        server.client("alice"),
        "for-bob.hsmv",
        lambda out: encrypt(
            io.BytesIO(plaintext), out, [Recipient.from_card(c) for c in (alice, bob_old)]
        ),
    )
    blob = b"".join(download_stream(server.client("alice"), "for-bob.hsmv"))
    bob_new = own_card("bob", "bob", previous=bob_old)
    publish(server, "bob", bob_new)  # auto-approved: the old card is now superseded

    # Bob, a recipient but not the owner, swaps his own entry on every blob for his old card.
    login_as(server, "bob")
    result = cli("rewrap", "--from-card", bob_old.id, "--to-card", bob_new.id, "--store")
    assert result.exit_code == 0, result.output
    assert "blob alice/for-bob.hsmv: 2 -> 2" in result.output
    swapped = b"".join(download_stream(server.client("bob"), "alice/for-bob.hsmv"))
    assert payload_of(swapped) == payload_of(blob)
    assert set(blob_meta(server.client("bob"), "alice/for-bob.hsmv").recipients) == {
        alice.key_id.hex(),
        bob_new.key_id.hex(),
    }
    result = cli(
        "decrypt",
        "--from-store",
        "alice/for-bob.hsmv",
        "-o",
        "-",
        "-t",
        "bob",
        "-k",
        bob_new.key_label,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == plaintext
    # ...but he may not touch alice's entry.
    result = cli("store", "rewrap", "alice/for-bob.hsmv", "--remove", alice.id, "--token", "bob")
    assert result.exit_code != 0 and "only their own" in result.output

    # The owner takes bob out: he can no longer read the blob at all.
    login_as(server, "alice")
    result = cli("store", "rewrap", "for-bob.hsmv", "--remove", "bob", "--token", "alice")
    assert result.exit_code == 0, result.output
    assert blob_meta(server.client("alice"), "for-bob.hsmv").recipients == (alice.key_id.hex(),)
    with pytest.raises(PermissionDenied):
        blob_meta(server.client("bob"), "alice/for-bob.hsmv")
    assert meta.sha256 != blob_meta(server.client("alice"), "for-bob.hsmv").sha256


def test_a_stale_header_swap_is_refused(server: BlobServer, token_keys) -> None:
    alice = own_card("alice", "alice")
    client = server.client("alice")
    upload_from_writer(
        client,
        "stale.hsmv",
        lambda out: encrypt(io.BytesIO(b"x"), out, [Recipient.from_card(alice)]),
    )
    from hsm_vault.client.blobs import read_blob_header, replace_blob_header
    from hsm_vault.errors import ConflictOnServer

    raw, _ = read_blob_header(client, "stale.hsmv")
    with pytest.raises(ConflictOnServer):
        replace_blob_header(client, "stale.hsmv", raw, "0" * 64)
