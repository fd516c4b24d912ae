"""Choosing modules and tokens, and what the capability probe says, on real SoftHSM tokens.

The same questions on tpm2-pkcs11, opencryptoki and NSS are asked by tests/tokens/.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from typer.testing import CliRunner

from hsm_vault.algorithms import KeyType, load_spki
from hsm_vault.cli.main import app
from hsm_vault.errors import TokenCannot, TokenOperationFailed
from hsm_vault.token import open_session
from hsm_vault.token.capabilities import CapabilityCache
from hsm_vault.token.module import P11KIT_MODULE_DIRS

runner = CliRunner()
HSM_VAULT = str(Path(sys.executable).with_name("hsm-vault"))


def hv(*args: str):
    return runner.invoke(app, list(args))


def hv_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The installed command in a child process, with exactly this environment."""
    return subprocess.run([HSM_VAULT, *args], env=env, capture_output=True, text=True)


def test_serial_uri_and_full_token_uri_select_the_token(softhsm) -> None:
    with open_session("alice") as ts:
        serial, uri = ts.info.serial, ts.info.uri
    assert "manufacturer=SoftHSM%20project" in uri and f"serial={serial}" in uri
    for ref in (f"pkcs11:serial={serial}", uri):
        listed = hv("key", "list", "--token", ref, "--json")
        assert listed.exit_code == 0, listed.output
        with open_session(ref) as ts:
            assert ts.info.label == "alice"
    wrong = hv("key", "list", "--token", "pkcs11:serial=0000000000000000")
    assert wrong.exit_code != 0 and "no token 'pkcs11:serial=0000000000000000'" in wrong.output


def test_wrong_pin_names_the_tries_left_without_traceback(softhsm, monkeypatch) -> None:
    serial = _serial("bob")
    monkeypatch.setenv("HSM_VAULT_PIN", "not-the-pin")
    result = hv("key", "list", "--token", f"pkcs11:token=bob;serial={serial}")
    assert result.exit_code != 0
    assert "wrong PIN for token 'bob'" in result.output
    assert "Traceback" not in result.output


def _serial(label: str) -> str:
    with open_session(label) as ts:
        return ts.info.serial


def test_module_and_token_before_the_subcommand(softhsm, monkeypatch) -> None:
    monkeypatch.delenv("HSM_VAULT_PKCS11_MODULE")
    result = hv("--module", softhsm.module, "--token", "alice", "key", "list", "--json")
    assert result.exit_code == 0, result.output
    assert hv("--module", softhsm.module, "token", "list").exit_code == 0


def test_config_set_module_is_used(softhsm, monkeypatch, vault_home: Path) -> None:
    monkeypatch.delenv("HSM_VAULT_PKCS11_MODULE")
    assert hv("config", "set", "module", "/no/such.so").exit_code != 0
    saved = hv("config", "set", "module", softhsm.module)
    assert saved.exit_code == 0, saved.output
    listed = json.loads(hv("token", "list", "--json").output)
    assert listed["modules"] == [{"path": softhsm.module, "source": "config file"}]
    shown = json.loads(hv("config", "show", "--json").output)
    assert shown["settings"]["module"] == softhsm.module


@pytest.mark.skipif(
    not any(Path(d, "softhsm2.module").exists() for d in P11KIT_MODULE_DIRS),
    reason="SoftHSM is not registered with p11-kit on this machine",
)
def test_without_a_module_the_registry_module_holding_the_token_is_used(
    softhsm, vault_home: Path
) -> None:
    # The Debian registry lists opensc first; the SoftHSM tokens must still be found.
    env = {k: v for k, v in os.environ.items() if k != "HSM_VAULT_PKCS11_MODULE"}
    listed = hv_process(env, "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    searched = [m["path"] for m in body["modules"]]
    assert any("softhsm" in p for p in searched) and len(searched) >= 2
    assert {"alice", "bob"} <= {t["label"] for t in body["tokens"]}
    shown = hv_process(env, "token", "list")
    assert "softhsm" in shown.stdout and "opensc" in shown.stdout  # names what it searched
    keys = hv_process(env, "key", "list", "--token", "alice", "--json")
    assert keys.returncode == 0, keys.stderr
    missing = hv_process(env, "key", "list", "--token", "nobody")
    assert missing.returncode != 0
    assert "no token 'nobody' in modules" in missing.stderr and "Traceback" not in missing.stderr


def test_probe_is_cached_per_model(softhsm, vault_home: Path) -> None:
    first = json.loads(hv("token", "info", "-t", "carol", "--json").output)
    cache = CapabilityCache()
    assert cache.path.is_relative_to(vault_home)
    with open_session("carol") as ts:
        cached = cache.get(ts.info.model_key)
    assert cached is not None and cached.as_json() == first["capabilities"]
    # Another token of the same model reads the cache: nothing is generated on it.
    with open_session("bob") as ts:
        assert ts.known_capabilities() == cached


def test_key_generate_without_type_takes_the_best_type(softhsm) -> None:
    label = f"best-{uuid.uuid4().hex[:8]}"
    made = hv("key", "generate", label, "-t", "carol")
    assert made.exit_code == 0, made.output
    assert "key type: ec-p256" in made.output
    assert hv("key", "delete", label, "-t", "carol", "--yes").exit_code == 0


def test_an_oaep_hash_the_token_lacks_is_not_a_damaged_file(softhsm, token_keys) -> None:
    # SoftHSM 2.6 decrypts RSA-OAEP with SHA-1 only: a SHA-256 entry is the token's limit.
    key = token_keys["alice-rsa2048"]
    public = load_spki(key.spki_der)
    chosen = hashes.SHA256()
    ciphertext = public.encrypt(  # type: ignore[union-attr]
        secrets.token_bytes(32),
        padding.OAEP(mgf=padding.MGF1(chosen), algorithm=chosen, label=None),
    )
    with open_session("alice") as ts, pytest.raises(TokenCannot) as refused:
        ts.rsa_oaep_decrypt(key, ciphertext, "sha256")
    assert "cannot do RSA-OAEP with SHA256" in refused.value.message
    assert "SoftHSM" in refused.value.message
    # A SHA-1 entry that does not decrypt is a bad entry, not a token limit.
    with open_session("alice") as ts, pytest.raises(TokenOperationFailed):
        ts.rsa_oaep_decrypt(key, b"\x01" * 256, "sha1")
    assert key.key_type is KeyType.RSA_2048
