"""Derive tumour / stroma / infiltrate region labels from an H&E image and its nuclei type raster,
and lay out the tumour model's training, held-out and layout folders for ``diffinfinite train``.

Labels (the tumour model's classes):

    0 unknown     tissue the rules leave unsure (the null condition)
    1 background  glass / empty space: white, unstained
    2 tumour      carcinoma nests: regions dense in neoplastic nuclei, the cytoplasm between them included
    3 stroma      connective tissue: sparse nuclei (mostly spindle / connective), eosin fibres
    4 infiltrate  immune infiltrate: regions dense in inflammatory nuclei

The inputs are the RGB image and what a nuclei segmenter gives: a raster of nuclei types (0 none,
1 connective, 2 inflammatory, 3 neoplastic).  The rules; every size is physical (µm, µm²) and is
converted with ``pixel_um`` (0.5 µm/px assumed for the shipped images); the numbers are in ``RULES``:

1. Tissue vs background.  Optical density OD = -log10((RGB + 1) / 256) per channel; a pixel holds
   stain when its summed OD exceeds 0.3.  The stained map is closed (disk of 4 µm), its holes below
   4,000 µm² are filled (clefts between cells and fibres, small vessel lumina) and objects below
   1,500 µm² are dropped.  Everything else is background (1).
2. Nuclear area fractions.  For each type k, F_k is the fraction of the tissue area nearby covered by
   nuclei of that type: the type's indicator smoothed with a Gaussian of sigma 15 µm over the tissue
   only (normalised convolution, so background does not dilute it at a tissue edge).  Area, not
   counts: large neoplastic nuclei and small lymphocytes are compared by how much of the region they
   fill, as the eye compares them.
3. Evidence.  Haematoxylin (``skimage.color.rgb2hed``) above 0.08, opened with a disk of 1 µm, in
   blobs of at least 10 µm², is nucleus-like.  U is the fraction of nucleus-like area farther than
   2 µm from every labelled nucleus (nuclei the segmenter missed), L the fraction of labelled nuclear
   area (all types), both smoothed like the F_k but with sigma 30 µm.
4. Decision per tissue pixel:
   - tumour (2) where F_neo >= 0.10 and F_neo >= 1.5 F_inf;
   - infiltrate (4) where F_inf >= 0.08 and F_inf >= 1.5 F_neo;
   - unknown (0, mixed) where both reach their minimum but neither dominates by 1.5 times;
   - where neither reaches its minimum (sparse): unknown (0, missed) if U >= 0.03 and U >= L, i.e.
     nuclei are there but most were not segmented so their type cannot be told; unknown (0, no
     evidence) if L < 0.002, i.e. no labelled nucleus within about 50 µm; stroma (3) otherwise.
5. Annotation-scale smoothing.  The indicators of unknown, tumour, stroma and infiltrate are smoothed
   with a Gaussian of sigma 6 µm and each tissue pixel takes the strongest (a majority filter); then
   every region of one of these classes below 1,500 µm² takes the class of the nearest larger region
   (specks vanish, small holes close).  Background stays exactly as rule 1 gives it.

Limits: the labels are as good as the segmenter's types (a cluster typed wrong is labelled wrong);
a region's border lies up to about one sigma (15 µm) outside its outermost nuclei, so a nest's outline
is lobulated at the scale of single peripheral cells; stroma crowded with inflammatory cells is
infiltrate (there is no 'inflamed stroma'); a mixed zone narrower than the smoothing goes to the
majority; eosin is not used to tell stroma from other tissue poor in nuclei (necrosis, mucin and
fibrin would be stroma if they held a few labelled nuclei, acellular stroma far from any labelled
nucleus is unknown); there is no necrosis class; at the held-out line a border can step, since each
part is labelled without the other.  ``docs/tumour_model.md`` shows the labels and says more.

The held-out split is fixed here (``SOURCES``, :func:`heldout_from_row`): the bottom third of every
image is never written to the training or layout folders, and its labels are derived from the
held-out rows alone (and the training labels from the training rows alone).

Command: ``python -m src_models.data.masks_from_nuclei --out OUT`` (see :func:`main`); the same inputs give
byte-identical outputs.  Nothing here needs torch; numpy, scipy, scikit-image and PIL only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CLASSES = ["unknown", "background", "tumour", "stroma", "infiltrate"]
#: far from the H&E hues: black, light grey, amber, green, cyan
COLOURS = ["#000000", "#e8e8e8", "#f0a000", "#2ca02c", "#00c0e0"]
UNKNOWN, BACKGROUND, TUMOUR, STROMA, INFILTRATE = range(5)

#: nuclei type codes of the segmenter's type raster
CONNECTIVE, INFLAMMATORY, NEOPLASTIC = 1, 2, 3

#: µm per pixel assumed for the shipped images (no package states one; nuclear sizes give 0.4-0.5)
PIXEL_UM = 0.5

#: The rules' numbers (module docstring): sizes in µm, areas in µm², fractions of tissue area.
RULES = {
    "tissue_od": 0.3, "tissue_close_um": 4.0, "tissue_hole_um2": 4000.0, "tissue_speck_um2": 1500.0,
    "density_sigma_um": 15.0, "neoplastic_min": 0.10, "inflammatory_min": 0.08, "dominance": 1.5,
    "haematoxylin_min": 0.08, "nucleus_open_um": 1.0, "nucleus_min_um2": 10.0, "labelled_near_um": 2.0,
    "evidence_sigma_um": 30.0, "unlabelled_min": 0.03, "labelled_min": 0.002,
    "majority_sigma_um": 6.0, "region_min_um2": 1500.0,
}

#: The inputs in ``data/more_he``: short name, image, type raster (None: no labels, all class 0)
#: and the first held-out row (the bottom third, :func:`heldout_from_row`).
SOURCES = [
    {"name": "hgsc_nest", "image": "histolytics-0.3.0_hgsc_nest.jpg",
     "types": "histolytics-0.3.0_hgsc_nest_type_mask.npz", "heldout_from_row": 1000},
    {"name": "hgsc_stromal", "image": "histolytics-0.3.0_hgsc_stromal_he.jpg",
     "types": "histolytics-0.3.0_hgsc_stromal_type_mask_rasterized.npz", "heldout_from_row": 1000},
    {"name": "tia_target", "image": "tiatoolbox-2.1.3_target_image.png", "types": None, "heldout_from_row": 667},
]


def heldout_from_row(height: int) -> int:
    """First held-out row of an image ``height`` rows high: its bottom third is held out."""
    return int(round(2 * height / 3))


def _block_mean(a: np.ndarray, step: int) -> np.ndarray:
    """Mean over ``step`` x ``step`` blocks (a ragged last block averages what it holds)."""
    a = a.astype(np.float32)
    if step == 1:
        return a
    h, w = a.shape
    H, W = -(-h // step), -(-w // step)
    total = np.zeros((H * step, W * step), np.float32)
    count = np.zeros((H * step, W * step), np.float32)
    total[:h, :w] = a
    count[:h, :w] = 1.0
    return total.reshape(H, step, W, step).sum((1, 3)) / count.reshape(H, step, W, step).sum((1, 3))


def _upsample(a: np.ndarray, shape: tuple[int, int], step: int) -> np.ndarray:
    """Bilinear resampling of a block grid back to ``shape`` (block centres at (i + 0.5) step - 0.5)."""
    if step == 1:
        return a

    def axis(n, m):
        pos = np.clip((np.arange(n) + 0.5) / step - 0.5, 0, m - 1)
        i0 = np.floor(pos).astype(np.intp)
        i1 = np.minimum(i0 + 1, m - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    y0, y1, wy = axis(shape[0], a.shape[0])
    x0, x1, wx = axis(shape[1], a.shape[1])
    rows = a[y0] * (1 - wy)[:, None] + a[y1] * wy[:, None]
    return rows[:, x0] * (1 - wx)[None, :] + rows[:, x1] * wx[None, :]


def _gauss(a: np.ndarray, sigma: float, step: int) -> np.ndarray:
    """Gaussian smoothing (sigma in px), computed on ``step``-px blocks and resampled bilinearly:
    for a sigma of several blocks the difference is far below the rules' thresholds, at 1/step² the cost."""
    from scipy.ndimage import gaussian_filter

    return _upsample(gaussian_filter(_block_mean(a, step), sigma / step, mode="nearest"), a.shape, step)


