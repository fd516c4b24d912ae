"""The blob store through a real server (`hsm-vault server run`), with both blob backends.

Round trips of empty, small and large blobs with the server's peak memory bounded, byte
ranges, a cut-off upload, access by owner / recipient / stranger, and the 413 limits.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from s3_server import S3_ENV, S3Endpoint, s3_endpoint  # noqa: F401 - fixture
from store_harness import BlobServer, start_blob_server

from hsm_vault.client.blobs import (
    blob_meta,
    delete_blob,
    download_file,
    download_stream,
    list_blobs,
    open_blob_reader,
    upload_file,
    upload_from_writer,
    upload_stream,
)
from hsm_vault.errors import (
    ConflictOnServer,
    FileExistsRefused,
    NotFoundOnServer,
    PermissionDenied,
    TooLarge,
)

MiB = 1024 * 1024
LARGE = 300 * MiB
# What the server may grow by while moving a blob, whatever its size: the S3 part buffer,
# the header peek, the write batch, and the HTTP and boto3 buffers around them. Measured:
# ~6 MiB with the local folder, ~55 MiB with S3 (boto3), for a 300 MiB blob.
MEMORY_BOUND = 100 * MiB


def _blob_settings(backend: str, root: Path, endpoint: S3Endpoint | None, **limits: int) -> dict:
    if backend == "local":
        return {"store": str(root / "blobs"), **limits}
    assert endpoint is not None
    bucket = endpoint.new_bucket()
    return {"store": f"s3://{bucket}/blobs?endpoint_url={endpoint.url}&region=us-east-1", **limits}


@pytest.fixture(scope="module", params=["local", "s3"])
def server(
    request: pytest.FixtureRequest, softhsm: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BlobServer]:
    backend = request.param
    endpoint = request.getfixturevalue("s3_endpoint") if backend == "s3" else None
    data = tmp_path_factory.mktemp(f"server-{backend}")
    settings = _blob_settings(
        backend, data, endpoint, max_blob_bytes=512 * MiB, quota_bytes=1024 * MiB
    )
    with start_blob_server(data, settings, env={**softhsm.env(), **S3_ENV}) as running:
        yield running


@pytest.fixture(scope="module", params=["local", "s3"])
def small_server(
    request: pytest.FixtureRequest, softhsm: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BlobServer]:
    """A server with tiny limits: 1 MiB per blob, 1.5 MiB per user."""
    backend = request.param
    endpoint = request.getfixturevalue("s3_endpoint") if backend == "s3" else None
    data = tmp_path_factory.mktemp(f"small-{backend}")
    settings = _blob_settings(
        backend, data, endpoint, max_blob_bytes=MiB, quota_bytes=MiB + MiB // 2
    )
    with start_blob_server(
        data, settings, env={**softhsm.env(), **S3_ENV}, users=("alice",)
    ) as running:
        yield running


def _visible(server: BlobServer) -> list[str]:
    return [o.key for o in server.blob_store().list_objects()]


def _names(server: BlobServer, user: str) -> list[str]:
    return [b.name for b in list_blobs(server.client(user))[0]]


def _random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(4 * MiB, remaining))
            digest.update(block)
            out.write(block)
            remaining -= len(block)
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, 3 * MiB + 5])
def test_round_trip(server: BlobServer, tmp_path: Path, size: int) -> None:
    alice = server.client("alice")
    source = tmp_path / "in.bin"
    expected = _random_file(source, size)
    name = f"rt-{size}"
    meta = upload_file(alice, source, name)
    assert (meta.name, meta.owner, meta.size, meta.sha256) == (name, "alice", size, expected)
    assert abs(time.time() - meta.created_at.timestamp()) < 120
    assert meta.envelope_version is None and meta.recipients == ()  # not an envelope
    out = tmp_path / "out.bin"
    assert download_file(alice, name, out) == size
    assert out.read_bytes() == source.read_bytes()
    assert blob_meta(alice, name) == meta
    assert name in _names(server, "alice")
    delete_blob(alice, name)
    assert name not in _names(server, "alice")
    with pytest.raises(NotFoundOnServer):
        blob_meta(alice, name)


def test_upload_from_an_iterator_is_sent_chunked(server: BlobServer) -> None:
    alice = server.client("alice")
    chunks = [os.urandom(100_000) for _ in range(30)]
    meta = upload_stream(alice, "chunked", iter(chunks))
    assert meta.size == 3_000_000
    assert b"".join(download_stream(alice, "chunked")) == b"".join(chunks)
    delete_blob(alice, "chunked")


def test_existing_names_need_replace(server: BlobServer) -> None:
    alice = server.client("alice")
    upload_stream(alice, "twice", io.BytesIO(b"first"))
    with pytest.raises(ConflictOnServer):
        upload_stream(alice, "twice", io.BytesIO(b"second"))
    meta = upload_stream(alice, "twice", io.BytesIO(b"second!"), replace=True)
    assert meta.size == 7
    assert b"".join(download_stream(alice, "twice")) == b"second!"
    delete_blob(alice, "twice")


def test_get_refuses_to_overwrite(server: BlobServer, tmp_path: Path) -> None:
    alice = server.client("alice")
    upload_stream(alice, "keep", io.BytesIO(b"new"))
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "existing"
    out.write_bytes(b"old")
    with pytest.raises(FileExistsRefused):
        download_file(alice, "keep", out)
    assert out.read_bytes() == b"old"
    download_file(alice, "keep", out, force=True)
    assert out.read_bytes() == b"new"
    assert [p.name for p in folder.iterdir()] == ["existing"]  # no temporaries left
    delete_blob(alice, "keep")


@pytest.mark.slow
def test_large_round_trip_in_bounded_memory(server: BlobServer, tmp_path: Path) -> None:
    alice = server.client("alice")
    source = tmp_path / "large.bin"
    expected = _random_file(source, LARGE)
    base = server.rss()
    server.reset_peak_rss()
    meta = upload_file(alice, source, "large")
    upload_peak = server.peak_rss() - base
    assert meta.size == LARGE and meta.sha256 == expected
    source.unlink()
    server.reset_peak_rss()
    out = tmp_path / "large.out"
    download_file(alice, "large", out)
    download_peak = server.peak_rss() - base
    assert _sha256_file(out) == expected
    delete_blob(alice, "large")
    assert upload_peak < MEMORY_BOUND, f"upload grew the server by {upload_peak / MiB:.0f} MiB"
    assert download_peak < MEMORY_BOUND, f"download grew it by {download_peak / MiB:.0f} MiB"


# --- ranges --------------------------------------------------------------------------------


def test_ranges(server: BlobServer) -> None:
    alice = server.client("alice")
    data = os.urandom(2 * MiB + 3)
    upload_stream(alice, "ranged", io.BytesIO(data))
    url = f"{server.url}/v1/blobs/ranged"
    headers = server.headers("alice")

    def get(range_header: str) -> requests.Response:
        return requests.get(url, headers={**headers, "Range": range_header}, timeout=30)

    answer = get("bytes=10-19")
    assert answer.status_code == 206
    assert answer.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert answer.content == data[10:20]
    answer = get(f"bytes={MiB}-")
    assert answer.status_code == 206 and answer.content == data[MiB:]
    answer = get("bytes=-7")
    assert answer.status_code == 206 and answer.content == data[-7:]
    answer = get(f"bytes=5-{len(data) + 100}")  # an end past the blob is clamped
    assert answer.status_code == 206 and answer.content == data[5:]
    answer = get(f"bytes={len(data)}-")
    assert answer.status_code == 416
    assert answer.headers["Content-Range"] == f"bytes */{len(data)}"
    assert answer.headers["Content-Type"] == "application/problem+json"
    whole = requests.get(url, headers=headers, timeout=30)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    head = requests.head(url, headers=headers, timeout=30)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    delete_blob(alice, "ranged")


# --- a cut-off upload ----------------------------------------------------------------------


def _cut_off_upload(server: BlobServer, name: str, declared: int, sent: int) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            (
                f"PUT /v1/blobs/{name} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {server.tokens['alice']}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
            ).encode()
        )
        block = os.urandom(MiB)
        remaining = sent
        while remaining:
            sock.sendall(block[: min(MiB, remaining)])
            remaining -= min(MiB, remaining)
        time.sleep(0.5)  # let the server write some of it before the client vanishes


def test_cut_off_upload_leaves_nothing_visible(server: BlobServer) -> None:
    before = _visible(server)
    _cut_off_upload(server, "half", declared=40 * MiB, sent=20 * MiB)
    deadline = time.monotonic() + 20
    store = server.blob_store()
    while True:
        pending = store.pending_uploads() if hasattr(store, "pending_uploads") else []
        temporaries = list(store.tmp_dir.iterdir()) if hasattr(store, "tmp_dir") else []
        if not pending and not temporaries:
            break
        assert time.monotonic() < deadline, f"left behind: {pending or temporaries}"
        time.sleep(0.2)
    assert "half" not in _names(server, "alice")
    assert _visible(server) == before
    with pytest.raises(NotFoundOnServer):
        blob_meta(server.client("alice"), "half")


# --- access --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bob_card(server: BlobServer, token_keys: dict) -> Any:
    """Bob's card for his bob-p256 key, published (and auto-approved) on the server."""
    from hsm_vault.cards import create_card
    from hsm_vault.token import open_session

    with open_session("bob") as ts:
        card = create_card(ts, ts.find_key("bob-p256"), "bob")
    answer = requests.post(
        f"{server.url}/v1/cards",
        json={"card": card.to_text()},
        headers=server.headers("bob"),
        timeout=30,
    )
    assert answer.status_code in (201, 409), answer.text
    return card


