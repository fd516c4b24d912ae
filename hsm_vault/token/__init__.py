"""The token layer: the only user of python-pkcs11.

Module discovery, RFC 7512 URIs, PIN sources, what each token can do (a probe, a cache and a
profile per implementation), and sessions that generate, find and use non-exportable keys.
Import the names below; nothing returned is a pkcs11 object.

The session names are loaded on first use, so code that needs only URIs or PIN sources (and
every command that encrypts) does not pay for importing python-pkcs11.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsm_vault.algorithms import KeyType
from hsm_vault.token.capabilities import Capabilities
from hsm_vault.token.module import ModuleChoice, ModuleSearch, find_modules, resolve_module
from hsm_vault.token.pin import Pin, PinSource
from hsm_vault.token.uri import PKCS11URI, format_uri, parse_uri

if TYPE_CHECKING:
    from hsm_vault.token.library import TokenInfo, list_tokens
    from hsm_vault.token.session import KeyInfo, TokenSession, open_session

_LAZY = {
    "KeyInfo": "session",
    "TokenSession": "session",
    "open_session": "session",
    "TokenInfo": "library",
    "list_tokens": "library",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"hsm_vault.token.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PKCS11URI",
    "Capabilities",
    "KeyInfo",
    "KeyType",
    "ModuleChoice",
    "ModuleSearch",
    "Pin",
    "PinSource",
    "TokenInfo",
    "TokenSession",
    "find_modules",
    "format_uri",
    "list_tokens",
    "open_session",
    "parse_uri",
    "resolve_module",
]