def _smooth_in(values: np.ndarray, support: np.ndarray, sigma: float, step: int = 1) -> np.ndarray:
    """Gaussian smoothing of ``values`` over ``support`` only (normalised convolution)."""
    w = support.astype(np.float32)
    num = _gauss(values.astype(np.float32) * w, sigma, step)
    den = _gauss(w, sigma, step)
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0).astype(np.float32)


def _close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary closing with a Euclidean disk of ``radius`` px by two distance transforms (fast for
    large disks); the image border does not erode."""
    from scipy import ndimage as ndi

    if not mask.any():
        return mask.copy()
    grown = ndi.distance_transform_edt(~mask) <= radius
    if grown.all():
        return grown
    return (ndi.distance_transform_edt(grown) > radius) | mask


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_px`` pixels."""
    from scipy import ndimage as ndi

    comp, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask.copy()
    big = np.bincount(comp.ravel()) >= min_px
    big[0] = False
    return big[comp]


def tissue_mask(rgb: np.ndarray, pixel_um: float = PIXEL_UM) -> np.ndarray:
    """Rule 1: stained tissue (True) vs background (False)."""
    s = 1.0 / pixel_um
    od = -np.log10((rgb[..., :3].astype(np.float32) + 1.0) / 256.0)
    tissue = _close(od.sum(-1) > RULES["tissue_od"], RULES["tissue_close_um"] * s)
    tissue = ~_drop_small(~tissue, RULES["tissue_hole_um2"] * s * s)
    return _drop_small(tissue, RULES["tissue_speck_um2"] * s * s)


