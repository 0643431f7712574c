"""Derive a tissue label map from an H&E image by colour deconvolution and morphology, and lay out
a training folder (tiles + masks) for ``diffinfinite train``.

Labels (the default model's classes):

    0 unknown    pixels we refuse to label: pen/ink marks and a thin band around them
    1 glass      slide background (no tissue)
    2 epidermis  squamous epithelium, its keratin layer included (haematoxylin-dense)
    3 dermis     connective tissue / stroma (eosin-dominated)

How (all sizes are for ~1 µm/px, the half-resolution slide; ``pixel_um`` rescales them):

1. Optical density OD = -log10((RGB + 1) / 256) per channel; a pixel holds stain when its summed
   OD exceeds ``tissue_od`` (0.3).  The stained-pixel map is closed (disk 4 px), its holes smaller
   than 4,000 px² are filled (the white gaps between collagen bundles belong to the dermis), and
   components smaller than 1,500 px² are dropped (dust, loose flakes).  The rest is glass.
2. Colour deconvolution (``skimage.color.rgb2hed``, Ruifrok & Johnston) gives the haematoxylin (H)
   and eosin (E) densities.  Both are smoothed with a Gaussian (σ = 6 px) over the tissue only
   (normalised convolution, so glass does not dilute the tissue's values near its border).
3. Epidermis is where the smoothed H share H / (H + E) exceeds the threshold that Otsu's method
   finds over the tissue pixels (clamped to [0.45, 0.75]): epithelium is haematoxylin-blue all
   over, dermis is eosin-pink with scattered nuclei.  The epidermis map is opened (disk 3), closed
   (disk 5), components below 2,500 px² are dropped (single vessels, small inflammatory clusters)
   and holes below 1,500 px² are filled.  Everything else inside the tissue is dermis.
4. Ink: pixels whose green exceeds both red and blue by 8 levels, with summed OD > 0.15, closed
   (disk 2) and kept in clumps of more than 8 px², are the green marking dye of the tissue edge; they and a 6 px band
   around them become 0 (unknown).

Nothing here needs torch; scikit-image and numpy only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CLASSES = ["unknown", "glass", "epidermis", "dermis"]

#: Rows of the CC0 slide's base level (0.5 µm/px) from this one on are held out: no model is
#: trained on them, and ``benchmarks/quality.py`` evaluates models against them.  2048 of the
#: 2967 rows train; the held-out band (919 rows x 2220 px) holds glass, epidermis and dermis.
HELDOUT_FROM_ROW = 2048
COLOURS = ["#000000", "#e8e8e8", "#6a2d8f", "#e87ab0"]


def _smooth_in(values: np.ndarray, support: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``values`` over ``support`` only (normalised convolution)."""
    from scipy.ndimage import gaussian_filter

    w = support.astype(np.float32)
    num = gaussian_filter(values.astype(np.float32) * w, sigma)
    den = gaussian_filter(w, sigma)
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)


