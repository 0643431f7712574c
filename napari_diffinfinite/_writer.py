"""Writer: a canvas's image layer plus its mask (and any other canvas labels layers) -> an
OME-Zarr store (NGFF 0.5, zarr v3) laid out like a canvas: image levels ``0, 1, ...`` at the root,
each labels layer under ``labels/<name>/0`` with its colours and class names as ``image-label``
metadata.

The region overlay is left out (it only shows a run's state).  Layers that do not belong to a canvas
(a plain image or labels layer) are refused with a message naming them, before anything is written;
napari's own writers save those.  Arrays
are copied block by block, so a multiscale canvas layer is never loaded whole; a write that fails
half-way removes what it wrote.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from src_models.errors import DiffInfiniteError

BLOCK = 1024  # px per side of the blocks copied at a time


class WriterError(DiffInfiniteError, RuntimeError):
    """Layers this writer does not save (not a ValueError: napari takes that for "no writer" and
    drops the message)."""


def _canvas_role(meta: dict) -> str | None:
    info = (meta.get("metadata") or {}).get("diffinfinite")
    return info.get("role") if isinstance(info, dict) and "path" in info else None


def _name(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "labels"
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _copy(src, dst, channel_last: bool) -> None:
    """Copy ``src`` (numpy or dask, (y, x) or (y, x, c)) into zarr ``dst`` ((y, x) or (c, y, x))."""
    h, w = src.shape[:2]
    for y in range(0, h, BLOCK):
        for x in range(0, w, BLOCK):
            block = np.asarray(src[y : y + BLOCK, x : x + BLOCK])
            if channel_last:
                dst[:, y : y + block.shape[0], x : x + block.shape[1]] = np.moveaxis(block, -1, 0)
            else:
                dst[y : y + block.shape[0], x : x + block.shape[1]] = block


def _label_classes(meta: dict) -> tuple[list[dict], list[dict]]:
    """``image-label`` colors and properties from our metadata, or from the layer's colormap/features."""
    info = (meta.get("metadata") or {}).get("diffinfinite")
    if info and info.get("classes"):
        from src_models.store import ngff

        return ngff.class_colours(info["colours"]), ngff.class_properties(info["classes"])
    colours = []
    cmap = meta.get("colormap")
    color_dict = getattr(cmap, "color_dict", None)
    if color_dict is None and isinstance(cmap, dict):
        color_dict = cmap
    if color_dict:
        for k, v in color_dict.items():
            if k is None:
                continue
            rgba = np.asarray(v, dtype=np.float64).ravel()
            if rgba.size in (3, 4):
                rgba = np.append(rgba, 1.0) if rgba.size == 3 else rgba
                colours.append({"label-value": int(k), "rgba": [int(round(c * 255)) for c in rgba]})
    props = []
    feats = meta.get("features")
    if feats is not None and "class" in feats:
        idx = list(feats["index"]) if "index" in feats else list(range(len(feats["class"])))
        props = [{"label-value": int(i), "name": str(n)} for i, n in zip(idx, list(feats["class"]))]
    return colours, props


