"""Canvases out: image + mask tiles for a segmentation trainer (``export-tiles``), the mask as
QuPath GeoJSON (``export-annotations``), and the whole canvas as a pyramidal, tiled OME-TIFF
(``export-ome-tiff``) that QuPath and other slide viewers open.

Tiles are cut on a grid of ``tile`` px with ``stride`` (default ``tile``) at pyramid level
``level`` (default 0); only whole tiles whose regions are all finished are written.  The mask of
a tile is the canvas's class mask (latent resolution) brought to the tile's pixels by nearest
neighbour (each pixel takes the label under its centre).  The folder is the one ``make-dataset``
writes (:class:`src_models.data.dataset.TileSetWriter`): ``images/``, ``masks/``, ``classes.json``,
``manifest.csv``, ``dataset.json`` with provenance.

numpy, zarr, tifffile and PIL: no torch.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from src_models.io.annotations import mask_to_geojson, write_geojson
from src_models.store.canvas import PENDING, Canvas, CanvasError
from src_models.data.dataset import DatasetError, TileSetWriter, _fraction_in, tissue_map
from src_models.durable import atomic_path
from src_models.store.provenance import code_version, provenance, utc_now
from src_models.errors import DiffInfiniteError


class ExportError(DiffInfiniteError, ValueError):
    """Bad input for an export (the message says what and where)."""


def canvas_source(canvas: Canvas, mask: np.ndarray | None = None) -> dict:
    """A canvas as a provenance source: its path, the SHA-256 of its region state (which holds the
    CRC-32 of every finished region's pixels and latents, and its seed), its mask signature and,
    when given, the SHA-256 of the mask that was exported."""
    state = np.ascontiguousarray(canvas.state_table())
    entry = {"path": str(canvas.path), "role": "canvas", "region_state_sha256": hashlib.sha256(state.tobytes()).hexdigest(),
             "finished_regions": int((state[..., 0] != PENDING).sum()), "regions": int(state[..., 0].size),
             "mask_signature": canvas.info.get("mask_signature")}
    if mask is not None:
        entry["mask_sha256"] = hashlib.sha256(repr(mask.shape).encode() + np.ascontiguousarray(mask, np.uint8).tobytes()).hexdigest()
    return entry


def _canvas_provenance(canvases: list[Canvas], settings: dict, sources: list[dict]) -> dict:
    """Provenance of an export: the export's settings, each canvas's own provenance, its run
    settings and seed."""
    made = [{"path": str(c.path), "provenance": c.info.get("provenance"), "settings": c.settings} for c in canvases]
    cards = {(c.info.get("provenance") or {}).get("model_card_sha256") for c in canvases} - {None}
    seeds = {str(c.path): c.settings.get("seed") for c in canvases}
    return provenance(settings=settings, seeds=seeds, sources=sources,
                      card_hash=cards.pop() if len(cards) == 1 else (sorted(cards) or None), canvases=made)


def _open(path) -> Canvas:
    path = Path(path)
    if not path.exists():
        raise ExportError(f"canvas {path} does not exist")
    return Canvas.open(path, "r")


def _parse_classes(classes, n: int) -> list[int] | None:
    if classes is None:
        return None
    bad = [k for k in classes if not 0 <= k < n]
    if bad:
        raise ExportError(f"--classes {','.join(map(str, bad))}: the canvas has classes 0..{n - 1}")
    return list(classes)


def _tile_mask(canvas: Canvas, level: int, y0: int, x0: int, tile: int) -> np.ndarray:
    """Labels of a level-``level`` tile at (y0, x0), each pixel the latent label under its centre."""
    s, f = 2**level, canvas.factor
    rows = ((np.arange(y0, y0 + tile) + 0.5) * s // f).astype(np.int64)
    cols = ((np.arange(x0, x0 + tile) + 0.5) * s // f).astype(np.int64)
    lh, lw = canvas.latent_shape
    rows, cols = np.minimum(rows, lh - 1), np.minimum(cols, lw - 1)
    block = canvas.read_mask(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    return block[np.ix_(rows - rows[0], cols - cols[0])]


def _thumb_level(canvas: Canvas, max_side: int = 2048) -> int:
    for level in range(canvas.levels):
        if max(canvas.image(level).shape[1:]) <= max_side:
            return level
    return canvas.levels - 1


def _export_canvas(c, stem: str, ys: list[int], xs: list[int], writer: TileSetWriter, summary: dict, count: dict,
                   progress, *, tile: int, level: int, wanted, min_class_fraction: float, min_tissue: float) -> dict:
    """The tiles of one canvas on its grid (``ys`` x ``xs`` at ``level``): finished, of the wanted
    classes, with enough tissue; counts go into ``summary``, returns the canvas's own row."""
    done = c.state_table()[..., 0] != PENDING
    rpx = c.region_size
    s = 2**level
    mpp = c.pixel_size_um * s if c.pixel_size_um else None
    tl = _thumb_level(c)
    tmap, _ = tissue_map(c.read_rgb(0, c.image(tl).shape[1], 0, c.image(tl).shape[2], level=tl))
    ds_t = c.width / c.image(tl).shape[2]
    per = {"canvas": str(c.path), "tiles": 0}
    for y in ys:
        for x in xs:
            count["done"] += 1
            progress("tiles", count["done"], count["total"])
            X0, Y0, W0 = x * s, y * s, tile * s
            name = f"{stem}_x{X0:06d}_y{Y0:06d}"
            if writer.has(name):
                summary["tiles"] += 1
                per["tiles"] += 1
                continue
            ry0, ry1 = Y0 // rpx, min(done.shape[0], -(-(Y0 + W0) // rpx))
            rx0, rx1 = X0 // rpx, min(done.shape[1], -(-(X0 + W0) // rpx))
            if not done[ry0:ry1, rx0:rx1].all():
                summary["unfinished"] += 1
                continue
            mask = _tile_mask(c, level, y, x, tile)
            if wanted is not None and np.isin(mask, wanted).mean() < min_class_fraction:
                summary["other_classes"] += 1
                continue
            tissue = _fraction_in(tmap, ds_t, X0, Y0, W0, W0)
            if tissue < min_tissue:
                summary["background"] += 1
                continue
            rgb = c.read_rgb(y, y + tile, x, x + tile, level=level)
            row = {"source": str(c.path), "level": level, "mpp": "" if mpp is None else round(mpp, 6),
                   "x": X0, "y": Y0, "width": W0, "height": W0, "tissue_fraction": round(tissue, 4),
                   "annotated_fraction": 1.0}
            writer.add(name, rgb, mask, row, mpp)
            summary["tiles"] += 1
            per["tiles"] += 1
    return per


def export_tiles(canvas_paths: list, out, *, tile: int = 512, stride: int | None = None, level: int = 0,
                 classes: list[int] | None = None, min_class_fraction: float = 0.5, min_tissue: float = 0.0,
                 overwrite: bool = False, resume: bool = False, progress=None) -> dict:
    """Cut finished canvases into image + mask tiles (see the module docstring).  With
    ``classes``, only tiles at least ``min_class_fraction`` of those classes are written; with
    ``min_tissue``, only tiles with that share of tissue (saturation, as make-dataset)."""
    stride = stride or tile
    progress = progress or (lambda stage, done, total: None)
    if tile < 8:
        raise ExportError(f"--tile must be at least 8 px, got {tile}")
    if stride < 1:
        raise ExportError(f"--stride must be positive, got {stride}")
    for name, v in (("--min-class-fraction", min_class_fraction), ("--min-tissue", min_tissue)):
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise ExportError(f"{name} must lie in [0, 1], got {v}")
    if not canvas_paths:
        raise ExportError("give at least one canvas")
    canvases = []
    try:
        for p in canvas_paths:
            canvases.append(_open(p))
        first = canvases[0]
        for c in canvases[1:]:
            if c.classes != first.classes:
                raise ExportError(f"{c.path} has classes {c.classes}, {first.path} has {first.classes}; "
                                  "export them to separate folders")
        wanted = _parse_classes(classes, len(first.classes))
        for c in canvases:
            if not 0 <= level < c.levels:
                raise ExportError(f"--level {level}: {c.path} has levels 0..{c.levels - 1}")
        settings = {"canvases": [str(c.path) for c in canvases], "tile": tile, "stride": stride, "level": level,
                    "classes": wanted, "min_class_fraction": min_class_fraction, "min_tissue": min_tissue}
        sources = [canvas_source(c) for c in canvases]
        settings["canvas_states"] = [s["region_state_sha256"] for s in sources]
        prov = _canvas_provenance(canvases, settings, sources)
        try:
            writer = TileSetWriter(out, kind="export-tiles", classes=first.classes, colours=first.colours,
                                   settings=settings, prov=prov, resume=resume, overwrite=overwrite)
        except DatasetError as e:
            raise ExportError(str(e)) from None
        summary = {"tiles": 0, "unfinished": 0, "other_classes": 0, "background": 0, "grid_tiles": 0, "canvases": []}
        try:
            grids = []
            for c in canvases:
                _, h, w = c.image(level).shape
                ys = list(range(0, h - tile + 1, stride)) if h >= tile else []
                xs = list(range(0, w - tile + 1, stride)) if w >= tile else []
                grids.append((ys, xs))
            total = sum(len(ys) * len(xs) for ys, xs in grids)
            summary["grid_tiles"] = total
            count = {"done": 0, "total": total}
            for c, stem, (ys, xs) in zip(canvases, _stems(canvases), grids):
                summary["canvases"].append(_export_canvas(c, stem, ys, xs, writer, summary, count, progress, tile=tile,
                                                          level=level, wanted=wanted,
                                                          min_class_fraction=min_class_fraction, min_tissue=min_tissue))
            writer.finish(summary)
        finally:
            writer.close()
        return summary
    finally:
        for c in canvases:
            c.close()


def _stems(canvases: list[Canvas]) -> list[str]:
    out, used = [], {}
    for c in canvases:
        stem = Path(c.path).name.split(".")[0] or "canvas"
        n = used.get(stem, 0)
        used[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}-{n + 1}")
    return out


def export_annotations(canvas_path, out, *, classes: list[int] | None = None, include_unknown: bool = False,
                       progress=None) -> dict:
    """Write a canvas's mask as QuPath GeoJSON (coordinates in canvas px); returns a summary."""
    canvas = _open(canvas_path)
    try:
        wanted = _parse_classes(classes, len(canvas.classes))
        mask = canvas.read_mask()
        src = canvas_source(canvas, mask)
        settings = {"canvas": str(canvas.path), "classes": wanted, "include_unknown": include_unknown}
        prov = _canvas_provenance([canvas], settings, [src])
        fc = mask_to_geojson(mask, canvas.classes, canvas.colours, pixel_size=canvas.factor,
                             skip=() if include_unknown else (0,), only=wanted, progress=progress)
        fc["diffinfinite"] = {"canvas": str(canvas.path), "size": [canvas.width, canvas.height],
                              "factor": canvas.factor, "pixel_size_um": canvas.pixel_size_um, "provenance": prov}
        write_geojson(out, fc)
        counts = {f["properties"]["classification"]["name"]: len(f["geometry"]["coordinates"]) for f in fc["features"]}
        return {"geojson": str(out), "features": len(fc["features"]), "polygons": counts}
    finally:
        canvas.close()


def export_ome_tiff(canvas_path, out, *, tile: int = 256, compression: str = "deflate", overwrite: bool = False,
                    progress=None) -> dict:
    """Write a canvas's image pyramid as one pyramidal, tiled OME-TIFF (sub-resolutions in SubIFDs,
    the layout QuPath, OMERO and Bio-Formats read); the µm/px and the provenance go into its OME-XML
    (``Description``).  Unfinished regions are black, as on the canvas."""
    import tifffile

    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite to replace it")
    if tile < 16 or tile % 16:
        raise ExportError(f"--tile must be a multiple of 16 px, got {tile}")
    codecs = {"deflate": "zlib", "zlib": "zlib", "jpeg": "jpeg", "none": None, "lzw": "lzw"}
    if compression not in codecs:
        raise ExportError(f"--compression must be one of {', '.join(codecs)}, got {compression!r}")
    canvas = _open(canvas_path)
    try:
        src = canvas_source(canvas)
        settings = {"canvas": str(canvas.path), "tile": tile, "compression": compression}
        prov = _canvas_provenance([canvas], settings, [src])
        levels = [canvas.image(i) for i in range(canvas.levels)]
        total = sum(-(-a.shape[1] // tile) * -(-a.shape[2] // tile) for a in levels)
        done = [0]

        def tiles(arr):
            _, h, w = arr.shape
            for y in range(0, h, tile):
                block = np.asarray(arr[:, y : y + tile, :])  # one row of tiles at a time
                for x in range(0, w, tile):
                    t = np.zeros((tile, tile, 3), np.uint8)
                    part = np.moveaxis(block[:, :, x : x + tile], 0, -1)
                    t[: part.shape[0], : part.shape[1]] = part
                    done[0] += 1
                    if progress is not None:
                        progress("tiles", done[0], total)
                    yield t

        px = canvas.pixel_size_um
        meta = {"axes": "YXS", "Name": Path(canvas.path).name, "Description": json.dumps({"provenance": prov}),
                "Creator": code_version()}
        if px:
            meta.update({"PhysicalSizeX": px, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": px, "PhysicalSizeYUnit": "µm"})
        opts = {"photometric": "rgb", "tile": (tile, tile), "compression": codecs[compression],
                "dtype": np.uint8, "software": code_version()}
        if compression == "jpeg":
            opts["compressionargs"] = {"level": 90}
        with atomic_path(out) as part, tifffile.TiffWriter(part, bigtiff=True, ome=True) as tif:
            h, w = levels[0].shape[1:]
            res = {"resolution": (1e4 / px, 1e4 / px), "resolutionunit": "CENTIMETER"} if px else {}
            tif.write(tiles(levels[0]), shape=(h, w, 3), subifds=len(levels) - 1, metadata=meta, **res, **opts)
            for i, arr in enumerate(levels[1:], 1):
                lh, lw = arr.shape[1:]
                res = ({"resolution": (1e4 / (px * 2**i), 1e4 / (px * 2**i)), "resolutionunit": "CENTIMETER"}
                       if px else {})
                tif.write(tiles(arr), shape=(lh, lw, 3), subfiletype=1, metadata=None, **res, **opts)
        return {"ome_tiff": str(out), "levels": len(levels), "size": [canvas.width, canvas.height],
                "pixel_size_um": px, "bytes": out.stat().st_size, "created_utc": utc_now()}
    finally:
        canvas.close()


__all__ = ["export_tiles", "export_annotations", "export_ome_tiff", "ExportError", "CanvasError"]
