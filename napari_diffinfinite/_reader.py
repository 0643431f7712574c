"""Reading canvases (and OME-Zarr stores written by our writer) into napari layers.

A project canvas becomes two layers that know their store through ``layer.metadata["diffinfinite"]``:

* the image: a multiscale RGB layer of dask arrays over the store's pyramid levels (never one
  level), built with ``cache=False``.  Their chunks come through :data:`CHUNKS`, this module's own
  cache of decoded chunks: when a run finishes a region, :func:`refresh_region` drops only the
  chunks under that region (on every level) and re-slices the layer, so a refresh reads a few
  chunks from disk instead of the whole view;
* the mask: a numpy Labels layer on the mask grid (the latent grid, or every ``step``-th latent
  pixel when the latent grid is too large to paint), scaled by ``factor * step`` over the image
  and shifted half a pixel so that mask and image pixels line up.  Colours and class names come
  from the canvas (copied from the model card that made it).  Every edit reaches the store
  a second later, off the GUI thread, and what is unsaved is written when napari closes (``_autosave``;
  the manifest's reader is ``_opening.get_reader``, which adds that to this module's reader).

Other NGFF 0.5 stores (image pyramid plus ``labels/``) are read as plain image and labels layers;
any other ``.zarr`` is handed to napari's own reader, so that this plugin can be the default
reader of ``*.zarr`` (:func:`prefer_this_reader`) without taking anything away.
"""
from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

META = "diffinfinite"  # key of our entry in layer.metadata
MAX_MASK_SIDE = 8192  # the mask layer's longest side, in pixels (napari paints single-scale labels only)
PLUGIN = "napari-diffinfinite"
CHUNK_CACHE_BYTES = 384 * 2**20  # decoded image chunks kept for display, all canvases together
MASK_OPACITY = 0.6
# a categorical palette far from H&E's pinks and purples (display mode "distinct colours")
DISTINCT = ["#1f77b4", "#ff7f0e", "#2ca02c", "#ffd92f", "#17becf", "#d62728", "#bcbd22", "#8c564b", "#7f7f7f",
            "#00e5a0"]
OUTSIDE_CLASSES = (1.0, 0.0, 1.0, 1.0)  # magenta: any label that is not a class of the model
MASK_MODES = ("distinct colours", "contours", "class colours")


