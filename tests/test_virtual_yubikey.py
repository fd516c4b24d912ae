"""The virtual YubiKey answers real clients: Yubico's ykcs11 (through pkcs11-tool and
python-pkcs11), yubico-piv-tool and OpenSC's PIV driver, all through the real pcscd."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pkcs11 import KDF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11._pkcs11 import DeriveMixin
from pkcs11.util.ec import (
    encode_ec_public_key,
    encode_ecdsa_signature,
    encode_named_curve_parameters,
)

from tests.virtual_yubikey import state as device_state
from tests.virtual_yubikey import tlv
from tests.virtual_yubikey.applet import PivApplet
from tests.virtual_yubikey.fixture import VirtualYubiKey

P256 = "1.2.840.10045.3.1.7"


def run(*args: str, input: bytes | None = None) -> bytes:
    done = subprocess.run(args, input=input, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def tool(yk: VirtualYubiKey, module: str, *args: str) -> bytes:
    return run("pkcs11-tool", "--module", module, "--token-label", yk.token_label, *args)


def so_keygen(yk: VirtualYubiKey, key_type: str, key_id: str) -> None:
    """ykcs11: key generation needs a security-officer login with the management key as PIN."""
    tool(
        yk,
        yk.ykcs11,
        "--login",
        "--login-type",
        "so",
        "--so-pin",
        yk.management_key,
        "--keypairgen",
        "--key-type",
        key_type,
        "--id",
        key_id,
    )


@pytest.fixture
def yk(virtual_yubikey: VirtualYubiKey) -> VirtualYubiKey:
    return virtual_yubikey


def attested_key(yk: VirtualYubiKey, slot: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(run("yubico-piv-tool", "-a", "attest", "-s", slot))


def test_ykcs11_lists_the_token(virtual_yubikey: VirtualYubiKey) -> None:
    out = run("pkcs11-tool", "--module", virtual_yubikey.ykcs11, "-L").decode()
    assert f"token label        : {virtual_yubikey.token_label}" in out
    assert "YubiKey YK5" in out and "firmware version   : 5.43" in out


def test_ykcs11_p256_in_9d_signs_and_derives(yk: VirtualYubiKey, tmp_path: Path) -> None:
    so_keygen(yk, "EC:prime256v1", "03")
    public = attested_key(yk, "9d").public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    digest = bytes(range(32))
    (tmp_path / "digest").write_bytes(digest)
    tool(
        yk,
        yk.ykcs11,
        "--login",
        "--pin",
        yk.pin,
        "--sign",
        "--id",
        "03",
        "-m",
        "ECDSA",
        "--signature-format",
        "openssl",
        "-i",
        str(tmp_path / "digest"),
        "-o",
        str(tmp_path / "sig"),
    )
    public.verify((tmp_path / "sig").read_bytes(), digest, ec.ECDSA(Prehashed(hashes.SHA256())))

    peer = ec.generate_private_key(ec.SECP256R1())
    peer_der = peer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "peer").write_bytes(peer_der)
    tool(
        yk,
        yk.ykcs11,
        "--login",
        "--pin",
        yk.pin,
        "--derive",
        "--id",
        "03",
        "-m",
        "ECDH1-DERIVE",
        "-i",
        str(tmp_path / "peer"),
        "-o",
        str(tmp_path / "z"),
    )
    assert (tmp_path / "z").read_bytes() == peer.exchange(ec.ECDH(), public)


def test_ykcs11_rsa2048_decrypts_oaep(yk: VirtualYubiKey, tmp_path: Path) -> None:
    so_keygen(yk, "RSA:2048", "01")
    public = attested_key(yk, "9a").public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    (tmp_path / "ct").write_bytes(public.encrypt(b"file key", oaep))
    out = tool(
        yk,
        yk.ykcs11,
        "--login",
        "--pin",
        yk.pin,
        "--decrypt",
        "--id",
        "01",
        "-m",
        "RSA-PKCS-OAEP",
        "--hash-algorithm",
        "SHA256",
        "--mgf",
        "MGF1-SHA256",
        "-i",
        str(tmp_path / "ct"),
    )
    assert out == b"file key"


def test_python_pkcs11_on_ykcs11(virtual_yubikey: VirtualYubiKey) -> None:
    """What hsm-vault's token layer can count on: SO login generates, user login uses."""
    yk = virtual_yubikey
    token = pkcs11.lib(yk.ykcs11).get_token(token_label=yk.token_label)
    assert token.serial == str(yk.serial).encode()
    with token.open(rw=True, so_pin=yk.management_key) as session:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(P256)}, local=True
        )
        # CKA_ID is one byte naming the slot (0x05 = retired slot 82); EXTRACTABLE is refused
        with pytest.raises(pkcs11.exceptions.AttributeTypeInvalid):
            params.generate_keypair(
                store=True, id=b"\x05", private_template={Attribute.EXTRACTABLE: False}
            )
        params.generate_keypair(
            store=True,
            id=b"\x05",
            label="ignored",
            private_template={Attribute.SENSITIVE: True, Attribute.SIGN: True},
        )
    with token.open(user_pin=yk.pin) as session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=b"\x05")
        assert key.label == "Private key for Retired Key 1"
        assert key[Attribute.LOCAL] and key[Attribute.NEVER_EXTRACTABLE]
        assert key[Attribute.ALWAYS_SENSITIVE] and not key[Attribute.EXTRACTABLE]
        public = serialization.load_der_public_key(
            encode_ec_public_key(session.get_key(object_class=ObjectClass.PUBLIC_KEY, id=b"\x05"))
        )
        assert isinstance(public, ec.EllipticCurvePublicKey)
        digest = bytes(32)
        signature = key.sign(digest, mechanism=Mechanism.ECDSA)
        public.verify(
            encode_ecdsa_signature(signature), digest, ec.ECDSA(Prehashed(hashes.SHA256()))
        )
        # ykcs11 2.2 says CKA_DERIVE false, so python-pkcs11 offers no derive_key: call it anyway
        peer = ec.generate_private_key(ec.SECP256R1())
        point = peer.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        secret = DeriveMixin.derive_key(
            key,
            KeyType.GENERIC_SECRET,
            256,
            mechanism=Mechanism.ECDH1_DERIVE,
            mechanism_param=(KDF.NULL, None, point),
        )
        assert secret[Attribute.VALUE] == peer.exchange(ec.ECDH(), public)


