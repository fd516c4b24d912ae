"""Blob stores: where the server keeps ciphertext bytes.

A blob store holds opaque objects under server-chosen keys; who owns what, names, quotas and
recipients live in the database, never here. Two implementations:

- `LocalBlobStore`: a folder. A write goes to a temporary file in the same folder tree, is
  fsynced, and is renamed into place only on `commit()`, so a crash or a cut-off upload never
  leaves a half-written blob visible.
- `S3BlobStore`: an S3-compatible bucket (boto3). A write is a multipart upload whose parts are
  sent as they fill; the object appears only when the upload is completed, and an aborted
  writer aborts the multipart upload.

Writes are pushed chunk by chunk through a `BlobWriter` (so the server can feed it from an
async request body) and reads are iterators of bytes over an optional byte range; neither ever
holds a whole blob in memory. Size and SHA-256 are computed while the bytes stream through.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from hsm_vault.config import make_private_dir
from hsm_vault.errors import ConfigError, NotFoundOnServer, ServerError, TooLarge

READ_CHUNK = 1024 * 1024
# S3 requires every part but the last to be at least 5 MiB.
S3_MIN_PART = 5 * 1024 * 1024
S3_DEFAULT_PART = 8 * 1024 * 1024

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def new_blob_key() -> str:
    """A fresh random storage key (names are mapped to keys in the database)."""
    return secrets.token_hex(16)


def _check_key(key: str) -> str:
    # Keys are server-chosen, but checking keeps a bad key from ever becoming a path.
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid blob storage key {key!r}")
    return key


@dataclass(frozen=True)
class BlobInfo:
    """What a completed write reports: computed while the bytes streamed through."""

    key: str
    size: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True)
class StoredObject:
    """What a store can say about an object it holds (the database holds the rest)."""

    key: str
    size: int
    created_at: datetime


class ProcessLease:
    """Marks in-progress work as this process's: an flock held on `<dir>/<instance>` for life.

    Work left behind by a process that died (kill -9, power cut) is recognised precisely at
    the next start-up: its lease file can be locked again, because the kernel dropped the lock
    with the process. No age threshold, so a live upload of another worker or replica sharing
    the folder is never touched.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.instance = secrets.token_hex(8)
        self._handle: Any = None

    def hold(self) -> str:
        """Take the lease (once per process) and return this process's instance name."""
        if self._handle is None:
            make_private_dir(self.folder)
            # Locked under a temporary name, then renamed: a sweeper never sees it unlocked.
            pending = self.folder / f".{self.instance}.new"
            fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            handle = os.fdopen(fd, "wb")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(pending, self.folder / self.instance)
            self._handle = handle
        return self.instance

    def release(self) -> None:
        if self._handle is not None:
            (self.folder / self.instance).unlink(missing_ok=True)
            self._handle.close()
            self._handle = None

    def dead_instances(self) -> Iterator[str]:
        """Instances whose process is gone; each is locked by us while the caller cleans up."""
        if not self.folder.is_dir():
            return
        for entry in sorted(self.folder.iterdir()):
            if entry.name.startswith(".") or entry.name == self.instance:
                continue
            try:
                handle = open(entry, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue  # another process swept it just now
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # alive
                yield entry.name
                entry.unlink(missing_ok=True)


class BlobWriter(ABC):
    """One in-progress write. Feed it with `write`, then `commit` or `abort`.

    Nothing is visible under the key until `commit` returns. Used as a context manager, it
    aborts unless committed, so an exception anywhere leaves nothing behind.
    """

    def __init__(self, key: str, max_size: int | None) -> None:
        self.key = key
        self.max_size = max_size
        self.size = 0
        self._hash = hashlib.sha256()
        self._done = False

    @property
    def finished(self) -> bool:
        """Committed or aborted: nothing more to do."""
        return self._done

    def write(self, data: bytes) -> None:
        """Append `data`; raises TooLarge (and aborts) past `max_size`."""
        if self._done:
            raise ValueError("write after commit or abort")
        if not data:
            return
        if self.max_size is not None and self.size + len(data) > self.max_size:
            self.abort()
            raise TooLarge(f"blob is larger than the limit of {self.max_size} bytes")
        self.size += len(data)
        self._hash.update(data)
        self._write(data)

    def commit(self) -> BlobInfo:
        """Make the blob visible under its key and return its size and SHA-256."""
        if self._done:
            raise ValueError("commit after commit or abort")
        self._commit()
        self._done = True
        return BlobInfo(
            key=self.key,
            size=self.size,
            sha256=self._hash.hexdigest(),
            created_at=datetime.now(UTC),
        )

    def abort(self) -> None:
        """Throw away everything written; safe to call more than once."""
        if self._done:
            return
        self._done = True
        self._abort()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _abort(self) -> None: ...


class BlobStore(ABC):
    """Opaque objects under storage keys, written and read as streams."""

    @abstractmethod
    def open_writer(self, key: str, *, max_size: int | None = None) -> BlobWriter:
        """Start writing `key`; nothing is visible until the writer commits."""

    @abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream bytes `start` to `end` inclusive (default: to the last byte).

        Raises NotFoundOnServer for a missing key before the first chunk is yielded.
        """

    @abstractmethod
    def stat(self, key: str) -> StoredObject:
        """Size and creation time of `key`; raises NotFoundOnServer."""

    @abstractmethod
    def list_objects(self) -> list[StoredObject]:
        """Every committed object (never in-progress writes)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error (deletes are retried)."""

    @abstractmethod
    def check(self) -> None:
        """Raise ServerError unless the store can be reached now (for `/readyz`)."""

    def sweep_abandoned(self) -> int:
        """Clean up what processes that died mid-write left; returns how much was removed."""
        return 0

    def write(self, key: str, chunks: Iterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        """Write a whole blob from an iterable of chunks, committing only at the end."""
        with self.open_writer(key, max_size=max_size) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def write_with_new_head(
        self, key: str, head: bytes, source_key: str, skip: int, *, max_size: int | None = None
    ) -> BlobInfo:
        """Write `key` as `head` followed by the bytes of `source_key` after its first `skip`.

        How a re-wrap swaps an envelope header: the payload moves inside the store and never
        travels over the network. `source_key` is left as it is.
        """
        with self.open_writer(key, max_size=max_size) as writer:
            writer.write(head)
            for chunk in self.read(source_key, skip):
                writer.write(chunk)
            return writer.commit()

    def exists(self, key: str) -> bool:
        """Whether a committed object is stored under `key`."""
        try:
            self.stat(key)
        except NotFoundOnServer:
            return False
        return True


def _check_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    """Clamp an inclusive byte range to the object; (0, -1) means no bytes."""
    if start < 0 or (end is not None and end < start - 1):
        raise ValueError("invalid byte range")
    last = size - 1 if end is None else min(end, size - 1)
    return start, last


# --- local folder ------------------------------------------------------------------------------


class _LocalWriter(BlobWriter):
    def __init__(
        self, final: Path, tmp_dir: Path, lease: ProcessLease, key: str, max_size: int | None
    ) -> None:
        super().__init__(key, max_size)
        self._final = final
        self._lease = lease  # held as long as the temporary may exist
        make_private_dir(tmp_dir)
        self._tmp = tmp_dir / f"{lease.hold()}.{key}.{secrets.token_hex(8)}.part"
        # Blob files are readable by the server user only (0600), in 0700 folders.
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb")

    def _write(self, data: bytes) -> None:
        self._file.write(data)

    def _commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            make_private_dir(self._final.parent)
            os.replace(self._tmp, self._final)
            # The rename is durable only once the directory entry is.
            dir_fd = os.open(self._final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalBlobStore(BlobStore):
    """Blobs as files in a folder: `<root>/<key[:2]>/<key>`, temporaries in `<root>/.tmp`.

    A temporary is named after the writing process's lease (`<root>/.leases`), so the
    temporaries of a process that died are found and removed at the next start-up.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        make_private_dir(self.root)
        self.tmp_dir = self.root / ".tmp"
        self.lease = ProcessLease(self.root / ".leases")

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key[:2] / key

    def open_writer(self, key: str, *, max_size: int | None = None) -> BlobWriter:
        return _LocalWriter(self._path(key), self.tmp_dir, self.lease, key, max_size)

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise NotFoundOnServer(f"blob {key} is not in the store") from None
        first, last = _check_range(start, end, os.fstat(handle.fileno()).st_size)
        return self._iter_file(handle, first, last)

    @staticmethod
    def _iter_file(handle: Any, first: int, last: int) -> Iterator[bytes]:
        with handle:
            handle.seek(first)
            remaining = last - first + 1
            while remaining > 0:
                chunk = handle.read(min(READ_CHUNK, remaining))
                if not chunk:
                    raise ServerError("blob file ended early: the store was changed under us")
                remaining -= len(chunk)
                yield chunk

    def stat(self, key: str) -> StoredObject:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            raise NotFoundOnServer(f"blob {key} is not in the store") from None
        return StoredObject(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list_objects(self) -> list[StoredObject]:
        found = []
        for shard in sorted(self.root.iterdir()):
            if shard.name.startswith(".") or not shard.is_dir():
                continue
            for entry in sorted(shard.iterdir()):
                if _KEY_RE.fullmatch(entry.name) and entry.is_file():
                    st = entry.stat()
                    found.append(
                        StoredObject(
                            entry.name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)
                        )
                    )
        return found

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        if not (self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)):
            raise ServerError(f"the blob folder {self.root} is missing or not writable")

    def sweep_abandoned(self) -> int:
        """Remove the temporaries of dead processes, then any temporary older than a day."""
        removed = 0
        for instance in self.lease.dead_instances():
            if self.tmp_dir.is_dir():
                for entry in self.tmp_dir.glob(f"{instance}.*.part"):
                    entry.unlink(missing_ok=True)
                    removed += 1
        return removed + self.remove_stale_temporaries()

    def remove_stale_temporaries(self, older_than_seconds: float = 24 * 3600) -> int:
        """Delete temporaries left by a crashed process; returns how many were removed."""
        if not self.tmp_dir.is_dir():
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in self.tmp_dir.iterdir():
            if entry.stat().st_mtime < cutoff:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


