"""The server's settings: one explicit object, saved as `server.json` in the data folder.

`hsm-vault server init` writes the file; `hsm-vault server run` reads it (options on the command
line override single fields). The file holds no secret: the token PIN comes from a PIN file or
the environment when the server starts; a database password from libpq's own files
(PGPASSFILE, a service file), HSM_VAULT_DATABASE_PASSWORD or a password file (mode 0600); S3
credentials from the AWS chain (environment, profile, instance role).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm_vault.errors import ConfigError, PinUnavailable
from hsm_vault.token.pin import PIN_ENV, Pin, PinSource

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

SETTINGS_FILE = "server.json"
SETTINGS_VERSION = 1
#: The environment variable read for the server token's PIN before HSM_VAULT_PIN.
SERVER_PIN_ENV = "HSM_VAULT_SERVER_PIN"
#: The environment variable read for the database password (when no password file is set).
DATABASE_PASSWORD_ENV = "HSM_VAULT_DATABASE_PASSWORD"
_DATABASE_PASSWORD_HINT = (
    "Keep the password out of the URL: use libpq's ~/.pgpass (or PGPASSFILE) or a service "
    f"file (PGSERVICEFILE, ?service=NAME), set {DATABASE_PASSWORD_ENV}, or pass "
    "--database-password-file FILE (mode 0600)."
)


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server process needs to know; routes read it from `request.app.state`.

    `data_dir` holds `server.json`, the SQLite database (unless `database_url` names another)
    and whatever the blob store keeps locally.
    """

    data_dir: Path
    database_url: str | None = None
    #: PKCS#11 module path (None: HSM_VAULT_PKCS11_MODULE or p11-kit).
    module: str | None = None
    #: The server's token: a label or a pkcs11: URI.
    token: str = "server"
    #: The application key on that token: a label or a pkcs11: URI.
    app_key: str = "hsm-vault-app"
    #: A file whose first line is the token's user PIN (else HSM_VAULT_SERVER_PIN / _PIN).
    pin_file: Path | None = None
    #: A file (mode 0600) whose first line is the database password; never the password.
    database_password_file: Path | None = None
    #: Approve every published card at once (off by default: an officer approves).
    auto_approve: bool = False
    api_token_ttl_seconds: int = 30 * 24 * 3600
    enrolment_ttl_seconds: int = 7 * 24 * 3600
    #: Failed enrolments allowed per (client address, user name) before backoff starts.
    auth_failures_allowed: int = 10
    #: Failed enrolments allowed per user name from all addresses together.
    auth_account_failures_allowed: int = 50
    #: Unknown, expired or revoked API tokens allowed per client address.
    auth_address_failures_allowed: int = 100
    #: A counter starts again after this long without a failure.
    auth_failure_window_seconds: int = 15 * 60
    #: Past a limit, each failure doubles the wait (1 s, 2 s, 4 s, ...) up to this.
    auth_backoff_max_seconds: int = 15 * 60
    #: Threads per worker process for blocking work (database, token, blob store); the
    #: database pool holds as many connections, so a thread never waits for a connection
    #: that a request waiting for a thread holds.
    worker_threads: int = 16
    #: How long a request may wait for a database connection before it is answered 503.
    db_pool_timeout_seconds: float = 5.0
    #: Upper bound for JSON request bodies (blob uploads set their own limit).
    max_json_bytes: int = 64 * 1024
    #: The oldest signed tree head clients accept by default (announced in GET /v1/log/head;
    #: a policy's max_head_age, if shorter, wins); the server signs a fresh head every 1/24
    #: of it, so a running server's head is never older than that.
    log_max_age_seconds: int = 24 * 3600
    #: Settings of other server parts (e.g. the blob store), kept as given.
    extra: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.api_token_ttl_seconds <= 0 or self.enrolment_ttl_seconds <= 0:
            raise ConfigError("token and enrolment lifetimes must be positive")
        if self.log_max_age_seconds < 3600:
            raise ConfigError("log_max_age_seconds must be at least 3600")
        if self.max_json_bytes < 1024:
            raise ConfigError("max_json_bytes must be at least 1024")
        limits = (
            self.auth_failures_allowed,
            self.auth_account_failures_allowed,
            self.auth_address_failures_allowed,
            self.auth_failure_window_seconds,
            self.auth_backoff_max_seconds,
        )
        if min(limits) < 1:
            raise ConfigError("failed-authentication limits and times must be at least 1")
        if self.worker_threads < 1 or self.db_pool_timeout_seconds <= 0:
            raise ConfigError("worker_threads and db_pool_timeout_seconds must be positive")
        if self.database_url and _url_password(self.database_url):
            raise ConfigError(
                "the database URL holds a password, which would be kept in server.json",
                hint=_DATABASE_PASSWORD_HINT,
            )

    def engine_url(self) -> URL:
        """The database URL to connect with: the password added from the file or the
        environment, if one is given (libpq's own PGPASSFILE and service files need nothing)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.effective_database_url)
        password = self._database_password()
        return url.set(password=password) if password else url

    def _database_password(self) -> str | None:
        path = self.database_password_file
        if path is None:
            return os.environ.get(DATABASE_PASSWORD_ENV) or None
        try:
            mode = path.stat().st_mode
            if mode & 0o077:
                raise ConfigError(
                    f"{path} can be read by others (mode {mode & 0o777:o})",
                    hint=f"Run: chmod 600 {path}",
                )
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the database password file {path}: {exc.strerror}"
            ) from None
        password = text.splitlines()[0] if text.strip() else ""
        if not password:
            raise ConfigError(f"the database password file {path} is empty")
        return password

    @property
    def effective_database_url(self) -> str:
        """The database URL, SQLite in the data folder by default."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hsm-vault.db').resolve()}"

    @property
    def settings_path(self) -> Path:
        return self.data_dir / SETTINGS_FILE

    def pin_source(self) -> PinSource:
        """Where the token PIN comes from: the PIN file, then the environment; never a prompt."""
        if self.pin_file is not None:
            return PinSource(pin_file=self.pin_file, interactive=False)
        env = SERVER_PIN_ENV if os.environ.get(SERVER_PIN_ENV) else PIN_ENV
        return PinSource(env_var=env, interactive=False)

    def read_pin(self) -> Pin:
        """The server token's PIN, or PinUnavailable with a hint for an unattended server."""
        try:
            return self.pin_source().get(self.token)
        except PinUnavailable as exc:
            raise PinUnavailable(
                exc.message,
                hint=f"Give the server a PIN file (--pin-file) or set {SERVER_PIN_ENV}.",
            ) from None

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"version": SETTINGS_VERSION}
        for key, value in asdict(self).items():
            if key == "data_dir":
                continue
            body[key] = str(value) if isinstance(value, Path) else value
        return body

    def save(self) -> None:
        """Write `server.json` into the data folder (mode 0600: it names the PIN file)."""
        from hsm_vault.config import write_private_file

        write_private_file(
            self.settings_path,
            (json.dumps(self._body(), indent=2, sort_keys=True) + "\n").encode(),
        )

    def to_json(self) -> str:
        """These settings, overrides included, as one JSON text (handed to worker processes)."""
        return json.dumps({**self._body(), "data_dir": str(self.data_dir)})

    @classmethod
    def from_json(cls, text: str) -> ServerSettings:
        raw = json.loads(text)
        return cls._from_raw(Path(raw.pop("data_dir")), raw, "the settings given")

    @classmethod
    def load(cls, data_dir: Path) -> ServerSettings:
        """Read `server.json` from `data_dir`; ConfigError if it is missing or malformed."""
        path = data_dir / SETTINGS_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"no server settings in {data_dir}",
                hint="Run 'hsm-vault server init --data DIR' first.",
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        return cls._from_raw(data_dir, raw, str(path))

    @classmethod
    def _from_raw(cls, data_dir: Path, raw: Any, path: str) -> ServerSettings:
        if not isinstance(raw, dict) or raw.pop("version", None) != SETTINGS_VERSION:
            raise ConfigError(f"{path} is not a version {SETTINGS_VERSION} server settings file")
        known = {f.name for f in fields(cls)} - {"data_dir"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"{path} has unknown settings: {', '.join(sorted(unknown))}")
        for name in ("pin_file", "database_password_file"):
            if raw.get(name):
                raw[name] = Path(raw[name])
        try:
            return cls(data_dir=data_dir, **raw)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def with_overrides(self, **changes: Any) -> ServerSettings:
        """A copy with the given fields replaced; None values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _url_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL: {exc}") from None
