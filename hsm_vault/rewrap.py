"""Re-wrap files in place: a new header, the payload bytes copied as they are.

The file key is unwrapped once on the token (`envelope.rewrap`); nothing is decrypted, so no
plaintext exists at any point. The new file is written beside the old one and renamed over
it only when complete and synced, and only if the old file did not change meanwhile: a
failure at any point leaves the original untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hsm_vault.envelope import Header, Identity, read_header
from hsm_vault.envelope.rewrap import RecipientChange, new_key_ids, rewrap, rewrap_header
from hsm_vault.envelope.stream import Progress
from hsm_vault.errors import EnvelopeError, UsageError

_COPY_CHUNK = 8 << 20
# copy_file_range(2) is refused by some filesystems; then the bytes go through user space.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


@dataclass(frozen=True)
class RewrapResult:
    """What a re-wrap did: `changed` is False when the file already had that recipient set."""

    path: Path
    changed: bool
    header: Header
    payload_size: int


def rewrap_file(
    path: Path,
    identities: Sequence[Identity],
    change: RecipientChange,
    *,
    progress: Progress | None = None,
) -> RewrapResult:
    """Give `path` the recipients `change` describes, in place, without re-encrypting it."""
    return _rewrap_in_place(
        path, change, lambda header: rewrap(header, identities, change), progress
    )


def rewrap_file_with_key(
    path: Path, file_key: bytes, change: RecipientChange, *, progress: Progress | None = None
) -> RewrapResult:
    """`rewrap_file` with a file key obtained some other way (a recovery ceremony)."""
    return _rewrap_in_place(
        path, change, lambda header: rewrap_header(header, file_key, change), progress
    )


def _rewrap_in_place(
    path: Path,
    change: RecipientChange,
    new_header: Callable[[Header], Header],
    progress: Progress | None,
) -> RewrapResult:
    target = Path(os.path.realpath(path))
    try:
        source = open(target, "rb", buffering=0)  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="Check the path.") from None
    with source:
        before = os.fstat(source.fileno())
        header = read_header(source)
        payload_size = before.st_size - len(header.raw)
        wanted = new_key_ids(header, change)
        if wanted == [entry.key_id for entry in header.recipients]:
            return RewrapResult(path, False, header, payload_size)
        new = new_header(header)
        _replace(target, source.fileno(), before, header, new, progress)
    return RewrapResult(path, True, new, payload_size)


def _replace(
    target: Path,
    source_fd: int,
    before: os.stat_result,
    old: Header,
    new: Header,
    progress: Progress | None,
) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise UsageError(f"cannot write in {target.parent}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            os.fchmod(out.fileno(), before.st_mode & 0o7777)
            _write_all(out.fileno(), new.raw)
            _copy_rest(source_fd, out.fileno(), len(old.raw), progress)
            os.fsync(out.fileno())
        now = os.stat(target)
        if (now.st_ino, now.st_size, now.st_mtime_ns) != (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        ):
            raise EnvelopeError(
                f"{target} changed while it was being re-wrapped",
                hint="Nothing was written; run the re-wrap again.",
            )
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_rest(source_fd: int, out_fd: int, offset: int, progress: Progress | None) -> None:
    """Copy `source_fd` from `offset` to its end into `out_fd` (in the kernel when it can)."""
    use_range = hasattr(os, "copy_file_range")
    while True:
        if use_range:
            try:
                n = os.copy_file_range(source_fd, out_fd, _COPY_CHUNK, offset)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                use_range = False
                continue
        else:
            block = os.pread(source_fd, _COPY_CHUNK, offset)
            _write_all(out_fd, block)
            n = len(block)
        if n == 0:
            return
        offset += n
        if progress is not None:
            progress(n)
