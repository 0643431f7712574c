"""Reading label masks (PNG, TIFF, NPY) and fitting them to a canvas.  numpy only."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from src_models.errors import DiffInfiniteError
from src_models.io.colours import hex_rgb


# the most pixels a mask file may decode to: Pillow's own refusal threshold for PNG (twice its
# MAX_IMAGE_PIXELS warning), applied to TIFF and NPY as well
MAX_MASK_PIXELS = 2 * 89_478_485
MAX_MASK_BYTES = 512 * 2**20  # and the most bytes it may decode to (a uint64 or RGBA-16 mask is 8 bytes a pixel)
JPEG_SUFFIXES = (".jpg", ".jpeg")
MASK_EXTS = (".png", ".tif", ".tiff", ".npy")  # the label-mask files a folder is searched for


class MaskError(DiffInfiniteError, ValueError):
    """A mask file that cannot be used (message says why)."""


def _jpeg_hint(name: str) -> str:
    if str(name).lower().endswith(JPEG_SUFFIXES):
        return "; JPEG compression changes label values: save label masks as PNG, TIFF or NPY"
    return ""


def _check_pixels(path: Path, shape, itemsize: int = 1) -> None:
    n = 1
    for v in shape:
        n *= int(v)
    if n > MAX_MASK_PIXELS:
        raise MaskError(f"mask {path} has shape {tuple(int(v) for v in shape)} ({n / 1e6:,.0f} M values), more than "
                        f"the {MAX_MASK_PIXELS / 1e6:,.0f} M limit; give a smaller mask and stretch it with --scale or --size")
    if n * int(itemsize) > MAX_MASK_BYTES:
        raise MaskError(f"mask {path} decodes to {n * int(itemsize) / 2**20:,.0f} MiB ({tuple(int(v) for v in shape)} "
                        f"values of {int(itemsize)} bytes), more than the {MAX_MASK_BYTES >> 20} MiB limit; save the "
                        "labels as 8-bit (uint8) or give a smaller mask and stretch it with --scale or --size")


def load_mask(path: str | Path, colours: list[str] | None = None) -> np.ndarray:
    """A 2-D uint8 label image from PNG/TIFF/NPY.

    Grey images are taken as labels.  An RGB(A) image is accepted when all its channels are
    equal, or when every colour in it is one of ``colours`` (a model card's class colours).
    """
    path = Path(path)
    if not path.exists():
        raise MaskError(f"mask file {path} does not exist")
    if path.is_dir():
        raise MaskError(f"mask {path} is a directory; give a label image file (PNG, TIFF or NPY)")
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise MaskError(f"cannot read mask {path}: {e.strerror}") from None
    if empty:
        raise MaskError(f"mask file {path} is empty (0 bytes)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
            _check_pixels(path, arr.shape, arr.dtype.itemsize)
            arr = np.asarray(arr)
        elif suffix in (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"):
            if suffix in (".tif", ".tiff"):
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    if not tif.series:
                        raise MaskError(f"cannot read mask {path}: no image in the TIFF file")
                    _check_pixels(path, tif.series[0].shape, np.dtype(tif.series[0].dtype).itemsize)
                    arr = tif.series[0].asarray()
            else:
                from PIL import Image
                from skimage import io

                with Image.open(path) as im:  # the header only: size and bytes before decoding
                    bands = len(im.getbands())
                    depth = 2 if im.mode in ("I;16", "I;16B", "I;16L") else 4 if im.mode in ("I", "F") else 1
                    _check_pixels(path, (im.height, im.width, bands), depth)
                arr = io.imread(path)
        else:
            raise MaskError(f"mask {path}: unsupported format {suffix!r} (use PNG, TIFF or NPY)")
    except MaskError:
        raise
    except Exception as e:  # decoders raise many types for a damaged file
        raise MaskError(f"cannot read mask {path}: {e}") from None
    return as_labels(arr, colours, str(path))


def as_labels(arr: np.ndarray, colours: list[str] | None = None, name: str = "mask") -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if (rgb == rgb[..., :1]).all():
            arr = rgb[..., 0]
        elif colours:
            lut = {hex_rgb(c): i for i, c in enumerate(colours)}
            flat = rgb.reshape(-1, 3)
            uniq, inv = np.unique(flat, axis=0, return_inverse=True)
            missing = [tuple(int(v) for v in u) for u in uniq if tuple(int(v) for v in u) not in lut]
            if missing:
                raise MaskError(f"{name}: colours {missing[:3]} are not class colours of the model{_jpeg_hint(name)}")
            arr = np.array([lut[tuple(int(v) for v in u)] for u in uniq], dtype=np.uint8)[inv.ravel()].reshape(rgb.shape[:2])
        else:
            raise MaskError(f"{name} is a colour image; give a label image (one integer class per pixel){_jpeg_hint(name)}")
    if arr.ndim != 2:
        raise MaskError(f"{name} must be a 2-D label image, got shape {arr.shape}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise MaskError(f"{name} has dtype {arr.dtype}; labels must be integers")
    if arr.size == 0:
        raise MaskError(f"{name} is empty")
    if arr.min() < 0 or arr.max() > 255:
        raise MaskError(f"{name} has labels outside 0..255 (min {arr.min()}, max {arr.max()})")
    return arr.astype(np.uint8)


def check_labels(mask: np.ndarray, classes: list[str], name: str = "mask") -> None:
    top = int(mask.max())
    if top >= len(classes):
        present = sorted(int(v) for v in np.unique(mask))
        raise MaskError(
            f"{name} has labels {present}, but the model knows classes 0..{len(classes) - 1} "
            f"({', '.join(f'{i}={n}' for i, n in enumerate(classes))}){_jpeg_hint(name)}"
        )


def resize_labels(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (sampling at pixel centres)."""
    h, w = mask.shape
    H, W = shape
    ys = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return mask[ys[:, None], xs[None, :]]


def procedural_mask(height: int, width: int, labels: list[int], seed: int = 0, smooth: float = 0.08) -> np.ndarray:
    """A procedural label layout (not a learned model): smoothed random fields, arg-max per pixel.

    Each label in ``labels`` gets a random field blurred with a Gaussian of ``smooth`` times the
    shorter side; every pixel takes the label of the largest field.  Used for demos and as the
    "generate mask" action when no mask model is available.
    """
    from scipy.ndimage import gaussian_filter

    if not labels:
        raise ValueError("procedural_mask needs at least one label")
    rng = np.random.default_rng(seed)
    sigma = max(1.0, smooth * min(height, width))
    fields = np.stack([gaussian_filter(rng.standard_normal((height, width)), sigma, mode="wrap") for _ in labels])
    return np.asarray(labels, dtype=np.uint8)[np.argmax(fields, axis=0)]