def nuclear_maps(rgb: np.ndarray, types: np.ndarray, tissue: np.ndarray, pixel_um: float = PIXEL_UM) -> dict:
    """Rules 2 and 3: the smoothed fractions ``con``, ``inf``, ``neo`` (F_k), ``unlabelled`` (U) and
    ``labelled`` (L) of the tissue area, float32 maps of the image's shape."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    s = 1.0 / pixel_um
    step = max(1, int(round(2 * s)))  # smoothing on 2 µm blocks
    sigma = RULES["density_sigma_um"] * s
    maps = {name: _smooth_in(types == code, tissue, sigma, step)
            for name, code in (("con", CONNECTIVE), ("inf", INFLAMMATORY), ("neo", NEOPLASTIC))}
    haem = rgb2hed(rgb[..., :3])[..., 0]
    nucleus_like = ndi.binary_opening(haem > RULES["haematoxylin_min"], _disk(RULES["nucleus_open_um"] * s))
    nucleus_like = _drop_small(nucleus_like, RULES["nucleus_min_um2"] * s * s)
    near_labelled = ndi.binary_dilation(types > 0, _disk(RULES["labelled_near_um"] * s))
    sigma = RULES["evidence_sigma_um"] * s
    maps["unlabelled"] = _smooth_in(nucleus_like & ~near_labelled, tissue, sigma, step)
    maps["labelled"] = _smooth_in(types > 0, tissue, sigma, step)
    return maps


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= r * r


def decide(maps: dict, tissue: np.ndarray) -> np.ndarray:
    """Rule 4: the raw per-pixel decision (before smoothing), uint8 labels."""
    neo, inf, dom = maps["neo"], maps["inf"], RULES["dominance"]
    dense_neo, dense_inf = neo >= RULES["neoplastic_min"], inf >= RULES["inflammatory_min"]
    tumour = dense_neo & (neo >= dom * inf)
    infiltrate = dense_inf & (inf >= dom * neo)
    mixed = dense_neo & dense_inf & ~tumour & ~infiltrate
    sparse = ~dense_neo & ~dense_inf
    missed = sparse & (maps["unlabelled"] >= RULES["unlabelled_min"]) & (maps["unlabelled"] >= maps["labelled"])
    no_evidence = sparse & (maps["labelled"] < RULES["labelled_min"])
    labels = np.full(tissue.shape, BACKGROUND, np.uint8)
    labels[tissue] = STROMA
    labels[tissue & tumour] = TUMOUR
    labels[tissue & infiltrate] = INFILTRATE
    labels[tissue & (mixed | missed | no_evidence)] = UNKNOWN
    return labels


def smooth_labels(labels: np.ndarray, tissue: np.ndarray, pixel_um: float = PIXEL_UM) -> np.ndarray:
    """Rule 5: a majority filter inside the tissue, then small regions take the class of the
    nearest larger one."""
    from scipy import ndimage as ndi

    s = 1.0 / pixel_um
    step = max(1, int(round(1 * s)))  # votes on 1 µm blocks
    tissue_classes = (UNKNOWN, TUMOUR, STROMA, INFILTRATE)
    votes = np.stack([_gauss(labels == c, RULES["majority_sigma_um"] * s, step) for c in tissue_classes])
    out = np.where(tissue, np.asarray(tissue_classes, np.uint8)[votes.argmax(0)], BACKGROUND).astype(np.uint8)
    small = np.zeros(out.shape, bool)
    for c in tissue_classes:
        region = out == c
        small |= region & ~_drop_small(region, RULES["region_min_um2"] * s * s)
    keep = tissue & ~small
    if small.any() and keep.any():
        _, (iy, ix) = ndi.distance_transform_edt(~keep, return_indices=True)
        out[small] = out[iy[small], ix[small]]
    return out


def derive_labels(rgb: np.ndarray, types: np.ndarray, pixel_um: float = PIXEL_UM, maps: dict | None = None) -> np.ndarray:
    """Label map (uint8, labels as in ``CLASSES``) of an H&E image ``rgb`` (H, W, 3) uint8 and its
    nuclei type raster ``types`` (H, W; 0 none, 1 connective, 2 inflammatory, 3 neoplastic).
    Pass a dict as ``maps`` to receive the intermediate maps (rules 2-3, ``tissue`` and ``raw``)."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    if types.shape != rgb.shape[:2]:
        raise ValueError(f"type raster is {types.shape} but the image is {rgb.shape[:2]}")
    if pixel_um <= 0:
        raise ValueError(f"pixel_um must be positive, got {pixel_um}")
    tissue = tissue_mask(rgb, pixel_um)
    m = nuclear_maps(rgb, types, tissue, pixel_um)
    raw = decide(m, tissue)
    labels = smooth_labels(raw, tissue, pixel_um)
    if maps is not None:
        maps.update(m, tissue=tissue, raw=raw)
    return labels


