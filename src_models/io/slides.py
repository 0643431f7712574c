"""Read-only access to real slides and existing images, region by region (numpy + zarr).

Supported: Aperio SVS and (OME-)TIFF through ``tifffile`` (tiles are read lazily through its
zarr view), and OME-Zarr images whose first dataset is (c, y, x) or (y, x, c) RGB, including
this project's canvases.  PNG/JPEG are read whole (small images only).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import zarr

from src_models.errors import DiffInfiniteError


class SlideError(DiffInfiniteError, ValueError):
    """A slide that cannot be read (message says why)."""


class Slide:
    def __init__(self, path: Path, array, channel_first: bool, mpp: float | None, closer=None):
        self.path = path
        self._a = array
        self._cf = channel_first
        self.mpp = mpp
        self._closer = closer
        shape = array.shape
        self.height, self.width = (shape[1], shape[2]) if channel_first else (shape[0], shape[1])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0, y1) x [x0, x1) as (h, w, 3) uint8."""
        if self._cf:
            block = np.moveaxis(np.asarray(self._a[:3, y0:y1, x0:x1]), 0, -1)
        else:
            block = np.asarray(self._a[y0:y1, x0:x1])
            if block.ndim == 2:
                block = np.repeat(block[..., None], 3, axis=-1)
            block = block[..., :3]
        if block.dtype != np.uint8:
            if block.dtype.kind == "f":
                block = np.clip(block * 255 if block.max() <= 1 else block, 0, 255)
            elif block.dtype.itemsize > 1:
                block = block / (np.iinfo(block.dtype).max / 255)
            block = np.rint(block).astype(np.uint8)
        return block

    def close(self):
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _aperio_mpp(description: str | None) -> float | None:
    m = re.search(r"MPP\s*=\s*([0-9.]+)", description or "")
    return float(m.group(1)) if m else None


def open_slide(path: str | Path) -> Slide:
    path = Path(path)
    if not path.exists():
        raise SlideError(f"slide {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            return _open_zarr(path)
        if suffix in (".svs", ".tif", ".tiff", ".ndpi", ".scn"):
            import tifffile

            tf = tifffile.TiffFile(path)
            series = tf.series[0]
            if series.axes not in ("YXS", "YX", "SYX", "CYX"):
                tf.close()
                raise SlideError(f"{path}: unsupported axes {series.axes!r} (expected an RGB image)")
            arr = zarr.open(series.aszarr(level=0), mode="r")
            desc = tf.pages[0].description if tf.pages else ""
            return Slide(path, arr, series.axes in ("SYX", "CYX"), _aperio_mpp(desc), tf.close)
        if suffix in (".png", ".jpg", ".jpeg", ".bmp"):
            from skimage import io

            arr = io.imread(path)
            if arr.ndim not in (2, 3):
                raise SlideError(f"{path}: not an image")
            return Slide(path, arr, False, None)
    except SlideError:
        raise
    except Exception as e:  # decoders raise many types
        raise SlideError(f"cannot read slide {path}: {e}") from None
    raise SlideError(f"{path}: unsupported slide format {suffix!r} (SVS, TIFF, OME-TIFF, OME-Zarr, PNG)")


def _open_zarr(path: Path) -> Slide:
    group = zarr.open_group(str(path), mode="r")
    attrs = group.attrs.asdict()
    ome = attrs.get("ome", attrs)
    ms = ome.get("multiscales")
    if not ms:
        raise SlideError(f"{path} is a zarr group without OME multiscales")
    first = ms[0]["datasets"][0]["path"]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
    arr = group[first]
    channel_first = axes[:1] == ["c"] or (arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4))
    scale = None
    for tr in ms[0]["datasets"][0].get("coordinateTransformations", []):
        if tr.get("type") == "scale":
            scale = float(tr["scale"][-1])
    return Slide(path, arr, channel_first, scale)
