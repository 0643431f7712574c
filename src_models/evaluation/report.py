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


def warning_band(warnings: list[str], width: int) -> np.ndarray | None:
    """The warnings as lines of dark red text on pale red, ``width`` px wide (None without warnings)."""
    from PIL import Image, ImageDraw

    if not warnings:
        return None
    font = _font(13)
    chars = max(20, (width - 16) // 7)
    lines = []
    for w in warnings:
        words, line = ("! " + w).split(), ""
        for word in words:
            if len(line) + len(word) + 1 > chars:
                lines.append(line)
                line = "   " + word
            else:
                line = f"{line} {word}".strip() if line else word
        lines.append(line)
    img = Image.new("RGB", (width, 10 + 17 * len(lines)), (255, 228, 225))
    d = ImageDraw.Draw(img)
    for k, line in enumerate(lines):
        d.text((8, 5 + 17 * k), line, fill=(150, 0, 0), font=font)
    return np.asarray(img)


def _figure(result: dict, key: str) -> str:
    v = result.get(key)
    return "null" if v is None else str(v)


def _c2st_text(c: dict | None) -> str:
    if not c:
        return "not run"
    if c.get("accuracy") is None:
        return f"null ({c.get('n_per_side')} tiles a side, needs {c.get('min_per_side')})"
    return (f"{c['accuracy']} (95 % CI {c['ci95'][0]}-{c['ci95'][1]}, p = {c['p_value']}, "
            f"n = {c['n_per_side']} a side, {c.get('n_effective')} effective)")


def html_page(result: dict, images: list[str]) -> str:
    """report.html: the warnings first, then the headline figures, per class, and the pictures."""
    import html

    rows = [("tiles a side", f"real {result['n_real']}, synthetic {result['n_synthetic']} "
             f"({result['tile_px']} px every {result.get('stride_px', result['tile_px'])} px at {result['mpp']} µm/px)"),
            ("C2ST accuracy (0.5 = indistinguishable)", _c2st_text(result.get("c2st"))),
            ("KID ± s.e.", f"{_figure(result, 'kid')} ± {_figure(result, 'kid_stderr')}"),
            ("FD (real halves read)", f"{_figure(result, 'fd')} ({_figure(result, 'fd_real_halves')})"),
            ("precision / recall", f"{_figure(result, 'precision')} / {_figure(result, 'recall')}"),
            ("nuclei per mm² real / synthetic", f"{result['nuclei_per_mm2']['real']} / {result['nuclei_per_mm2']['synthetic']}"),
            ("median nuclear area µm² real / synthetic",
             f"{result['nuclear_area_um2']['real']} / {result['nuclear_area_um2']['synthetic']}"),
            ("seam score (1 = invisible)", _figure(result, "seam_score"))]
    for label, e in result.get("per_class", {}).items():
        rows.append((f"class {label}: C2ST", _c2st_text(e.get("c2st"))))
        rows.append((f"class {label}: nuclei per mm² real / synthetic",
                     f"{e['real']['nuclei_per_mm2']} / {e['synthetic']['nuclei_per_mm2']}"))
    parts = ["<!doctype html><meta charset='utf-8'><title>diffinfinite evaluate</title>",
             "<body style='font-family:sans-serif;max-width:1100px'>", "<h1>Real against synthetic tissue</h1>"]
    if result.get("warnings"):
        parts.append("<div style='background:#ffe4e1;color:#960000;padding:8px;border:1px solid #960000'>"
                     "<b>Read these first:</b><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in result["warnings"])
                     + "</ul></div>")
    parts.append("<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td><b>{html.escape(v)}</b></td></tr>" for k, v in rows)
                 + "</table>")
    other = [n for n in result.get("notes", []) if n not in result.get("warnings", [])]
    if other:
        parts.append("<p>Notes:</p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in other) + "</ul>")
    parts += [f"<p><img src='{name}' style='max-width:100%'></p>" for name in images]
    parts.append("<p>All figures: report.json.</p></body>")
    return "\n".join(parts) + "\n"


def write_report(out: str | Path, result: dict, extras: dict) -> list[Path]:
    """Write ``report.html`` (warnings at the top), ``report.json``, ``tiles.png`` (warnings drawn
    above the tiles), ``nuclei.png`` and (hand-made features) ``histograms.png``."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    real, syn, mpp = extras["real"], extras["synthetic"], extras["mpp"]
    written = [out / "report.json"]
    written[0].write_text(json.dumps(result, indent=2) + "\n")
    title = (f"tiles of {result['tile_px']} px at {result['mpp']} um/px; c2st {result['c2st_accuracy']}, "
             f"kid {result.get('kid')}, fd {result['fd']}, seed {result['seed']}")
    sheet = tile_sheet(real.rgb(), syn.rgb(), title=title, seed=result["seed"])
    band = warning_band(result.get("warnings", []), sheet.shape[1])
    if band is not None:
        sheet = np.concatenate([band, sheet], 0)
    Image.fromarray(sheet).save(out / "tiles.png")
    written.append(out / "tiles.png")
    Image.fromarray(nuclei_sheet(real.rgb(), syn.rgb(), mpp, seed=result["seed"])).save(out / "nuclei.png")
    written.append(out / "nuclei.png")
    names = extras.get("feature_names")
    if names:
        Image.fromarray(histograms(real.features, syn.features, names)).save(out / "histograms.png")
        written.append(out / "histograms.png")
    page = out / "report.html"
    page.write_text(html_page(result, [p.name for p in written if p.suffix == ".png"]), encoding="utf-8")
    return [page] + written


__all__ = ["write_report", "tile_sheet", "histograms", "nuclei_sheet", "handmade_names"]