# ----------------------------------------------------------------------------- helpers
def _root_attrs(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes", {})
    return attrs if isinstance(attrs, dict) else None


def is_canvas(path) -> bool:
    from src_models.store.canvas import FORMAT

    attrs = _root_attrs(Path(path))
    return bool(attrs) and attrs.get("diffinfinite", {}).get("format") == FORMAT


def mask_step(latent_shape: tuple[int, int]) -> int:
    """Latent pixels per mask-layer pixel: 1 unless the latent grid is longer than MAX_MASK_SIDE; a
    power of two, so the layer is a level of the stored mask pyramid (read without the finer levels)."""
    step = max(1, math.ceil(max(latent_shape) / MAX_MASK_SIDE))
    return 1 << (step - 1).bit_length()


def hex_rgba(colour: str, alpha: float = 1.0) -> np.ndarray:
    """A class colour as napari wants it: float RGBA in 0..1."""
    from src_models.io.colours import hex_rgb

    return np.array([v / 255 for v in hex_rgb(colour)] + [alpha], dtype=np.float32)


def display_colours(colours: list[str], mode: str = MASK_MODES[0]) -> list[str]:
    """The colour each class is drawn in, for a mask display mode (index = class)."""
    if mode == "class colours":
        return list(colours)
    return ["#000000"] + [DISTINCT[(i - 1) % len(DISTINCT)] for i in range(1, len(colours))]


def label_colormap(colours: list[str], mode: str = MASK_MODES[0]) -> dict:
    """A napari direct label colormap holding the model's classes only: class 0 ("unknown",
    unpainted) transparent, any other label magenta (it should never be there: the widgets refuse it)."""
    cmap = {None: np.asarray(OUTSIDE_CLASSES, np.float32), 0: np.zeros(4, np.float32)}
    for i, c in enumerate(display_colours(colours, mode)[1:], 1):
        cmap[i] = hex_rgba(c)
    return cmap


def contour_width(step: int) -> int:
    """Outline width (mask px) of the "contours" display: about 2 latent px."""
    return max(1, round(2 / step))


def set_mask_mode(layer, mode: str) -> None:
    """Show a mask layer in one of :data:`MASK_MODES` (filled distinct colours, their contours, or
    the model card's colours)."""
    info = layer.metadata[META]
    info["mode"] = mode  # first: the layer's events below tell the widgets
    layer.colormap = label_colormap(info["colours"], "class colours" if mode == "class colours" else "distinct")
    layer.opacity = 1.0 if mode == "contours" else MASK_OPACITY
    layer.contour = contour_width(info["mask_step"]) if mode == "contours" else 0


def class_features(classes: list[str]) -> dict:
    return {"index": np.arange(len(classes)), "class": list(classes)}


def pixel_centre_offset(scale: float) -> float:
    """Translate that puts a pixel of side ``scale`` (image px) over the image pixels it covers."""
    return (scale - 1) / 2


# ----------------------------------------------------------------------------- canvases
def open_readonly(path):
    from src_models.store.canvas import Canvas

    return Canvas.open(path, "r")


class ChunkCache:
    """Decoded image chunks of the canvases shown, least recently used dropped first, at most
    ``max_bytes`` together.  Thread-safe (dask reads chunks from its worker threads).  An all-zero
    chunk (nothing sampled there yet) is kept as a marker, not as an array."""

    def __init__(self, max_bytes: int = CHUNK_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._chunks: OrderedDict = OrderedDict()
        self._bytes = 0
        self.reads = 0  # chunks read from disk (tests and the benchmark look at it)
        self.unreadable: set = set()  # chunks that could not be read (each warned about once)
        self.where: dict = {}  # canvas path -> (key -> words naming the regions under a chunk), by image_pyramid

    def get(self, key, shape, load):
        with self._lock:
            if key in self._chunks:
                self._chunks.move_to_end(key)
                hit = self._chunks[key]
                return np.zeros(shape, np.uint8) if hit is None else hit
        try:
            chunk = load()
        except Exception:  # a chunk being rewritten right now reads at the second try
            try:
                chunk = load()
            except Exception as e:  # damaged: said (a napari notification), never shown as tissue unsaid
                self._damaged(key, e)
                return np.zeros(shape, np.uint8)
        stored = chunk if chunk.any() else None
        with self._lock:
            self.reads += 1
            old = self._chunks.pop(key, None)
            self._bytes -= 0 if old is None else old.nbytes
            self._chunks[key] = stored
            self._bytes += 0 if stored is None else stored.nbytes
            while self._bytes > self.max_bytes and self._chunks:
                _, dropped = self._chunks.popitem(last=False)
                self._bytes -= 0 if dropped is None else dropped.nbytes
        return chunk

    def _damaged(self, key, error) -> None:
        """Warn once per chunk that cannot be read, naming the canvas regions under it."""
        import warnings

        with self._lock:
            if key in self.unreadable:
                return
            self.unreadable.add(key)
        name = self.where.get(key[0])
        where = name(key) if name is not None else f"level {key[1]} chunk {key[2]},{key[3]}"
        warnings.warn(f"{key[0]}: {where} cannot be read ({type(error).__name__}) and is shown black; run "
                      f"`diffinfinite verify {key[0]}` and resume to generate it again", UserWarning, stacklevel=2)

    def invalidate(self, path: str, level: int | None = None, rows=None, cols=None) -> int:
        """Forget the chunks of canvas ``path`` (on ``level``, chunk rows and columns in the given
        ranges; everything when not given).  Returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._chunks if k[0] == path and (level is None or k[1] == level)
                    and (rows is None or k[2] in rows) and (cols is None or k[3] in cols)]
            for k in keys:
                dropped = self._chunks.pop(k)
                self._bytes -= 0 if dropped is None else dropped.nbytes
            return len(keys)


CHUNKS = ChunkCache()


class CanvasLevel:
    """One pyramid level of a canvas as a read-only (y, x, c) array whose chunks come through
    :data:`CHUNKS`; dask arrays are built over it (any slice works, chunk-aligned ones are cheapest)."""

    def __init__(self, path: str, level: int, array):
        self.path, self.level, self._array = path, level, array
        c, h, w = array.shape
        self.shape = (h, w, c)
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3
        self.chunk = tuple(array.chunks[1:])

    def _chunk(self, cy: int, cx: int) -> np.ndarray:
        ch, cw = self.chunk
        ys = slice(cy * ch, min(self.shape[0], (cy + 1) * ch))
        xs = slice(cx * cw, min(self.shape[1], (cx + 1) * cw))
        shape = (ys.stop - ys.start, xs.stop - xs.start, self.shape[2])
        return CHUNKS.get((self.path, self.level, cy, cx), shape,
                          lambda: np.ascontiguousarray(np.moveaxis(self._array[:, ys, xs], 0, -1)))

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        ranges, picks = [], []
        for k, n in zip(key[:2], self.shape[:2]):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step < 0 or stop <= start:
                    idx = np.arange(start, stop, step)
                    lo, hi = (int(idx.min()), int(idx.max()) + 1) if idx.size else (0, 0)
                    ranges.append((lo, hi))
                    picks.append(idx - lo)
                    continue
                ranges.append((start, stop))
                picks.append(slice(0, stop - start, step))
            else:
                i = int(k) % n
                ranges.append((i, i + 1))
                picks.append(0)
        (y0, y1), (x0, x1) = ranges
        out = np.zeros((y1 - y0, x1 - x0, self.shape[2]), self.dtype)
        ch, cw = self.chunk
        if y1 > y0 and x1 > x0:
            for cy in range(y0 // ch, (y1 - 1) // ch + 1):
                for cx in range(x0 // cw, (x1 - 1) // cw + 1):
                    block = self._chunk(cy, cx)
                    by0, bx0 = cy * ch, cx * cw
                    sy0, sy1 = max(y0, by0), min(y1, by0 + block.shape[0])
                    sx0, sx1 = max(x0, bx0), min(x1, bx0 + block.shape[1])
                    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = block[sy0 - by0 : sy1 - by0, sx0 - bx0 : sx1 - bx0]
        out = out[picks[0]]
        out = out[picks[1]] if isinstance(picks[0], int) else out[:, picks[1]]
        return out[..., key[2]]

    def __array__(self, dtype=None, copy=None):
        out = self[:, :, :]
        return out.astype(dtype) if dtype is not None else out


def image_pyramid(canvas) -> list:
    """Dask arrays (channel last, one per level) over the canvas's pyramid, read through :data:`CHUNKS`."""
    import dask.array as da

    path = str(Path(canvas.path).resolve())
    size, ny, nx = canvas.region_grid
    region_px, chunk = size * canvas.factor, canvas.image(0).chunks[1:]

    def where(key):
        s = 2 ** key[1]
        y0, x0 = key[2] * chunk[0] * s, key[3] * chunk[1] * s
        ys = range(y0 // region_px, min(ny, -(-(y0 + chunk[0] * s) // region_px)))
        xs = range(x0 // region_px, min(nx, -(-(x0 + chunk[1] * s) // region_px)))
        regions = [iy * nx + ix for iy in ys for ix in xs]
        listed = ", ".join(map(str, regions[:12])) + (" ..." if len(regions) > 12 else "")
        return f"level {key[1]} under region(s) {listed}"

    CHUNKS.where[path] = where
    with CHUNKS._lock:  # a canvas shown again is read afresh: its damage is said again
        CHUNKS.unreadable = {k for k in CHUNKS.unreadable if k[0] != path}
    levels = []
    for level in range(canvas.levels):
        src = CanvasLevel(path, level, canvas.image(level))
        levels.append(da.from_array(src, chunks=src.chunk + (src.shape[2],), name=False, asarray=False,
                                    lock=False, fancy=False, meta=np.empty((0, 0, 0), src.dtype)))
    return levels


def invalidate_region(path, height: int, width: int, levels: list[tuple[int, int]], chunk: tuple[int, int],
                      bbox: tuple[int, int, int, int]) -> int:
    """Drop the cached chunks of every level under the level-0 pixel box ``bbox`` (y0, y1, x0, x1)."""
    path = str(Path(path).resolve())
    y0, y1, x0, x1 = bbox
    dropped = 0
    for level, (h, w) in enumerate(levels):
        sy, sx = height / h, width / w
        ly0, ly1 = max(0, int(y0 // sy) - 1), min(h, int(math.ceil(y1 / sy)) + 1)
        lx0, lx1 = max(0, int(x0 // sx) - 1), min(w, int(math.ceil(x1 / sx)) + 1)
        ch, cw = chunk
        dropped += CHUNKS.invalidate(path, level, range(ly0 // ch, (ly1 - 1) // ch + 1),
                                     range(lx0 // cw, (lx1 - 1) // cw + 1))
    return dropped


def canvas_info(canvas) -> dict:
    lh, lw = canvas.latent_shape
    return {
        "path": str(Path(canvas.path).resolve()),
        "height": canvas.height,
        "width": canvas.width,
        "factor": canvas.factor,
        "region_size": canvas.region_size,
        "classes": canvas.classes,
        "colours": canvas.colours,
        "latent_shape": [lh, lw],
        "mask_step": mask_step((lh, lw)),
        "settings": canvas.settings,
        "level_shapes": [list(canvas.image(i).shape[1:]) for i in range(canvas.levels)],
        "chunk": list(canvas.image(0).chunks[1:]),
    }


def read_mask(canvas, step: int) -> np.ndarray:
    """The stored mask on the mask-layer grid (every ``step``-th latent pixel)."""
    return canvas.mask_grid(step)  # only written chunks are read; the rest is the mask source or empty


def warn_if_damaged(canvas) -> None:
    """Warn (a napari notification) when finished regions of the canvas lack chunk files.

    Only presence is checked here, which is fast on any canvas; ``diffinfinite verify`` decodes
    and checksums every region."""
    import warnings

    from src_models.store.verify import verify_canvas

    report = verify_canvas(canvas, deep=False)
    if not report.ok:
        warnings.warn(f"{report.summary()}: those regions may show black or stale tissue; run "
                      f"`diffinfinite verify {canvas.path}` and resume to generate them again",
                      UserWarning, stacklevel=2)


def canvas_layer_data(path, name: str | None = None) -> list[tuple]:
    """LayerData tuples (image, mask) for a project canvas."""
    canvas = open_readonly(path)
    warn_if_damaged(canvas)
    info = canvas_info(canvas)
    CHUNKS.invalidate(info["path"])  # the store may have been replaced since it was last shown
    name = name or Path(path).name.removesuffix(".zarr")
    step = info["mask_step"]
    s = float(canvas.factor * step)
    image_meta = {
        "name": name,
        "rgb": True,
        "multiscale": True,
        "contrast_limits": [0, 255],
        "cache": False,
        "metadata": {META: {"role": "image", **info}},
    }
    # a canvas with tissue in it is shown with the mask as outlines (the widgets switch it when the
    # layer arrives: napari's add_labels takes no contour), so the tissue is seen; an empty one filled
    sampled = bool(np.asarray(canvas.state_table()[..., 0]).any())
    mask_meta = {
        "name": f"{name} mask",
        "scale": (s, s),
        "translate": (pixel_centre_offset(s),) * 2,
        "colormap": label_colormap(info["colours"]),
        "features": class_features(info["classes"]),
        "opacity": MASK_OPACITY,
        "metadata": {META: {"role": "mask", "mode": MASK_MODES[0], "sampled": sampled, **info}},
    }
    return [(image_pyramid(canvas), image_meta, "image"), (read_mask(canvas, step), mask_meta, "labels")]


def _reslice(layer) -> None:
    """Re-slice a multiscale image layer; napari keeps its coarsest level (thumbnail, and the view
    when zoomed far out) materialised, so that is let go first (it is at most 256 px a side)."""
    reset = getattr(layer, "_reset_thumbnail_level_data", None)
    if reset is not None:
        reset()
    layer.refresh()


def refresh_image(layer) -> None:
    """Show what the store holds now, everywhere (every cached chunk of the canvas is dropped)."""
    CHUNKS.invalidate(layer.metadata[META]["path"])
    _reslice(layer)


def refresh_region(layer, boxes, grow: int = 0) -> int:
    """Show what the store holds now under the level-0 pixel boxes ``boxes`` ((y0, y1, x0, x1) each,
    grown by ``grow`` px on every side): only the chunks there are dropped and read again, then the
    layer re-slices its view once.  Returns how many cached chunks were dropped."""
    info = layer.metadata[META]
    if boxes and isinstance(boxes[0], (int, np.integer)):
        boxes = [boxes]
    dropped = 0
    for y0, y1, x0, x1 in boxes:
        box = (max(0, y0 - grow), min(info["height"], y1 + grow), max(0, x0 - grow), min(info["width"], x1 + grow))
        dropped += invalidate_region(info["path"], info["height"], info["width"],
                                     [tuple(s) for s in info["level_shapes"]], tuple(info["chunk"]), box)
    _reslice(layer)
    return dropped


def canvas_layers(viewer, path=None) -> list[tuple]:
    """(image layer, mask layer or None) pairs of the canvases shown in ``viewer`` (``path``: only that one)."""
    images, masks = {}, {}
    for layer in viewer.layers:
        info = layer.metadata.get(META) if isinstance(layer.metadata, dict) else None
        if not info or "path" not in info:
            continue
        if info.get("role") == "image":
            images.setdefault(info["path"], layer)
        elif info.get("role") == "mask":
            masks.setdefault(info["path"], layer)
    if path is not None:
        path = str(Path(path).resolve())
        images = {k: v for k, v in images.items() if k == path}
    return [(img, masks.get(p)) for p, img in images.items()]


# ----------------------------------------------------------------------------- other NGFF stores
def _dataset_transform(ds: dict) -> tuple[list[float] | None, list[float] | None]:
    scale = translate = None
    for t in ds.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]]
        elif t.get("type") == "translation":
            translate = [float(v) for v in t["translation"]]
    return scale, translate


def ngff_layer_data(path) -> list[tuple]:
    """An NGFF 0.5 image pyramid (y, x) or (c, y, x) with c in {3, 4}, plus its labels."""
    import dask.array as da
    import zarr

    path = Path(path)
    root = zarr.open_group(str(path), mode="r")
    ome = root.attrs.asdict().get("ome", {})
    ms = ome["multiscales"][0]
    axes = [a["name"] for a in ms.get("axes", [])]
    datasets = ms["datasets"]
    arrays = [root[d["path"]] for d in datasets]
    rgb = axes[:1] == ["c"] and arrays[0].ndim == 3 and arrays[0].shape[0] in (3, 4)
    data = []
    for arr in arrays:
        d = da.from_array(arr, chunks=arr.chunks, name=False)
        data.append(d.transpose(1, 2, 0) if rgb else d)
    scale, translate = _dataset_transform(datasets[0])
    spatial = slice(1, None) if rgb else slice(None)
    meta = {"name": ms.get("name") or path.name.removesuffix(".zarr"), "rgb": rgb, "multiscale": len(data) > 1}
    if scale:
        meta["scale"] = tuple(scale[spatial])
    if translate:
        meta["translate"] = tuple(translate[spatial])
    out = [(data if len(data) > 1 else data[0], meta, "image")]
    if "labels" in root:
        names = root["labels"].attrs.asdict().get("ome", {}).get("labels", [])
        for lname in names:
            grp = root[f"labels/{lname}"]
            gome = grp.attrs.asdict().get("ome", {})
            lms = gome["multiscales"][0]
            lds = lms["datasets"][0]
            labels = np.asarray(grp[lds["path"]][:])
            lmeta: dict = {"name": lname}
            lscale, ltranslate = _dataset_transform(lds)
            if lscale:
                lmeta["scale"] = tuple(lscale)
            if ltranslate:
                lmeta["translate"] = tuple(ltranslate)
            il = gome.get("image-label", {})
            colours = {int(c["label-value"]): np.asarray(c["rgba"], np.float32) / 255 for c in il.get("colors", [])}
            if colours:
                cmap = {None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32)}
                cmap.update({k: v for k, v in colours.items() if k != 0})
                lmeta["colormap"] = cmap
            props = il.get("properties", [])
            if props and all("name" in p for p in props):
                lmeta["features"] = {"index": np.array([int(p["label-value"]) for p in props]),
                                     "class": [str(p["name"]) for p in props]}
            out.append((labels, lmeta, "labels"))
    return out


def _is_ngff05(path: Path) -> bool:
    attrs = _root_attrs(path)
    ome = (attrs or {}).get("ome", {})
    return isinstance(ome, dict) and ome.get("version") == "0.5" and bool(ome.get("multiscales"))


# ----------------------------------------------------------------------------- npe2 reader
def get_reader(path):
    """npe2 reader hook: a reader for canvases and NGFF 0.5 stores, or None for anything else."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.name == "zarr.json" and p.is_file():  # File > Open File(s) cannot pick a folder: its zarr.json is picked
        p = p.parent
        if not (is_canvas(p) or _is_ngff05(p)):
            return None
        return read_canvas_at(p) if is_canvas(p) else read_ngff_at(p)
    if not p.is_dir():
        return None
    if is_canvas(p):
        return read_canvas
    if _is_ngff05(p):
        return read_ngff
    if p.suffix == ".zarr":  # some other zarr store: napari's own reader knows it
        from napari_builtins.io import napari_get_reader

        return napari_get_reader(str(p))
    return None


def prefer_this_reader() -> bool:
    """Make this plugin napari's reader for ``*.zarr`` unless the user chose one already, so that
    ``viewer.open(canvas)`` and File > Open give the image pyramid and the mask without asking.
    Other zarr stores still reach napari's own reader (see :func:`get_reader`).  Returns whether
    the preference was set now."""
    try:
        from napari.settings import get_settings

        prefs = get_settings().plugins.extension2reader
    except Exception:  # napari not set up (a headless import): nothing to do
        return False
    patterns = ("*.zarr", "*.zarr" + os.sep)  # napari matches folders with a trailing separator
    if any(p in prefs for p in patterns):
        return False
    get_settings().plugins.extension2reader = {**prefs, **{p: PLUGIN for p in patterns}}
    return True


def activate(context=None) -> None:
    """npe2 ``on_activate`` hook (the first time napari uses this plugin)."""
    prefer_this_reader()


def read_canvas(path) -> list[tuple]:
    if isinstance(path, (list, tuple)):
        path = path[0]
    return canvas_layer_data(path)


def read_canvas_at(folder: Path):
    """A reader function for the canvas at ``folder`` whatever path napari hands it (its zarr.json)."""
    return lambda _path, **_: read_canvas(str(folder))


def read_ngff_at(folder: Path):
    return lambda _path, **_: read_ngff(str(folder))


def read_ngff(path) -> list[tuple]:
    if isinstance(path, (list, tuple)):
        path = path[0]
    return ngff_layer_data(path)