def derive_mask(rgb: np.ndarray, pixel_um: float = 1.0, tissue_od: float = 0.3) -> np.ndarray:
    """Label map (uint8, labels as in ``CLASSES``) of an H&E image ``rgb`` (H, W, 3) uint8."""
    from scipy import ndimage as ndi
    from skimage import filters, morphology
    from skimage.color import rgb2hed

    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    rgb = rgb[..., :3]
    s = 1.0 / pixel_um  # pixels per µm; every size below is given in µm (at 1 µm/px = px)

    def px(v):
        return max(1, int(round(v * s)))

    def area(v):
        return max(1, int(round(v * s * s)))

    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)
    stained = od.sum(-1) > tissue_od
    tissue = morphology.closing(stained, morphology.disk(px(4)))
    tissue = morphology.remove_small_holes(tissue, max_size=area(4000))
    tissue = morphology.remove_small_objects(tissue, max_size=area(1500))

    hed = rgb2hed(rgb)
    h = np.clip(hed[..., 0], 0, None)
    e = np.clip(hed[..., 1], 0, None)
    hs = _smooth_in(h, tissue, px(6))
    es = _smooth_in(e, tissue, px(6))
    share = hs / np.maximum(hs + es, 1e-6)
    if tissue.sum() > 100:
        thr = float(np.clip(filters.threshold_otsu(share[tissue]), 0.45, 0.75))
    else:
        thr = 0.6
    epi = (share > thr) & tissue
    epi = morphology.opening(epi, morphology.disk(px(3)))
    epi = morphology.closing(epi, morphology.disk(px(5)))
    epi = morphology.remove_small_objects(epi, max_size=area(2500))
    epi = morphology.remove_small_holes(epi, max_size=area(1500)) & tissue

    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    ink = (g > r + 8) & (g > b + 8) & (od.sum(-1) > 0.15)
    ink = morphology.closing(ink, morphology.disk(px(2)))
    ink = morphology.remove_small_objects(ink, max_size=area(8))
    ink = ndi.binary_dilation(ink, morphology.disk(px(6)))

    labels = np.full(rgb.shape[:2], 1, np.uint8)
    labels[tissue] = 3
    labels[epi] = 2
    labels[ink] = 0
    return labels


def colourise(labels: np.ndarray, colours=COLOURS) -> np.ndarray:
    """RGB picture of a label map with the given '#rrggbb' colours."""
    from src_models.io.colours import labels_rgb

    return labels_rgb(np.clip(labels, 0, len(colours) - 1), colours)


def tile_positions(size: int, tile: int) -> list[int]:
    """Tile origins that cover ``size`` with tiles of ``tile`` px (the last ones may overlap)."""
    if size <= tile:
        return [0]
    n = int(np.ceil(size / tile))
    return [int(round(v)) for v in np.linspace(0, size - tile, n)]


def write_training_folder(
    rgb: np.ndarray,
    labels: np.ndarray,
    out: Path,
    tile: int = 256,
    unlabelled_every: int = 4,
    min_tissue: float = 0.05,
    keep_glass: int = 3,
    seed: int = 0,
) -> dict:
    """Cut ``rgb``/``labels`` into tiles under ``out/images`` and ``out/masks``.

    Tiles with less than ``min_tissue`` tissue are dropped except ``keep_glass`` of them (so the
    model sees plain glass).  The masks of every ``unlabelled_every``-th kept tile (in a seeded
    random order) are withheld: those tiles train as class 0, the release's semi-supervised scheme.
    """
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tiles, glass = [], []
    for y in tile_positions(rgb.shape[0], tile):
        for x in tile_positions(rgb.shape[1], tile):
            lab = labels[y : y + tile, x : x + tile]
            frac = float(np.isin(lab, (2, 3)).mean())
            (tiles if frac >= min_tissue else glass).append((y, x))
    glass = [glass[i] for i in rng.permutation(len(glass))[:keep_glass]]
    kept = sorted(tiles + glass)
    order = rng.permutation(len(kept))
    unlabelled = {kept[i] for k, i in enumerate(order) if unlabelled_every and k % unlabelled_every == 0}
    n_lab = 0
    for y, x in kept:
        name = f"tile_y{y:05d}_x{x:05d}.png"
        Image.fromarray(rgb[y : y + tile, x : x + tile]).save(out / "images" / name)
        if (y, x) not in unlabelled:
            Image.fromarray(labels[y : y + tile, x : x + tile]).save(out / "masks" / name)
            n_lab += 1
    info = {"tiles": len(kept), "labelled": n_lab, "unlabelled": len(kept) - n_lab, "tile": tile}
    (out / "classes.json").write_text(json.dumps({"classes": CLASSES, "colours": COLOURS}, indent=2) + "\n")
    return info