def colourise(labels: np.ndarray, colours=COLOURS) -> np.ndarray:
    """RGB picture of a label map with the given '#rrggbb' colours."""
    lut = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colours], np.uint8)
    return lut[np.clip(labels, 0, len(colours) - 1)]


def tile_positions(size: int, tile: int) -> list[int]:
    """Tile origins that cover ``size`` with tiles of ``tile`` px (the last ones may overlap)."""
    if size <= tile:
        return [0]
    n = int(np.ceil(size / tile))
    return [int(round(v)) for v in np.linspace(0, size - tile, n)]


#: the layout image's channels R, G, B are these classes; background (1) is the all-off code
LAYOUT_CLASSES = [TUMOUR, STROMA, INFILTRATE]


def layout_labels(labels: np.ndarray, scale: int = 16) -> tuple[np.ndarray, int]:
    """Coarse layout of a label map: the majority class of each ``scale`` x ``scale`` cell among the
    known classes (1-4; unknown pixels do not vote).  A cell with no known pixel takes the class of
    the nearest cell that has one.  A ragged edge is dropped.  Returns (cells, cells filled)."""
    from scipy import ndimage as ndi

    h, w = labels.shape[0] // scale, labels.shape[1] // scale
    if h == 0 or w == 0:
        raise ValueError(f"a {labels.shape} label map is smaller than one {scale} px layout cell")
    blocks = labels[: h * scale, : w * scale].reshape(h, scale, w, scale).transpose(0, 2, 1, 3).reshape(h, w, -1)
    counts = np.stack([(blocks == c).sum(-1) for c in range(len(CLASSES))], -1)
    counts[..., UNKNOWN] = 0
    cells = counts.argmax(-1).astype(np.uint8)  # ties go to the lower class index
    empty = counts.sum(-1) == 0
    if empty.all():
        raise ValueError("the label map holds no known class to lay out")
    if empty.any():
        _, (iy, ix) = ndi.distance_transform_edt(empty, return_indices=True)
        cells[empty] = cells[iy[empty], ix[empty]]
    return cells, int(empty.sum())


