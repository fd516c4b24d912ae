"""The application key: a key pair on the server's own token that signs approved cards.

The server opens one token session at start-up and keeps it for its lifetime; signing goes
through a lock because a PKCS#11 session serves one operation at a time while the server
handles requests on several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hsm_vault.algorithms import KeyType, SignatureAlgorithm, spki_fingerprint, verify_signature
from hsm_vault.errors import KeyNotFound, PinUnavailable
from hsm_vault.server.settings import SERVER_PIN_ENV, ServerSettings


@dataclass(frozen=True)
class AppKeyInfo:
    """The public half of the application key, as `GET /v1/app` gives it."""

    spki_der: bytes
    algorithm: SignatureAlgorithm
    key_type: KeyType
    uri: str

    @property
    def fingerprint(self) -> str:
        return spki_fingerprint(self.spki_der)


class ApplicationKey:
    """Signs with the application key through a token session opened by the server."""

    def __init__(self, session: Any, key: Any) -> None:
        self._session = session
        self._key = key
        self._lock = threading.Lock()
        self.info = AppKeyInfo(
            spki_der=key.spki_der,
            algorithm=key.key_type.signature_algorithm,
            key_type=key.key_type,
            uri=key.uri,
        )

    def sign(self, message: bytes) -> bytes:
        """Sign `message` on the token; the signature is checked before it is handed out."""
        with self._lock:
            signature: bytes = self._session.sign(self._key, message)
        verify_signature(self.info.spki_der, self.info.algorithm, message, signature)
        return signature


@contextmanager
def _server_session(settings: ServerSettings) -> Iterator[Any]:
    from hsm_vault.token import open_session

    try:
        with open_session(
            token=settings.token, module=settings.module, pin=settings.pin_source()
        ) as session:
            yield session
    except PinUnavailable as exc:
        raise PinUnavailable(
            exc.message,
            hint=f"Give the server a PIN file (--pin-file) or set {SERVER_PIN_ENV}.",
        ) from None


@contextmanager
def open_application_key(settings: ServerSettings) -> Iterator[ApplicationKey]:
    """Open the server's token, find the application key, and keep the session open."""
    with _server_session(settings) as session:
        try:
            key = session.find_key(settings.app_key)
        except KeyNotFound as exc:
            raise KeyNotFound(
                f"the application key {settings.app_key!r} is not on token {settings.token!r}",
                hint="Run 'hsm-vault server init' to create it, or fix --app-key.",
            ) from exc
        yield ApplicationKey(session, key)


def ensure_application_key(settings: ServerSettings, key_type: KeyType) -> tuple[AppKeyInfo, bool]:
    """Find the application key on the server's token, or generate it; (info, created)."""
    with _server_session(settings) as session:
        created = False
        try:
            key = session.find_key(settings.app_key)
        except KeyNotFound:
            if settings.app_key.startswith("pkcs11:"):
                raise
            key = session.generate_key(settings.app_key, key_type)
            created = True
        app_key = ApplicationKey(session, key)
        # A test signature proves the key signs before the server relies on it.
        app_key.sign(b"hsm-vault application key self-test")
        return app_key.info, created
