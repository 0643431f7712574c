"""Where evaluation tiles come from: folders of images, single images, canvases and slides.

Every source knows its pixel size (µm/px) when its metadata says so: a canvas's
``pixel_size_um``, an SVS file's ``MPP``, an OME-Zarr scale, a PNG's pHYs chunk or a TIFF's
resolution tags.  The caller picks one common scale for both sides of a comparison; each
source then cuts tiles on a fixed grid *at that scale* (the finer source is box-averaged down
before tiling, so a tile always covers the same area of tissue on both sides).

A source may carry a label mask (a canvas's ``labels/mask``, or ``masks/<name>`` beside
``images/<name>`` in a training-style folder).  With a mask, tiles can be kept by class.

numpy, PIL, zarr and tifffile only: no torch here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from src_models.errors import DiffInfiniteError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SLIDE_EXTS = (".svs", ".ndpi", ".scn")
MASK_EXTS = (".png", ".tif", ".tiff", ".npy")
#: whole images larger than this (px) are refused: use a slide format or a canvas, which are read lazily
MAX_WHOLE_IMAGE_PX = 30_000 * 30_000


class EvaluationError(DiffInfiniteError, ValueError):
    """Input that cannot be evaluated (the message says what and where)."""


@dataclass
class Tile:
    rgb: np.ndarray  # (t, t, 3) uint8 at the common scale
    mask: np.ndarray | None  # (t, t) uint8 labels at the common scale, or None
    source: str  # file or canvas it came from
    y: int  # top-left corner in the source's own pixels
    x: int
    group: tuple = ()  # (source, block row, block column): tiles that may share pixels share it
    span: int = 0  # its side in the source's own pixels


@dataclass
class TileStats:
    """How many grid tiles a source offered and why some were skipped."""

    grid: int = 0
    kept: int = 0
    background: int = 0  # mostly glass / unstained
    other_classes: int = 0  # masked, but not mostly the requested classes
    unfinished: int = 0  # canvas tiles touching regions not sampled yet
    sources: list[str] = field(default_factory=list)


class _Image:
    """One 2-D RGB image readable by windows, with an optional mask of the same size."""

    def __init__(self, name: str, read, height: int, width: int, mpp: float | None, mask=None, closer=None):
        self.name, self.read, self.height, self.width, self.mpp = name, read, height, width, mpp
        self.mask = mask  # callable (y0, y1, x0, x1) -> labels at image resolution, or None
        self.done = None  # callable (y0, y1, x0, x1) -> bool (canvas: every region there finished)
        self._closer = closer

    def close(self):
        if self._closer is not None:
            self._closer()
            self._closer = None


def _png_or_tiff_mpp(path: Path) -> float | None:
    """µm/px from a PNG pHYs chunk or TIFF resolution tags, when they are there and plausible."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            dpi = im.info.get("dpi")
            if path.suffix.lower() in (".tif", ".tiff"):
                unit = im.tag_v2.get(296) if hasattr(im, "tag_v2") else None
                xres = im.tag_v2.get(282) if hasattr(im, "tag_v2") else None
                if xres:
                    xres = float(xres)
                    if unit == 3 and xres > 0:  # per centimetre
                        return round(1e4 / xres, 4)
                    if unit == 2 and xres > 1000:  # per inch; screen DPIs (72, 300) say nothing
                        return round(25400.0 / xres, 4)
            if dpi and float(dpi[0]) > 1000:
                return round(25400.0 / float(dpi[0]), 4)
    except Exception:  # metadata is optional: no figure rather than a failure
        return None
    return None


