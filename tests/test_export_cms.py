"""`hsm-vault export --cms`: OpenSSL opens the output with the recipient's SoftHSM key.

The key never leaves the token: OpenSSL reaches it through its pkcs11 engine (Debian
libengine-pkcs11-openssl) by the key's pkcs11: URI, as a user without hsm-vault would.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hsm_vault.cards import Keyring, create_card
from hsm_vault.cli.main import app
from hsm_vault.envelope import Recipient, encrypt
from hsm_vault.token import open_session

ENGINES = [
    Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"),
    Path("/usr/lib/aarch64-linux-gnu/engines-3/pkcs11.so"),
]
ENGINE = next((p for p in ENGINES if p.exists()), None)
pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or ENGINE is None,
    reason="needs openssl and libengine-pkcs11-openssl",
)
runner = CliRunner()


def _openssl_config(folder: Path, module: str) -> Path:
    conf = folder / "openssl.cnf"
    conf.write_text(
        "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n"
        "[engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\nengine_id = pkcs11\n"
        f"dynamic_path = {ENGINE}\nMODULE_PATH = {module}\ninit = 0\n"
    )
    return conf


def _openssl_decrypt(softhsm, tmp_path: Path, p7m: Path, label: str) -> subprocess.CompletedProcess:
    env = {**softhsm.env(), "OPENSSL_CONF": str(_openssl_config(tmp_path, softhsm.module))}
    return subprocess.run(
        [
            "openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(p7m), "-binary",
            "-engine", "pkcs11", "-keyform", "engine",
            "-inkey", f"pkcs11:token=alice;object={label};type=private",
            "-passin", "env:HSM_VAULT_PIN",
        ],
        capture_output=True,
        env=env,
        timeout=120,
    )  # fmt: skip


@pytest.fixture
def cards(token_keys) -> dict:
    found = {}
    with open_session("alice") as ts:
        for label in ("alice-p256", "alice-p384", "alice-rsa2048"):
            key = ts.find_key(label)
            found[label] = create_card(ts, key, label)
            Keyring().add(found[label], origin="own", key_uri=key.uri)
    return found


def test_openssl_opens_the_export_with_each_token_key(softhsm, cards, tmp_path: Path) -> None:
    plaintext = os.urandom(2 * 1024 * 1024 + 17)  # three hsm-vault chunks, many CMS segments
    sealed = tmp_path / "report.pdf.hsmv"
    with open(sealed, "wb") as out:
        encrypt(io.BytesIO(plaintext), out, [Recipient.from_card(c) for c in cards.values()])
    result = runner.invoke(app, ["export", "--cms", str(sealed), "--token", "alice"])
    assert result.exit_code == 0, result.output
    p7m = tmp_path / "report.pdf.p7m"
    assert p7m.read_bytes()[:2] == b"\x30\x80"
    for label in cards:
        done = _openssl_decrypt(softhsm, tmp_path, p7m, label)
        assert done.returncode == 0, (label, done.stderr.decode()[-500:])
        assert done.stdout == plaintext, label
    # A fresh content key: the .hsmv recipient entries are not reused in the CMS message.
    assert sealed.read_bytes()[13:200] not in p7m.read_bytes()


def test_enveloped_data_for_older_readers(softhsm, cards, tmp_path: Path) -> None:
    plaintext = b"for a CMS reader without AuthEnvelopedData\n" * 100
    sealed = tmp_path / "old.hsmv"
    with open(sealed, "wb") as out:
        encrypt(io.BytesIO(plaintext), out, [Recipient.from_card(cards["alice-rsa2048"])])
    p7m = tmp_path / "old.p7m"
    result = runner.invoke(
        app, ["export", "--cms", "--enveloped", str(sealed), "-o", str(p7m), "--token", "alice"]
    )
    assert result.exit_code == 0, result.output
    done = _openssl_decrypt(softhsm, tmp_path, p7m, "alice-rsa2048")
    assert done.returncode == 0, done.stderr.decode()[-500:]
    assert done.stdout == plaintext


def test_a_damaged_file_leaves_no_output(cards, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    sealed = work / "bad.hsmv"
    sink = io.BytesIO()
    encrypt(io.BytesIO(os.urandom(3000)), sink, [Recipient.from_card(cards["alice-p256"])])
    damaged = bytearray(sink.getvalue())
    damaged[-5] ^= 1
    sealed.write_bytes(bytes(damaged))
    result = runner.invoke(app, ["export", "--cms", str(sealed), "--token", "alice"])
    assert result.exit_code != 0
    assert "error:" in result.output
    assert sorted(p.name for p in work.iterdir()) == ["bad.hsmv"]