def layout_labels(labels: np.ndarray, scale: int = 16) -> np.ndarray:
    """Coarse layout of a label map: the majority class of each ``scale`` x ``scale`` block, with
    unknown (ink) counted as glass; a ragged edge is dropped.  Values are 1, 2 or 3."""
    h, w = labels.shape[0] // scale, labels.shape[1] // scale
    blocks = labels[: h * scale, : w * scale].reshape(h, scale, w, scale).transpose(0, 2, 1, 3).reshape(h, w, -1)
    counts = np.stack([(blocks == c).sum(-1) for c in range(len(CLASSES))], -1)
    counts[..., 1] += counts[..., 0]
    return (counts[..., 1:].argmax(-1) + 1).astype(np.uint8)


def load_rgb(path: str | Path, downsample: int = 1) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    img = Image.open(path).convert("RGB")
    if downsample > 1:
        img = img.resize((img.width // downsample, img.height // downsample), Image.Resampling.BOX)
    return np.asarray(img)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m src_models.data.masks_from_he",
        description="Derive glass/epidermis/dermis labels from an H&E image and write a training folder.",
    )
    p.add_argument("image", help="H&E RGB image (PNG/TIFF/JPG)")
    p.add_argument("--out", required=True, help="training folder to write (images/, masks/, classes.json)")
    p.add_argument("--downsample", type=int, default=2, help="box-downsample the image first (default 2: 0.5 -> 1 µm/px)")
    p.add_argument("--pixel-um", type=float, default=1.0, help="µm per pixel after downsampling (default 1.0)")
    p.add_argument("--tile", type=int, default=256, help="tile side in px (default 256)")
    p.add_argument("--unlabelled-every", type=int, default=4, help="withhold the mask of every N-th tile (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", help="also write the full label map and a colour overlay here (PNG prefix)")
    p.add_argument("--rows", help="use only rows Y0:Y1 of the image as given (before downsampling), e.g. 0:2048")
    p.add_argument("--layout", help="also write the mask model's training image here (one-hot RGB, one pixel per "
                   "--layout-scale px block, majority class)")
    p.add_argument("--layout-scale", type=int, default=16, help="image px per layout px (default 16)")
    p.add_argument("--layout-from-col", type=int, default=0,
                   help="drop layout columns left of this one (the CMU slide's first 40 are almost all glass)")
    a = p.parse_args(argv)
    try:
        rgb = load_rgb(a.image, a.downsample)
    except (OSError, ValueError) as e:
        print(f"error: cannot read {a.image}: {e}", file=sys.stderr)
        return 2
    if a.rows:
        try:
            y0, y1 = (int(v) if v else None for v in a.rows.split(":"))
        except ValueError:
            print(f"error: --rows must be Y0:Y1, got {a.rows!r}", file=sys.stderr)
            return 2
        d = max(1, a.downsample)
        rgb = rgb[(y0 or 0) // d : (y1 // d if y1 is not None else None)]
    labels = derive_mask(rgb, pixel_um=a.pixel_um)
    info = write_training_folder(rgb, labels, Path(a.out), tile=a.tile, unlabelled_every=a.unlabelled_every, seed=a.seed)
    if a.preview:
        from PIL import Image

        Image.fromarray(labels).save(f"{a.preview}_labels.png")
        over = (0.55 * rgb + 0.45 * colourise(labels)).astype(np.uint8)
        Image.fromarray(np.concatenate([rgb, over], axis=1)).save(f"{a.preview}_overlay.png")
    if a.layout:
        from PIL import Image

        from src_models.models.native.mask_model import codes_to_rgb

        coarse = layout_labels(labels, a.layout_scale)[:, a.layout_from_col :]
        Path(a.layout).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(codes_to_rgb(coarse, [1, 2, 3])).save(a.layout)
    counts = np.bincount(labels.ravel(), minlength=len(CLASSES)) / labels.size
    print(json.dumps({**info, "class_fractions": {c: round(float(f), 4) for c, f in zip(CLASSES, counts)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
