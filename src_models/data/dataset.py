"""Annotated slides to training tiles (``diffinfinite make-dataset``), and the tile-set folder that
``make-dataset`` and ``export-tiles`` both write.

Folder layout (what ``diffinfinite train --data DIR`` and ``diffinfinite evaluate`` read)::

    DIR/images/<name>.png     RGB tiles (PNG, with the pixel size in its pHYs chunk)
    DIR/masks/<name>.png      uint8 label tiles, labelled tiles only (an unlabelled tile trains as class 0)
    DIR/classes.json          {"classes": [...], "colours": [...]}  (class 0 is "unknown")
    DIR/manifest.csv          one row per tile: name, image, mask, source, level, mpp, x, y, width,
                              height (the tile's level-0 rectangle in its source), labelled,
                              tissue_fraction, annotated_fraction, px_0 .. px_K (class histogram)
    DIR/dataset.json          format, kind, classes, settings, provenance (code version, sources
                              and their SHA-256, seeds), summary, and ``complete``

Writes are resumable: each tile's files are written (through a temporary name) before its
manifest row, so after an interruption ``--resume`` keeps every tile in the manifest whose files
exist and does the rest; the settings must be the ones the folder was started with.

How ``make-dataset`` picks tiles, per slide:

1. The tile grid lies at the output scale (``--level L``: that pyramid level; ``--mpp U``: U µm
   per px, read from the nearest finer level and box-averaged; neither: level 0); tiles are
   ``tile`` px with ``stride`` (default ``tile``), whole tiles only.
2. Tissue: HSV saturation on a thumbnail, thresholded by Otsu's method (clamped to [0.04, 0.15]),
   closed and with small holes filled; a tile's ``tissue_fraction`` is the share of tissue under it.
3. Annotations are rasterised on each tile (:mod:`src_models.io.annotations`); a tile whose annotated
   share is at least ``min_annotated`` is *labelled* (its mask saved; unannotated pixels in it are
   0, unknown), whatever its tissue share.  Other tiles with at least ``min_tissue`` tissue are
   *unlabelled* (no mask: class 0, the paper's semi-supervised recipe); each is kept with
   probability ``unlabelled_fraction`` (a hash of seed, slide and position decides, so reruns
   and resumes keep the same ones).  Tiles touching an ``exclude`` rectangle are never written.

numpy, PIL, scipy, scikit-image, tifffile and zarr: no torch.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src_models.io.annotations import AnnotationError, AnnotationSet, labels_for, paint_order, rasterise, read_geojson
from src_models.durable import atomic_path, atomic_write, write_text_atomic
from src_models.store.provenance import provenance, source_entry
from src_models.errors import DiffInfiniteError

FORMAT = "diffinfinite-tiles/1"
DEFAULT_COLOURS = ["#000000", "#e8e8e8", "#6a2d8f", "#e87ab0", "#f4a300", "#2a9d8f", "#c1121f", "#3a86ff", "#8ac926", "#6d597a"]
BASE_COLUMNS = ["name", "image", "mask", "source", "level", "mpp", "x", "y", "width", "height", "labelled",
                "tissue_fraction", "annotated_fraction"]
TISSUE_THRESHOLD_RANGE = (0.04, 0.15)


class DatasetError(DiffInfiniteError, ValueError):
    """Bad input for a data set (the message says what and where)."""


# ------------------------------------------------------------------------------------ tile sets
def _save_png(path: Path, array: np.ndarray, mpp: float | None) -> None:
    from PIL import Image

    kwargs = {"dpi": (25400.0 / mpp, 25400.0 / mpp)} if mpp else {}
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", **kwargs)


class TileSetWriter:
    """Writes a tile-set folder (see the module docstring): create, resume or overwrite it."""

    def __init__(self, out: str | Path, *, kind: str, classes: list[str], colours: list[str], settings: dict,
                 prov: dict, resume: bool = False, overwrite: bool = False):
        self.out = Path(out)
        self.kind = kind
        self.classes, self.colours = list(classes), list(colours)
        self.settings = settings
        self.columns = BASE_COLUMNS + [f"px_{k}" for k in range(len(classes))]
        self.done: dict[str, dict] = {}
        meta_path = self.out / "dataset.json"
        if self.out.exists() and not self.out.is_dir():
            raise DatasetError(f"{self.out} exists and is not a folder")
        nonempty = self.out.is_dir() and any(self.out.iterdir())
        if resume:
            if not meta_path.is_file():
                raise DatasetError(f"--resume: {self.out} is not a data set folder (no dataset.json)")
            meta = self._read_meta(meta_path)
            if meta.get("kind") != kind or meta.get("settings") != settings:
                diffs = [k for k in sorted(set(settings) | set(meta.get("settings", {})))
                         if settings.get(k) != meta.get("settings", {}).get(k)]
                raise DatasetError(f"--resume: settings differ from the run that started {self.out} "
                                   f"({', '.join(diffs) or 'kind ' + str(meta.get('kind'))}); use another "
                                   "folder or --overwrite")
            self._load_manifest()
            prov = {**prov, "created_utc": meta.get("provenance", {}).get("created_utc", prov.get("created_utc")),
                    "resumed_utc": prov.get("created_utc")}
        elif nonempty:
            if not overwrite:
                raise DatasetError(f"{self.out} exists and is not empty; pass --overwrite to replace it or "
                                   "--resume to finish it")
            if not meta_path.is_file():
                raise DatasetError(f"{self.out} is not a data set folder (no dataset.json); not deleting it")
            self._read_meta(meta_path)  # made by this tool (its format), or not deleted
            shutil.rmtree(self.out)
        (self.out / "images").mkdir(parents=True, exist_ok=True)
        (self.out / "masks").mkdir(exist_ok=True)
        self.meta = {"format": FORMAT, "kind": kind, "complete": False, "classes": self.classes,
                     "colours": self.colours, "settings": settings, "provenance": prov, "summary": {}}
        self._write_meta()
        (self.out / "classes.json").write_text(json.dumps({"classes": self.classes, "colours": self.colours},
                                                          indent=2) + "\n")
        self._manifest = open(self.out / "manifest.csv", "a", newline="")
        self._csv = csv.DictWriter(self._manifest, fieldnames=self.columns)
        if self._manifest.tell() == 0:
            self._csv.writeheader()
            self._manifest.flush()

    @staticmethod
    def _read_meta(path: Path) -> dict:
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path} is damaged ({e}); use --overwrite to start again") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DatasetError(f"{path} is not a data set made by diffinfinite")
        return meta

    def _load_manifest(self) -> None:
        """Keep the manifest rows whose files are all there; rewrite the manifest with just them."""
        path = self.out / "manifest.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                text = f.read()
            if text and not text.endswith("\n"):  # a row cut off by the interruption
                text = text[: text.rfind("\n") + 1]
            reader = csv.DictReader(text.splitlines())
            if reader.fieldnames and list(reader.fieldnames) != self.columns:
                raise DatasetError(f"--resume: {path} has other columns than this run writes; use --overwrite")
            for row in reader:
                if None in row.values() or None in row:
                    continue
                if not (self.out / row["image"]).is_file() or (row["mask"] and not (self.out / row["mask"]).is_file()):
                    continue
                rows.append(row)
        with atomic_write(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            w.writerows(rows)
        self.done = {r["name"]: r for r in rows}

    def _write_meta(self) -> None:
        write_text_atomic(self.out / "dataset.json", json.dumps(self.meta, indent=2) + "\n")

    def has(self, name: str) -> bool:
        return name in self.done

    def add(self, name: str, rgb: np.ndarray, mask: np.ndarray | None, row: dict, mpp: float | None) -> dict:
        """Write one tile (image, mask when labelled), then its manifest row."""
        image = f"images/{name}.png"
        _save_png(self.out / image, rgb, mpp)
        mask_rel = ""
        if mask is not None:
            mask_rel = f"masks/{name}.png"
            _save_png(self.out / mask_rel, mask.astype(np.uint8), mpp)
            hist = np.bincount(mask.ravel(), minlength=len(self.classes))[: len(self.classes)]
        else:
            hist = np.zeros(len(self.classes), np.int64)
            hist[0] = rgb.shape[0] * rgb.shape[1]
        full = {"name": name, "image": image, "mask": mask_rel, "labelled": int(mask is not None), **row}
        full.update({f"px_{k}": int(v) for k, v in enumerate(hist)})
        self._csv.writerow({c: full.get(c, "") for c in self.columns})
        self._manifest.flush()
        self.done[name] = full
        return full

    def rows(self) -> list[dict]:
        return list(self.done.values())

    def finish(self, summary: dict) -> None:
        self._manifest.flush()
        os.fsync(self._manifest.fileno())
        self._manifest.close()
        self.meta["summary"] = summary
        self.meta["complete"] = True
        self._write_meta()

    def close(self) -> None:
        if not self._manifest.closed:
            self._manifest.flush()
            self._manifest.close()


# ------------------------------------------------------------------------------------ slides
@dataclass
class SlideLevels:
    """A slide's pyramid: ``levels[i]`` (a :class:`~src_models.io.slides.Slide`) is ``downsamples[i]``
    level-0 px per px; ``mpp`` is level 0's µm/px (None when the file does not say)."""

    path: Path
    levels: list
    downsamples: list[float]
    mpp: float | None
    closers: list = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.levels[0].height

    @property
    def width(self) -> int:
        return self.levels[0].width

    def close(self) -> None:
        for c in self.closers:
            c()
        self.closers = []


