"""One translator from PKCS#11 errors to hsm-vault errors, for every token operation.

A token that lacks a mechanism or function says so in several ways (CKR_MECHANISM_INVALID,
CKR_FUNCTION_NOT_SUPPORTED, CKR_MECHANISM_PARAM_INVALID, ...): all of them become
`TokenCannot`, which names the token and never reads as a damaged file. Every other failure
of an operation becomes `TokenOperationFailed`, which callers may treat as "this key does not
open this entry".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pkcs11 import exceptions as p11e

from hsm_vault.errors import TokenCannot, TokenNotFound, TokenOperationFailed

if TYPE_CHECKING:
    from hsm_vault.token.library import TokenInfo

UNSUPPORTED = (
    p11e.MechanismInvalid,
    p11e.FunctionNotSupported,
    p11e.MechanismParamInvalid,
    p11e.KeySizeRange,
    p11e.KeyTypeInconsistent,
    p11e.TemplateInconsistent,
)
GONE = (p11e.DeviceRemoved, p11e.TokenNotPresent, p11e.SessionClosed)


def cannot(info: TokenInfo, what: str, reason: str, hint: str | None = None) -> TokenCannot:
    """The error for an operation this token cannot do: it names the token and its model."""
    return TokenCannot(
        f"token {info.label!r} ({info.model_name}) cannot {what}: {reason}", hint=hint
    )


@contextmanager
def translated(info: TokenInfo, what: str, hint: str | None = None) -> Iterator[None]:
    """Run a token operation; PKCS#11 errors leave as hsm-vault errors naming `what`."""
    try:
        yield
    except UNSUPPORTED as exc:
        raise cannot(info, what, f"the token answers {type(exc).__name__}", hint) from exc
    except GONE as exc:
        raise TokenNotFound(
            f"token {info.label!r} went away during {what} ({type(exc).__name__})",
            hint="Insert the token again and rerun the command.",
        ) from exc
    except p11e.PKCS11Error as exc:
        raise TokenOperationFailed(
            f"{what} failed on token {info.label!r}: {type(exc).__name__}"
        ) from exc
