"""Two replicas (`server run` twice) on one PostgreSQL database and one S3 bucket.

What must be decided in the database, and hold when clients hit both replicas at once: a
one-time enrolment code works once, a quota is never exceeded, a card is approved once. And
a replica killed with SIGKILL under load loses no answered upload: every 201 is readable
from the other, nothing partial is visible, and its restart aborts its abandoned S3
multipart upload.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from postgres_fixture import PostgresCluster, postgres  # noqa: F401 - fixture
from s3_server import S3_ENV, S3Endpoint, s3_endpoint  # noqa: F401 - fixture
from server_fixture import HSM_VAULT, RunningServer, run_server, unique

MiB = 1024 * 1024
QUOTA = 32 * MiB


@dataclass
class Replicas:
    a: RunningServer
    b: RunningServer
    data: Path
    env: dict[str, str]
    bucket: str
    endpoint: S3Endpoint

    def token(self, name: str, role: str = "user") -> str:
        return self.a.enrol(name, role=role).token


@pytest.fixture(scope="module")
def replicas(
    softhsm: Any,
    postgres: PostgresCluster,  # noqa: F811 - fixture
    s3_endpoint: S3Endpoint,  # noqa: F811 - fixture
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replicas]:
    folder = tmp_path_factory.mktemp("replicas")
    data = folder / "server-data"
    env = {**softhsm.env(), **S3_ENV}
    env.pop("HSM_VAULT_CONFIG", None)
    bucket = s3_endpoint.new_bucket()
    store = f"s3://{bucket}/blobs?endpoint_url={s3_endpoint.url}&region=us-east-1&part_size_mib=5"
    args = ["--data", str(data), "--app-key", unique("app"), "--blob-store", store]
    args += ["--database-url", postgres.create_database(), "--quota-mib", str(QUOTA // MiB)]
    args += ["--approvals", "0"]  # the application key alone approves (officers: elsewhere)
    init = subprocess.run(
        [HSM_VAULT, "server", "init", *args, "--auth-address-failures", "10000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    a = run_server(data, env, folder / "a.log")
    b = run_server(data, env, folder / "b.log")
    running = Replicas(a, b, data, env, bucket, s3_endpoint)
    yield running
    running.a.stop()  # a test may have restarted it
    running.b.stop()


def at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call in its own thread, released together."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_an_enrolment_code_raced_on_both_replicas_works_once(replicas: Replicas) -> None:
    name = unique("erin")
    code = replicas.a.add_user(name)

    def enrol(server: RunningServer) -> Callable[[], int]:
        return lambda: (
            requests.post(
                server.url + "/v1/enrol", json={"username": name, "code": code}, timeout=30
            ).status_code
        )

    statuses = at_once([enrol(replicas.a), enrol(replicas.b)] * 4)
    assert sorted(statuses) == [200] + [401] * 7


def test_concurrent_uploads_on_both_replicas_never_exceed_the_quota(replicas: Replicas) -> None:
    token = replicas.token(unique("quinn"))
    size = 3 * MiB  # ten fit in the 32 MiB quota, twenty-four are sent at once

    def put(server: RunningServer, i: int) -> Callable[[], int]:
        return lambda: (
            requests.put(
                f"{server.url}/v1/blobs/q{i}",
                data=os.urandom(size),
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            ).status_code
        )

    statuses = at_once([put(replicas.a if i % 2 else replicas.b, i) for i in range(24)])
    assert set(statuses) == {201, 413}, statuses
    listing = requests.get(
        replicas.b.url + "/v1/blobs", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ).json()
    assert listing["used_bytes"] <= QUOTA
    assert len(listing["blobs"]) == statuses.count(201) == QUOTA // size


def test_a_card_approved_on_both_replicas_at_once_is_approved_once(
    replicas: Replicas, token_keys: dict
) -> None:
    from hsm_vault.cards import Card, create_card
    from hsm_vault.token import open_session

    identity = unique("carla")
    owner = replicas.token(identity)
    officer = replicas.token(unique("otto"), role="officer")
    with open_session("alice") as ts:
        card = create_card(ts, ts.find_key("alice-p256"), identity)
    published = requests.post(
        replicas.a.url + "/v1/cards",
        json={"card": card.to_text()},
        headers={"Authorization": f"Bearer {owner}"},
        timeout=30,
    )
    assert published.status_code == 201 and published.json()["status"] == "pending"

    def approve(server: RunningServer) -> Callable[[], int]:
        return lambda: (
            requests.post(
                f"{server.url}/v1/cards/{card.id}/approve",
                headers={"Authorization": f"Bearer {officer}"},
                timeout=30,
            ).status_code
        )

    statuses = at_once([approve(replicas.a), approve(replicas.b)] * 3)
    assert sorted(statuses) == [200] + [409] * 5
    found = requests.get(
        f"{replicas.b.url}/v1/cards",
        params={"identity": identity},
        headers={"Authorization": f"Bearer {owner}"},
        timeout=30,
    ).json()["cards"]
    assert [c["id"] for c in found] == [card.id]
    assert Card.from_text(found[0]["card"]).signers.count("app") == 1


def _stalled_upload(server: RunningServer, token: str, name: str, sent: int) -> socket.socket:
    """Start a PUT of 3x `sent` bytes and send only `sent` of them; the caller closes it."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        (
            f"PUT /v1/blobs/{name} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {3 * sent}\r\n\r\n"
        ).encode()
        + os.urandom(sent)
    )
    return sock


