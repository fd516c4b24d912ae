"""The blob store's HTTP API as Python calls, on top of the server client (`hsm_vault.client`).

Every call goes through `VaultClient.request` (authentication, timeouts, problem documents
turned into `hsm_vault.errors`). Uploads stream from a file object or an iterator of bytes
and never read a whole file; downloads stream to a temporary file beside the target that is
renamed into place only when every byte has arrived and the SHA-256 the server stated matched.
`upload_stream` and `download_stream` are what `encrypt --upload` / `decrypt --from-store`
build on: the envelope writes into one and reads from the other, so no temporary plaintext
exists anywhere.

Blob names are per owner; `owner/name` names another user's blob (that user made you one of
its recipients).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar, cast
from urllib.parse import quote

import requests

from hsm_vault.errors import (
    ConflictOnServer,
    FileExistsRefused,
    PermissionDenied,
    ServerError,
    ServerUnreachable,
    UsageError,
)

CHUNK = 1024 * 1024
#: Seconds to connect, and to wait between two reads of a streamed body.
TIMEOUT = (10.0, 300.0)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}$")

Progress = Callable[[int], None]
"""Called with the number of bytes just sent or received."""


class BlobClient(Protocol):
    """What this module needs of `hsm_vault.client.VaultClient`."""

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        timeout: tuple[float, float] | None = None,
    ) -> requests.Response:
        """Send a request; a 2xx response, or the matching ServerError raised."""
        ...


@dataclass(frozen=True)
class BlobMeta:
    """A blob as the server describes it; `recipients` are key ids (hex SHA-256 of SPKIs)."""

    name: str
    owner: str
    size: int
    sha256: str
    created_at: datetime
    recipients: tuple[str, ...]
    envelope_version: int | None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> BlobMeta:
        try:
            return cls(
                name=str(obj["name"]),
                owner=str(obj["owner"]),
                size=int(obj["size"]),
                sha256=str(obj["sha256"]),
                created_at=datetime.fromisoformat(str(obj["created_at"]).replace("Z", "+00:00")),
                recipients=tuple(str(k) for k in obj.get("recipients", [])),
                envelope_version=obj.get("envelope_version"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ServerError(f"the server's blob description is unreadable: {exc}") from exc

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "size": self.size,
            "sha256": self.sha256,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "recipients": list(self.recipients),
            "envelope_version": self.envelope_version,
        }


def split_blob_name(full: str) -> tuple[str | None, str]:
    """`NAME` -> (None, NAME) for your own blob; `OWNER/NAME` -> (OWNER, NAME)."""
    owner, slash, name = full.rpartition("/")
    if not _NAME.match(name) or (slash and not owner):
        raise UsageError(
            f"invalid blob name {full!r}",
            hint="Use 1-200 letters, digits and . _ + = @ -; name another user's blob OWNER/NAME.",
        )
    return (owner or None), name


def _request(client: BlobClient, method: str, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", TIMEOUT)
    try:
        return client.request(method, path, **kwargs)
    except PermissionDenied as exc:
        raise PermissionDenied(
            exc.message,
            hint="Only a blob's owner and its recipients may read it, and only the owner deletes.",
        ) from None


def _path_and_params(name: str) -> tuple[str, dict[str, str]]:
    owner, bare = split_blob_name(name)
    return f"/v1/blobs/{quote(bare, safe='')}", ({"owner": owner} if owner else {})


# --- upload ------------------------------------------------------------------------------------


class _SizedBody:
    """A request body for requests: 1 MiB chunks of a file, hashed and counted, with a length.

    The length makes requests send Content-Length, so the server can refuse an upload over
    its limits before the body is sent. Having no `read`, it is sent by iteration in whole
    chunks rather than in http.client's 16 KiB blocks.
    """

    def __init__(self, source: BinaryIO, length: int, progress: Progress | None) -> None:
        self._source = source
        self._length = length
        self._progress = progress
        self.hash = hashlib.sha256()

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        remaining = self._length
        while remaining > 0:
            data = self._source.read(min(CHUNK, remaining))
            if not data:
                raise UsageError("the file became shorter while it was being uploaded")
            remaining -= len(data)
            self.hash.update(data)
            if self._progress:
                self._progress(len(data))
            yield data


def _counting_iter(
    chunks: Iterable[bytes], state: hashlib._Hash, progress: Progress | None
) -> Iterator[bytes]:
    for chunk in chunks:
        if chunk:
            state.update(chunk)
            if progress:
                progress(len(chunk))
            yield bytes(chunk)


def upload_stream(
    client: BlobClient,
    name: str,
    source: BinaryIO | Iterable[bytes],
    *,
    size: int | None = None,
    replace: bool = False,
    progress: Progress | None = None,
) -> BlobMeta:
    """Upload a blob from a binary file object or an iterator of bytes, streamed.

    A file object is sent with Content-Length (its remaining size, or `size`); an iterator is
    sent chunked. The server's SHA-256 of what it stored is checked against what was sent.
    """
    owner, bare = split_blob_name(name)
    if owner is not None:
        raise UsageError("you can only upload to your own blobs (a name without OWNER/)")
    body: Any
    if hasattr(source, "read"):
        file_obj = cast(BinaryIO, source)
        if size is None:
            try:
                st = os.fstat(file_obj.fileno())
                # Only a regular file has a size to announce; a pipe is sent chunked.
                size = st.st_size - file_obj.tell() if stat.S_ISREG(st.st_mode) else None
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                size = None
        if size is not None:
            body = _SizedBody(file_obj, size, progress)
            state = body.hash
        else:
            state = hashlib.sha256()
            body = _counting_iter(iter(lambda: file_obj.read(CHUNK), b""), state, progress)
    else:
        state = hashlib.sha256()
        body = _counting_iter(cast(Iterable[bytes], source), state, progress)
    path, _ = _path_and_params(bare)
    response = _request(
        client,
        "PUT",
        path,
        data=body,
        params={"replace": "true"} if replace else None,
        headers={"Content-Type": "application/octet-stream"},
    )
    meta = BlobMeta.from_json(response.json())
    if meta.sha256 != state.hexdigest():
        raise ServerError(
            f"the server stored {name} with SHA-256 {meta.sha256}, but we sent {state.hexdigest()}",
            hint="Upload it again; if this repeats, the connection or the server is faulty.",
        )
    return meta


def upload_file(
    client: BlobClient,
    path: Path,
    name: str | None = None,
    *,
    replace: bool = False,
    progress: Progress | None = None,
) -> BlobMeta:
    """Upload the file at `path` as blob `name` (default: the file's name)."""
    with open(path, "rb") as source:
        return upload_stream(client, name or path.name, source, replace=replace, progress=progress)


# --- download ----------------------------------------------------------------------------------


def _stated_sha256(response: requests.Response) -> str | None:
    match = re.search(r"sha-256=:([A-Za-z0-9+/=]+):", response.headers.get("Repr-Digest", ""))
    if match:
        return base64.b64decode(match.group(1)).hex()
    return None


def open_download(
    client: BlobClient, name: str, *, start: int | None = None
) -> tuple[requests.Response, int]:
    """Start a download; (response, length of what it will send). The caller closes it."""
    path, params = _path_and_params(name)
    headers = {"Range": f"bytes={start}-"} if start else {}
    response = _request(client, "GET", path, params=params, headers=headers, stream=True)
    return response, int(response.headers.get("Content-Length", "0"))


def download_stream(
    client: BlobClient, name: str, *, progress: Progress | None = None
) -> Iterator[bytes]:
    """The blob's bytes as an iterator of chunks, streamed.

    Raises (from the iterator, after the last chunk) if fewer bytes arrived than announced or
    their SHA-256 is not the one the server stated: treat what came before as untrusted, as
    the envelope's own authentication does anyway.
    """
    response, length = open_download(client, name)
    return _verified_chunks(response, length, name, progress)


def _verified_chunks(
    response: requests.Response, length: int, name: str, progress: Progress | None
) -> Iterator[bytes]:
    expected = _stated_sha256(response)
    state = hashlib.sha256()
    received = 0
    try:
        for chunk in response.iter_content(CHUNK):
            received += len(chunk)
            state.update(chunk)
            if progress:
                progress(len(chunk))
            yield chunk
    except requests.RequestException as exc:
        raise ServerUnreachable(f"the download of {name} broke off: {exc}") from exc
    finally:
        response.close()
    if received != length:
        raise ServerError(f"the download of {name} ended after {received} of {length} bytes")
    if expected is not None and state.hexdigest() != expected:
        raise ServerError(
            f"the download of {name} does not match the SHA-256 the server stated",
            hint="Download it again; if this repeats, the server's copy is damaged.",
        )


def download_file(
    client: BlobClient,
    name: str,
    out: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> int:
    """Download blob `name` into `out`; returns the number of bytes written.

    The bytes go to a temporary file beside `out`, renamed into place when complete and
    verified; an existing `out` is replaced only with `force`.
    """
    if out.exists() and not force:
        raise FileExistsRefused(f"{out} exists already")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.part")
    written = 0
    try:
        with open(tmp, "xb") as sink:
            for chunk in download_stream(client, name, progress=progress):
                sink.write(chunk)
                written += len(chunk)
            sink.flush()
            os.fsync(sink.fileno())
        if out.exists() and not force:  # created while we were downloading
            raise FileExistsRefused(f"{out} exists already")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return written


# --- streaming to and from code that wants file objects (the envelope) -------------------------

T = TypeVar("T")


class _ProducerFailed(Exception):
    """Raised inside the upload body so the upload breaks off instead of completing."""


def upload_from_writer(
    client: BlobClient,
    name: str,
    produce: Callable[[BinaryIO], T],
    *,
    replace: bool = False,
    progress: Progress | None = None,
) -> tuple[T, BlobMeta]:
    """Upload what `produce(file)` writes, streamed through a pipe; (its result, metadata).

    For `encrypt --upload`: `produce` is e.g. `lambda out: envelope.encrypt(src, out, ...)`.
    It runs in the calling thread (so token sessions stay where they were opened) while the
    upload runs in a worker thread. If `produce` raises, the upload is broken off before its
    end, so the server keeps nothing; if the upload fails (e.g. 413), `produce` stops with a
    broken pipe and the upload's error is raised.
    """
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb")
    writer = os.fdopen(write_fd, "wb")
    produced = threading.Event()
    outcome: dict[str, Any] = {}

    def body() -> Iterator[bytes]:
        while chunk := reader.read(CHUNK):
            yield chunk
        if not produced.is_set():
            raise _ProducerFailed("the producer failed: upload broken off")

    def run_upload() -> None:
        try:
            outcome["meta"] = upload_stream(
                client, name, body(), replace=replace, progress=progress
            )
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            reader.close()  # a producer still writing gets a broken pipe

    worker = threading.Thread(target=run_upload, name="hsm-vault-upload", daemon=True)
    worker.start()
    try:
        try:
            result = produce(writer)
            writer.flush()
            produced.set()
        finally:
            # Closing flushes: a pipe the upload stopped reading breaks here.
            with contextlib.suppress(BrokenPipeError):
                writer.close()
    except BrokenPipeError:
        worker.join()
        if "error" in outcome:
            raise outcome["error"] from None
        raise
    except BaseException:
        worker.join()
        raise
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return result, outcome["meta"]


class _ChunkReader(io.RawIOBase):
    """A read-only raw file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


def open_blob_reader(
    client: BlobClient, name: str, *, progress: Progress | None = None
) -> BinaryIO:
    """A binary file object reading blob `name` as it streams in (for `decrypt --from-store`).

    The SHA-256 check of `download_stream` happens when the end is read; close it when done.
    """
    raw = _ChunkReader(download_stream(client, name, progress=progress))
    return cast(BinaryIO, io.BufferedReader(raw, CHUNK))


# --- the rest ----------------------------------------------------------------------------------


def blob_meta(client: BlobClient, name: str) -> BlobMeta:
    """Size, SHA-256, created-at, owner and recipients of a blob you may read."""
    path, params = _path_and_params(name)
    return BlobMeta.from_json(_request(client, "GET", path + "/meta", params=params).json())


def list_blobs(client: BlobClient, *, shared: bool = False) -> tuple[list[BlobMeta], int]:
    """Your blobs (and with `shared`, those naming one of your cards); (blobs, bytes used)."""
    answer = _request(
        client, "GET", "/v1/blobs", params={"shared": "true"} if shared else None
    ).json()
    try:
        return [BlobMeta.from_json(b) for b in answer["blobs"]], int(answer["used_bytes"])
    except (KeyError, TypeError) as exc:
        raise ServerError(f"the server's blob list is not in a form we can read: {exc}") from exc


def delete_blob(client: BlobClient, name: str) -> None:
    """Delete one of your blobs."""
    path, params = _path_and_params(name)
    _request(client, "DELETE", path, params=params)


# --- re-wrapping: the header alone goes back and forth -----------------------------------------


def _range(client: BlobClient, name: str, first: int, last: int) -> tuple[bytes, str]:
    path, params = _path_and_params(name)
    response = _request(
        client, "GET", path, params=params, headers={"Range": f"bytes={first}-{last}"}
    )
    return response.content, response.headers.get("ETag", "").strip('"')


def read_blob_header(client: BlobClient, name: str) -> tuple[bytes, str]:
    """The envelope header of blob `name` (two small range reads) and the blob's SHA-256.

    The SHA-256 names the version of the blob the header came from: `replace_blob_header`
    sends it back so that the server refuses a swap if the blob changed in between.
    """
    from hsm_vault.envelope.format import MAC_LENGTH, PREFIX_LENGTH, parse_prefix

    prefix, sha256 = _range(client, name, 0, PREFIX_LENGTH - 1)
    length = parse_prefix(prefix)
    rest, again = _range(client, name, PREFIX_LENGTH, PREFIX_LENGTH + length + MAC_LENGTH - 1)
    if again != sha256:
        raise ConflictOnServer(
            f"{name} changed while its header was being read", hint="Run the command again."
        )
    return prefix + rest, sha256


def replace_blob_header(client: BlobClient, name: str, header: bytes, sha256: str) -> BlobMeta:
    """Swap the header of blob `name` (whose SHA-256 must still be `sha256`) for `header`.

    The server checks that the new header fits the payload, writes the new blob beside the
    old one and swaps them atomically; who may read the blob follows the new recipients.
    """
    path, params = _path_and_params(name)
    response = _request(
        client,
        "PUT",
        path + "/header",
        params=params,
        data=header,
        headers={"Content-Type": "application/octet-stream", "If-Match": f'"{sha256}"'},
    )
    return BlobMeta.from_json(response.json())
