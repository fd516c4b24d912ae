"""Test harness: real SoftHSM tokens, initialised afresh for every test session.

The session fixture `softhsm` makes a private token folder, writes a SoftHSM config there, and
points SOFTHSM2_CONF at it for the whole run, so nothing touches /etc or /var/lib. Four tokens
stand for four parties: alice, bob, carol and the server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INIT_TOKEN = ROOT / "softhsm" / "init-token"
MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
PIN = "4711-test-pin"
TOKENS = ("alice", "bob", "carol", "server")

pytest_plugins = ["tests.server_fixture", "tests.virtual_yubikey.fixture"]


@dataclass(frozen=True)
class SoftHSM:
    folder: Path
    conf: Path
    module: str
    pin: str
    tokens: tuple[str, ...]

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should see these tokens."""
        return {
            **os.environ,
            "SOFTHSM2_CONF": str(self.conf),
            "HSM_VAULT_PKCS11_MODULE": self.module,
            "HSM_VAULT_PIN": self.pin,
        }


def _module() -> str:
    for path in MODULE_CANDIDATES:
        if os.path.exists(path):
            return path
    pytest.exit("SoftHSM is not installed: run 'make test' (it installs softhsm2)", returncode=3)


def init_token(folder: Path, label: str, pin: str = PIN) -> None:
    """Initialise one more SoftHSM token in `folder` (the script the README documents)."""
    subprocess.run(
        [str(INIT_TOKEN), str(folder), label],
        env={**os.environ, "HSM_VAULT_PIN": pin, "HSM_VAULT_SO_PIN": "so-" + pin},
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    folder = tmp_path_factory.mktemp("softhsm")
    for label in TOKENS:
        init_token(folder, label)
    hsm = SoftHSM(folder, folder / "softhsm2.conf", _module(), PIN, TOKENS)
    saved = {
        k: os.environ.get(k) for k in ("SOFTHSM2_CONF", "HSM_VAULT_PKCS11_MODULE", "HSM_VAULT_PIN")
    }
    os.environ.update(
        SOFTHSM2_CONF=str(hsm.conf), HSM_VAULT_PKCS11_MODULE=hsm.module, HSM_VAULT_PIN=PIN
    )
    yield hsm
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def vault_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own config and data folder (HSM_VAULT_HOME)."""
    home = tmp_path / "vault-home"
    home.mkdir()
    monkeypatch.setenv("HSM_VAULT_HOME", str(home))
    monkeypatch.delenv("HSM_VAULT_CONFIG", raising=False)
    return home


STANDARD_KEYS = {
    "alice": (("alice-p256", "ec-p256"), ("alice-p384", "ec-p384"), ("alice-rsa2048", "rsa-2048")),
    "bob": (("bob-p256", "ec-p256"), ("bob-rsa3072", "rsa-3072")),
}


@pytest.fixture(scope="session")
def token_keys(softhsm: SoftHSM) -> dict:
    """Key pairs generated once per session on the alice and bob tokens, by label."""
    from hsm_vault.algorithms import KeyType
    from hsm_vault.token import open_session

    keys = {}
    for token, specs in STANDARD_KEYS.items():
        with open_session(token) as ts:
            for label, key_type in specs:
                keys[label] = ts.generate_key(label, KeyType(key_type))
    return keys
