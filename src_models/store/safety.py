"""What an output path may be: the checks that keep ``--overwrite`` (and every command that makes
a canvas) from replacing anything the tool did not make, and the renames that put a new canvas in
place whole.

* :func:`real_path` is the one name of a canvas: links resolved (the lock and every check use it).
* :func:`check_out_path` refuses the current directory, a directory above it and a directory that
  holds an input (the mask, the slide, the source canvas), with or without ``--overwrite``.
* :func:`check_replaceable` lets ``--overwrite`` replace only a canvas this tool made: a
  directory whose ``zarr.json`` says ``diffinfinite-canvas`` and that holds nothing else.
* :func:`describe` says in a few words what is at a path (for the one-line refusals).
* :func:`exchange` swaps two directories in one step (``renameat2(RENAME_EXCHANGE)`` on Linux; two
  renames elsewhere), :func:`rename_new` puts a directory in place only where nothing is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
from pathlib import Path

from src_models.store.base import FORMAT, LEGACY_LOCK_FILE, CanvasError

BUILD_TAG = ".diffinfinite-new-"  # .NAME.diffinfinite-new-PID: a canvas being built beside NAME
OLD_TAG = ".diffinfinite-old-"  # .NAME.diffinfinite-old-PID: the canvas it replaced, being deleted
# the top-level entries of a canvas: anything else in it is the user's and stops --overwrite
_CANVAS_ENTRIES = {"zarr.json", "labels", "diffinfinite", LEGACY_LOCK_FILE}
_LEVEL = re.compile(r"\d+")


def real_path(path: str | os.PathLike) -> Path:
    """``path`` with every link resolved (a missing last component kept as named)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _canvas_format(path: Path) -> str | None:
    try:
        with open(path / "zarr.json", "rb") as f:
            meta = json.loads(f.read(1 << 22))
        return meta["attributes"]["diffinfinite"]["format"]
    except Exception:  # noqa: BLE001 - missing, unreadable or not ours: not a canvas
        return None


def is_canvas(path: str | os.PathLike) -> bool:
    """True for a directory whose ``zarr.json`` names it a napari-diffinfinite canvas."""
    path = Path(path)
    return path.is_dir() and _canvas_format(path) == FORMAT


def _foreign_entries(path: Path) -> list[str]:
    out = []
    for entry in sorted(os.listdir(path)):
        if entry in _CANVAS_ENTRIES or _LEVEL.fullmatch(entry):
            continue
        out.append(entry)
    return out


def _listing(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def describe(path: str | os.PathLike) -> str:
    """What is at ``path``, in a few words: a canvas, a file, a folder and what it holds."""
    path = Path(path)
    link = f"a link to {os.readlink(path)}, " if path.is_symlink() else ""
    if not path.exists():
        return f"{link}nothing" if link else "nothing"
    if path.is_dir():
        if is_canvas(path):
            return f"{link}a napari-diffinfinite canvas"
        try:
            entries = sorted(os.listdir(path))
        except OSError:
            entries = []
        if not entries:
            return f"{link}an empty folder that is not a canvas"
        return f"{link}a folder that is not a napari-diffinfinite canvas (it holds {_listing(entries)})"
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return f"{link}a file of {size:,} bytes, not a canvas"


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_out_path(path: str | os.PathLike, inputs=(), option: str = "--out", what: str = "canvas") -> None:
    """Refuse an output that is the current directory, holds it, or holds (or is) an input
    (``what`` names the output in the advice: a canvas, a data set folder, a file)."""
    real = real_path(path)
    cwd = real_path(os.getcwd())
    if _is_within(cwd, real):
        where = "the current directory" if real == cwd else f"a folder above the current directory ({cwd})"
        example = {"canvas": "canvas.zarr", "data set folder": "tiles"}.get(what, "out")
        raise CanvasError(f"{option} {path} is {where}; name a new {what} inside it instead, e.g. "
                          f"{option} {Path(path) / example}")
    for item in inputs:
        if item is None:
            continue
        inp = real_path(item)
        if _is_within(inp, real):
            verb = "is" if inp == real else "holds"
            raise CanvasError(f"{option} {path} {verb} the input {item}; name a new {what} for the output")


def check_replaceable(path: str | os.PathLike, inputs=(), option: str = "--out") -> None:
    """``--overwrite`` may replace ``path`` only when it is a canvas this tool made, holding only
    what a canvas holds; anything else is refused, naming what is there."""
    check_out_path(path, inputs, option)
    path = Path(path)
    real = real_path(path)
    if not real.exists():
        return
    if not real.is_dir():
        raise CanvasError(f"{option} {path} is {describe(path)}; --overwrite replaces only a canvas: "
                          "move the file away or choose another name")
    if not is_canvas(real):
        raise CanvasError(f"{option} {path} is {describe(path)}; --overwrite replaces only a canvas this tool made: "
                          "choose another name")
    foreign = _foreign_entries(real)
    if foreign:
        raise CanvasError(f"{option} {path} is a canvas that also holds {_listing(foreign)}, which a canvas does not "
                          "make; move those out before --overwrite, or choose another name")


def exists_message(path: str | os.PathLike, option: str = "--out", resume: bool = True) -> str:
    """The refusal of an output that exists, naming what is there and what the user can do."""
    path = Path(path)
    what = describe(path)
    if is_canvas(real_path(path)):
        also = " or --resume to finish it" if resume else ""
        return f"{path} exists; pass --overwrite to replace it{also} (it is {what})"
    return f"{path} exists and is {what}; choose another {option} (--overwrite replaces only a canvas)"


# ------------------------------------------------------------------------------------------ renames
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_libc = None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2); False where it is not available (then the caller renames the plain way)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.renameat2  # noqa: B018 - glibc 2.28+
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        return False
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):  # the kernel or file system does not offer it
        return False
    raise OSError(err, os.strerror(err), str(dst))


def rename_new(src: Path, dst: Path) -> None:
    """Put directory ``src`` at ``dst``, where nothing is (never over something that appeared)."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if dst.exists() or dst.is_symlink():
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def exchange(new: Path, old: Path) -> None:
    """Swap directories ``new`` and ``old``: afterwards ``old``'s name holds the new canvas and
    ``new``'s name the old one.  One step on Linux; elsewhere two renames (a crash in between
    leaves the new canvas under ``new``'s name and the old one under an ``OLD_TAG`` name)."""
    if _renameat2(new, old, _RENAME_EXCHANGE):
        return
    aside = old.with_name(f".{old.name}{OLD_TAG}{os.getpid()}")
    os.rename(old, aside)
    os.rename(new, old)
    os.rename(aside, new)


def build_path(real: Path) -> Path:
    """Where a canvas for ``real`` is built before it is renamed into place."""
    return real.with_name(f".{real.name}{BUILD_TAG}{os.getpid()}")


def leftovers(real: Path) -> list[Path]:
    """Canvases an earlier, killed run was building (or replacing) beside ``real``: only ones
    with this tool's names and nothing but canvas contents (the caller holds the lock)."""
    out = []
    try:
        names = os.listdir(real.parent)
    except OSError:
        return out
    for name in names:
        for tag in (BUILD_TAG, OLD_TAG):
            prefix = f".{real.name}{tag}"
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                p = real.parent / name
                if p.is_dir() and not p.is_symlink() and not _foreign_entries(p):
                    out.append(p)
    return out
