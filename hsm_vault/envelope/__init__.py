"""The hsm-vault file format: header, recipient wrapping, STREAM payload (docs/format.md).

Pure of I/O beyond the streams it is given, and of the token: encrypting needs only public
keys (`Recipient`); decrypting needs an `Identity` that can run ECDH or RSA-OAEP (a token key
in `hsm_vault.vault`, a software key in tests).
"""

from hsm_vault.envelope.envelope import (
    DecryptResult,
    EncryptResult,
    Header,
    Signer,
    Verifier,
    decrypt,
    encrypt,
    read_header,
    unwrap,
)
from hsm_vault.envelope.format import DEFAULT_CHUNK_SIZE, RecipientEntry, SignerReference
from hsm_vault.envelope.recipients import (
    Identity,
    Randomness,
    Recipient,
    key_id_of,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DecryptResult",
    "EncryptResult",
    "Header",
    "Identity",
    "Randomness",
    "Recipient",
    "RecipientEntry",
    "Signer",
    "SignerReference",
    "Verifier",
    "decrypt",
    "encrypt",
    "key_id_of",
    "read_header",
    "unwrap",
]
