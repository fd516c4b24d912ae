"""The client against real servers and a real misbehaving proxy: retries on safe methods only,
timeouts, TLS verification with a custom CA, and problem documents as exceptions."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from server_fixture import HSM_VAULT, RunningServer, free_port, unique

from hsm_vault.client import VaultClient
from hsm_vault.errors import ConflictOnServer, ServerError, ServerUnreachable


def test_safe_requests_are_retried_others_are_not(vault_server: RunningServer, proxy) -> None:
    url = proxy("flaky")
    name = unique("rita")
    code = vault_server.add_user(name)
    with VaultClient(url) as client:
        # GET: the first answer is a 503, the retry gets through.
        assert client.app_key().fingerprint == vault_server.app_fingerprint
        # POST: the 503 comes back as an error; a second, deliberate call works, which shows
        # the first one was not sent again behind our back.
        with pytest.raises(ServerError, match="flaky proxy"):
            client.enrol(name, code)
        assert client.enrol(name, code).username == name


def test_every_call_has_a_timeout(proxy) -> None:
    url = proxy("slow")
    with (
        VaultClient(url, timeout=(2.0, 0.5), retries=0) as client,
        pytest.raises(ServerUnreachable),
    ):
        client.app_key()


def test_problem_documents_become_errors_with_the_servers_message(
    vault_server: RunningServer,
) -> None:
    admin = vault_server.enrol(unique("root"), role="admin")
    with admin.client() as client:
        name = unique("sam")
        client.create_user(name)
        with pytest.raises(ConflictOnServer, match="exists already") as caught:
            client.create_user(name)
        assert caught.value.hint


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsm-vault test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_is_verified_and_a_custom_ca_is_accepted(
    vault_server: RunningServer, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    log = tmp_path / "tls.log"
    # A second server process on the same data folder: the server keeps no state of its own.
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                HSM_VAULT,
                "server",
                "run",
                "--data",
                str(vault_server.data_dir),
                "--port",
                str(port),
                "--tls-cert",
                str(cert),
                "--tls-key",
                str(key),
                "--log-level",
                "warning",
            ],
            env=vault_server.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"https://127.0.0.1:{port}"
    try:
        with VaultClient(url, retries=0) as client:
            deadline = dt.datetime.now() + dt.timedelta(seconds=30)
            while True:  # wait until it listens; TLS refusal is the expected answer
                try:
                    client.app_key()
                    pytest.fail("an unknown certificate was accepted")
                except ServerUnreachable as exc:
                    if "TLS" in exc.message:
                        assert "--ca-bundle" in exc.hint
                        break
                    assert process.poll() is None, log.read_text()
                    assert dt.datetime.now() < deadline
        with VaultClient(url, ca_bundle=str(cert)) as client:
            assert client.app_key().fingerprint == vault_server.app_fingerprint
            account = vault_server.enrol(unique("tess"))
            client.api_token = account.token
            assert client.whoami()["username"] == account.name
    finally:
        process.terminate()
        process.wait(timeout=10)
