"""Loading PKCS#11 modules and choosing a token: what changes with the module, not the key.

Nothing returned here is a pkcs11 object except through `SelectedToken.token`, which only the
token layer uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pkcs11
from pkcs11 import Mechanism, TokenFlag
from pkcs11 import exceptions as p11e

from hsm_vault.errors import AmbiguousToken, ModuleLoadError, TokenLayerError, TokenNotFound
from hsm_vault.token.module import ModuleChoice, ModuleSearch, find_modules
from hsm_vault.token.profiles import Profile, profile_for
from hsm_vault.token.uri import PKCS11URI, format_uri, parse_uri

# Mechanisms hsm-vault uses, for `token info`: what the slot lists, which is not always what
# works (the capability probe says that).
RELEVANT_MECHANISMS = {
    Mechanism.EC_KEY_PAIR_GEN: "generate EC keys",
    Mechanism.RSA_PKCS_KEY_PAIR_GEN: "generate RSA keys",
    Mechanism.ECDSA: "ECDSA sign (EC cards, file signatures)",
    Mechanism.ECDH1_DERIVE: "ECDH unwrap (EC recipients)",
    Mechanism.RSA_PKCS_OAEP: "RSA-OAEP unwrap (RSA recipients)",
    Mechanism.SHA256_RSA_PKCS_PSS: "RSA-PSS-SHA256 sign (RSA cards, file signatures)",
    Mechanism.RSA_PKCS_PSS: "RSA-PSS over a hash made here (RSA cards)",
}

# python-pkcs11 loads a module once per path and process; after fork() the child must
# re-initialise it before use (PKCS#11 forbids sharing a library instance across a fork).
_loaded_in_pid: dict[str, int] = {}


def load_library(choice: ModuleChoice) -> Any:
    """Load (or re-initialise after a fork) the PKCS#11 module."""
    try:
        lib = pkcs11.lib(choice.path)
    except (RuntimeError, OSError, p11e.PKCS11Error) as exc:
        raise ModuleLoadError(
            f"cannot load PKCS#11 module {choice.path} (from {choice.source}): "
            f"{type(exc).__name__} {exc}".strip()
        ) from None
    pid = os.getpid()
    if _loaded_in_pid.setdefault(choice.path, pid) != pid:
        lib.reinitialize()
        _loaded_in_pid[choice.path] = pid
    return lib


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()


def _version(value: Any) -> str:
    return ".".join(str(v) for v in value) if isinstance(value, tuple) else _text(value)


@dataclass(frozen=True)
class TokenInfo:
    """What a token and its module say about themselves."""

    label: str
    manufacturer: str
    model: str
    serial: str
    flags: tuple[str, ...]
    slot_id: int
    module: str
    library: str = ""
    library_version: str = ""
    firmware: str = ""
    hardware: str = ""
    profile: str = "PKCS#11 token"

    @property
    def uri(self) -> str:
        return format_uri(
            PKCS11URI(
                manufacturer=self.manufacturer or None,
                model=self.model or None,
                serial=self.serial or None,
                token=self.label,
            )
        )

    @property
    def model_name(self) -> str:
        """'tpm2-pkcs11 1.9.0', 'SoftHSM 2.6': the implementation and its version."""
        return f"{self.profile} {self.library_version}".strip()

    @property
    def model_key(self) -> str:
        """What capabilities are cached by: the model and firmware, not the one token."""
        return "|".join(
            (
                os.path.basename(self.module),
                self.library,
                self.library_version,
                self.manufacturer,
                self.model,
                self.firmware,
                self.hardware,
            )
        )

    @property
    def pin_state(self) -> str:
        """A phrase for the user PIN's try counter, from the token's flags."""
        if "USER_PIN_LOCKED" in self.flags:
            return "the token reports the user PIN locked"
        if "USER_PIN_FINAL_TRY" in self.flags:
            return "the token reports one try left before it locks"
        if "USER_PIN_COUNT_LOW" in self.flags:
            return "the token reports few tries left"
        return "the token does not report a low try count"


def token_info(token: Any, lib: Any, module: str) -> TokenInfo:
    """A `TokenInfo` of a python-pkcs11 token, with its module's description and profile."""
    library = f"{_text(lib.library_description)} {_text(lib.manufacturer_id)}".strip()
    profile = profile_for(library, _text(token.manufacturer_id), _text(token.model))
    return TokenInfo(
        label=_text(token.label),
        manufacturer=_text(token.manufacturer_id),
        model=_text(token.model),
        serial=_text(token.serial),
        flags=tuple(f.name for f in TokenFlag if f.name and f in token.flags),
        slot_id=token.slot.slot_id,
        module=module,
        library=library,
        library_version=_version(lib.library_version),
        firmware=_version(token.firmware_version),
        hardware=_version(token.hardware_version),
        profile=profile.name,
    )


