"""docs/guide.md, run as written: the systemd unit, the backup and restore drill, TLS with a
private CA. The shell blocks marked `<!-- drill: NAME -->` in the guide are executed here."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from server_fixture import (
    HSM_VAULT,
    RunningServer,
    free_port,
    unique,
    wait_for_http,
    wait_for_port,
)
from typer.testing import CliRunner

from hsm_vault.cli.main import app
from hsm_vault.client.blobs import download_stream, upload_stream
from hsm_vault.envelope.format import MAGIC

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide.md"
UNIT = ROOT / "contrib" / "systemd" / "hsm-vault.service"


def guide_block(name: str) -> str:
    """The shell block that follows `<!-- drill: NAME -->` in the guide."""
    match = re.search(rf"<!-- drill: {name} -->\s*```sh\n(.*?)```", GUIDE.read_text(), re.S)
    assert match, f"no drill block {name!r} in {GUIDE}"
    return match.group(1)


def run_block(name: str, **env: str) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", guide_block(name)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def serve(server: RunningServer, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """`server run` on the server's data folder (after a restore, or with TLS)."""
    log = server.data_dir.parent / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                HSM_VAULT,
                "server",
                "run",
                "--data",
                str(server.data_dir),
                "--port",
                str(port),
                "--log-level",
                "warning",
                *extra,
            ],
            env=server.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/hsm-vault", HSM_VAULT))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 command")
def test_backup_wipe_restore_and_clients_still_work(server_factory, tmp_path: Path) -> None:
    server = server_factory()
    account = server.enrol(unique("drill"))
    blob = MAGIC + os.urandom(200_000)
    with account.client() as client:
        upload_stream(client, "kept.hsmv", io.BytesIO(blob))
    backup = tmp_path / "backup"
    data = {"DATA": str(server.data_dir), "BACKUP": str(backup)}
    run_block("backup", **data)  # while the server runs
    server.stop()
    run_block("restore", **data)
    assert sorted(p.name for p in server.data_dir.iterdir()) >= ["blobs", "hsm-vault.db"]

    port = int(server.url.rsplit(":", 1)[1])
    server.process = serve(server, port)  # stopped by the fixture
    wait_for_http(server.url + "/v1/app", server.process, None)
    with account.client() as client:
        assert client.whoami()["username"] == account.name
        assert b"".join(download_stream(client, "kept.hsmv")) == blob


def test_tls_with_a_private_ca_and_login_with_ca_bundle(server_factory, tmp_path: Path) -> None:
    server = server_factory()
    tls = tmp_path / "tls"
    tls.mkdir()
    run_block("tls", TLS=str(tls), HOST="127.0.0.1")
    port = free_port()
    process = serve(
        server, port, "--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server.key")
    )
    try:
        url = f"https://127.0.0.1:{port}"
        wait_for_port(port, process)
        name = unique("tls")
        login = ["login", "--server", url, "--user", name, "--ca-bundle", str(tls / "ca.pem")]
        result = CliRunner().invoke(
            app,
            [*login, "--app-fingerprint", server.app_fingerprint],
            env={"HSM_VAULT_ENROLMENT_CODE": server.add_user(name)},
        )
        assert result.exit_code == 0, result.output
        whoami = CliRunner().invoke(app, ["whoami"])
        assert whoami.exit_code == 0 and name in whoami.output
    finally:
        process.terminate()
        process.wait(timeout=10)
