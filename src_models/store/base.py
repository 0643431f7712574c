"""What every part of the canvas store shares: the store's layout names, the region states, the
errors and the small helpers that phrase them.  numpy only."""
from __future__ import annotations

import errno
import json
import zlib
from pathlib import Path

import numpy as np

from src_models.errors import DiffInfiniteError

CHUNK = 512
FORMAT = "diffinfinite-canvas/1"
LOCK_SUFFIX = ".lock"
LEGACY_LOCK_FILE = ".diffinfinite.lock"  # inside the store, canvases made before region_state
STATE = "diffinfinite/region_state"
LATENT = "diffinfinite/latent"
MASK_SOURCE = "diffinfinite/mask_source"
MASK_WRITTEN = "diffinfinite/mask_written"
STATE_COPY = "diffinfinite/region_state_copy"  # the second record of region_state, written after it
MASK_CRC = "diffinfinite/mask_crc"  # (mask chunks down, across) uint64: 2**32 + CRC-32 of each written mask chunk
LAYOUT = 2  # info["layout"]: canvases that have region_state_copy and mask_crc
STATE_CHUNK = 64  # regions per side of one region_state chunk

# region states (column 0 of region_state)
PENDING, SAMPLED, COPIED, SKIPPED = 0, 1, 2, 3


class CanvasError(DiffInfiniteError, RuntimeError):
    """A canvas that cannot be created, opened or written (message says why)."""


class CanvasLockedError(CanvasError):
    pass


class CanvasDamagedError(CanvasError):
    """The store cannot be read where it should hold data (a chunk or metadata file is damaged)."""


def crc(arr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(arr).data) & 0xFFFFFFFF


def _check_json(values: dict, what: str) -> None:
    try:
        json.dumps(values, allow_nan=False)
    except ValueError:
        raise CanvasError(f"{what} hold a value that is not a finite number: {values}") from None
    except TypeError as e:
        raise CanvasError(f"{what} cannot be stored: {e}") from None


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _io_error(path: Path, e: OSError, reading: bool = False) -> CanvasError:
    if e.errno == errno.ENOSPC:  # (whether any region was finished is not known here: said neutrally)
        return CanvasError(f"disk full while writing {path}; whatever was finished is kept: free space and resume")
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return CanvasError(f"{path} is not writable ({e.strerror}); nothing finished there was changed")
    return CanvasError(f"cannot {'read' if reading else 'write'} {path}: {e.strerror or e}")
