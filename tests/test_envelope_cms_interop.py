"""Our recipient entries are standard CMS: OpenSSL's `cms -decrypt` unwraps them.

Each entry hsm-vault writes (KeyAgreeRecipientInfo for EC, KeyTransRecipientInfo with OAEP for
RSA) is put in an RFC 5652 EnvelopedData around an AES-256-CBC content encrypted under the same
file key; OpenSSL, given the recipient's certificate (subjectKeyIdentifier = our key id) and
private key, must recover the content. This checks the encodings and the RFC 5753 KDF against
an independent implementation.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID
from vectors.software_identity import SoftwareIdentity

from hsm_vault.envelope import Randomness
from hsm_vault.envelope.recipients import wrap_file_key

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def _certificate(key, key_id: bytes) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsm-vault interop")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier(key_id), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _enveloped(recipient_info, file_key: bytes, content: bytes) -> bytes:
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(algorithms.AES(file_key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    data = cms.EnvelopedData(
        {
            "version": "v2",  # RFC 5652 6.1: kari, or ktri of version 2
            "recipient_infos": [recipient_info],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
                "encrypted_content": encrypted,
            },
        }
    )
    return cms.ContentInfo({"content_type": "enveloped_data", "content": data}).dump()


@pytest.mark.parametrize(
    ("make", "oaep_hash"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), None),
        (lambda: ec.generate_private_key(ec.SECP384R1()), None),
        (lambda: rsa.generate_private_key(65537, 2048), "sha1"),
        (lambda: rsa.generate_private_key(65537, 2048), "sha256"),
    ],
    ids=["p256-kari", "p384-kari", "rsa-oaep-sha1", "rsa-oaep-sha256"],
)
def test_openssl_unwraps_our_recipient_entries(tmp_path: Path, make, oaep_hash) -> None:
    key = make()
    identity = SoftwareIdentity(key)
    recipient = identity.recipient(oaep_hash)
    file_key = os.urandom(32)
    entry = wrap_file_key(recipient, file_key, Randomness())
    content = b"read by an independent CMS implementation\n" * 3
    (tmp_path / "msg.der").write_bytes(_enveloped(entry, file_key, content))
    (tmp_path / "cert.pem").write_bytes(_certificate(key, recipient.key_id))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = subprocess.run(
        [
            "openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "msg.der"),
            "-recip", str(tmp_path / "cert.pem"), "-inkey", str(tmp_path / "key.pem"),
        ],
        capture_output=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == content