@dataclass(frozen=True)
class SelectedToken:
    """One token, its module and its profile."""

    token: Any
    lib: Any
    choice: ModuleChoice
    info: TokenInfo
    profile: Profile


def _selector(token: str | None) -> PKCS11URI:
    if token and token.lower().startswith("pkcs11:"):
        return parse_uri(token)
    return PKCS11URI(token=token) if token else PKCS11URI()


def _matches(info: TokenInfo, want: PKCS11URI) -> bool:
    return all(
        expected is None or expected == actual
        for expected, actual in (
            (want.token, info.label),
            (want.serial, info.serial),
            (want.manufacturer, info.manufacturer),
            (want.model, info.model),
            (want.slot_id, info.slot_id),
        )
    )


def _tokens_of(choice: ModuleChoice, lib: Any) -> list[tuple[Any, TokenInfo]]:
    found = []
    try:
        for slot in lib.get_slots(token_present=True):
            try:
                tok = slot.get_token()
            except (p11e.TokenNotPresent, p11e.TokenNotRecognised):
                continue
            found.append((tok, token_info(tok, lib, choice.path)))
    except p11e.PKCS11Error as exc:
        raise TokenLayerError(f"cannot list tokens of {choice.path}: {type(exc).__name__}") from exc
    return found


def _load_all(search: ModuleSearch) -> list[tuple[ModuleChoice, Any]]:
    """The libraries of a search; a registered module that fails to load is passed over."""
    loaded = []
    for choice in search.choices:
        try:
            loaded.append((choice, load_library(choice)))
        except ModuleLoadError:
            if search.explicit:
                raise
    return loaded


def select_token(
    token: str | None, module: str | None = None, configured_module: str | None = None
) -> SelectedToken:
    """The one initialised token that `token` (a label or a pkcs11: URI) names.

    Without `token`, the single initialised token. Without a module named, the first module of
    p11-kit's registry that holds a matching token.
    """
    search = find_modules(module, configured_module)
    want = _selector(token)
    if want.module_path:
        search = find_modules(want.module_path, None)
    matches: list[SelectedToken] = []
    for choice, lib in _load_all(search):
        for tok, info in _tokens_of(choice, lib):
            if "TOKEN_INITIALIZED" in info.flags and _matches(info, want):
                matches.append(SelectedToken(tok, lib, choice, info, profile_for_info(info)))
        if matches:
            break  # the first module holding a match wins, as p11-kit's order says
    if not matches:
        what = f"token {token!r}" if token else "an initialised token"
        raise TokenNotFound(
            f"no {what} in {search.describe()}",
            hint="Run 'hsm-vault token list' to see the tokens; choose a module with --module "
            "or 'hsm-vault config set module PATH'.",
        )
    if len(matches) > 1:
        labels = ", ".join(sorted(f"{m.info.label} (serial {m.info.serial})" for m in matches))
        raise AmbiguousToken(
            f"several tokens match ({labels}); choose one with --token",
            hint="Name the token by label, or by a URI from 'hsm-vault token list', e.g. "
            "pkcs11:token=LABEL;serial=SERIAL.",
        )
    return matches[0]


def profile_for_info(info: TokenInfo) -> Profile:
    return profile_for(info.library, info.manufacturer, info.model)


def list_tokens(
    module: str | None = None, configured: str | None = None
) -> tuple[list[TokenInfo], ModuleSearch]:
    """Every token in the slots of the module(s) (initialised or not), and where we looked."""
    search = find_modules(module, configured)
    tokens = [info for choice, lib in _load_all(search) for _, info in _tokens_of(choice, lib)]
    return tokens, search


def refresh(selected: SelectedToken) -> TokenInfo:
    """The token's info read again through its own slot (serials need not be unique)."""
    tok = selected.token.slot.get_token()
    return token_info(tok, selected.lib, selected.choice.path)


def listed_mechanisms(selected: SelectedToken) -> dict[str, bool]:
    """Which of the mechanisms hsm-vault uses the token's slot lists (C_GetMechanismList)."""
    try:
        offered = selected.token.slot.get_mechanisms()
    except p11e.PKCS11Error:
        offered = set()
    return {f"{m.name}: {use}": m in offered for m, use in RELEVANT_MECHANISMS.items()}
