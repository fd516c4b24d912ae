"""A real hsm-vault server for tests: `hsm-vault server init` + `server run` in a subprocess.

Loaded as a pytest plugin (conftest.py: `pytest_plugins = ["tests.server_fixture"]`, or
`from server_fixture import *` when tests/ is on sys.path). It gives:

- `vault_server` (session scope): one server for the whole run, on 127.0.0.1 and a free port,
  with its own data folder and its application key on the "server" SoftHSM token (a unique
  label per server, so several servers share the token without clashing).
- `server_factory` (function scope): start more servers with other settings (auto-approve,
  a low failed-login limit, ...); each is stopped at the end of the test.

A `RunningServer` creates accounts straight in its database (as `server add-user` does on the
server host) and enrols them over HTTP: `server.enrol("alice-1234", role="user")` returns a
logged-in `Account` with its API token, a `VaultClient`, and a config file for CLI runs.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HSM_VAULT = str(Path(sys.executable).with_name("hsm-vault"))
TAMPER_PROXY = Path(__file__).with_name("tamper_proxy.py")
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, process: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    """Poll `url` until it answers; fail with the process log if the process dies first."""
    import requests

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            text = log.read_text() if log and log.exists() else ""
            raise RuntimeError(f"server exited with {process.returncode}:\n{text}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {START_TIMEOUT} s")


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {START_TIMEOUT} s")


def unique(name: str) -> str:
    """`name` with a short random suffix: accounts and identities on a shared server."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


@dataclass
class Account:
    """An enrolled account: its name, role, API token, and its own HSM_VAULT_HOME (config file
    and keyring), so several people can act in one test."""

    name: str
    role: str
    token: str
    home: Path
    server: RunningServer

    @property
    def config_path(self) -> Path:
        return self.home / "config" / "config.json"

    def keyring(self) -> Any:
        from hsm_vault.cards import Keyring

        return Keyring(self.home / "data" / "cards")

    def client(self) -> Any:
        from hsm_vault.client import VaultClient

        return VaultClient(self.server.url, api_token=self.token)

    def env(self) -> dict[str, str]:
        """Environment for CLI runs as this account (its own config file and keyring)."""
        return {"HSM_VAULT_HOME": str(self.home)}

    def cli(self, *args: str) -> tuple[int, str]:
        """`hsm-vault ARGS` as this account, in this process: (exit code, output)."""
        from typer.testing import CliRunner

        from hsm_vault.cli.main import app

        result = CliRunner().invoke(app, list(args), env=self.env())
        return result.exit_code, result.output

    def publish_new_card(self, token: str) -> tuple[str, str]:
        """A new P-256 key on `token`, `card create` in this account's keyring, then
        `card publish`: (card id, key label)."""
        import json

        from hsm_vault.algorithms import KeyType
        from hsm_vault.token import open_session

        label = f"k-{uuid.uuid4().hex[:8]}"
        with open_session(token) as ts:
            ts.generate_key(label, KeyType.EC_P256)
        status, out = self.cli(
            "card", "create", self.name, "--key", label, "--token", token, "--json"
        )
        assert status == 0, out
        card_id = str(json.loads(out)["id"])
        status, out = self.cli("card", "publish", card_id)
        assert status == 0, out
        return card_id, label