def _encrypt_to(card: Any, plaintext: bytes) -> bytes:
    from hsm_vault.envelope import Recipient, encrypt

    sink = io.BytesIO()
    encrypt(io.BytesIO(plaintext), sink, [Recipient.from_card(card)])
    return sink.getvalue()


def test_owner_and_recipients_read_others_get_403(server: BlobServer, bob_card: Any) -> None:
    alice, bob, carol = (server.client(n) for n in ("alice", "bob", "carol"))
    ciphertext = _encrypt_to(bob_card, b"for bob's eyes only\n" * 1000)
    meta = upload_stream(alice, "to-bob.hsmv", io.BytesIO(ciphertext))
    # The server read the recipients' key ids from the header; it cannot decrypt.
    assert meta.recipients == (bob_card.key_id.hex(),)
    assert meta.envelope_version == 1

    # Bob, a recipient, reads it by OWNER/NAME and finds it in his shared list.
    assert b"".join(download_stream(bob, "alice/to-bob.hsmv")) == ciphertext
    assert blob_meta(bob, "alice/to-bob.hsmv").sha256 == meta.sha256
    shared, _ = list_blobs(bob, shared=True)
    assert "alice/to-bob.hsmv" in [b.full_name for b in shared]
    assert "to-bob.hsmv" not in [b.name for b in list_blobs(bob)[0]]

    # Carol is neither owner nor recipient.
    with pytest.raises(PermissionDenied):
        b"".join(download_stream(carol, "alice/to-bob.hsmv"))
    with pytest.raises(PermissionDenied):
        blob_meta(carol, "alice/to-bob.hsmv")
    assert "alice/to-bob.hsmv" not in [b.full_name for b in list_blobs(carol, shared=True)[0]]
    answer = requests.get(
        f"{server.url}/v1/blobs/to-bob.hsmv",
        params={"owner": "alice"},
        headers=server.headers("carol"),
        timeout=30,
    )
    assert answer.status_code == 403
    assert answer.headers["Content-Type"] == "application/problem+json"

    # Only the owner deletes.
    with pytest.raises(PermissionDenied):
        delete_blob(bob, "alice/to-bob.hsmv")
    with pytest.raises(PermissionDenied):
        delete_blob(carol, "alice/to-bob.hsmv")
    delete_blob(alice, "to-bob.hsmv")
    with pytest.raises(NotFoundOnServer):
        blob_meta(bob, "alice/to-bob.hsmv")