def _ome_mpp(tf) -> float | None:
    import re

    xml = getattr(tf, "ome_metadata", None) or ""
    m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
    if not m:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    value = float(m.group(1))
    scale = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit.group(1) if unit else "µm")
    return value * scale if scale else None


def open_levels(path: str | Path) -> SlideLevels:
    """Open every pyramid level of a slide (SVS, (OME-)TIFF, OME-Zarr; PNG/JPEG as one level)."""
    from src_models.io.slides import Slide, SlideError, _aperio_mpp, open_slide

    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".svs", ".tif", ".tiff", ".ndpi", ".scn"):
        import tifffile
        import zarr

        try:
            tf = tifffile.TiffFile(path)
        except Exception as e:
            raise SlideError(f"cannot read slide {path}: {e}") from None
        try:
            series = tf.series[0]
            axes = series.axes
            if axes not in ("YXS", "YX", "SYX", "CYX"):
                raise SlideError(f"{path}: unsupported axes {axes!r} (expected an RGB image)")
            mpp = _aperio_mpp(tf.pages[0].description if tf.pages else "") or _ome_mpp(tf)
            levels, ds = [], []
            for i, lev in enumerate(series.levels):
                arr = zarr.open(series.aszarr(level=i), mode="r")
                s = Slide(path, arr, axes in ("SYX", "CYX"), None)
                if i and (s.height < 1 or s.width < 1):
                    continue
                levels.append(s)
                ds.append(1.0 if i == 0 else levels[0].width / s.width)
            for s, d in zip(levels, ds):
                s.mpp = mpp * d if mpp else None
            return SlideLevels(path, levels, ds, mpp, [tf.close])
        except SlideError:
            tf.close()
            raise
        except Exception as e:
            tf.close()
            raise SlideError(f"cannot read slide {path}: {e}") from None
    first = open_slide(path)
    levels, ds = [first], [1.0]
    if path.is_dir():
        import zarr

        try:
            group = zarr.open_group(str(path), mode="r")
            attrs = group.attrs.asdict()
            ms = attrs.get("ome", attrs).get("multiscales", [{}])[0]
            for d in ms.get("datasets", [])[1:]:
                arr = group[d["path"]]
                s = Slide(path, arr, first._cf, None)
                levels.append(s)
                ds.append(first.width / s.width)
        except Exception:
            levels, ds = [first], [1.0]
    return SlideLevels(path, levels, ds, first.mpp, [first.close])