def test_yubico_piv_tool_generate_and_attest(virtual_yubikey: VirtualYubiKey) -> None:
    yk = virtual_yubikey
    pem = run(
        "yubico-piv-tool",
        "-a",
        "generate",
        "-s",
        "9e",
        "-A",
        "ECCP384",
        "--pin-policy",
        "once",
        "--touch-policy",
        "always",
    )
    attestation = attested_key(yk, "9e")
    f9 = x509.load_pem_x509_certificate(
        run("yubico-piv-tool", "-a", "read-certificate", "-s", "f9")
    )
    root = x509.load_pem_x509_certificate(yk.root_ca.read_bytes())
    attestation.verify_directly_issued_by(f9)
    f9.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert attestation.public_key().public_bytes(serialization.Encoding.PEM, spki) == pem

    def ext(dotted: str) -> bytes:
        oid = x509.ObjectIdentifier(f"1.3.6.1.4.1.41482.3.{dotted}")
        value = attestation.extensions.get_extension_for_oid(oid).value
        assert isinstance(value, x509.UnrecognizedExtension)
        return value.value

    assert ext("3") == bytes([5, 4, 3])
    assert int.from_bytes(tlv.unwrap(0x02, ext("7")), "big") == yk.serial
    assert ext("8") == bytes([2, 2])  # PIN policy once, touch policy always
    assert len(ext("9")) == 1


