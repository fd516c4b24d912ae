"""A real hsm-vault server with a chosen blob store, for the store tests and the benchmark.

`start_blob_server` runs `hsm-vault server init`, writes the blob settings into server.json,
creates accounts, starts `hsm-vault server run` as a subprocess on a free loopback port, and
enrols the accounts over HTTP. `BlobServer.peak_rss()` reads the server process's peak
resident memory from /proc (resettable with `reset_peak_rss()`), so tests can bound it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

HSM_VAULT = str(Path(sys.executable).with_name("hsm-vault"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BlobServer:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    tokens: dict[str, str]
    blob_settings: dict[str, Any]
    env: dict[str, str]
    log: Path

    def client(self, user: str) -> Any:
        """A `VaultClient` logged in as `user`."""
        from hsm_vault.client import VaultClient

        return VaultClient(self.url, api_token=self.tokens[user])

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def peak_rss(self) -> int:
        """The server process's peak resident set size in bytes (VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc status")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def reset_peak_rss(self) -> None:
        """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def blob_store(self) -> Any:
        """The server's blob store, opened here to look at what is stored."""
        from hsm_vault.server.blobs import blob_store_from_url

        saved = {k: os.environ.get(k) for k in self.env if k.startswith("AWS_")}
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("AWS_")})
        try:
            return blob_store_from_url(self.blob_settings["store"])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def add_user(self, name: str) -> str:
        """Create and enrol one more account; returns its API token."""
        code = _add_user(self.data_dir, name, self.env)
        self.tokens[name] = _enrol(self.url, name, code)
        return self.tokens[name]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [HSM_VAULT, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"hsm-vault {' '.join(args)} failed: {done.stderr}{done.stdout}")
    return done.stdout


def _add_user(data_dir: Path, name: str, env: dict[str, str]) -> str:
    out = _run(["server", "add-user", name, "--data", str(data_dir), "--json"], env)
    return str(json.loads(out)["enrolment_code"])


def _enrol(url: str, name: str, code: str) -> str:
    answer = requests.post(f"{url}/v1/enrol", json={"username": name, "code": code}, timeout=30)
    answer.raise_for_status()
    return str(answer.json()["token"])


@contextmanager
def start_blob_server(
    data_dir: Path,
    blob_settings: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    users: tuple[str, ...] = ("alice", "bob", "carol"),
    auto_approve: bool = True,
) -> Iterator[BlobServer]:
    """Init, configure and run a server; stop it on exit."""
    env = {**os.environ, **(env or {})}
    app_key = f"hsmv-app-{uuid.uuid4().hex[:8]}"
    init = ["server", "init", "--data", str(data_dir), "--app-key", app_key, "--json"]
    if auto_approve:
        init.append("--auto-approve")
    _run(init, env)
    settings_path = data_dir / "server.json"
    settings = json.loads(settings_path.read_text())
    settings["extra"] = {**(settings.get("extra") or {}), "blobs": blob_settings}
    settings_path.write_text(json.dumps(settings, indent=2))
    codes = {name: _add_user(data_dir, name, env) for name in users}
    port = free_port()
    log = data_dir / "server.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [
                HSM_VAULT,
                "server",
                "run",
                "--data",
                str(data_dir),
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--workers",
                "1",
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    server = BlobServer(url, data_dir, process, {}, blob_settings, env, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
            try:
                requests.get(f"{url}/v1/app", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start within 60 s") from None
                time.sleep(0.1)
        for name, code in codes.items():
            server.tokens[name] = _enrol(url, name, code)
        yield server
    finally:
        server.stop()
