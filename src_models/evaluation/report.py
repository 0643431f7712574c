"""The ``--out`` report of an evaluation: the JSON, a sheet of real and synthetic tiles side by
side, nuclei outlines on a few tiles of each side, and feature histograms (PIL only)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .features import handmade_names, segment_nuclei

HIST_FEATURES = ("nuclei_per_mm2", "nuclear_area_median_um2", "h_mean", "e_mean", "od_mean",
                 "glcm_contrast_1um", "glcm_homogeneity_2um", "gradient_mean")
REAL_COLOUR = (40, 90, 200)
SYN_COLOUR = (220, 90, 40)


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # old Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def _pick(n_have: int, n: int, rng) -> list[int]:
    return sorted(rng.permutation(n_have)[:n].tolist())


def tile_sheet(real: list[np.ndarray], synthetic: list[np.ndarray], per_row: int = 6, rows: int = 2,
               seed: int = 0, title: str = "") -> np.ndarray:
    """Rows of real tiles above rows of synthetic tiles (randomly chosen, seeded), with labels."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    t = real[0].shape[0]
    gap, head = 6, 24
    width = per_row * (t + gap) + gap
    blocks = []
    for name, tiles, colour in (("real", real, REAL_COLOUR), ("synthetic", synthetic, SYN_COLOUR)):
        idx = _pick(len(tiles), per_row * rows, rng)
        h = head + rows * (t + gap)
        canvas = Image.new("RGB", (width, h), (255, 255, 255))
        d = ImageDraw.Draw(canvas)
        d.text((gap, 4), f"{name} ({len(tiles)} tiles; {len(idx)} shown)", fill=colour, font=_font())
        for k, i in enumerate(idx):
            y, x = head + (k // per_row) * (t + gap), gap + (k % per_row) * (t + gap)
            canvas.paste(Image.fromarray(tiles[i]), (x, y))
        blocks.append(np.asarray(canvas))
    sheet = np.concatenate(blocks, 0)
    if title:
        top = Image.new("RGB", (width, 26), (255, 255, 255))
        ImageDraw.Draw(top).text((gap, 5), title, fill=(0, 0, 0), font=_font())
        sheet = np.concatenate([np.asarray(top), sheet], 0)
    return sheet


def nuclei_sheet(real: list[np.ndarray], synthetic: list[np.ndarray], mpp: float, n: int = 4, seed: int = 0) -> np.ndarray:
    """A few tiles of each side with the nuclei the evaluation counted outlined in green, shown 2x."""
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(seed + 1)
    rows = []
    for tiles in (real, synthetic):
        row = []
        for i in _pick(len(tiles), n, rng):
            rgb = tiles[i].copy()
            labels, _ = segment_nuclei(rgb, mpp)
            rgb[find_boundaries(labels, mode="outer")] = (0, 220, 0)
            row.append(np.pad(rgb.repeat(2, 0).repeat(2, 1), ((4, 4), (4, 4), (0, 0)), constant_values=255))
        while len(row) < n:
            row.append(np.full_like(row[0], 255))
        rows.append(np.concatenate(row, 1))
    return np.concatenate(rows, 0)


def histograms(real: np.ndarray, synthetic: np.ndarray, names: list[str], bins: int = 20) -> np.ndarray:
    """Small overlaid histograms (real blue, synthetic orange) of the chosen features."""
    from PIL import Image, ImageDraw

    chosen = [f for f in HIST_FEATURES if f in names]
    pw, ph, pad = 300, 170, 28
    cols = 4
    rows = -(-len(chosen) // cols)
    img = Image.new("RGB", (cols * pw, rows * ph + 24), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((8, 4), "real", fill=REAL_COLOUR, font=_font())
    d.text((60, 4), "synthetic", fill=SYN_COLOUR, font=_font())
    for k, name in enumerate(chosen):
        j = names.index(name)
        a, b = real[:, j], synthetic[:, j]
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, bins + 1)
        ha = np.histogram(a, edges)[0] / max(1, len(a))
        hb = np.histogram(b, edges)[0] / max(1, len(b))
        top = max(ha.max(), hb.max(), 1e-9)
        ox, oy = (k % cols) * pw, 24 + (k // cols) * ph
        x0, x1, y0, y1 = ox + 10, ox + pw - 10, oy + 22, oy + ph - pad
        bw = (x1 - x0) / bins
        for i in range(bins):
            for h, colour, shift in ((ha[i], REAL_COLOUR, 0.0), (hb[i], SYN_COLOUR, 0.5)):
                bx = x0 + i * bw + shift * bw
                d.rectangle([bx, y1 - (y1 - y0) * h / top, bx + bw / 2 - 1, y1], fill=colour)
        d.line([x0, y1, x1, y1], fill=(0, 0, 0))
        d.text((x0, oy + 4), name, fill=(0, 0, 0), font=_font(13))
        d.text((x0, y1 + 4), f"{lo:.3g}", fill=(80, 80, 80), font=_font(11))
        d.text((x1 - 50, y1 + 4), f"{hi:.3g}", fill=(80, 80, 80), font=_font(11))
    return np.asarray(img)


def write_report(out: str | Path, result: dict, extras: dict) -> list[Path]:
    """Write ``report.json``, ``tiles.png``, ``nuclei.png`` and (hand-made features) ``histograms.png``."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    real, syn, mpp = extras["real"], extras["synthetic"], extras["mpp"]
    written = [out / "report.json"]
    written[0].write_text(json.dumps(result, indent=2) + "\n")
    title = (f"tiles of {result['tile_px']} px at {result['mpp']} um/px; c2st {result['c2st_accuracy']}, "
             f"fd {result['fd']}, seed {result['seed']}")
    Image.fromarray(tile_sheet(real.rgb(), syn.rgb(), title=title, seed=result["seed"])).save(out / "tiles.png")
    written.append(out / "tiles.png")
    Image.fromarray(nuclei_sheet(real.rgb(), syn.rgb(), mpp, seed=result["seed"])).save(out / "nuclei.png")
    written.append(out / "nuclei.png")
    names = extras.get("feature_names")
    if names:
        Image.fromarray(histograms(real.features, syn.features, names)).save(out / "histograms.png")
        written.append(out / "histograms.png")
    return written


__all__ = ["write_report", "tile_sheet", "histograms", "nuclei_sheet", "handmade_names"]