@dataclass
class RunningServer:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path
    app_fingerprint: str
    app_spki: bytes
    accounts: list[Account] = field(default_factory=list)

    @property
    def card_trust(self) -> Any:
        """The trust policy for this server's cards under an `--approvals 0` policy (the
        default of these test servers): self and app signatures."""
        from hsm_vault.trust import TrustPolicy

        return TrustPolicy.with_app_key(self.app_spki)

    def settings(self) -> Any:
        from hsm_vault.server.settings import ServerSettings

        return ServerSettings.load(self.data_dir)

    def add_user(self, name: str, role: str = "user", identity: str | None = None) -> str:
        """Create an account in the server's database; returns its enrolment code."""
        from hsm_vault.server.accounts import create_user
        from hsm_vault.server.db import Role, make_engine, make_sessionmaker

        settings = self.settings()
        engine = make_engine(settings.effective_database_url)
        try:
            with make_sessionmaker(engine)() as db:
                _user, code = create_user(db, settings, name, Role(role), identity)
        finally:
            engine.dispose()
        return code

    def enrol(self, name: str, role: str = "user", identity: str | None = None) -> Account:
        """Create the account and exchange its code for an API token over HTTP."""
        from hsm_vault.client import VaultClient
        from hsm_vault.config import Config

        code = self.add_user(name, role, identity)
        with VaultClient(self.url) as client:
            enrolment = client.enrol(name, code)
        home = self.data_dir.parent / "clients" / name
        Config(
            server_url=self.url,
            api_token=enrolment.token,
            username=name,
            app_fingerprint=self.app_fingerprint,
            app_key_spki=base64.b64encode(self.app_spki).decode(),
        ).save(home / "config" / "config.json")
        account = Account(name, role, enrolment.token, home, self)
        self.accounts.append(account)
        return account

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    folder: Path,
    env: dict[str, str],
    *,
    init_args: tuple[str, ...] = (),
    app_key: str | None = None,
) -> RunningServer:
    """`server init` a fresh data folder in `folder`, then `server run` it on a free port."""

    data = folder / "server-data"
    label = app_key or unique("app")
    if "--approvals" not in init_args:
        # Officer approvals on tokens are tested in test_officers.py; elsewhere the server
        # alone vouches for cards, as before the signed policy.
        init_args = (*init_args, "--approvals", "0")
    init = subprocess.run(
        [
            HSM_VAULT,
            "server",
            "init",
            "--data",
            str(data),
            "--token",
            "server",
            "--app-key",
            label,
            "--json",
            *init_args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if init.returncode != 0:
        raise RuntimeError(f"server init failed: {init.stdout}{init.stderr}")
    return run_server(data, env, folder / "server.log")


def run_server(
    data: Path, env: dict[str, str], log: Path, port: int | None = None
) -> RunningServer:
    """`server run` an initialised data folder (one worker) on a free port; wait until ready.

    Several may run on one data folder: replicas sharing its database and blob store.
    """
    import requests

    port = port or free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                HSM_VAULT,
                "server",
                "run",
                "--data",
                str(data),
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--workers",
                "1",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/v1/app", process, log)
        body = requests.get(url + "/v1/app", timeout=5).json()
    except BaseException:
        process.kill()
        process.wait()
        raise
    spki = base64.b64decode(body["app_key"]["spki"])
    return RunningServer(url, data, process, env, log, body["app_key"]["fingerprint"], spki)


def _server_env(softhsm: Any) -> dict[str, str]:
    env = dict(softhsm.env())
    env.pop("HSM_VAULT_CONFIG", None)
    return env


@pytest.fixture(scope="session")
def vault_server(softhsm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server for the session (officer approval, failed-login limits out of reach)."""
    folder = tmp_path_factory.mktemp("vault-server")
    limits = ("--auth-failures", "1000", "--auth-address-failures", "100000")
    server = start_server(folder, _server_env(softhsm), init_args=limits)
    yield server
    server.stop()


@pytest.fixture
def server_factory(softhsm: Any, tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start extra servers for one test: `server_factory("--auto-approve")`."""
    started: list[RunningServer] = []

    def start(*init_args: str) -> RunningServer:
        folder = tmp_path / f"server-{len(started)}"
        folder.mkdir()
        server = start_server(folder, _server_env(softhsm), init_args=init_args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def proxy(vault_server: RunningServer) -> Iterator[Callable[[str], str]]:
    """Start a tampering proxy (tests/tamper_proxy.py) in front of the session's server:
    `proxy("swap-key")` -> its URL. Stopped at the end of the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(mode: str) -> str:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, str(TAMPER_PROXY), vault_server.url, str(port), mode],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        wait_for_port(port, process)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)
