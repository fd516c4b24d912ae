"""Canonical JSON and strict base64url, the two encodings cards are made of.

Pure code: no I/O. The canonical form is `json.dumps(value, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)` encoded as UTF-8, restricted to objects with ASCII
keys, arrays, strings, integers, booleans and null (no floats). A decoder accepts bytes only if
encoding what it parsed gives the very same bytes, so every value has exactly one encoding.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from hsm_vault.errors import CardFormatError

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of a JSON value (see the module docstring)."""
    _check_types(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def _check_types(value: Any) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, list):
        for item in value:
            _check_types(item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise CardFormatError("object keys must be ASCII strings")
            _check_types(item)
        return
    raise CardFormatError(f"type {type(value).__name__} has no canonical encoding")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CardFormatError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_float(text: str) -> Any:
    raise CardFormatError("numbers must be integers")


def _no_constant(text: str) -> Any:
    raise CardFormatError(f"{text} is not allowed")


def parse_canonical_json(raw: bytes, what: str) -> Any:
    """Parse `raw` and require it to be in canonical form; raise `CardFormatError` otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CardFormatError(f"the {what} is not valid UTF-8") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
        )
    except CardFormatError as exc:
        raise CardFormatError(f"the {what} is malformed: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise CardFormatError(f"the {what} is not valid JSON ({exc})") from None
    try:
        again = canonical_json(value)
    except (CardFormatError, UnicodeEncodeError) as exc:
        raise CardFormatError(f"the {what} is malformed: {exc}") from None
    if again != raw:
        raise CardFormatError(f"the {what} is not in canonical form")
    return value


def b64url_encode(raw: bytes) -> str:
    """base64url without padding (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, what: str) -> bytes:
    """Strict inverse of `b64url_encode`: no padding, no other characters, no stray bits."""
    if not isinstance(text, str) or _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise CardFormatError(f"the {what} is not valid base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CardFormatError(f"the {what} is not valid base64url") from None
    if b64url_encode(raw) != text:
        # Non-zero padding bits: a second spelling of the same bytes.
        raise CardFormatError(f"the {what} is not canonical base64url")
    return raw


def hex_digest_field(value: Any, what: str) -> str:
    """Check `value` is 64 lower-case hex digits (a SHA-256) and return it."""
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise CardFormatError(f"the {what} must be 64 lower-case hex digits")
    return value