def _read_whole(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_WHOLE_IMAGE_PX
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise EvaluationError(f"cannot read image {path}: {e}") from None
    except Image.DecompressionBombError:
        raise EvaluationError(f"{path} is larger than {MAX_WHOLE_IMAGE_PX} px; convert it to OME-TIFF or a canvas") from None
    return arr


def _read_mask_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except Exception as e:
            raise EvaluationError(f"cannot read mask {path}: {e}") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2 or arr.shape != tuple(shape):
        raise EvaluationError(f"mask {path} has shape {arr.shape}, its image is {tuple(shape)}")
    if arr.dtype.kind not in "ui":
        raise EvaluationError(f"mask {path} has dtype {arr.dtype}; labels must be integers")
    return arr.astype(np.uint8)


def _image_file(path: Path, mask_path: Path | None, mpp: float | None) -> _Image:
    arr = _read_whole(path)
    mask = _read_mask_file(mask_path, arr.shape[:2]) if mask_path is not None else None
    return _Image(
        str(path), lambda y0, y1, x0, x1: arr[y0:y1, x0:x1], arr.shape[0], arr.shape[1],
        mpp if mpp is not None else _png_or_tiff_mpp(path),
        mask=(lambda y0, y1, x0, x1: mask[y0:y1, x0:x1]) if mask is not None else None,
    )


def _slide(path: Path, mpp: float | None) -> _Image:
    from ..io.slides import SlideError, open_slide

    try:
        s = open_slide(path)
    except SlideError as e:
        raise EvaluationError(str(e)) from None
    return _Image(str(path), s.read, s.height, s.width, mpp if mpp is not None else s.mpp, closer=s.close)


def _canvas(path: Path, mpp: float | None) -> _Image:
    from ..store.canvas import Canvas, CanvasError

    try:
        c = Canvas.open(path, "r")
    except CanvasError as e:
        raise EvaluationError(str(e)) from None
    f = c.factor
    done = c.done_map()

    def mask(y0, y1, x0, x1):
        ly0, ly1, lx0, lx1 = y0 // f, -(-y1 // f), x0 // f, -(-x1 // f)
        m = np.asarray(c.mask[ly0:ly1, lx0:lx1]).repeat(f, 0).repeat(f, 1)
        return m[y0 - ly0 * f : y1 - ly0 * f, x0 - lx0 * f : x1 - lx0 * f]

    def finished(y0, y1, x0, x1):
        return bool(done[y0 // f : -(-y1 // f), x0 // f : -(-x1 // f)].all())

    img = _Image(str(path), c.read_rgb, c.height, c.width,
                 mpp if mpp is not None else float(c.info.get("pixel_size_um") or 0) or None, mask=mask, closer=c.close)
    img.done = finished
    img.canvas = c
    return img


def _is_canvas(path: Path) -> bool:
    import json

    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return "diffinfinite" in attrs


def open_images(path: str | Path, mpp: float | None = None) -> list[_Image]:
    """The images of one PATH argument: a folder, an image, a canvas or a slide."""
    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"{path} does not exist")
    if path.is_dir():
        if _is_canvas(path):
            return [_canvas(path, mpp)]
        if (path / "zarr.json").is_file():
            return [_slide(path, mpp)]
        img_dir = path / "images" if (path / "images").is_dir() else path
        mask_dir = path / "masks"
        files = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS + SLIDE_EXTS)
        if not files:
            raise EvaluationError(f"no images ({', '.join(IMAGE_EXTS)}) in {img_dir}")
        out = []
        for f in files:
            m = None
            if img_dir != path and mask_dir.is_dir():
                m = next((mask_dir / (f.stem + e) for e in MASK_EXTS if (mask_dir / (f.stem + e)).is_file()), None)
            out.append(_slide(f, mpp) if f.suffix.lower() in SLIDE_EXTS else _image_file(f, m, mpp))
        return out
    suffix = path.suffix.lower()
    if suffix in SLIDE_EXTS or (suffix in (".tif", ".tiff") and path.stat().st_size > 200_000_000):
        return [_slide(path, mpp)]
    if suffix in IMAGE_EXTS:
        if suffix in (".tif", ".tiff"):
            s = _slide(path, mpp)  # lazy tiles; resolution tags as a fall-back for the pixel size
            if s.mpp is None:
                s.mpp = _png_or_tiff_mpp(path)
            return [s]
        return [_image_file(path, None, mpp)]
    raise EvaluationError(f"{path}: unsupported input {suffix!r} (image folder, PNG/JPEG/TIFF, SVS/OME-TIFF, .zarr canvas)")


def tissue_fraction(rgb: np.ndarray, mpp: float) -> float:
    """Fraction of a tile that holds stain: summed optical density above 0.2 after a light blur
    (σ = 2 µm, so the pale clefts between collagen bundles count as tissue)."""
    from scipy.ndimage import gaussian_filter

    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0).sum(-1)
    return float((gaussian_filter(od, 2.0 / mpp) > 0.2).mean())