def test_a_blob_not_encrypted_to_you_is_owner_only(server: BlobServer) -> None:
    alice = server.client("alice")
    upload_stream(alice, "plain", io.BytesIO(b"not an envelope"))
    with pytest.raises(PermissionDenied):
        blob_meta(server.client("bob"), "alice/plain")
    delete_blob(alice, "plain")


def test_no_token_is_401(server: BlobServer) -> None:
    answer = requests.get(f"{server.url}/v1/blobs", timeout=30)
    assert answer.status_code == 401


# --- limits --------------------------------------------------------------------------------


def _problem(answer: requests.Response) -> dict:
    assert answer.headers["Content-Type"] == "application/problem+json"
    body = answer.json()
    assert body["status"] == answer.status_code
    return dict(body)


def test_over_max_size_is_413_before_the_body(small_server: BlobServer) -> None:
    answer = requests.put(
        f"{small_server.url}/v1/blobs/big",
        data=io.BytesIO(os.urandom(2 * MiB)),
        headers=small_server.headers("alice"),
        timeout=30,
    )
    assert answer.status_code == 413
    assert "limit of 1048576 bytes per blob" in _problem(answer)["detail"]
    assert _visible(small_server) == []


def test_over_max_size_while_streaming_is_413(small_server: BlobServer) -> None:
    """Without Content-Length (chunked), the limit is enforced on the bytes received."""
    with pytest.raises(TooLarge, match="limit of 1048576 bytes per blob"):
        upload_stream(small_server.client("alice"), "big", iter([os.urandom(256 * 1024)] * 8))
    assert _visible(small_server) == []
    assert "big" not in _names(small_server, "alice")


