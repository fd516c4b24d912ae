"""The token layer: the only user of python-pkcs11.

Module discovery, RFC 7512 URIs, PIN sources, and sessions that generate, find and use
non-exportable keys. Import the names below; nothing returned is a pkcs11 object.

The session names are loaded on first use, so code that needs only URIs or PIN sources (and
every command that encrypts) does not pay for importing python-pkcs11.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsm_vault.algorithms import KeyType
from hsm_vault.token.module import ModuleChoice, resolve_module
from hsm_vault.token.pin import Pin, PinSource
from hsm_vault.token.uri import PKCS11URI, format_uri, parse_uri

if TYPE_CHECKING:
    from hsm_vault.token.session import (
        KeyInfo,
        TokenInfo,
        TokenSession,
        list_tokens,
        open_session,
        token_mechanisms,
    )

_SESSION_NAMES = {
    "KeyInfo",
    "TokenInfo",
    "TokenSession",
    "list_tokens",
    "open_session",
    "token_mechanisms",
}


def __getattr__(name: str) -> Any:
    if name in _SESSION_NAMES:
        from hsm_vault.token import session

        return getattr(session, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PKCS11URI",
    "KeyInfo",
    "KeyType",
    "ModuleChoice",
    "Pin",
    "PinSource",
    "TokenInfo",
    "TokenSession",
    "format_uri",
    "list_tokens",
    "open_session",
    "parse_uri",
    "resolve_module",
    "token_mechanisms",
]
