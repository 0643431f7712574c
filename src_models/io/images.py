"""Reading RGB images (PNG, JPEG, TIFF): one reader for the training tiles and anything else that
wants a whole image as (H, W, 3) uint8.  Whole-slide images are :mod:`src_models.io.slides`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from src_models.errors import DiffInfiniteError

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


class ImageError(DiffInfiniteError, ValueError):
    """An image file that cannot be used as an RGB image (message says why)."""


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file: grey is repeated, alpha dropped, other dtypes scaled."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(str(path)))
    else:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ImageError(f"{path}: not an RGB image (shape {arr.shape})")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max() <= 1.0:
            arr = (arr * 255).round()
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)
