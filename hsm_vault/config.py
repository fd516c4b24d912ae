"""Where hsm-vault keeps its configuration and data, and the client configuration file.

`HSM_VAULT_HOME`, when set, puts both the config file and the data (keyring, ...) under one
folder: tests and the demo use it so they never touch the user's real files. Otherwise the
platform's folders are used (platformdirs: ~/.config/hsm-vault and ~/.local/share/hsm-vault).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from hsm_vault.errors import ConfigError

APP_NAME = "hsm-vault"
CONFIG_VERSION = 1


def config_dir() -> Path:
    home = os.environ.get("HSM_VAULT_HOME")
    return Path(home) / "config" if home else Path(platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    home = os.environ.get("HSM_VAULT_HOME")
    return Path(home) / "data" if home else Path(platformdirs.user_data_dir(APP_NAME))


ATTESTATION_ROOTS_ENV = "HSM_VAULT_ATTESTATION_ROOTS"


def attestation_roots() -> tuple[Any, ...]:
    """The key-attestation roots this process trusts (x509 certificates): Yubico's pinned PIV
    root, and the roots of the PEM file $HSM_VAULT_ATTESTATION_ROOTS names (a private
    attestation CA, or the virtual YubiKey's test root in tests). Client and server alike."""
    from hsm_vault.attestation import load_roots, yubico_roots
    from hsm_vault.errors import AttestationError

    roots = yubico_roots()
    path = os.environ.get(ATTESTATION_ROOTS_ENV)
    if path:
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise AttestationError(
                f"cannot read {ATTESTATION_ROOTS_ENV} file {path}: {exc.strerror}"
            ) from None
        roots += load_roots(pem)
    return roots


def config_path() -> Path:
    override = os.environ.get("HSM_VAULT_CONFIG")
    return Path(override) if override else config_dir() / "config.json"


def write_private_file(path: Path, content: bytes) -> None:
    """Write `content` atomically (temp file + rename) with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Config:
    """The client configuration file: defaults for the token layer and the server login.

    Unknown keys are kept, so an older hsm-vault does not drop what a newer one wrote.
    """

    module: str | None = None
    token: str | None = None
    server_url: str | None = None
    api_token: str | None = None
    app_fingerprint: str | None = None
    app_key_spki: str | None = None
    ca_bundle: str | None = None
    username: str | None = None
    allow_unreported_local: tuple[str, ...] = ()
    """Token models (as `token info` names them) whose keys count as made on the token
    although the token reports CKA_LOCAL false (NSS softokn does, even for its own keys)."""
    extra: dict[str, Any] = field(default_factory=dict)

    _FIELDS = (
        "module",
        "token",
        "server_url",
        "api_token",
        "app_fingerprint",
        "app_key_spki",
        "ca_bundle",
        "username",
        "allow_unreported_local",
    )

    def __repr__(self) -> str:
        # The API token is a bearer secret: never show it.
        shown = {k: getattr(self, k) for k in self._FIELDS if k != "api_token"}
        return f"Config({shown}, api_token={'<set>' if self.api_token else None})"

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or config_path()
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} is not a JSON object")
        known = {k: raw.pop(k) for k in cls._FIELDS if k in raw}
        raw.pop("version", None)
        allowed = known.pop("allow_unreported_local", [])
        if not isinstance(allowed, list) or not all(isinstance(m, str) for m in allowed):
            raise ConfigError(
                f"config file {path}: allow_unreported_local must be a list of models"
            )
        return cls(**known, allow_unreported_local=tuple(allowed), extra=raw)

    def save(self, path: Path | None = None) -> None:
        path = path or config_path()
        body = {"version": CONFIG_VERSION, **self.extra}
        body.update({k: getattr(self, k) for k in self._FIELDS if getattr(self, k) is not None})
        body["allow_unreported_local"] = list(self.allow_unreported_local)
        if not self.allow_unreported_local:
            del body["allow_unreported_local"]
        write_private_file(path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
