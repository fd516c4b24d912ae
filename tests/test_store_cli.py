"""`hsm-vault store put/get/list/info/rm` against a real server (local blob folder)."""

from __future__ import annotations

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
from hsm_vault.client_blobs import upload_stream
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


def test_put_warns_about_a_plaintext_file(server: BlobServer, tmp_path: Path) -> None:
    login_as(server, "alice")
    source = tmp_path / "notes.txt"
    source.write_text("not encrypted\n")
    result = invoke("store", "put", str(source))
    assert result.exit_code == 0
    assert "not an hsm-vault encrypted file" in result.output
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
