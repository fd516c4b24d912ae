"""`hsm-vault key` and `hsm-vault token` as a person runs them, and interop with pkcs11-tool."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from hsm_vault.cli.main import app
from hsm_vault.token import open_session

runner = CliRunner()


def hv(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def pkcs11_tool(softhsm, *args: str) -> str:
    # pkcs11-tool takes a PIN only from a terminal or argv; this is the test token's PIN.
    done = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            softhsm.module,
            "--token-label",
            "carol",
            "--login",
            "--pin",
            softhsm.pin,
            *args,
        ],
        env=softhsm.env(),
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"])
def test_generate_list_show_export_delete(softhsm, key_type: str, tmp_path: Path) -> None:
    label = unique("cli")
    made = hv("key", "generate", label, "--type", key_type, "--token", "carol", "--json")
    assert made.exit_code == 0, made.output
    info = json.loads(made.output)
    assert info["type"] == key_type
    assert info["attributes"] == {
        "local": True,
        "never_extractable": True,
        "always_sensitive": True,
        "sensitive": True,
        "extractable": False,
    }

    listed = json.loads(hv("key", "list", "--token", "carol", "--json").output)
    assert label in [k["label"] for k in listed]
    table = hv("key", "list", "--token", "carol")
    assert label in table.output

    shown = hv("key", "show", f"pkcs11:token=carol;object={label}")
    assert shown.exit_code == 0, shown.output
    assert info["fingerprint_sha256"] in shown.output and info["uri"] in shown.output

    pem = hv("key", "export-public", label, "--token", "carol")
    public = serialization.load_pem_public_key(pem.output.encode())
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    assert digest.finalize().hex() == info["fingerprint_sha256"]
    out = tmp_path / "pub.der"
    assert hv("key", "export-public", label, "-t", "carol", "--der", "-o", str(out)).exit_code == 0
    assert out.read_bytes() == der
    again = hv("key", "export-public", label, "-t", "carol", "--der", "-o", str(out))
    assert again.exit_code != 0 and "--force" in again.output

    refused = hv("key", "delete", label, "--token", "carol", input="n\n")
    assert refused.exit_code != 0
    assert hv("key", "show", label, "-t", "carol").exit_code == 0
    assert hv("key", "delete", label, "--token", "carol", "--yes").exit_code == 0
    gone = hv("key", "show", label, "-t", "carol")
    assert gone.exit_code == 1
    assert "error: no key" in gone.output and "hint:" in gone.output


def test_errors_are_one_line_without_traceback(softhsm, monkeypatch) -> None:
    dup = unique("dup")
    assert hv("key", "generate", dup, "-t", "carol").exit_code == 0
    result = hv("key", "generate", dup, "-t", "carol")
    assert result.exit_code == 1 and "already has a key labelled" in result.output
    assert "Traceback" not in result.output

    assert "no token 'nobody'" in hv("key", "list", "-t", "nobody").output

    monkeypatch.setenv("HSM_VAULT_PKCS11_MODULE", "/nowhere/libnothing.so")
    missing = hv("key", "list", "-t", "carol")
    assert missing.exit_code == 1
    assert "/nowhere/libnothing.so" in missing.output and "hint:" in missing.output

    monkeypatch.setenv("HSM_VAULT_PKCS11_MODULE", softhsm.module)
    monkeypatch.setenv("HSM_VAULT_PIN", "999999")
    wrong = hv("key", "list", "-t", "carol")
    assert wrong.exit_code == 1
    assert "wrong PIN for token 'carol'" in wrong.output and "999999" not in wrong.output
    monkeypatch.setenv("HSM_VAULT_PIN", softhsm.pin)
    hv("key", "delete", dup, "-t", "carol", "--yes")


def test_pin_is_not_an_option() -> None:
    result = hv("key", "list", "--pin", "1234")
    assert result.exit_code != 0
    assert "No such option" in result.output


def test_token_list_and_info(softhsm) -> None:
    listed = json.loads(hv("token", "list", "--json").output)
    assert {"alice", "bob", "carol", "server"} <= {t["label"] for t in listed["tokens"]}
    assert [m["path"] for m in listed["modules"]] == [softhsm.module]
    info = hv("token", "info", "--token", "alice")
    assert info.exit_code == 0, info.output
    assert "default for 'key generate': ec-p256" in info.output
    data = json.loads(hv("token", "info", "--token", "alice", "--json").output)
    # What SoftHSM 2.6 does, as the probe measures it (../shared/PKCS11_NOTES.md).
    assert data["token"]["model_name"].startswith("SoftHSM 2.6")
    assert data["capabilities"]["oaep_hashes"] == ["sha1"]
    assert data["capabilities"]["ecdh"] == "raw"
    assert data["capabilities"]["pss"] == "sha256-rsa-pkcs-pss"
    assert all(row["generate"] and row["decrypt"] for row in data["key_types"].values())


def test_hsm_vault_key_is_sensitive_never_extractable_local_in_pkcs11_tool(softhsm) -> None:
    label = unique("interop")
    assert hv("key", "generate", label, "-t", "carol").exit_code == 0
    listing = pkcs11_tool(softhsm, "-O")
    private = next(
        b for b in listing.split("Private Key Object")[1:] if f"label:      {label}" in b
    )
    access = next(line for line in private.splitlines() if "Access:" in line)
    for flag in ("sensitive", "always sensitive", "never extractable", "local"):
        assert flag in access
    hv("key", "delete", label, "-t", "carol", "--yes")


def test_key_made_by_pkcs11_tool_is_listed_and_usable(softhsm) -> None:
    label = unique("p11tool")
    pkcs11_tool(
        softhsm, "--keypairgen", "--key-type", "EC:prime256v1", "--label", label, "--id", "c0ffee01"
    )
    listed = json.loads(hv("key", "list", "-t", "carol", "--json").output)
    assert any(k["label"] == label and k["id"] == "c0ffee01" for k in listed)
    with open_session("carol") as ts:
        key = ts.find_key(label)
        public = serialization.load_der_public_key(key.spki_der)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        peer = ec.generate_private_key(ec.SECP256R1())
        point = peer.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert ts.ecdh(key, point) == peer.exchange(ec.ECDH(), public)
        from hsm_vault.algorithms import verify_signature

        verify_signature(key.spki_der, key.key_type.signature_algorithm, b"m", ts.sign(key, b"m"))
        ts.delete_key(key)
