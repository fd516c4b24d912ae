"""Find the PKCS#11 module: --module, HSM_VAULT_PKCS11_MODULE, the config file, p11-kit.

A module named by the user is used alone. Without one, every module in p11-kit's registry is
a candidate (in the registry's order), and the token layer uses the one that holds the token
asked for; `token list` shows the tokens of all of them.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from hsm_vault.errors import ModuleNotFound
from hsm_vault.token.profiles import profile_for_module_file

MODULE_ENV = "HSM_VAULT_PKCS11_MODULE"
P11KIT_MODULE_DIRS = ("/etc/pkcs11/modules", "/usr/share/p11-kit/modules")
P11KIT_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu/pkcs11",
    "/usr/lib/aarch64-linux-gnu/pkcs11",
    "/usr/lib/pkcs11",
    "/usr/lib64/pkcs11",
)
# Modules the p11-kit registry lists that hold no keys (the CA trust store).
_SKIP = ("p11-kit-trust",)
REGISTRY = "p11-kit registry"


@dataclass(frozen=True)
class ModuleChoice:
    path: str
    source: str  # where it came from, for `token list` and error messages


@dataclass(frozen=True)
class ModuleSearch:
    """The modules to look in for a token, and what was passed over and why."""

    choices: tuple[ModuleChoice, ...]
    skipped: tuple[str, ...] = ()

    @property
    def explicit(self) -> bool:
        return len(self.choices) == 1 and self.choices[0].source != REGISTRY

    def describe(self) -> str:
        """'module M (from --module)' or 'modules A, B (from the p11-kit registry)'."""
        if self.explicit:
            choice = self.choices[0]
            return f"module {choice.path} (from {choice.source})"
        paths = ", ".join(c.path for c in self.choices) or "none"
        text = f"modules {paths} (from the {REGISTRY})"
        if self.skipped:
            text += "; not loaded: " + "; ".join(self.skipped)
        return text


def _p11kit_registry() -> list[str]:
    """Module paths named by p11-kit's registry files, in file-name order."""
    found: list[str] = []
    for folder in P11KIT_MODULE_DIRS:
        for entry in sorted(glob.glob(os.path.join(folder, "*.module"))):
            if any(skip in entry for skip in _SKIP):
                continue
            try:
                lines = Path(entry).read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                name, _, value = line.partition(":")
                if name.strip() == "module" and value.strip():
                    path = value.strip()
                    if not os.path.isabs(path):
                        path = next(
                            (
                                os.path.join(d, path)
                                for d in P11KIT_LIB_DIRS
                                if os.path.exists(os.path.join(d, path))
                            ),
                            path,
                        )
                    found.append(path)
    return found


def _named_module(explicit: str | None, configured: str | None) -> ModuleChoice | None:
    for source, value in (
        ("--module", explicit),
        (MODULE_ENV, os.environ.get(MODULE_ENV)),
        ("config file", configured),
    ):
        if not value:
            continue
        if os.path.exists(value):
            return ModuleChoice(value, source)
        raise ModuleNotFound(f"PKCS#11 module {value} (from {source}) does not exist")
    return None


def find_modules(explicit: str | None, configured: str | None) -> ModuleSearch:
    """The module the user named, else every usable module of p11-kit's registry."""
    named = _named_module(explicit, configured)
    if named is not None:
        return ModuleSearch((named,))
    choices: list[ModuleChoice] = []
    skipped: list[str] = []
    registry = _p11kit_registry()
    for path in registry:
        profile = profile_for_module_file(path)
        if not os.path.exists(path):
            skipped.append(f"{path} (missing)")
        elif not profile.discoverable():
            needs = " or ".join(profile.discover_when)
            skipped.append(f"{path} (needs {needs})")
        else:
            choices.append(ModuleChoice(path, REGISTRY))
    if not choices:
        tried = "; ".join(skipped) if skipped else "no modules registered"
        raise ModuleNotFound(
            "no PKCS#11 module found: --module, HSM_VAULT_PKCS11_MODULE and the config file "
            f"name none, and the {REGISTRY} has none usable ({tried})"
        )
    return ModuleSearch(tuple(choices), tuple(skipped))


def resolve_module(explicit: str | None, configured: str | None) -> ModuleChoice:
    """The first module to use: the one named, else the first usable registered module."""
    return find_modules(explicit, configured).choices[0]
