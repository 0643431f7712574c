"""Reading canvases (and OME-Zarr stores written by our writer) into napari layers.

A project canvas becomes two layers that know their store through ``layer.metadata["diffinfinite"]``:

* the image: a multiscale RGB layer of dask arrays over the store's pyramid levels (never one
  level), built with ``cache=False`` and rebuilt by :func:`refresh_image` so that neither
  napari's dask cache nor its cached thumbnail level ever shows a chunk that was rewritten;
* the mask: a numpy Labels layer on the mask grid (the latent grid, or every ``step``-th latent
  pixel when the latent grid is too large to paint), scaled by ``factor * step`` over the image
  and shifted half a pixel so that mask and image pixels line up.  Colours and class names come
  from the canvas (copied from the model card that made it).  Painting edits the layer only;
  the widgets write the mask to the store before each run and on "Save mask".

Other NGFF 0.5 stores (image pyramid plus ``labels/``) are read as plain image and labels layers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

META = "diffinfinite"  # key of our entry in layer.metadata
MAX_MASK_SIDE = 8192  # the mask layer's longest side, in pixels (napari paints single-scale labels only)


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
    from src_models.canvas import FORMAT

    attrs = _root_attrs(Path(path))
    return bool(attrs) and attrs.get("diffinfinite", {}).get("format") == FORMAT


def mask_step(latent_shape: tuple[int, int]) -> int:
    """Latent pixels per mask-layer pixel: 1 unless the latent grid is longer than MAX_MASK_SIDE; a
    power of two, so the layer is a level of the stored mask pyramid (read without the finer levels)."""
    step = max(1, math.ceil(max(latent_shape) / MAX_MASK_SIDE))
    return 1 << (step - 1).bit_length()


def hex_rgba(colour: str, alpha: float = 1.0) -> np.ndarray:
    c = colour.lstrip("#")
    return np.array([int(c[i : i + 2], 16) / 255 for i in (0, 2, 4)] + [alpha], dtype=np.float32)


def label_colormap(colours: list[str]) -> dict:
    """A napari direct label colormap: class colours, class 0 ("unknown", unpainted) transparent."""
    cmap = {None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32)}
    for i, c in enumerate(colours[1:], 1):
        cmap[i] = hex_rgba(c)
    return cmap


def class_features(classes: list[str]) -> dict:
    return {"index": np.arange(len(classes)), "class": list(classes)}


def pixel_centre_offset(scale: float) -> float:
    """Translate that puts a pixel of side ``scale`` (image px) over the image pixels it covers."""
    return (scale - 1) / 2


# ----------------------------------------------------------------------------- canvases
def open_readonly(path):
    from src_models.canvas import Canvas

    return Canvas.open(path, "r")


def image_pyramid(canvas) -> list:
    """Fresh dask arrays (random names: nothing cached under them yet), channel last, one per level."""
    import dask.array as da

    levels = []
    for level in range(canvas.levels):
        arr = canvas.image(level)
        levels.append(da.from_array(arr, chunks=arr.chunks, name=False).transpose(1, 2, 0))
    return levels


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
    }


def read_mask(canvas, step: int) -> np.ndarray:
    """The stored mask on the mask-layer grid (every ``step``-th latent pixel)."""
    return canvas.mask_grid(step)  # only written chunks are read; the rest is the mask source or empty


def warn_if_damaged(canvas) -> None:
    """Warn (a napari notification) when finished regions of the canvas lack chunk files.

    Only presence is checked here, which is fast on any canvas; ``diffinfinite verify`` decodes
    and checksums every region."""
    import warnings

    from src_models.verify import verify_canvas

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
    mask_meta = {
        "name": f"{name} mask",
        "scale": (s, s),
        "translate": (pixel_centre_offset(s),) * 2,
        "colormap": label_colormap(info["colours"]),
        "features": class_features(info["classes"]),
        "opacity": 0.6,
        "metadata": {META: {"role": "mask", "dirty": False, **info}},
    }
    return [(image_pyramid(canvas), image_meta, "image"), (read_mask(canvas, step), mask_meta, "labels")]


def refresh_image(layer) -> None:
    """Show what the store holds now: new dask arrays, same view and resolution level."""
    info = layer.metadata[META]
    level = layer.data_level
    layer.data = image_pyramid(open_readonly(info["path"]))
    if layer.data_level != level:
        layer.data_level = level


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
    if not p.is_dir():
        return None
    if is_canvas(p):
        return read_canvas
    if _is_ngff05(p):
        return read_ngff
    return None


def read_canvas(path) -> list[tuple]:
    if isinstance(path, (list, tuple)):
        path = path[0]
    return canvas_layer_data(path)


def read_ngff(path) -> list[tuple]:
    if isinstance(path, (list, tuple)):
        path = path[0]
    return ngff_layer_data(path)