def layout_rgb(cells: np.ndarray) -> np.ndarray:
    """The layout model's training image of coarse labels, in the project's one-hot convention
    (``mask_model.codes_to_rgb(cells, LAYOUT_CLASSES)`` gives the same bytes): channel k is 255
    where the cell is ``LAYOUT_CLASSES[k]``, else 0; background cells are (0, 0, 0)."""
    return np.stack([np.where(cells == c, 255, 0) for c in LAYOUT_CLASSES], -1).astype(np.uint8)


def load_source(data_dir: str | Path, source: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8, type raster or None) of one entry of ``SOURCES``."""
    from PIL import Image

    data_dir = Path(data_dir)
    with Image.open(data_dir / source["image"]) as im:
        rgb = np.asarray(im.convert("RGB"))
    types = None
    if source["types"]:
        with np.load(data_dir / source["types"], allow_pickle=False) as z:
            types = np.asarray(z["nuc_raster"])
        if types.shape != rgb.shape[:2]:
            raise ValueError(f"{source['types']}: {types.shape} but the image is {rgb.shape[:2]}")
    if heldout_from_row(rgb.shape[0]) != source["heldout_from_row"]:
        raise ValueError(f"{source['image']} has {rgb.shape[0]} rows: its bottom third starts at row "
                         f"{heldout_from_row(rgb.shape[0])}, not at row {source['heldout_from_row']} as fixed for it")
    return rgb, types


def labelled_parts(data_dir: str | Path, pixel_um: float = PIXEL_UM, train: bool = True) -> list[tuple]:
    """``[(name, train rgb, train labels, held-out rgb, held-out labels)]`` of every source with nuclei
    types, each part labelled from its own rows only; ``train=False`` leaves the training part out
    (``None, None``) for callers that need the held-out part alone."""
    parts = []
    for src in SOURCES:
        if not src["types"]:
            continue
        rgb, types = load_source(data_dir, src)
        r0 = src["heldout_from_row"]
        top = (rgb[:r0], derive_labels(rgb[:r0], types[:r0], pixel_um)) if train else (None, None)
        parts.append((src["name"], *top, rgb[r0:], derive_labels(rgb[r0:], types[r0:], pixel_um)))
    return parts


def write_tiles(rgb: np.ndarray, labels: np.ndarray | None, out: Path, name: str, row0: int = 0,
                tile: int = 256, max_unknown: float = 0.5) -> dict:
    """Cut one image part into ``tile``-px tiles under ``out/images`` (and their masks under
    ``out/masks``).  A tile gets no mask file (it trains as class 0) when there are no labels or
    when more than ``max_unknown`` of its pixels are unknown.  Tile names hold the position in the
    whole image: ``{name}_y{row0 + y:05d}_x{x:05d}.png``."""
    from PIL import Image

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    n = n_lab = 0
    for y in tile_positions(rgb.shape[0], tile):
        for x in tile_positions(rgb.shape[1], tile):
            fname = f"{name}_y{row0 + y:05d}_x{x:05d}.png"
            Image.fromarray(np.ascontiguousarray(rgb[y : y + tile, x : x + tile])).save(out / "images" / fname)
            n += 1
            if labels is None:
                continue
            lab = labels[y : y + tile, x : x + tile]
            if float((lab == UNKNOWN).mean()) <= max_unknown:
                Image.fromarray(np.ascontiguousarray(lab)).save(out / "masks" / fname)
                n_lab += 1
    return {"tiles": n, "labelled": n_lab, "unlabelled": n - n_lab}


def _fractions(labels: list[np.ndarray]) -> dict:
    counts = sum((np.bincount(lab.ravel(), minlength=len(CLASSES)) for lab in labels), np.zeros(len(CLASSES), np.int64))
    total = max(1, int(counts.sum()))
    return {c: round(float(k) / total, 4) for c, k in zip(CLASSES, counts)}


def build(data_dir: str | Path, out: str | Path, pixel_um: float = PIXEL_UM, tile: int = 256,
          max_unknown: float = 0.5, layout_scale: int = 16, sources: list[dict] | None = None) -> dict:
    """Write ``out/train``, ``out/heldout`` (tiles, masks, classes.json), ``out/layout/images``
    (the layout model's training images) and ``out/labels`` (the label map of every labelled part)
    from the images of ``sources`` (default ``SOURCES``) in ``data_dir``; return the summary.  The
    labels of each part are derived from that part alone, so no held-out pixel influences anything
    under ``out/train`` or ``out/layout``."""
    from PIL import Image

    out = Path(out)
    for sub in ("train", "heldout", "layout", "labels"):
        if (out / sub).exists() and any((out / sub).iterdir()):
            raise FileExistsError(f"{out / sub} exists and is not empty; remove it or choose another --out")
    meta = json.dumps({"classes": CLASSES, "colours": COLOURS}, indent=2) + "\n"
    summary = {"pixel_um": pixel_um, "tile": tile, "max_unknown": max_unknown, "sources": {}}
    parts = {"train": [], "heldout": []}
    stats = {"train": {"tiles": 0, "labelled": 0, "unlabelled": 0}, "heldout": {"tiles": 0, "labelled": 0, "unlabelled": 0}}
    layout = {"images": 0, "cells": 0, "filled_unknown_cells": 0, "counts": np.zeros(len(CLASSES), np.int64)}
    for src in SOURCES if sources is None else sources:
        rgb, types = load_source(data_dir, src)
        cut = src["heldout_from_row"]
        info = {"rows": int(rgb.shape[0]), "heldout_from_row": cut}
        for split, (y0, y1) in (("train", (0, cut)), ("heldout", (cut, rgb.shape[0]))):
            part = rgb[y0:y1]
            labels = None if types is None else derive_labels(part, types[y0:y1], pixel_um)
            st = write_tiles(part, labels, out / split, src["name"], y0, tile, max_unknown)
            for k in st:
                stats[split][k] += st[k]
            info[split] = st
            if labels is None:
                continue
            parts[split].append(labels)
            info[split]["class_fractions"] = _fractions([labels])
            (out / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels).save(out / "labels" / f"{src['name']}_{split}_rows{y0:05d}-{y1:05d}.png")
            if split == "train":
                cells, filled = layout_labels(labels, layout_scale)
                (out / "layout" / "images").mkdir(parents=True, exist_ok=True)
                Image.fromarray(layout_rgb(cells)).save(out / "layout" / "images" / f"{src['name']}_layout.png")
                layout["images"] += 1
                layout["cells"] += int(cells.size)
                layout["filled_unknown_cells"] += filled
                layout["counts"] += np.bincount(cells.ravel(), minlength=len(CLASSES))
        summary["sources"][src["name"]] = info
    for split in ("train", "heldout"):
        (out / split / "classes.json").write_text(meta)
        summary[split] = {**stats[split], "class_fractions": _fractions(parts[split])}
    counts = layout.pop("counts")
    layout["class_fractions"] = {c: round(float(k) / max(1, int(counts.sum())), 4) for c, k in zip(CLASSES, counts)}
    summary["layout"] = {**layout, "scale_px": layout_scale, "channels": [CLASSES[c] for c in LAYOUT_CLASSES]}
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m src_models.data.masks_from_nuclei",
        description="Derive tumour/stroma/infiltrate/background labels from H&E images and their nuclei type masks, "
                    "and write the tumour model's training, held-out and layout folders.",
    )
    p.add_argument("--data", default="data/more_he", help="folder holding the images of SOURCES (default data/more_he)")
    p.add_argument("--out", required=True, help="folder to write: train/, heldout/, layout/images/, labels/")
    p.add_argument("--pixel-um", type=float, default=PIXEL_UM, help=f"µm per pixel of the images (default {PIXEL_UM})")
    p.add_argument("--tile", type=int, default=256, help="tile side in px (default 256)")
    p.add_argument("--max-unknown", type=float, default=0.5,
                   help="a tile with more unknown pixels than this fraction gets no mask (default 0.5)")
    p.add_argument("--layout-scale", type=int, default=16, help="image px per layout cell (default 16: 8 µm)")
    a = p.parse_args(argv)
    if a.pixel_um <= 0 or a.tile < 16 or a.layout_scale < 1 or not 0 <= a.max_unknown <= 1:
        print("error: --pixel-um must be > 0, --tile >= 16, --layout-scale >= 1 and --max-unknown in [0, 1]", file=sys.stderr)
        return 2
    try:
        summary = build(a.data, a.out, a.pixel_um, a.tile, a.max_unknown, a.layout_scale)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
