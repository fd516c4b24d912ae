"""pytest fixture `virtual_yubikey`: a virtual YubiKey 5 on the real pcscd, for one test session.

Runs `scripts/virtual-yubikey up` in a temporary folder and `down` at the end. Skips when pcscd,
vsmartcard's vpcd or Yubico's ykcs11 are not installed; fails (with the script's one-line error)
when they are but the device cannot come up, e.g. because another pcscd already runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "virtual-yubikey"
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/lib64")


def _find_lib(name: str) -> str | None:
    for d in LIB_DIRS:
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


@dataclass(frozen=True)
class VirtualYubiKey:
    folder: Path
    ykcs11: str  # Yubico's PKCS#11 module
    opensc: str | None  # OpenSC's PKCS#11 module (its PIV driver)
    serial: int
    token_label: str  # as ykcs11 names the token: "YubiKey PIV #<serial>"
    root_ca: Path  # PEM of the test root that issued the slot-f9 attestation certificate
    pin: str = "123456"
    puk: str = "12345678"
    management_key: str = "010203040506070801020304050607080102030405060708"

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should use the virtual YubiKey through ykcs11."""
        return {
            **os.environ,
            "HSM_VAULT_PKCS11_MODULE": self.ykcs11,
            "HSM_VAULT_PIN": self.pin,
        }


def missing_prerequisite() -> str | None:
    if not shutil.which("pcscd"):
        return "pcscd is not installed (Debian package pcscd)"
    if not _find_lib("pcsc/drivers/serial/libifdvpcd.so"):
        return "vsmartcard's vpcd is not installed (Debian package vsmartcard-vpcd)"
    if not _find_lib("libykcs11.so"):
        return "Yubico's ykcs11 is not installed (Debian package ykcs11)"
    return None


def _script(command: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), command, str(folder)],
        env={**os.environ, "VIRTUAL_YUBIKEY_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )


def start(folder: Path, wait: float = 180.0) -> VirtualYubiKey:
    # One pcscd per machine: another test run may hold it for a while; wait for it to go.
    deadline = time.monotonic() + wait
    done = _script("up", folder)
    while done.returncode != 0 and "already running" in done.stderr:
        if time.monotonic() > deadline:
            break
        time.sleep(3)
        done = _script("up", folder)
    if done.returncode != 0:
        pytest.fail(f"scripts/virtual-yubikey up failed: {done.stderr.strip()}", pytrace=False)
    exports: dict[str, str] = {}
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            exports[key] = value
    return VirtualYubiKey(
        folder=folder,
        ykcs11=exports["HSM_VAULT_PKCS11_MODULE"],
        opensc=exports.get("VIRTUAL_YUBIKEY_OPENSC_MODULE") or None,
        serial=int(exports["VIRTUAL_YUBIKEY_SERIAL"]),
        token_label=exports["VIRTUAL_YUBIKEY_TOKEN_LABEL"],
        root_ca=Path(exports["VIRTUAL_YUBIKEY_ROOT_CA"]),
    )


def stop(folder: Path) -> None:
    done = _script("down", folder)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/virtual-yubikey down failed: {done.stderr.strip()}")


@pytest.fixture(scope="session")
def virtual_yubikey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualYubiKey]:
    reason = missing_prerequisite()
    if reason:
        pytest.skip(f"no virtual YubiKey: {reason}")
    folder = tmp_path_factory.mktemp("virtual-yubikey")
    try:
        yield start(folder)
    finally:
        stop(folder)
