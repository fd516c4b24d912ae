"""hsm-vault on a YubiKey's PIV applet, as a user runs it: the virtual YubiKey through Yubico's
ykcs11 and through OpenSC's PIV module, the real pcscd in between.

One flow per module shares a device for the test session (slots persist), so the tests run in
file order; each asserts what a user would see.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.virtual_yubikey.fixture import VirtualYubiKey

HSM_VAULT = str(Path(sys.executable).parent / "hsm-vault")


class Runner:
    """hsm-vault and Yubico's tools against the virtual YubiKey, with a private home folder."""

    def __init__(self, yk: VirtualYubiKey, home: Path) -> None:
        self.yk = yk
        self.env = {
            **yk.env(),
            "HSM_VAULT_HOME": str(home),
            "HSM_VAULT_ATTESTATION_ROOTS": str(yk.root_ca),
        }
        self.env.pop("HSM_VAULT_MANAGEMENT_KEY", None)
        self.work = home / "work"
        self.work.mkdir()

    def __call__(self, *args: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [HSM_VAULT, *args],
            capture_output=True,
            text=True,
            cwd=self.work,
            env={**self.env, **env},
            timeout=120,
        )
        if ok:
            assert done.returncode == 0, done.stderr
        else:
            assert done.returncode != 0, done.stdout
            assert "Traceback" not in done.stderr and "\nerror: " in "\n" + done.stderr
        return done

    def token(self, *args: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
        return self(*args, "--token", self.yk.token_label, ok=ok, **env)

    def admin(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        """A command that makes or destroys keys: the (test card's default) management key."""
        return self.token(
            *args,
            "--allow-default-management-key",
            ok=ok,
            HSM_VAULT_MANAGEMENT_KEY=self.yk.management_key,
        )


@pytest.fixture(scope="module")
def hv(virtual_yubikey: VirtualYubiKey, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    return Runner(virtual_yubikey, tmp_path_factory.mktemp("piv-home"))


@pytest.fixture(scope="module")
def alice(hv: Runner) -> dict:
    """A P-256 key made by `key generate` in the first free decryption slot, and its card."""
    before = {k["slot"] for k in json.loads(hv.token("key", "list", "--json").stdout)["keys"]}
    made = json.loads(hv.admin("key", "generate", "--type", "ec-p256", "--json").stdout)
    if "9d" not in before:
        assert made["slot"] == "9d" and made["uri"].endswith(";id=%03")
    assert made["label"] == "Private key for Key Management" or made["slot"] != "9d"
    assert made["attributes"]["local"] and made["attributes"]["never_extractable"]
    card = json.loads(
        hv.token("card", "create", "alice@example.org", "--slot", made["slot"], "--json").stdout
    )
    return {"key": made, "card": card}


def test_management_key_is_asked_for_and_checked(hv: Runner, alice: dict) -> None:
    slot = alice["key"]["slot"]
    default = hv.token("key", "generate", ok=False, HSM_VAULT_MANAGEMENT_KEY=hv.yk.management_key)
    assert "factory default management key" in default.stderr
    assert "--allow-default-management-key" in default.stderr
    wrong = hv.token(
        "key",
        "generate",
        "--allow-default-management-key",
        ok=False,
        HSM_VAULT_MANAGEMENT_KEY="00" * 24,
    )
    assert "wrong management key" in wrong.stderr
    missing = hv.token("key", "generate", "--allow-default-management-key", ok=False)
    assert "no PIV management key" in missing.stderr
    assert "HSM_VAULT_MANAGEMENT_KEY" in missing.stderr
    occupied = hv.admin("key", "generate", "--slot", slot, ok=False)
    assert f"slot {slot} of token" in occupied.stderr and "already holds a key" in occupied.stderr
    policy = hv.admin("key", "generate", "--slot", "94", "--pin-policy", "once", ok=False)
    assert "cannot set a key's PIN or touch policy" in policy.stderr
    assert "yubico-piv-tool" in policy.stderr
    too_big = hv.admin("key", "generate", "--slot", "94", "--type", "rsa-3072", ok=False)
    assert "RSA-2048 at most" in too_big.stderr
    # None of the refusals made a key: the first answer stands, and 94 is still empty.
    keys = json.loads(hv.token("key", "list", "--json").stdout)["keys"]
    assert [k["fingerprint_sha256"] for k in keys if k["slot"] == slot] == [
        alice["key"]["fingerprint_sha256"]
    ]
    assert "94" not in {k["slot"] for k in keys}


def test_the_key_is_attested_and_other_tools_see_it(hv: Runner, alice: dict) -> None:
    slot = alice["key"]["slot"]
    shown = json.loads(hv.token("key", "show", "--slot", slot, "--json").stdout)
    assert shown["attestation"] == {
        "attested": True,
        "serial": hv.yk.serial,
        "firmware": "5.4.3",
        "pin_policy": "once",
        "touch_policy": "never",
        "form_factor": "usb-a-keychain",
        "root": "Virtual YubiKey PIV Test Root CA (tests only)",
    }
    # The test root is trusted only where configured: Yubico's root alone rejects the chain.
    untrusted = hv.token("key", "show", "--slot", slot, "--json", HSM_VAULT_ATTESTATION_ROOTS="")
    assert json.loads(untrusted.stdout)["attestation"]["attested"] is False
    listing = subprocess.run(
        ["pkcs11-tool", "--module", hv.yk.ykcs11, "--token-label", hv.yk.token_label, "-O"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"ID:         {alice['key']['id']}" in listing
    assert "Public Key Object; EC" in listing


def pty_run(args: list[str], env: dict[str, str], pin: str) -> tuple[int, int]:
    """Run hsm-vault on a terminal, typing `pin` at each PIN prompt; (exit code, prompts)."""
    primary, secondary = pty.openpty()
    with subprocess.Popen(
        [HSM_VAULT, *args], stdin=secondary, stdout=secondary, stderr=secondary, env=env
    ) as proc:
        os.close(secondary)
        seen, prompts = b"", 0
        while True:
            try:
                block = os.read(primary, 4096)
            except OSError:  # EIO: the process closed its end
                break
            if not block:
                break
            seen += block
            while b"PIN for token" in seen:
                seen = seen.split(b"PIN for token", 1)[1]
                prompts += 1
                os.write(primary, pin.encode() + b"\n")
        os.close(primary)
    return proc.returncode, prompts


def test_encrypt_and_decrypt_a_batch_with_one_pin_prompt(hv: Runner, alice: dict) -> None:
    names = [f"doc{i}.txt" for i in range(3)]
    for name in names:
        (hv.work / name).write_text(f"secret {name}")
    hv("encrypt", "--to", "alice@example.org", *names)
    for name in names:
        (hv.work / name).unlink()
    env = {k: v for k, v in hv.env.items() if k != "HSM_VAULT_PIN"}
    code, prompts = pty_run(
        ["decrypt", "--out-dir", str(hv.work), *[str(hv.work / f"{n}.hsmv") for n in names]],
        env,
        hv.yk.pin,
    )
    assert (code, prompts) == (0, 1)
    assert [(hv.work / n).read_text() for n in names] == [f"secret {n}" for n in names]


def test_slot_9c_signs_with_a_context_specific_login(hv: Runner) -> None:
    hv.admin("key", "generate", "--slot", "9c", "--force")
    card = json.loads(hv.token("card", "create", "signer", "--slot", "9c", "--json").stdout)
    assert [s["signer"] for s in card["signatures"]] == ["self"]


def test_wrong_pin_counts_down_and_a_blocked_pin_points_to_the_puk(hv: Runner) -> None:
    def wrong() -> str:
        return hv.token("key", "list", ok=False, HSM_VAULT_PIN="999999").stderr

    try:
        assert "few tries left" in wrong()
        assert "one try left" in wrong()
        blocked = wrong()
        assert "the PIN is now locked" in blocked and "PUK" in blocked
        again = hv.token("key", "list", ok=False).stderr
        assert "locked" in again and "unblock-pin" in again
    finally:
        subprocess.run(
            ["yubico-piv-tool", "-a", "unblock-pin", "-P", hv.yk.puk, "-N", hv.yk.pin],
            capture_output=True,
            check=True,
        )
    hv.token("key", "list")


def test_delete_overwrites_the_slot(hv: Runner) -> None:
    made = json.loads(hv.admin("key", "generate", "--slot", "95", "--json").stdout)
    refused = hv.token("key", "delete", "--slot", "95", "--yes", ok=False)
    assert "management key" in refused.stderr
    done = hv.admin("key", "delete", "--slot", "95", "--yes")
    assert "slot 95 now holds a fresh key" in done.stdout
    after = json.loads(hv.token("key", "show", "--slot", "95", "--json").stdout)
    assert after["fingerprint_sha256"] != made["fingerprint_sha256"]


def test_opensc_decrypts_and_says_9d_cannot_sign(hv: Runner, alice: dict) -> None:
    """OpenSC's PIV driver needs a certificate in the slot (key generate leaves one) and a
    CHUID for a serial; its token is named after the first certificate."""
    if hv.yk.opensc is None:
        pytest.skip("OpenSC's PKCS#11 module is not installed (Debian package opensc)")
    if alice["key"]["slot"] != "9d":
        pytest.skip("the flow's key is not in 9d")
    subprocess.run(["yubico-piv-tool", "-a", "set-chuid"], capture_output=True, check=True)
    opensc = {"HSM_VAULT_PKCS11_MODULE": hv.yk.opensc}
    tokens = json.loads(hv("token", "list", "--json", **opensc).stdout)
    label = next(t["label"] for t in tokens["tokens"] if t["profile"] == "OpenSC PIV")
    (hv.work / "note.txt").write_text("for OpenSC")
    hv("encrypt", "--to", "alice@example.org", "note.txt")
    (hv.work / "note.txt").unlink()
    hv("decrypt", "--token", label, "--slot", "9d", "note.txt.hsmv", **opensc)
    assert (hv.work / "note.txt").read_text() == "for OpenSC"
    refused = hv("card", "create", "bob", "--token", label, "--slot", "9d", ok=False, **opensc)
    assert f"token {label!r} (OpenSC PIV" in refused.stderr
    assert "treats 9d as a decryption key" in refused.stderr and "ykcs11" in refused.stderr
