"""Find the PKCS#11 module: --module, HSM_VAULT_PKCS11_MODULE, the config file, p11-kit."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from hsm_vault.errors import ModuleNotFound

MODULE_ENV = "HSM_VAULT_PKCS11_MODULE"
P11KIT_MODULE_DIRS = ("/etc/pkcs11/modules", "/usr/share/p11-kit/modules")
P11KIT_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu/pkcs11",
    "/usr/lib/aarch64-linux-gnu/pkcs11",
    "/usr/lib/pkcs11",
    "/usr/lib64/pkcs11",
)
# Modules the p11-kit registry lists that are no use for keys (the CA trust store).
_SKIP = ("p11-kit-trust",)


@dataclass(frozen=True)
class ModuleChoice:
    path: str
    source: str  # where it came from, for `token list` and error messages


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


def resolve_module(explicit: str | None, configured: str | None) -> ModuleChoice:
    """The module to load, from the first place that names one; raise listing what was tried."""
    tried: list[str] = []
    for source, value in (
        ("--module", explicit),
        (MODULE_ENV, os.environ.get(MODULE_ENV)),
        ("config file", configured),
    ):
        if not value:
            tried.append(f"{source}: not set")
            continue
        if os.path.exists(value):
            return ModuleChoice(value, source)
        raise ModuleNotFound(f"PKCS#11 module {value} (from {source}) does not exist")
    registry = _p11kit_registry()
    for path in registry:
        if os.path.exists(path):
            return ModuleChoice(path, "p11-kit registry")
    tried.append(
        "p11-kit registry: "
        + (", ".join(registry) + " (missing)" if registry else "no modules registered")
    )
    raise ModuleNotFound("no PKCS#11 module found; tried " + "; ".join(tried))
