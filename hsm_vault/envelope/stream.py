"""The STREAM payload: AES-256-GCM chunks with a counter and a last-chunk flag in the nonce.

Memory is a few preallocated buffers of about one chunk each, whatever the file size: chunks
are read with `readinto`, sealed or opened with `encrypt_into`/`decrypt_into`, and written from
memoryview slices, so no bytes object is made per chunk. Large inputs overlap reading, sealing
and writing in two helper threads (`seal_overlapped`, `open_payload_overlapped`).
"""

from __future__ import annotations

import collections
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm_vault.envelope.format import TAG_LENGTH
from hsm_vault.errors import PayloadError

Progress = Callable[[int], None]
_LAST = b"\x01"
_NOT_LAST = b"\x00"


def nonce(counter: int, last: bool) -> bytes:
    """11-byte big-endian chunk counter, then 01 for the last chunk or 00."""
    return counter.to_bytes(11, "big") + (_LAST if last else _NOT_LAST)


def _fill(src: BinaryIO, view: memoryview, start: int) -> int:
    """Read into view[start:] until it is full or the stream ends; return the bytes held."""
    filled = start
    end = len(view)
    while filled < end:
        got = src.readinto(view[filled:])  # type: ignore[attr-defined]
        if not got:
            break
        filled += got
    return filled


def is_large(src: BinaryIO, chunk_size: int) -> bool:
    """Whether overlapping I/O pays: a file of several chunks, or a pipe of unknown length."""
    try:
        info = os.fstat(src.fileno())
    except (AttributeError, OSError, ValueError):
        return False  # in-memory streams
    if not stat.S_ISREG(info.st_mode):
        return True
    try:
        position = src.tell()
    except OSError:
        position = 0
    return info.st_size - position > 4 * chunk_size