def _resize(block: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    if block.shape[0] == size and block.shape[1] == size:
        return np.ascontiguousarray(block)
    from PIL import Image

    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BOX
    return np.asarray(Image.fromarray(np.ascontiguousarray(block)).resize((size, size), mode))


#: tiles are grouped by square blocks of this many tiles a side; with --stride, only tiles that lie
#: wholly inside one block are cut, so tiles of different groups never share a pixel
BLOCK_TILES = 2


def tile_corners(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y, x, block row, block column) of every tile of ``tile`` px at ``stride`` px in an image of
    ``height`` x ``width`` (common-scale px), block by block (blocks of ``BLOCK_TILES`` tiles, the
    last row and column of blocks cut by the image border); no tile crosses a block border.  With
    ``stride == tile`` these are the plain grid's tiles."""
    block = BLOCK_TILES * tile
    out = []
    for by in range(-(-height // block)):
        for bx in range(-(-width // block)):
            y_end, x_end = min(height, (by + 1) * block), min(width, (bx + 1) * block)
            for y in range(by * block, y_end - tile + 1, stride):
                for x in range(bx * block, x_end - tile + 1, stride):
                    out.append((y, x, by, bx))
    return out


def cut_tiles(
    images: list[_Image],
    tile: int,
    mpp: float,
    classes: list[int] | None = None,
    min_tissue: float = 0.5,
    min_class: float = 0.6,
    stats: TileStats | None = None,
    stride: int | None = None,
) -> Iterator[Tile]:
    """Tiles of ``tile`` px at ``mpp`` µm/px, every ``stride`` px (default: ``tile``, no overlap)
    from each image's top-left corner, inside blocks of :data:`BLOCK_TILES` tiles
    (:func:`tile_corners`); each tile's ``group`` names its block.

    A tile is kept when at least ``min_tissue`` of it is stained (the background/glass test); with
    ``classes`` and a mask, instead when at least ``min_class`` of its mask lies in ``classes``
    (so glass itself can be evaluated by asking for its class).  Canvas tiles that touch
    unfinished regions are never used.
    """
    stats = stats if stats is not None else TileStats()
    stride = tile if stride is None else stride
    for img in images:
        own = img.mpp or mpp
        ratio = mpp / own  # source px per tile px (>= 1 when the source is finer)
        span = int(round(tile * ratio))
        if span > img.height or span > img.width:
            raise EvaluationError(
                f"tiles of {tile} px at {mpp:g} µm/px ({span} px of {img.name}) do not fit its {img.width}x{img.height} px"
            )
        if classes is not None and img.mask is None:
            raise EvaluationError(f"--classes needs a label mask, and {img.name} has none "
                                  "(use a canvas, or a folder with images/ and masks/)")
        stats.sources.append(img.name)
        for ty, tx, by, bx in tile_corners(int(img.height / ratio), int(img.width / ratio), tile, stride):
            y0, x0 = int(round(ty * ratio)), int(round(tx * ratio))
            y1, x1 = min(img.height, y0 + span), min(img.width, x0 + span)
            stats.grid += 1
            if img.done is not None and not img.done(y0, y1, x0, x1):
                stats.unfinished += 1
                continue
            mask = _resize(img.mask(y0, y1, x0, x1), tile, nearest=True) if img.mask is not None else None
            if classes is not None and float(np.isin(mask, classes).mean()) < min_class:
                stats.other_classes += 1
                continue
            rgb = _resize(np.asarray(img.read(y0, y1, x0, x1)), tile)
            if classes is None and tissue_fraction(rgb, mpp) < min_tissue:
                stats.background += 1
                continue
            stats.kept += 1
            yield Tile(rgb, mask, img.name, y0, x0, (img.name, by, bx), span)


def common_mpp(real: list[_Image], synthetic: list[_Image]) -> tuple[float, list[str]]:
    """The coarser of the two sides' pixel sizes, and notes on any that had to be assumed."""
    notes = []
    known = [i.mpp for i in real + synthetic if i.mpp]
    if not known:
        notes.append("no input states its pixel size; all are assumed to share one scale (reported as 1.0 µm/px)")
        for i in real + synthetic:
            i.mpp = 1.0
        return 1.0, notes
    target = max(known)
    for i in real + synthetic:
        if not i.mpp:
            notes.append(f"{i.name} states no pixel size; assumed {target:g} µm/px (pass --real-mpp / --synthetic-mpp)")
            i.mpp = target
    return float(target), notes
