"""The error classes are the one table between errors and HTTP statuses, read by the server
(the status it answers) and by the client (the error it raises for a status); and a
signature or key that fails a cryptographic check is a neutral error, not a card error."""

from __future__ import annotations

from http import HTTPStatus

import pytest
import requests

from hsm_vault.algorithms import KeyType, load_spki, verify_signature
from hsm_vault.client import error_for
from hsm_vault.errors import (
    BadRequest,
    CardError,
    ConflictOnServer,
    CryptoError,
    HsmVaultError,
    InvalidSignature,
    KeyFormatError,
    PreconditionFailed,
    RequestRejected,
    ServerError,
    TooManyAttempts,
    server_error_for_status,
)
from hsm_vault.server.problems import problem_response


def _all(cls: type[HsmVaultError]) -> list[type[HsmVaultError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all(sub))
    return found


CLIENT_ERRORS = [c for c in _all(ServerError) if c.http_status < 500]


def _answer(status: int, detail: str) -> requests.Response:
    """The server's problem document for `status`, as the client receives it."""
    sent = problem_response(status, detail)
    answer = requests.Response()
    answer.status_code = sent.status_code
    answer.headers.update({k: v for k, v in sent.headers.items() if k != "content-length"})
    answer._content = bytes(sent.body)
    return answer


def test_every_error_states_a_real_http_status() -> None:
    for cls in _all(HsmVaultError):
        HTTPStatus(cls.http_status)  # raises for a status HTTP does not have


@pytest.mark.parametrize("cls", CLIENT_ERRORS, ids=lambda c: c.__name__)
def test_the_client_raises_the_error_whose_status_the_server_answers(
    cls: type[ServerError],
) -> None:
    assert server_error_for_status(cls.http_status) is cls
    error = error_for(_answer(cls.http_status, "what went wrong"))
    assert type(error) is cls
    assert error.message == "what went wrong"


def test_statuses_the_client_knew_keep_their_errors() -> None:
    # What the hand-kept table of the client said, now read from the classes.
    assert isinstance(error_for(_answer(400, "x")), BadRequest | RequestRejected)
    assert isinstance(error_for(_answer(422, "x")), RequestRejected)
    assert isinstance(error_for(_answer(412, "x")), PreconditionFailed)
    assert issubclass(PreconditionFailed, ConflictOnServer)
    assert isinstance(error_for(_answer(429, "x")), TooManyAttempts)
    assert type(error_for(_answer(418, "x"))) is ServerError
    assert error_for(_answer(503, "busy")).message == "the server failed: busy"


def test_signature_and_key_failures_are_crypto_errors_not_card_errors() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(InvalidSignature) as bad_signature:
        verify_signature(spki, KeyType.EC_P256.signature_algorithm, b"m", b"\x30\x00")
    with pytest.raises(KeyFormatError) as bad_key:
        load_spki(b"not a key")
    for raised in (bad_signature.value, bad_key.value):
        assert isinstance(raised, CryptoError)
        assert not isinstance(raised, CardError)