def payload_size(plaintext_size: int, chunk_size: int) -> int:
    """The size of the STREAM payload that seals `plaintext_size` bytes: every chunk gains a
    tag, and an empty plaintext is one empty final chunk."""
    chunks = max(1, -(-plaintext_size // chunk_size))
    return plaintext_size + chunks * TAG_LENGTH


def plaintext_size(payload_size: int, chunk_size: int) -> int:
    """The plaintext size of a STREAM payload of `payload_size` bytes (age's PlaintextSize).

    Raises `PayloadError` for a size no payload can have: a truncated or padded file.
    """
    sealed = chunk_size + TAG_LENGTH
    full, rest = divmod(payload_size, sealed)
    if payload_size < TAG_LENGTH or (rest == 0 and full == 0):
        raise PayloadError("the payload is truncated: shorter than one chunk")
    if rest == 0:
        return full * chunk_size
    if rest < TAG_LENGTH or (rest == TAG_LENGTH and full > 0):
        raise PayloadError(
            f"the payload's size ({payload_size} bytes) is not one a file can have: "
            "it was truncated or extended"
        )
    return full * chunk_size + rest - TAG_LENGTH


def write_all(dst: BinaryIO, data: memoryview) -> None:
    """Write every byte (a raw file may accept fewer than offered)."""
    while len(data):
        written = dst.write(data)
        if written is None or written >= len(data):
            return
        data = data[written:]


def _seal_chunk(
    aead: AESGCM, counter: int, last: bool, block: memoryview, out: memoryview
) -> memoryview:
    """Seal one chunk into `out`; return the sealed bytes (the chunk and its tag)."""
    sealed = out[: len(block) + TAG_LENGTH]
    aead.encrypt_into(nonce(counter, last), block, None, sealed)
    return sealed


def _open_chunk(
    aead: AESGCM, counter: int, last: bool, sealed: memoryview, out: memoryview
) -> memoryview:
    """Check and open one sealed chunk into `out`; return its plaintext (rules P1-P4)."""
    if len(sealed) < TAG_LENGTH:
        raise PayloadError("the payload is truncated")
    if last and len(sealed) == TAG_LENGTH and counter > 0:
        raise PayloadError("the payload ends with an empty chunk")
    plain = out[: len(sealed) - TAG_LENGTH]
    try:
        aead.decrypt_into(nonce(counter, last), sealed, None, plain)
    except InvalidTag:
        raise PayloadError(
            f"payload chunk {counter} failed authentication"
            + (" (truncated or extended?)" if last else "")
        ) from None
    return plain


def seal(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    chunk_size: int,
    *,
    hasher: Any = None,
    progress: Progress | None = None,
) -> int:
    """Encrypt all of `src` into `dst`; return the plaintext length."""
    aead = AESGCM(key)
    # One byte of look-ahead tells whether a full chunk is the last one.
    inbuf = bytearray(chunk_size + 1)
    inview = memoryview(inbuf)
    outbuf = bytearray(chunk_size + TAG_LENGTH)
    outview = memoryview(outbuf)
    counter = 0
    total = 0
    filled = _fill(src, inview, 0)
    while True:
        last = filled <= chunk_size
        size = filled if last else chunk_size
        sealed = _seal_chunk(aead, counter, last, inview[:size], outview)
        if hasher is not None:
            hasher.update(sealed)
        write_all(dst, sealed)
        total += size
        if progress is not None:
            progress(size)
        if last:
            return total
        counter += 1
        inbuf[0] = inbuf[chunk_size]
        filled = _fill(src, inview, 1)


def open_payload(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    chunk_size: int,
    trailer_length: int,
    *,
    hasher: Any = None,
    progress: Progress | None = None,
) -> tuple[int, bytes]:
    """Decrypt the payload of `src` into `dst`, chunk by verified chunk.

    Returns the plaintext length and the `trailer_length` bytes that follow the payload. Each
    chunk's plaintext is written only after its tag verified (rules P1-P4 raise PayloadError).
    """
    aead = AESGCM(key)
    sealed_size = chunk_size + TAG_LENGTH
    # Look-ahead of the trailer plus one byte: a full chunk is not the last one exactly when
    # more than a trailer follows it.
    capacity = sealed_size + trailer_length + 1
    inbuf = bytearray(capacity)
    inview = memoryview(inbuf)
    outbuf = bytearray(chunk_size)
    outview = memoryview(outbuf)
    counter = 0
    total = 0
    filled = _fill(src, inview, 0)
    while True:
        last = filled < capacity
        size = max(filled - trailer_length, 0) if last else sealed_size
        sealed = inview[:size]
        plain = _open_chunk(aead, counter, last, sealed, outview)
        if hasher is not None:
            hasher.update(sealed)
        write_all(dst, plain)
        total += len(plain)
        if progress is not None:
            progress(size)
        if last:
            return total, bytes(inview[size:filled])
        counter += 1
        rest = filled - sealed_size
        inbuf[:rest] = inview[sealed_size:filled]
        filled = _fill(src, inview, rest)


# --- overlapped I/O for large streams -----------------------------------------------------------
#
# AES-GCM runs at several GB/s; what costs on a large file is copying pages in and out of the
# kernel. A reader thread and a writer thread (both release the GIL in their system calls) let
# reading, sealing and writing overlap on two cores. Memory stays bounded: a fixed set of
# buffers (three for reading, three for writing) circulates between the threads.

_BUFFERS = 3
_EOF = object()


class _Reader(threading.Thread):
    """Reads fixed-size blocks into free buffers and queues (buffer, length)."""

    def __init__(self, src: BinaryIO, size: int) -> None:
        super().__init__(daemon=True, name="hsm-vault-reader")
        self.src = src
        self.free: queue.Queue[bytearray] = queue.Queue()
        self.filled: queue.Queue[Any] = queue.Queue()
        self.stop = threading.Event()
        for _ in range(_BUFFERS):
            self.free.put(bytearray(size))

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    buf = self.free.get(timeout=0.05)
                except queue.Empty:
                    continue
                n = _fill(self.src, memoryview(buf), 0)
                self.filled.put((buf, n))
                if n < len(buf):
                    break
            self.filled.put(_EOF)
        except BaseException as exc:  # handed to the consumer, which raises it
            self.filled.put(exc)

    def get(self) -> tuple[bytearray, int] | None:
        item = self.filled.get()
        if item is _EOF:
            return None
        if isinstance(item, BaseException):
            raise item
        return item


class _Writer(threading.Thread):
    """Writes queued (buffer, length) items and hands the buffers back."""

    def __init__(self, dst: BinaryIO, size: int) -> None:
        super().__init__(daemon=True, name="hsm-vault-writer")
        self.dst = dst
        self.free: queue.Queue[bytearray] = queue.Queue()
        self.todo: queue.Queue[Any] = queue.Queue()
        self.error: BaseException | None = None
        for _ in range(_BUFFERS):
            self.free.put(bytearray(size))

    def run(self) -> None:
        while True:
            item = self.todo.get()
            if item is _EOF:
                return
            buf, n = item
            if self.error is None:
                try:
                    write_all(self.dst, memoryview(buf)[:n])
                except BaseException as exc:
                    self.error = exc
            self.free.put(buf)

    def buffer(self) -> bytearray:
        if self.error is not None:
            raise self.error
        return self.free.get()

    def close(self) -> None:
        self.todo.put(_EOF)
        self.join()
        if self.error is not None:
            raise self.error


def _blocks(
    reader: _Reader, trailer_length: int
) -> Iterator[tuple[memoryview, bool, bytearray | None]]:
    """Yield (block, is_last, buffer to recycle) from the reader's blocks.

    A full block is not the last one exactly when more than `trailer_length` bytes follow it;
    the final block and the trailer come as one view whose last `trailer_length` bytes are the
    trailer.
    """
    pending: collections.deque[tuple[bytearray, int]] = collections.deque()
    after_first = 0  # bytes queued behind the first pending block
    eof = False
    while True:
        while not eof and (not pending or after_first <= trailer_length):
            item = reader.get()
            if item is None:
                eof = True
                break
            if pending:
                after_first += item[1]
            pending.append(item)
        if pending and after_first > trailer_length:
            buf, n = pending.popleft()
            after_first -= pending[0][1]
            yield memoryview(buf)[:n], False, buf
            continue
        tail = bytearray().join(memoryview(buf)[:n] for buf, n in pending)
        for buf, _ in pending:
            reader.free.put(buf)
        yield memoryview(tail), True, None
        return


def _run_pipeline(
    src: BinaryIO,
    dst: BinaryIO,
    in_size: int,
    out_size: int,
    trailer_length: int,
    step: Callable[[memoryview, bool, memoryview], int],
) -> bytes:
    """Feed blocks through `step(block, last, out) -> bytes written to out`; return the trailer."""
    reader = _Reader(src, in_size)
    writer = _Writer(dst, out_size)
    reader.start()
    writer.start()
    trailer = b""
    try:
        for block, last, recycle in _blocks(reader, trailer_length):
            body = block[: len(block) - trailer_length] if last else block
            out = writer.buffer()
            n = step(body, last, memoryview(out))
            writer.todo.put((out, n))
            if recycle is not None:
                reader.free.put(recycle)
            if last:
                trailer = bytes(block[len(block) - trailer_length :])
    finally:
        reader.stop.set()
        writer.close()
    return trailer


def seal_overlapped(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    chunk_size: int,
    *,
    hasher: Any = None,
    progress: Progress | None = None,
) -> int:
    """`seal` with reading and writing overlapped in two threads (for large inputs)."""
    aead = AESGCM(key)
    state = {"counter": 0, "total": 0}

    def step(block: memoryview, last: bool, out: memoryview) -> int:
        sealed = _seal_chunk(aead, state["counter"], last, block, out)
        if hasher is not None:
            hasher.update(sealed)
        state["counter"] += 1
        state["total"] += len(block)
        if progress is not None:
            progress(len(block))
        return len(sealed)

    _run_pipeline(src, dst, chunk_size, chunk_size + TAG_LENGTH, 0, step)
    return state["total"]


def open_payload_overlapped(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    chunk_size: int,
    trailer_length: int,
    *,
    hasher: Any = None,
    progress: Progress | None = None,
) -> tuple[int, bytes]:
    """`open_payload` with reading and writing overlapped in two threads (for large inputs)."""
    aead = AESGCM(key)
    state = {"counter": 0, "total": 0}

    def step(sealed: memoryview, last: bool, out: memoryview) -> int:
        counter = state["counter"]
        plain = _open_chunk(aead, counter, last, sealed, out)
        if hasher is not None:
            hasher.update(sealed)
        state["counter"] = counter + 1
        state["total"] += len(plain)
        if progress is not None:
            progress(len(sealed))
        return len(plain)

    trailer = _run_pipeline(src, dst, chunk_size + TAG_LENGTH, chunk_size, trailer_length, step)
    return state["total"], trailer
