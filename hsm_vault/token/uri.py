"""RFC 7512 PKCS#11 URIs: parse and format. Pure code, no I/O.

    pkcs11:token=alice;object=alice-key;type=private?module-path=/usr/lib/x.so

Path attributes are separated by ';', query attributes by '&'. Values are percent-encoded;
`id` is raw bytes (written as %XX for every byte). Attributes hsm-vault does not know are kept
(the RFC asks consumers to ignore them, and to refuse an unknown one only in a query it must
act on), so a URI survives a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from hsm_vault.errors import UsageError

SCHEME = "pkcs11:"

PATH_ATTRIBUTES = (
    "library-manufacturer",
    "library-description",
    "library-version",
    "slot-manufacturer",
    "slot-description",
    "slot-id",
    "manufacturer",
    "model",
    "serial",
    "token",
    "type",
    "object",
    "id",
)
QUERY_ATTRIBUTES = ("pin-source", "pin-value", "module-name", "module-path")
OBJECT_TYPES = ("public", "private", "cert", "secret-key", "data")

# RFC 7512 section 2.3: characters allowed unencoded in a path or query attribute value.
_PCHAR_SAFE = "-._~:[]@!$'()*+,=&"  # pk11-pchar
_QCHAR_SAFE = "-._~:[]@!$'()*+,=/?|"  # pk11-qchar


class URIError(UsageError):
    hint = "Write the key as pkcs11:token=LABEL;object=KEY-LABEL (RFC 7512), or give a plain label."


def _decode(value: str, where: str) -> bytes:
    i = 0
    while (i := value.find("%", i)) != -1:
        chunk = value[i + 1 : i + 3]
        if len(chunk) != 2 or any(c not in "0123456789abcdefABCDEF" for c in chunk):
            raise URIError(f"bad percent-encoding in PKCS#11 URI {where}: {value!r}")
        i += 3
    return unquote_to_bytes(value)


def _text(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise URIError(f"PKCS#11 URI attribute {name} is not UTF-8") from None


@dataclass(frozen=True)
class PKCS11URI:
    """A parsed PKCS#11 URI. `id` is bytes; the other attributes are text.

    `pin_value` is redacted in `repr`: a URI may carry a PIN (RFC 7512 allows it), and hsm-vault
    refuses to use one from a URI given on the command line.
    """

    token: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    slot_id: int | None = None
    module_path: str | None = None
    module_name: str | None = None
    pin_source: str | None = None
    pin_value: str | None = field(default=None, repr=False)
    other_path: tuple[tuple[str, str], ...] = ()
    other_query: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in OBJECT_TYPES:
            raise URIError(f"unknown PKCS#11 URI object type {self.type!r}")

    def __str__(self) -> str:
        return format_uri(self)


def parse_uri(text: str) -> PKCS11URI:
    """Parse a PKCS#11 URI; raise `URIError` with the reason if it is not one."""
    if not text.lower().startswith(SCHEME):
        raise URIError(f"not a PKCS#11 URI (must start with 'pkcs11:'): {text!r}")
    rest = text[len(SCHEME) :]
    path, _, query = rest.partition("?")
    values: dict[str, object] = {}
    other: dict[str, list[tuple[str, str]]] = {"path": [], "query": []}
    for part, sep, where in ((path, ";", "path"), (query, "&", "query")):
        if not part:
            continue
        for item in part.split(sep):
            name, eq, value = item.partition("=")
            if not eq or not name:
                raise URIError(f"PKCS#11 URI {where} attribute without '=': {item!r}")
            name = name.lower()
            known = PATH_ATTRIBUTES if where == "path" else QUERY_ATTRIBUTES
            key = name.replace("-", "_")
            if key in values:
                raise URIError(f"PKCS#11 URI attribute {name} given twice")
            raw = _decode(value, name)
            if name not in known:
                other[where].append((name, value))
                continue
            if name == "id":
                values[key] = raw
            elif name == "slot-id":
                try:
                    values[key] = int(_text(raw, name))
                except ValueError:
                    raise URIError(f"PKCS#11 URI slot-id is not a number: {value!r}") from None
            elif key in PKCS11URI.__dataclass_fields__:
                values[key] = _text(raw, name)
            else:  # known to RFC 7512 but not used to select anything here: kept as written
                other[where].append((name, value))
    return PKCS11URI(
        **values,  # type: ignore[arg-type]
        other_path=tuple(other["path"]),
        other_query=tuple(other["query"]),
    )


def _quote(value: str | bytes, safe: str) -> str:
    return quote(value, safe=safe)


def format_uri(uri: PKCS11URI) -> str:
    """Format a URI in a canonical order; `id` is written fully percent-encoded."""
    path: list[str] = []
    for name in ("manufacturer", "model", "serial", "token", "slot-id", "object", "type", "id"):
        value = getattr(uri, name.replace("-", "_"))
        if value is None:
            continue
        if name == "id":
            path.append("id=" + "".join(f"%{b:02X}" for b in value))
        else:
            path.append(f"{name}={_quote(str(value), _PCHAR_SAFE)}")
    path.extend(f"{n}={v}" for n, v in uri.other_path)
    query = []
    for name in ("module-name", "module-path", "pin-source"):
        value = getattr(uri, name.replace("-", "_"))
        if value is not None:
            query.append(f"{name}={_quote(value, _QCHAR_SAFE)}")
    query.extend(f"{n}={v}" for n, v in uri.other_query)
    text = SCHEME + ";".join(path)
    return text + ("?" + "&".join(query) if query else "")
