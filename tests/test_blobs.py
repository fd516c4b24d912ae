"""The blob stores (local folder and S3 via a real moto server), without the HTTP layer."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import S3_ENV, S3Endpoint, s3_endpoint  # noqa: F401 - fixture

from hsm_vault.errors import NotFoundOnServer, TooLarge
from hsm_vault.server.blobs import (
    S3_MIN_PART,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    blob_store_from_url,
    new_blob_key,
)

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    bucket = endpoint.new_bucket()
    return S3BlobStore(bucket, client=endpoint.client(), prefix="blobs", part_size=S3_MIN_PART)


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def visible_keys(store: BlobStore) -> list[str]:
    return [o.key for o in store.list_objects()]


@pytest.mark.parametrize("size", [0, 1, 1000, S3_MIN_PART, 2 * S3_MIN_PART + 12345])
def test_round_trip_reports_size_and_sha256(store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    key = new_blob_key()
    info = store.write(key, chunks_of(data, 300_000))
    assert info.size == size
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(store.read(key)) == data
    assert store.stat(key).size == size
    assert visible_keys(store) == [key]


def test_byte_ranges(store: BlobStore) -> None:
    data = os.urandom(3 * MiB + 17)
    key = new_blob_key()
    store.write(key, [data])
    assert b"".join(store.read(key, 0, 0)) == data[:1]
    assert b"".join(store.read(key, 10, 19)) == data[10:20]
    assert b"".join(store.read(key, MiB - 3, 2 * MiB + 5)) == data[MiB - 3 : 2 * MiB + 6]
    assert b"".join(store.read(key, len(data) - 5)) == data[-5:]
    # An end past the object is clamped, as HTTP ranges are.
    assert b"".join(store.read(key, len(data) - 2, len(data) + 100)) == data[-2:]


def test_reads_stream_in_bounded_chunks(store: BlobStore) -> None:
    key = new_blob_key()
    store.write(key, chunks_of(os.urandom(5 * MiB), MiB))
    assert max(len(c) for c in store.read(key)) <= MiB


def test_abort_leaves_nothing_visible(store: BlobStore) -> None:
    key = new_blob_key()
    writer = store.open_writer(key)
    writer.write(os.urandom(S3_MIN_PART + 10))  # past one part on S3
    assert not store.exists(key)
    writer.abort()
    assert not store.exists(key)
    assert visible_keys(store) == []


def test_exception_in_the_middle_leaves_nothing(store: BlobStore) -> None:
    key = new_blob_key()

    def failing() -> Iterator[bytes]:
        yield os.urandom(S3_MIN_PART + 1)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.write(key, failing())
    assert visible_keys(store) == []
    with pytest.raises(NotFoundOnServer):
        store.read(key)


def test_max_size_is_enforced_while_streaming(store: BlobStore) -> None:
    key = new_blob_key()
    with pytest.raises(TooLarge):
        store.write(key, chunks_of(os.urandom(3000), 1000), max_size=2500)
    assert visible_keys(store) == []
    # Exactly at the limit is fine.
    assert store.write(key, [b"x" * 2500], max_size=2500).size == 2500


def test_delete_and_missing(store: BlobStore) -> None:
    key = new_blob_key()
    store.write(key, [b"hello"])
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # idempotent
    with pytest.raises(NotFoundOnServer):
        store.stat(key)
    with pytest.raises(NotFoundOnServer):
        store.read(key)


def test_overwrite_replaces_whole_object(store: BlobStore) -> None:
    key = new_blob_key()
    store.write(key, [b"first version, longer"])
    store.write(key, [b"second"])
    assert b"".join(store.read(key)) == b"second"


def test_invalid_keys_are_refused(store: BlobStore) -> None:
    for bad in ["../etc/passwd", ".hidden", "", "a/b", "x" * 201]:
        with pytest.raises(ValueError):
            store.open_writer(bad)


def test_local_writes_go_through_a_temporary(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    key = new_blob_key()
    writer = store.open_writer(key)
    writer.write(b"partial")
    temporaries = list(store.tmp_dir.iterdir())
    assert len(temporaries) == 1
    assert not store.exists(key)
    writer.commit()
    assert list(store.tmp_dir.iterdir()) == []
    assert store._path(key).read_bytes() == b"partial"


def test_local_stale_temporaries_are_swept(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    writer = store.open_writer(new_blob_key())
    writer.write(b"crash here")  # never committed nor aborted: a crashed process
    assert store.remove_stale_temporaries(older_than_seconds=-1) == 1
    assert list(store.tmp_dir.iterdir()) == []


def test_s3_abort_cancels_the_multipart_upload(s3_endpoint: S3Endpoint) -> None:  # noqa: F811
    store = S3BlobStore(s3_endpoint.new_bucket(), client=s3_endpoint.client())
    writer = store.open_writer(new_blob_key())
    writer.write(os.urandom(store.part_size + 1))
    assert len(store.pending_uploads()) == 1
    writer.abort()
    assert store.pending_uploads() == []
    assert store.list_objects() == []


def test_store_from_url(
    tmp_path: Path,
    s3_endpoint: S3Endpoint,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(blob_store_from_url(str(tmp_path / "a")), LocalBlobStore)
    assert isinstance(blob_store_from_url(f"file://{tmp_path}/b"), LocalBlobStore)
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    store = blob_store_from_url(
        f"s3://made-by-url/pre?endpoint_url={s3_endpoint.url}&region=us-east-1&create=1"
    )
    assert isinstance(store, S3BlobStore)
    store.write("abc", [b"via url"])
    assert b"".join(store.read("abc")) == b"via url"
    assert store.prefix == "pre/"
