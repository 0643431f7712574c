"""fsync helpers shared by the canvas store, training checkpoints and data sets: what is written
and renamed into place is on disk before anything that points at it."""
from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory (its entries: new and renamed files); a no-op where the file system
    cannot fsync directories."""
    try:
        fsync_file(path)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.EISDIR):
            raise


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under ``root``, and its parent (small trees: metadata, new arrays)."""
    root = Path(root)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))
    fsync_dir(root.parent)