def test_a_replica_killed_under_load_loses_no_answered_upload(replicas: Replicas) -> None:
    token = replicas.token(unique("kim"))
    headers = {"Authorization": f"Bearer {token}"}
    store = replicas.endpoint.client()
    # A large upload to A stalls after its first 5 MiB part went to S3 as a multipart upload.
    stalled = _stalled_upload(replicas.a, token, "big", 6 * MiB)
    deadline = time.monotonic() + 30
    while not store.list_multipart_uploads(Bucket=replicas.bucket).get("Uploads"):
        assert time.monotonic() < deadline, "the stalled upload never reached S3"
        time.sleep(0.1)

    answered: dict[str, str] = {}  # name -> SHA-256 of every upload answered 201
    stop = threading.Event()

    def load(worker: int) -> None:
        with requests.Session() as session:
            for i in range(10_000):
                if stop.is_set():
                    return
                server = replicas.a if (worker + i) % 2 else replicas.b
                body = os.urandom(512 + 97 * i % 3000)
                try:
                    answer = session.put(
                        f"{server.url}/v1/blobs/k{worker}-{i}",
                        data=body,
                        headers=headers,
                        timeout=30,
                    )
                except requests.RequestException:
                    continue  # the killed replica: no answer, nothing promised
                if answer.status_code == 201:
                    answered[f"k{worker}-{i}"] = hashlib.sha256(body).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(load, w) for w in range(8)]
        time.sleep(1.5)
        os.kill(replicas.a.process.pid, signal.SIGKILL)
        replicas.a.process.wait()
        time.sleep(1.0)
        stop.set()
        for future in futures:
            future.result()
    stalled.close()

    assert len(answered) > 20
    with requests.Session() as session:
        listing = session.get(replicas.b.url + "/v1/blobs", headers=headers, timeout=30).json()
        names = {blob["name"] for blob in listing["blobs"]}
        assert set(answered) <= names and "big" not in names
        for name, digest in answered.items():
            got = session.get(f"{replicas.b.url}/v1/blobs/{name}", headers=headers, timeout=30)
            assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == digest
    assert store.list_multipart_uploads(Bucket=replicas.bucket).get("Uploads")  # A's orphan

    # The restarted replica aborts the multipart upload its killed process left behind.
    replicas.a = run_server(replicas.data, replicas.env, replicas.a.log)
    assert not store.list_multipart_uploads(Bucket=replicas.bucket).get("Uploads")
    assert requests.get(replicas.a.url + "/readyz", timeout=10).status_code == 200