def write_layers(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 writer hook for ``["image+", "labels*"]``: returns the path written."""

    from ._reader import is_canvas

    out = Path(path)
    if out.suffix != ".zarr":
        out = out.with_name(out.name + ".zarr")
    layer_data = [d for d in layer_data if _canvas_role(d[1]) != "regions"]  # the region overlay is a view
    images = [d for d in layer_data if d[2] == "image"]
    labels = [d for d in layer_data if d[2] == "labels"]
    strangers = [str(m.get("name", "?")) for _, m, kind in layer_data
                 if _canvas_role(m) != ("image" if kind == "image" else "mask")]
    if strangers:
        raise WriterError(f"the DiffInfinite writer saves canvas layers only (a canvas image and its mask); "
                          f"{', '.join(repr(n) for n in strangers)} {'is' if len(strangers) == 1 else 'are'} not. "
                          "Save other layers with napari's own writers; nothing was written")
    if len(images) != 1:
        raise WriterError(f"the DiffInfinite writer takes exactly one canvas image layer, got {len(images)}; "
                          "nothing was written")
    for ldata, lmeta, _ in labels:
        arr = ldata[0] if lmeta.get("multiscale") else ldata
        if arr.ndim != 2:
            raise WriterError(f"labels layer {lmeta.get('name')!r} is {arr.ndim}-D; the writer takes 2-D labels; "
                              "nothing was written")
    if out.exists():
        if is_canvas(out):
            # not a ValueError: napari takes that for "no writer" and drops the message
            raise FileExistsError(f"{out} is a DiffInfinite canvas; choose another name "
                                  "(the writer never replaces a canvas)")
        shutil.rmtree(out) if out.is_dir() else out.unlink()

    try:
        _write(out, images[0], labels)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # leave nothing half-written behind
        raise
    return [str(out)]


def _write(out: Path, image: tuple, labels: list[tuple]) -> None:
    import zarr

    from src_models.store import ngff

    data, meta, _ = image
    levels = list(data) if meta.get("multiscale") else [data]
    rgb = bool(meta.get("rgb"))
    lead = [1.0] if rgb else []  # the channel axis is not scaled
    base_scale = [float(v) for v in (meta.get("scale") if meta.get("scale") is not None else (1.0, 1.0))][-2:]
    translate = meta.get("translate")
    if translate is not None:
        translate = ([0.0] if rgb else []) + [float(v) for v in translate][-2:]
    shape0 = levels[0].shape[:2]

    root = zarr.open_group(str(out), mode="w", zarr_format=3)
    datasets = []
    for i, arr in enumerate(levels):
        h, w = arr.shape[:2]
        shape = (arr.shape[2], h, w) if rgb else (h, w)
        chunks = (arr.shape[2], min(512, h), min(512, w)) if rgb else (min(512, h), min(512, w))
        z = root.create_array(str(i), shape=shape, chunks=chunks, dtype=np.dtype(arr.dtype), fill_value=0,
                              dimension_names=("c", "y", "x") if rgb else ("y", "x"))
        _copy(arr, z, rgb)
        scale = lead + [base_scale[0] * shape0[0] / h, base_scale[1] * shape0[1] / w]
        datasets.append({"path": str(i), "coordinateTransformations": ngff.transforms(scale, translate)})
    extra = {"omero": ngff.OMERO_RGB} if rgb and levels[0].shape[2] == 3 else {}
    root.attrs["ome"] = ngff.multiscales(str(meta.get("name", "image")), ngff.image_axes(rgb), datasets, **extra)

    if labels:
        lgroup = root.create_group("labels")
        taken: set[str] = set()
        names = []
        for ldata, lmeta, _ in labels:
            arr = ldata[0] if lmeta.get("multiscale") else ldata
            name = _name(str(lmeta.get("name", "labels")), taken)
            names.append(name)
            g = lgroup.create_group(name)
            h, w = arr.shape
            z = g.create_array("0", shape=(h, w), chunks=(min(512, h), min(512, w)), dtype=np.dtype(arr.dtype),
                               fill_value=0, dimension_names=("y", "x"))
            _copy(arr, z, False)
            lscale = [float(v) for v in (lmeta.get("scale") if lmeta.get("scale") is not None else (1.0, 1.0))][-2:]
            ltrans = lmeta.get("translate")
            colours, props = _label_classes(lmeta)
            datasets = [{"path": "0", "coordinateTransformations": ngff.transforms(
                lscale, [float(v) for v in ltrans][-2:] if ltrans is not None else None)}]
            g.attrs["ome"] = ngff.label_image(name, datasets, colors=colours, properties=props)
        lgroup.attrs["ome"] = ngff.labels_index(names)