def read_region(slide: SlideLevels, level: int, x0: float, y0: float, w: float, h: float, out_w: int, out_h: int) -> np.ndarray:
    """Level-0 rectangle (x0, y0, w, h) of ``slide`` as an (out_h, out_w, 3) uint8 image read from
    ``level`` (box-averaged when the sizes differ; pixels outside the slide are white)."""
    from PIL import Image

    eps = 1e-6
    lev, d = slide.levels[level], slide.downsamples[level]
    fx0, fy0, fx1, fy1 = x0 / d, y0 / d, (x0 + w) / d, (y0 + h) / d
    px0, py0 = int(math.floor(fx0 + eps)), int(math.floor(fy0 + eps))
    px1, py1 = max(px0 + 1, int(math.ceil(fx1 - eps))), max(py0 + 1, int(math.ceil(fy1 - eps)))
    ix0, iy0, ix1, iy1 = max(0, px0), max(0, py0), min(lev.width, px1), min(lev.height, py1)
    block = np.full((py1 - py0, px1 - px0, 3), 255, np.uint8)
    if ix1 > ix0 and iy1 > iy0:
        block[iy0 - py0 : iy1 - py0, ix0 - px0 : ix1 - px0] = lev.read(iy0, iy1, ix0, ix1)
    exact = max(abs(fx0 - px0), abs(fy0 - py0), abs(fx1 - px1), abs(fy1 - py1)) < eps
    if exact and block.shape[:2] == (out_h, out_w):
        return block
    box = (fx0 - px0, fy0 - py0, fx1 - px0, fy1 - py0)
    return np.asarray(Image.fromarray(block).resize((out_w, out_h), Image.Resampling.BOX, box=box))