# --- S3-compatible bucket ----------------------------------------------------------------------


def _is_not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class _S3Writer(BlobWriter):
    def __init__(
        self,
        client: Any,
        bucket: str,
        object_key: str,
        key: str,
        max_size: int | None,
        part_size: int,
        journal: _UploadJournal | None,
    ) -> None:
        super().__init__(key, max_size)
        self._journal = journal
        self._client = client
        self._bucket = bucket
        self._object_key = object_key
        self._part_size = part_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def _send_part(self, body: bytes) -> None:
        if self._upload_id is None:
            created = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._object_key
            )
            self._upload_id = created["UploadId"]
            if self._journal is not None:
                self._journal.add(self._object_key, created["UploadId"])
        number = len(self._parts) + 1
        answer = self._client.upload_part(
            Bucket=self._bucket,
            Key=self._object_key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def _write(self, data: bytes) -> None:
        self._buffer += data
        try:
            while len(self._buffer) >= self._part_size:
                self._send_part(bytes(self._buffer[: self._part_size]))
                del self._buffer[: self._part_size]
        except BaseException:
            self._abort()
            raise

    def _commit(self) -> None:
        try:
            if self._upload_id is None:
                # Small blob: one plain PUT, which is atomic too.
                self._client.put_object(
                    Bucket=self._bucket, Key=self._object_key, Body=bytes(self._buffer)
                )
            else:
                if self._buffer:
                    self._send_part(bytes(self._buffer))
                self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._object_key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
                if self._journal is not None:
                    self._journal.remove(self._upload_id)
            self._buffer = bytearray()
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            # Best effort: a bucket lifecycle rule cleans up what an abort could not.
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._object_key, UploadId=upload_id
                )
                if self._journal is not None:
                    self._journal.remove(upload_id)


