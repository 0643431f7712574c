"""Durable writes, shared by the canvas store, training checkpoints, data sets, exports and the
plugin's settings: fsync helpers, and the one write-then-rename (:func:`atomic_path`,
:func:`atomic_write`, :func:`atomic_dir`) every file that must appear whole goes through.  What is
written and renamed into place is on disk before anything that points at it."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


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


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Write a file by name and put it in place whole: yields a unique temporary path beside
    ``path`` (``.NAME.XXXXXXXX.part``, so concurrent writers never share one); when the block ends
    without an error the file is fsync'd, renamed over ``path`` and the directory fsync'd; on an
    error it is removed and ``path`` is left as it was.  For writers that want a path (PIL,
    tifffile, numpy); :func:`atomic_write` gives an open file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", fsync: bool = True, **open_kwargs) -> Iterator[IO]:
    """``open(path, mode)`` that replaces ``path`` whole or not at all (see :func:`atomic_path`):
    a reader never sees half a file, a crash leaves the previous one."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = True) -> Path:
    """Replace ``path`` with ``text`` whole (see :func:`atomic_write`)."""
    with atomic_write(path, "w", fsync=fsync) as f:
        f.write(text)
    return Path(path)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A folder put in place whole: yields a unique temporary folder beside ``path``; when the
    block ends every file in it is fsync'd, the old ``path`` (if any) removed, the folder renamed
    to ``path`` and its parent fsync'd.  A kill at any moment leaves the previous ``path`` or the
    new one, never a mix (a kill between removing the old one and the rename leaves neither)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part"))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                fsync_file(f)
        fsync_dir(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
