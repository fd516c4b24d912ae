"""The token layer: the only user of python-pkcs11.

Module discovery, RFC 7512 URIs, PIN sources, and sessions that generate, find and use
non-exportable keys. Import the names below; nothing returned is a pkcs11 object.
"""

from hsm_vault.algorithms import KeyType
from hsm_vault.token.module import ModuleChoice, resolve_module
from hsm_vault.token.pin import Pin, PinSource
from hsm_vault.token.session import (
    KeyInfo,
    TokenInfo,
    TokenSession,
    list_tokens,
    open_session,
    token_mechanisms,
)
from hsm_vault.token.uri import PKCS11URI, format_uri, parse_uri

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