def test_wrong_pin_counts_down_locks_and_puk_unblocks(virtual_yubikey: VirtualYubiKey) -> None:
    def piv_tool(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["yubico-piv-tool", *args], capture_output=True, text=True)

    def verify(pin: str) -> str:
        return piv_tool("-a", "verify-pin", "-P", pin).stderr + piv_tool().stdout

    assert "2 tries left" in verify("999999")
    assert "1 tries left" in verify("999999")
    assert "blocked" in verify("999999")
    assert "blocked" in verify(virtual_yubikey.pin)  # the right PIN no longer helps
    assert "PIN tries left:\t0" in piv_tool("-a", "status").stdout
    done = piv_tool("-a", "unblock-pin", "-P", virtual_yubikey.puk, "-N", virtual_yubikey.pin)
    assert done.returncode == 0, done.stderr
    assert piv_tool("-a", "verify-pin", "-P", virtual_yubikey.pin).returncode == 0
    assert "PIN tries left:\t3" in piv_tool("-a", "status").stdout


def test_opensc_piv_driver_signs_with_9c(yk: VirtualYubiKey, tmp_path: Path) -> None:
    if yk.opensc is None:
        pytest.skip("OpenSC's PKCS#11 module is not installed (Debian package opensc)")
    so_keygen(yk, "EC:prime256v1", "02")  # also stores a certificate, which OpenSC needs
    public = attested_key(yk, "9c").public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    listing = run("pkcs11-tool", "--module", yk.opensc, "-O").decode()
    assert "Certificate for Digital Signature" in listing
    digest = bytes(range(32, 64))
    (tmp_path / "digest").write_bytes(digest)
    # 9c has PIN policy "always": pkcs11-tool does the context-specific login before signing
    run(
        "pkcs11-tool",
        "--module",
        yk.opensc,
        "--login",
        "--pin",
        yk.pin,
        "--sign",
        "--id",
        "02",
        "-m",
        "ECDSA",
        "--signature-format",
        "openssl",
        "-i",
        str(tmp_path / "digest"),
        "-o",
        str(tmp_path / "sig"),
    )
    public.verify((tmp_path / "sig").read_bytes(), digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def test_aes192_management_key(tmp_path: Path) -> None:
    """The applet alone: mutual authentication with an AES-192 management key (firmware 5.4+)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    st = device_state.DeviceState(serial=1, mgm_algorithm=device_state.MGM_AES192)
    applet = PivApplet(tmp_path, st)
    key = algorithms.AES(device_state.DEFAULT_MANAGEMENT_KEY)

    def ecb(data: bytes, encrypt: bool) -> bytes:
        c = Cipher(key, modes.ECB())
        ctx = c.encryptor() if encrypt else c.decryptor()
        return ctx.update(data) + ctx.finalize()

    def auth(body: bytes) -> bytes:
        return applet.process(bytes([0, 0x87, 0x0A, 0x9B, len(body)]) + body)

    gen = bytes.fromhex("00470082") + bytes([5]) + tlv.tlv(0xAC, tlv.tlv(0x80, b"\x11"))
    assert applet.process(gen)[-2:] == b"\x69\x82"  # not authenticated
    answer = auth(tlv.tlv(0x7C, tlv.tlv(0x80)))
    witness = tlv.parse_dict(tlv.unwrap(0x7C, answer[:-2]))[0x80]
    challenge = bytes(range(16))
    answer = auth(tlv.tlv(0x7C, tlv.tlv(0x80, ecb(witness, False)) + tlv.tlv(0x81, challenge)))
    assert answer[-2:] == b"\x90\x00"
    assert tlv.parse_dict(tlv.unwrap(0x7C, answer[:-2]))[0x82] == ecb(challenge, True)
    answer = applet.process(gen)
    assert answer[-2:] == b"\x90\x00" and answer.startswith(b"\x7f\x49")
