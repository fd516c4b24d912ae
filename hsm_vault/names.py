"""Names that the client and the server must agree on, checked the same way on both sides.

A pattern here is anchored for JSON Schema (docs/openapi.json), and Python checks it with
`fullmatch`: `re.match` with `$` would accept a name ending in a newline, which then breaks
the `Location` header and can look identical to another name.
"""

from __future__ import annotations

import re

#: A blob name: 1-200 letters, digits and . _ + = @ -, starting with a letter or digit.
BLOB_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}$"
BLOB_NAME_RULE = "1-200 letters, digits and . _ + = @ -, starting with a letter or digit"
_BLOB_NAME = re.compile(BLOB_NAME_PATTERN)


def is_blob_name(name: str) -> bool:
    """True if `name` is a valid blob name in full (no trailing newline, nothing else)."""
    return _BLOB_NAME.fullmatch(name) is not None
