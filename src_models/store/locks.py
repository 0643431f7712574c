"""The writer lock of a canvas: a file beside the store (``<name>.zarr.lock``), held with flock by the
one process that may write, and the lock file older versions kept inside the store."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from src_models.store.base import LEGACY_LOCK_FILE, LOCK_SUFFIX, CanvasLockedError, _io_error


def lock_path(path: str | os.PathLike) -> Path:
    """The writer lock of a canvas: a file beside the store (outside zarr's listings)."""
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


def _acquire_lock(path: Path) -> int:
    """Take the writer lock beside the store (``<name>.lock``), or say who holds it.

    ``path`` is the canvas's real path (links resolved, :func:`~src_models.store.safety.real_path`),
    so every name of a canvas meets the same lock.  The lock file is opened without following a
    link (a link there is refused, never written through)."""
    lock = lock_path(path)
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP or os.path.islink(lock):
                raise CanvasLockedError(f"{lock} is a link, not the writer lock of {path}; remove the link "
                                        "(nothing was written through it)") from None
            raise _io_error(path, e) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CanvasLockedError(f"{lock} is not a lock file; move it away")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise CanvasLockedError(f"{path} is being written by another process (pid {holder}); wait for it or stop it") from None
        try:  # the holder before us may have removed the file as it let go: then lock the new one
            same = os.lstat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)
    raise CanvasLockedError(f"{path}: cannot take the writer lock {lock}")


def _acquire_legacy_lock(path: Path) -> None:
    """Refuse a store that a process of an older version (lock inside the store) is writing."""
    lock = path / LEGACY_LOCK_FILE
    if not lock.exists():
        return
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CanvasLockedError(f"{path} is being written by another process; wait for it or stop it") from None
    finally:
        os.close(fd)


def _release_lock(fd: int | None, path: Path | None = None) -> None:
    if fd is None:
        return
    try:
        if path is not None:
            try:
                if os.lstat(lock_path(path)).st_ino == os.fstat(fd).st_ino:
                    os.unlink(lock_path(path))
            except OSError:
                pass
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
