"""The server under load: no deadlock, bounded waits, and the load balancer's health checks.

Before the fix, about 60 concurrent authenticated requests deadlocked a server for minutes:
worker threads waited for database connections held by requests waiting for a worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from server_fixture import RunningServer, unique


def _concurrently(count: int, url: str, headers: dict[str, str]) -> list[int]:
    barrier = threading.Barrier(count)

    def get(_: int) -> int:
        barrier.wait()
        try:
            return requests.get(url, headers=headers, timeout=60).status_code
        except requests.RequestException as exc:
            return -len(type(exc).__name__)  # shows up as "not 200"

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(get, range(count)))


def test_a_fresh_server_answers_150_concurrent_card_finds_and_recovers_from_a_locked_database(
    server_factory,
) -> None:
    server: RunningServer = server_factory()
    account = server.enrol(unique("lena"))
    headers = {"Authorization": f"Bearer {account.token}"}
    find = f"{server.url}/v1/cards?identity={account.name}"

    statuses = _concurrently(150, find, headers)
    assert statuses == [200] * 150
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200

    # Someone holds the database's write lock (a slow writer, a backup): a request that must
    # write waits a bounded time and gets 503 + Retry-After, not a hang; reads go on.
    database = sqlite3.connect(server.data_dir / "hsm-vault.db", isolation_level=None)
    database.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        refused = requests.post(
            server.url + "/v1/enrol", json={"username": "nobody", "code": "X" * 20}, timeout=60
        )
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert time.monotonic() - started < 15
        assert requests.get(find, headers=headers, timeout=10).status_code == 200
    finally:
        database.execute("ROLLBACK")
        database.close()
    again = requests.post(
        server.url + "/v1/enrol", json={"username": "nobody", "code": "X" * 20}, timeout=10
    )
    assert again.status_code == 401


def test_readyz_says_not_ready_while_the_blob_store_is_missing(vault_server: RunningServer) -> None:
    blobs = vault_server.data_dir / "blobs"
    moved = Path(str(blobs) + ".away")
    blobs.mkdir(exist_ok=True)
    blobs.rename(moved)
    try:
        answer = requests.get(vault_server.url + "/readyz", timeout=10)
        assert answer.status_code == 503 and "blob store" in answer.json()["detail"]
        assert answer.headers["retry-after"]
        assert requests.get(vault_server.url + "/healthz", timeout=10).status_code == 200
    finally:
        moved.rename(blobs)
    assert requests.get(vault_server.url + "/readyz", timeout=10).status_code == 200