class _UploadJournal:
    """This process's multipart uploads in flight, one small file each, under its lease.

    S3 cannot say which process started an upload; the journal can, so a restarted server
    aborts exactly the uploads of processes that died, never a live one of another replica.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lease = ProcessLease(folder / ".leases")

    def _entry(self, instance: str, upload_id: str) -> Path:
        return self.folder / f"{instance}.{hashlib.sha256(upload_id.encode()).hexdigest()[:32]}"

    def add(self, object_key: str, upload_id: str) -> None:
        entry = self._entry(self.lease.hold(), upload_id)
        entry.write_text(json.dumps({"key": object_key, "upload_id": upload_id}))

    def remove(self, upload_id: str) -> None:
        self._entry(self.lease.hold(), upload_id).unlink(missing_ok=True)

    def abandoned(self) -> Iterator[tuple[str, str, Path]]:
        """(object key, upload id, journal entry) of every upload of a dead process."""
        for instance in self.lease.dead_instances():
            for entry in self.folder.glob(f"{instance}.*"):
                try:
                    raw = json.loads(entry.read_text())
                    yield str(raw["key"]), str(raw["upload_id"]), entry
                except (OSError, ValueError, KeyError, TypeError):
                    entry.unlink(missing_ok=True)


class S3BlobStore(BlobStore):
    """Blobs as objects in an S3-compatible bucket, under an optional key prefix."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        client: Any = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        part_size: int = S3_DEFAULT_PART,
        create_bucket: bool = False,
        journal_dir: Path | None = None,
    ) -> None:
        if part_size < S3_MIN_PART:
            raise ConfigError(f"S3 part size must be at least {S3_MIN_PART} bytes")
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region_name)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.journal = _UploadJournal(journal_dir) if journal_dir is not None else None
        if create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def _object_key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def open_writer(self, key: str, *, max_size: int | None = None) -> BlobWriter:
        return _S3Writer(
            self.client,
            self.bucket,
            self._object_key(key),
            key,
            max_size,
            self.part_size,
            self.journal,
        )

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # botocore: unreachable endpoint, credentials, no bucket
            raise ServerError(f"the bucket {self.bucket} cannot be reached: {exc}") from exc

    def sweep_abandoned(self) -> int:
        """Abort the multipart uploads that processes which died had in flight."""
        if self.journal is None:
            return 0
        aborted = 0
        for object_key, upload_id, entry in self.journal.abandoned():
            with contextlib.suppress(Exception):  # gone already: completed or aborted
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=object_key, UploadId=upload_id
                )
                aborted += 1
            entry.unlink(missing_ok=True)
        return aborted

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        size = self.stat(key).size
        first, last = _check_range(start, end, size)
        if last < first:
            return iter(())
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self._object_key(key), Range=f"bytes={first}-{last}"
            )
        except ClientError as exc:
            if _is_not_found(exc):
                raise NotFoundOnServer(f"blob {key} is not in the store") from None
            raise ServerError(f"blob store read failed: {exc}") from exc
        return self._iter_body(answer["Body"])

    @staticmethod
    def _iter_body(body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(READ_CHUNK)
        finally:
            body.close()

    def stat(self, key: str) -> StoredObject:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if _is_not_found(exc):
                raise NotFoundOnServer(f"blob {key} is not in the store") from None
            raise ServerError(f"blob store stat failed: {exc}") from exc
        return StoredObject(key, int(head["ContentLength"]), head["LastModified"])

    def list_objects(self) -> list[StoredObject]:
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if _KEY_RE.fullmatch(key):
                    found.append(StoredObject(key, int(item["Size"]), item["LastModified"]))
        return found

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def pending_uploads(self) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        return [u["Key"][len(self.prefix) :] for u in answer.get("Uploads", [])]


_S3_URL_OPTIONS = frozenset({"endpoint_url", "region", "part_size_mib", "create"})


def check_blob_store_url(url: str) -> dict[str, str]:
    """Refuse credentials in an s3:// URL (it is kept in server.json); its options."""
    parsed = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    if parsed.scheme == "s3" and ("@" in parsed.netloc or set(query) - _S3_URL_OPTIONS):
        raise ConfigError(
            "the blob store URL may not hold credentials or unknown options "
            f"(it is kept in server.json): allowed are {', '.join(sorted(_S3_URL_OPTIONS))}",
            hint="Give S3 credentials the AWS way: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE with ~/.aws/credentials, or an instance role.",
        )
    return query


def blob_store_from_url(url: str, *, journal_dir: Path | None = None) -> BlobStore:
    """Open a blob store from a URL.

    - `file:///srv/hsm-vault/blobs` or a plain path: a LocalBlobStore.
    - `s3://BUCKET/PREFIX?endpoint_url=http://127.0.0.1:9000&region=us-east-1&create=1`:
      an S3BlobStore; credentials come from boto3's usual sources (environment, profile).
      `journal_dir` (a local folder) records its multipart uploads in flight, so that those
      of a process that died are aborted by `sweep_abandoned`.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalBlobStore(Path(parsed.path if parsed.scheme else url))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"blob store URL {url!r} names no bucket")
        query = check_blob_store_url(url)
        part_mib = int(query.get("part_size_mib", S3_DEFAULT_PART // (1024 * 1024)))
        return S3BlobStore(
            parsed.netloc,
            prefix=parsed.path,
            endpoint_url=query.get("endpoint_url"),
            region_name=query.get("region"),
            part_size=part_mib * 1024 * 1024,
            create_bucket=query.get("create", "") in ("1", "true", "yes"),
            journal_dir=journal_dir,
        )
    raise ConfigError(
        f"unknown blob store URL scheme {parsed.scheme!r}", hint="Use file:///PATH or s3://BUCKET."
    )
