"""Output files that appear only when complete, and leave nothing named behind when killed.

Decrypted plaintext is verified chunk by chunk before it is written, but until the last chunk
verified, the output must not exist under any name: a process killed half-way (SIGKILL, power
loss) cannot clean up after itself.

- On Linux the bytes go to an unnamed file (`open(DIR, O_TMPFILE)`), which gets its name with
  `linkat` only once complete. A killed process leaves nothing in the folder at all.
- Elsewhere (or on a file system without O_TMPFILE) they go to `.NAME.XXXX.hsmv-part`, locked
  (`flock`) while it is written, then renamed. A later output in the same folder removes part
  files whose writer is gone: ours (by their suffix), unlocked, and not brand new.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hsm_vault.errors import FileExistsRefused, UsageError

#: The suffix of this program's named temporaries (what the sweep may remove).
PART_SUFFIX = ".hsmv-part"
#: A part file younger than this is never swept (its writer may not have locked it yet).
_SWEEP_MIN_AGE = 10.0
#: Without file locks, only part files older than this are swept.
_SWEEP_UNLOCKED_AGE = 24 * 3600.0
_PROC_FD = Path("/proc/self/fd")


@contextlib.contextmanager
def complete_file(dst: Path, mode: int, *, replace: bool) -> Iterator[BinaryIO]:
    """An unbuffered binary file that becomes `dst` (with `mode`) if the block succeeds.

    An existing `dst` is replaced only with `replace` (FileExistsRefused otherwise, also when
    it appeared while the block ran). On failure nothing is left and `dst` is untouched.
    """
    parent = dst.parent if str(dst.parent) else Path(".")
    fd = _open_unnamed(parent, mode)
    if fd is None:
        with _named_output(dst, parent, mode, replace=replace) as out:
            yield out
        return
    with os.fdopen(fd, "wb", buffering=0) as out:
        yield out
        os.fsync(fd)
        _link_into_place(fd, dst, replace=replace)


def _open_unnamed(parent: Path, mode: int) -> int | None:
    """An unnamed file in `parent` (O_TMPFILE), or None where that is not available."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not _PROC_FD.is_dir():
        return None
    try:
        fd = os.open(parent, flag | os.O_WRONLY, mode)
    except IsADirectoryError:  # a kernel without O_TMPFILE reads it as O_DIRECTORY
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.EISDIR):  # not supported here
            return None
        raise UsageError(f"cannot write in {parent}: {exc.strerror}") from None
    os.fchmod(fd, mode)
    return fd


def _link_into_place(fd: int, dst: Path, *, replace: bool) -> None:
    # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names the open file (AT_EMPTY_PATH would
    # need CAP_DAC_READ_SEARCH). os.link uses linkat only when given a dir_fd.
    source = str(_PROC_FD / str(fd))
    parent = os.open(dst.parent if str(dst.parent) else ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            os.link(source, dst.name, dst_dir_fd=parent, follow_symlinks=True)
            return
        except FileExistsError:
            if not replace:
                raise FileExistsRefused(f"{dst} exists") from None
        # Replacing: link under a temporary name (the content is complete), then rename over.
        tmp = f".{dst.name}.{secrets.token_hex(6)}{PART_SUFFIX}"
        os.link(source, tmp, dst_dir_fd=parent, follow_symlinks=True)
        try:
            os.replace(tmp, dst.name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            os.unlink(tmp, dir_fd=parent)
            raise
    finally:
        os.close(parent)


@contextlib.contextmanager
def _named_output(dst: Path, parent: Path, mode: int, *, replace: bool) -> Iterator[BinaryIO]:
    """The portable path: a locked `.NAME.XXXX.hsmv-part` renamed into place."""
    sweep_stale_parts(parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=PART_SUFFIX, dir=parent)
    except OSError as exc:
        raise UsageError(f"cannot write in {parent}: {exc.strerror}") from None
    try:
        _lock(fd)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", buffering=0) as out:
            yield out
            os.fsync(out.fileno())
            if not replace and dst.exists():
                raise FileExistsRefused(f"{dst} exists")
            os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _lock(fd: int) -> bool:
    """Hold an exclusive lock on `fd` while it is open; False where there are no locks."""
    try:
        import fcntl
    except ImportError:
        return False
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True


def sweep_stale_parts(folder: Path) -> int:
    """Remove this program's part files in `folder` whose writer is gone; how many."""
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(PART_SUFFIX)):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if age < _SWEEP_MIN_AGE or not entry.is_file(follow_symlinks=False):
                continue
            if fcntl is None:
                if age > _SWEEP_UNLOCKED_AGE:
                    os.unlink(entry.path)
                    removed += 1
                continue
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its writer holds it if alive
            except BlockingIOError:
                continue
            finally:
                os.close(fd)
            os.unlink(entry.path)
            removed += 1
        except OSError:
            continue
    return removed
