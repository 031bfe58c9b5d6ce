"""Atomic writes: a temp file in the same folder, flushed, then os.replace.

A reader sees the old file or the new one, never a half-written one; a crash leaves
at most a stray ``.tmp-*`` file, which no reader looks at. Files get the mode any other
tool's would (0666 less the umask), not the 0600 of a temporary file, so a lab's group
members can read each other's results.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from kd.errors import UserError


@contextmanager
def atomic_path(path: Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    ``fsync=False`` still never shows a reader a half-written file after a process dies (the
    rename is atomic); only an operating-system crash can lose the last write. Checkpoints
    use it (a damaged one is detected on load and training restarts); results do not.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from None
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            flush_to_disk(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, *_FULL):
            raise _cannot_write(path, e) from None
        raise


def flush_to_disk(path: Path) -> None:
    """Flush a written file to the disk (where a full disk or a quota may first show, on NFS and Lustre)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def not_a_folder(folder: Path) -> Path | None:
    """The first of ``folder`` and the folders above it that is there but not a folder (a file where
    a job's folder, or its ``jobs/``, belongs), else None."""
    for p in (Path(folder), *Path(folder).parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # a full disk or quota: the user's to fix, not a bug


def _cannot_write(path: Path, e: OSError) -> Exception:
    """A write refused by the file system (permissions, read-only, full, a folder where the file
    belongs or a file where its folder does) as one line naming the file."""
    if e.errno == errno.EISDIR or (e.errno == errno.ENOTDIR and path.is_dir()):
        return UserError(f"{path}: a folder where this file belongs", hint=f"move {path} away and run again")
    if e.errno in (errno.EEXIST, errno.ENOTDIR):  # making its folder: a file (or one above it) is there
        above = not_a_folder(path.parent) or path.parent
        return UserError(f"{above}: a file where a folder belongs (writing {path})", hint=f"move {above} away and run again")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, *_FULL):
        return UserError(f"{path}: cannot write it ({e.strerror})",
                         hint="check the folder's permissions and free space" if e.errno not in _FULL else None)
    return e


_UMASK = threading.Lock()


def _umask() -> int:
    with _UMASK:  # reading the umask means setting it, then straight back: one thread at a time
        mask = os.umask(0)  # (a pack's results and checkpoints are written from threads)
        os.umask(mask)
    return mask


def write_with(path: Path, write: Callable[[IO[bytes]], Any], fsync: bool = True) -> None:
    with atomic_path(path, fsync) as tmp, open(tmp, "wb") as f:
        write(f)


def write_hashed(path: Path, write: Callable[[IO[bytes]], Any], fsync: bool = True) -> tuple[int, str]:
    """``write_with``, the bytes hashed (SHA-256) and counted on their way to the file: the file's
    size and digest, without a second pass over it or a copy of it in memory. An error of the file
    (a full disk) is raised as itself, and said as the file's, where the writer hid it behind one
    of its own (torch.save's zip writer ends the file when interrupted, and raises its 'unexpected
    pos' instead)."""
    sink = _Hashed()

    def into(f: IO[bytes]) -> None:
        sink.file = f
        try:
            write(sink)
        except Exception:
            if sink.error is not None:
                raise sink.error from None
            raise
    write_with(path, into, fsync)
    return sink.size, sink.sha256.hexdigest()


class _Hashed:
    """A file's ``write``, hashed and counted; it keeps the file's first error."""

    def __init__(self) -> None:
        self.file: IO[bytes] | None = None
        self.sha256, self.size, self.error = hashlib.sha256(), 0, None

    def write(self, data) -> int:
        try:
            written = self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return written

    def flush(self) -> None:
        self.file.flush()


def write_text(path: Path, text: str) -> None:
    write_with(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