def test_quota_is_413(small_server: BlobServer) -> None:
    alice = small_server.client("alice")
    upload_stream(alice, "first", io.BytesIO(os.urandom(MiB)))
    with pytest.raises(TooLarge, match="quota of 1572864 bytes"):
        upload_stream(alice, "second", io.BytesIO(os.urandom(MiB)))
    with pytest.raises(TooLarge, match="quota"):
        upload_stream(alice, "second", iter([os.urandom(128 * 1024)] * 8))
    assert _names(small_server, "alice") == ["first"]
    # Replacing a blob counts the size it frees.
    upload_stream(alice, "first", io.BytesIO(os.urandom(MiB)), replace=True)
    assert len(_visible(small_server)) == 1
    delete_blob(alice, "first")
    upload_stream(alice, "second", io.BytesIO(os.urandom(MiB)))
    delete_blob(alice, "second")


# --- streaming through the envelope: encrypt --upload / decrypt --from-store ---------------


def test_encrypt_upload_and_decrypt_from_store_without_temporaries(
    server: BlobServer, bob_card: Any
) -> None:
    from hsm_vault.envelope import Recipient, decrypt, encrypt
    from hsm_vault.token import open_session
    from hsm_vault.vault import token_identities

    alice, bob = server.client("alice"), server.client("bob")
    plaintext = os.urandom(3 * MiB + 11)
    result, meta = upload_from_writer(
        alice,
        "piped.hsmv",
        lambda out: encrypt(io.BytesIO(plaintext), out, [Recipient.from_card(bob_card)]),
    )
    assert meta.size == result.ciphertext_size
    assert meta.recipients == (bob_card.key_id.hex(),)
    with open_session("bob") as ts, open_blob_reader(bob, "alice/piped.hsmv") as src:
        sink = io.BytesIO()
        decrypt(src, sink, token_identities(ts, "bob-p256"))
    assert sink.getvalue() == plaintext
    delete_blob(alice, "piped.hsmv")


def test_a_failing_producer_leaves_nothing(server: BlobServer) -> None:
    alice = server.client("alice")
    before = _visible(server)

    def produce(out: Any) -> None:
        out.write(os.urandom(3 * MiB))
        raise RuntimeError("encryption failed half way")

    with pytest.raises(RuntimeError, match="half way"):
        upload_from_writer(alice, "broken.hsmv", produce)
    time.sleep(0.5)
    assert "broken.hsmv" not in _names(server, "alice")
    assert _visible(server) == before


def test_an_upload_refused_stops_the_producer(small_server: BlobServer) -> None:
    written = 0

    def produce(out: Any) -> None:
        nonlocal written
        for _ in range(64):
            out.write(os.urandom(256 * 1024))
            written += 256 * 1024

    with pytest.raises(TooLarge):
        upload_from_writer(small_server.client("alice"), "too-big", produce)
    assert written < 64 * 256 * 1024
    assert "too-big" not in _names(small_server, "alice")