def thumbnail(slide: SlideLevels, ds: float) -> np.ndarray:
    """The slide at ``ds`` level-0 px per px, read in bands from the coarsest level that is fine enough."""
    level = max(i for i, d in enumerate(slide.downsamples) if d <= ds * (1 + 1e-6)) if any(
        d <= ds * (1 + 1e-6) for d in slide.downsamples) else 0
    th, tw = max(1, int(slide.height // ds)), max(1, int(slide.width // ds))
    out = np.empty((th, tw, 3), np.uint8)
    band = max(1, 4096 // max(1, int(math.ceil(ds / slide.downsamples[level]))))
    for r in range(0, th, band):
        n = min(band, th - r)
        out[r : r + n] = read_region(slide, level, 0.0, r * ds, tw * ds, n * ds, tw, n)
    return out


def saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0)


def tissue_map(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """(tissue bool map, threshold) of an RGB thumbnail: saturation above Otsu's threshold
    (clamped to TISSUE_THRESHOLD_RANGE), closed twice with a 3x3 square, holes under 64 px filled."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes

    s = saturation(rgb)
    try:
        t = float(threshold_otsu(s)) if s.size > 1 and s.max() > s.min() else TISSUE_THRESHOLD_RANGE[1]
    except ValueError:
        t = TISSUE_THRESHOLD_RANGE[1]
    t = min(max(t, TISSUE_THRESHOLD_RANGE[0]), TISSUE_THRESHOLD_RANGE[1])
    tissue = s > t
    tissue = ndimage.binary_closing(tissue, np.ones((3, 3), bool), iterations=2, border_value=0) | tissue
    tissue = remove_small_holes(tissue, max_size=64)
    return tissue, t


def _fraction_in(tmap: np.ndarray, ds_t: float, x0: float, y0: float, w: float, h: float) -> float:
    """Share of the thumbnail pixels (ds_t level-0 px each) whose centres lie in the rectangle."""
    c0 = max(0, int(math.ceil(x0 / ds_t - 0.5)))
    c1 = min(tmap.shape[1], int(math.ceil((x0 + w) / ds_t - 0.5)))
    r0 = max(0, int(math.ceil(y0 / ds_t - 0.5)))
    r1 = min(tmap.shape[0], int(math.ceil((y0 + h) / ds_t - 0.5)))
    if c1 <= c0 or r1 <= r0:
        return 0.0
    return float(tmap[r0:r1, c0:c1].mean())


# ------------------------------------------------------------------------------------ make-dataset
@dataclass
class SlideInput:
    slide: Path
    annotations: Path | None = None


def class_table(class_map: dict[str, int], colours_found: dict[str, tuple[int, int, int]] | None = None) -> tuple[list[str], list[str]]:
    """(classes, colours) of a class map: class k is the first name mapped to k, class 0 is
    "unknown" unless the map names it; gaps are ``class_k``; colours from the annotation file
    (QuPath's class colours) where it gives them."""
    top = max(class_map.values())
    names: dict[int, str] = {}
    for name, k in class_map.items():
        names.setdefault(k, name)
    classes = [names.get(k, "unknown" if k == 0 else f"class_{k}") for k in range(top + 1)]
    found = {k.casefold(): v for k, v in (colours_found or {}).items()}
    colours = []
    for k, name in enumerate(classes):
        c = found.get(name.casefold()) if k else None
        colours.append("#%02x%02x%02x" % c if c else DEFAULT_COLOURS[k % len(DEFAULT_COLOURS)])
    return classes, colours


def _keep(seed: int, key: str, fraction: float) -> bool:
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def _stems(paths: list[Path]) -> list[str]:
    out, used = [], {}
    for p in paths:
        stem = p.name.split(".")[0] or "slide"
        n = used.get(stem, 0)
        used[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}-{n + 1}")
    return out


def _overlaps(rect, x0, y0, w, h) -> bool:
    rx, ry, rw, rh = rect
    return x0 < rx + rw and rx < x0 + w and y0 < ry + rh and ry < y0 + h


def make_dataset(inputs: list[SlideInput], out: str | Path, class_map: dict[str, int], *, tile: int = 512,
                 stride: int | None = None, level: int | None = None, mpp: float | None = None,
                 slide_mpp: float | None = None, unlabelled_fraction: float = 1.0, min_tissue: float = 0.25,
                 min_annotated: float = 0.1, exclude: list[tuple[float, float, float, float]] | None = None,
                 offset: tuple[float, float] = (0.0, 0.0), downsample: float = 1.0, overlap: str = "last",
                 seed: int = 0, resume: bool = False, overwrite: bool = False, progress=None, warn=None) -> dict:
    """Cut annotated slides into a training folder (see the module docstring).  ``exclude``
    rectangles are (x, y, w, h) in level-0 px and apply to every slide.  ``progress(stage, done,
    total)`` reports hashing and tiles; ``warn(text)`` gets notes (features clipped at the border,
    geometries skipped).  Returns the summary written to ``dataset.json``."""
    stride = stride or tile
    exclude = list(exclude or [])
    _check_options(inputs, class_map, tile, stride, level, mpp, slide_mpp, unlabelled_fraction, min_tissue,
                   min_annotated)
    warn = warn or (lambda text: None)
    progress = progress or (lambda stage, done, total: None)

    # 1. everything that can be checked before writing: slides open, annotations read and map
    opened, annotations = [], []
    try:
        colours_found = _open_inputs(inputs, offset, downsample, class_map, warn, opened, annotations)
        plans = [_level_plan(inp, sl, level, mpp, slide_mpp) for inp, sl in zip(inputs, opened)]
        classes, colours = class_table(class_map, colours_found)

        # 2. provenance: every source hashed (a changed file is a changed setting: no resume)
        sources, slide_entries = [], []
        for inp in inputs:
            e = source_entry(inp.slide, "slide", lambda d, t, n=inp.slide.name: progress(f"hashing {n}", d, t))
            a = source_entry(inp.annotations, "annotations") if inp.annotations is not None else None
            sources += [e] + ([a] if a else [])
            slide_entries.append({"slide": str(inp.slide), "sha256": e["sha256"],
                                  "annotations": str(inp.annotations) if a else None,
                                  "annotations_sha256": a["sha256"] if a else None})
        settings = {
            "slides": slide_entries,
            "class_map": dict(class_map), "tile": tile, "stride": stride, "level": level, "mpp": mpp,
            "slide_mpp": slide_mpp, "unlabelled_fraction": unlabelled_fraction, "min_tissue": min_tissue,
            "min_annotated": min_annotated, "exclude": [list(map(float, r)) for r in exclude],
            "annotation_offset": [float(offset[0]), float(offset[1])], "annotation_downsample": float(downsample),
            "overlap": overlap, "seed": seed,
        }
        prov = provenance(settings=settings, seeds={"unlabelled_subsample": seed}, sources=sources)
        writer = TileSetWriter(out, kind="make-dataset", classes=classes, colours=colours, settings=settings,
                               prov=prov, resume=resume, overwrite=overwrite)
        try:
            summary = _cut(inputs, opened, annotations, plans, writer, class_map, tile=tile, stride=stride,
                           unlabelled_fraction=unlabelled_fraction, min_tissue=min_tissue, min_annotated=min_annotated,
                           exclude=exclude, overlap=overlap, seed=seed, progress=progress)
            writer.finish(summary)
        finally:
            writer.close()
        return summary
    finally:
        for s in opened:
            s.close()


def _check_options(inputs, class_map, tile, stride, level, mpp, slide_mpp, unlabelled_fraction, min_tissue,
                   min_annotated) -> None:
    """The options of :func:`make_dataset` that need nothing read."""
    if tile < 8:
        raise DatasetError(f"--tile must be at least 8 px, got {tile}")
    if stride < 1:
        raise DatasetError(f"--stride must be positive, got {stride}")
    if level is not None and mpp is not None:
        raise DatasetError("give --level or --mpp, not both")
    for name, v, lo, hi in (("--unlabelled-fraction", unlabelled_fraction, 0, 1), ("--min-tissue", min_tissue, 0, 1),
                            ("--min-annotated", min_annotated, 0, 1)):
        if not (math.isfinite(v) and lo <= v <= hi):
            raise DatasetError(f"{name} must lie in [{lo}, {hi}], got {v}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise DatasetError(f"--mpp must be a positive number of µm, got {mpp}")
    if slide_mpp is not None and not (math.isfinite(slide_mpp) and slide_mpp > 0):
        raise DatasetError(f"--slide-mpp must be a positive number of µm, got {slide_mpp}")
    if not inputs:
        raise DatasetError("give at least one --slide")
    if not class_map:
        raise DatasetError("give a --class-map")


def _open_inputs(inputs, offset, downsample, class_map, warn, opened: list, annotations: list) -> dict:
    """Open every slide (into ``opened``, closed by the caller) and read its annotations (into
    ``annotations``), checked against the class map and the slide; returns the colours the
    annotations give their classes."""
    colours_found: dict = {}
    for inp in inputs:
        if inp.annotations is None:
            ann = AnnotationSet([], "")
        else:
            ann = read_geojson(inp.annotations, offset, downsample)
            labels_for(ann, class_map)  # unknown names are refused here
            colours_found.update({k: v for k, v in ann.colours().items() if k not in colours_found})
        s = open_levels(inp.slide)
        opened.append(s)
        if ann.features:
            wholly, partly = ann.outside(s.width, s.height)
            if len(wholly) == len(ann.features):
                x0, y0, x1, y1 = ann.bbox
                raise DatasetError(
                    f"{inp.annotations}: every feature lies outside the slide {inp.slide} ({s.width}x{s.height} px; "
                    f"the annotations span x {x0:g}..{x1:g}, y {y0:g}..{y1:g}); check "
                    "--annotation-offset/--annotation-downsample")
            if wholly or partly:
                warn(f"{inp.annotations}: {len(wholly) + len(partly)} of {len(ann.features)} feature(s) reach "
                     f"beyond the slide's {s.width}x{s.height} px ({len(wholly)} wholly); the parts outside are ignored")
            if ann.skipped:
                warn(f"{inp.annotations}: skipped features without area: "
                     + ", ".join(f"{n} {k}" for k, n in ann.skipped.items()))
        annotations.append(ann)
    return colours_found


def _level_plan(inp, s, level, mpp, slide_mpp) -> tuple:
    """(pyramid level to read, its downsample, output µm/px or None) of one slide."""
    m0 = slide_mpp if slide_mpp is not None else s.mpp
    if level is not None:
        if not 0 <= level < len(s.levels):
            raise DatasetError(f"--level {level}: {inp.slide} has levels 0..{len(s.levels) - 1}")
        lev, ds = level, s.downsamples[level]
    elif mpp is not None:
        if m0 is None:
            raise DatasetError(f"{inp.slide} does not say its pixel size; give --slide-mpp (µm/px of level 0)")
        ds = mpp / m0
        if ds < 1 - 1e-6:
            raise DatasetError(f"--mpp {mpp:g} is finer than {inp.slide}'s level 0 ({m0:g} µm/px)")
        lev = max(i for i, d in enumerate(s.downsamples) if d <= ds * (1 + 1e-6))
    else:
        lev, ds = 0, 1.0
    return lev, ds, (m0 * ds) if m0 else None


def _cut(inputs, opened, annotations, plans, writer: TileSetWriter, class_map, *, tile, stride, unlabelled_fraction,
         min_tissue, min_annotated, exclude, overlap, seed, progress) -> dict:
    stems = _stems([i.slide for i in inputs])
    grids = []
    for s, (lev, ds, _) in zip(opened, plans):
        gh, gw = int(s.height // ds + 1e-6), int(s.width // ds + 1e-6)
        ys = list(range(0, gh - tile + 1, stride)) if gh >= tile else []
        xs = list(range(0, gw - tile + 1, stride)) if gw >= tile else []
        grids.append((ys, xs))
    total = sum(len(ys) * len(xs) for ys, xs in grids)
    summary = {"tiles": 0, "labelled": 0, "unlabelled": 0, "background": 0, "excluded": 0, "unlabelled_dropped": 0,
               "grid_tiles": total, "slides": []}
    done = 0
    for inp, s, ann, (lev, ds, out_mpp), stem, (ys, xs) in zip(inputs, opened, annotations, plans, stems, grids):
        ds_t = max(1.0, min(tile * ds / 16.0, max(s.height, s.width) / 512.0))
        tmap, threshold = tissue_map(thumbnail(s, ds_t))
        labels = labels_for(ann, class_map) if ann.features else []
        order = np.array(paint_order(ann, class_map, overlap), dtype=np.int64) if ann.features else np.zeros(0, np.int64)
        boxes = np.array([f.bbox for f in ann.features]) if ann.features else np.zeros((0, 4))
        per = {"slide": str(inp.slide), "level": lev, "downsample": ds, "mpp": out_mpp, "tissue_threshold": round(threshold, 4),
               "tissue_share": round(float(tmap.mean()), 4), "labelled": 0, "unlabelled": 0}
        w0 = tile * ds
        for ty in ys:
            for tx in xs:
                done += 1
                x0, y0 = tx * ds, ty * ds
                name = f"{stem}_x{int(round(x0)):06d}_y{int(round(y0)):06d}"
                if any(_overlaps(r, x0, y0, w0, w0) for r in exclude):
                    summary["excluded"] += 1
                    progress("tiles", done, total)
                    continue
                if writer.has(name):
                    row = writer.done[name]
                    key = "labelled" if int(row["labelled"]) else "unlabelled"
                    summary[key] += 1
                    per[key] += 1
                    summary["tiles"] += 1
                    progress("tiles", done, total)
                    continue
                tissue = _fraction_in(tmap, ds_t, x0, y0, w0, w0)
                mask = covered = None
                annotated = 0.0
                if len(boxes):
                    hit = (boxes[:, 0] < x0 + w0) & (boxes[:, 2] > x0) & (boxes[:, 1] < y0 + w0) & (boxes[:, 3] > y0)
                    if hit.any():
                        sub = order[hit[order]]
                        mask, covered = rasterise(ann, labels, (tile, tile), (x0, y0), ds, order=list(sub))
                        annotated = float(covered.mean())
                labelled = mask is not None and annotated >= min_annotated and annotated > 0
                if not labelled:
                    if tissue < min_tissue:
                        summary["background"] += 1
                        progress("tiles", done, total)
                        continue
                    if not _keep(seed, f"{stem}:{tx}:{ty}", unlabelled_fraction):
                        summary["unlabelled_dropped"] += 1
                        progress("tiles", done, total)
                        continue
                rgb = read_region(s, lev, x0, y0, w0, w0, tile, tile)
                row = {"source": str(inp.slide), "level": lev, "mpp": "" if out_mpp is None else round(out_mpp, 6),
                       "x": round(x0, 3), "y": round(y0, 3), "width": round(w0, 3), "height": round(w0, 3),
                       "tissue_fraction": round(tissue, 4), "annotated_fraction": round(annotated, 4)}
                writer.add(name, rgb, mask if labelled else None, row, out_mpp)
                key = "labelled" if labelled else "unlabelled"
                summary[key] += 1
                per[key] += 1
                summary["tiles"] += 1
                progress("tiles", done, total)
        summary["slides"].append(per)
    hist = np.zeros(len(writer.classes), np.int64)
    for row in writer.rows():
        if int(row["labelled"]):
            hist += np.array([int(row[f"px_{k}"]) for k in range(len(writer.classes))])
    summary["labelled_class_pixels"] = {c: int(v) for c, v in zip(writer.classes, hist)}
    return summary


__all__ = ["make_dataset", "SlideInput", "TileSetWriter", "DatasetError", "AnnotationError", "open_levels",
           "tissue_map", "read_region", "class_table"]
