"""Summarise a sampling sweep (``benchmarks/sweep_sampling.py``'s JSON): one row per setting with the
mean over seeds and a 95 % t interval of that mean, as a Markdown table, and small-multiple curves
against ω (one line per solver) as a PNG drawn with Pillow.

    python benchmarks/sweep_report.py benchmarks/results/sweep-default.json \
        --md docs/sweep_default.md --png docs/sweep_default.png

Relative figures are synthetic over real (nuclei per mm², nuclear area, rim OD): 1.00 is a match.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

# two-sided 95 % Student t quantiles by degrees of freedom (n - 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def solver_name(s: dict) -> str:
    name = f"{s['solver']} {s.get('steps')}"
    if s.get("eta") is not None:
        name += f" η{s['eta']:g}"
    for k, v in sorted((s.get("omega_per_class") or {}).items()):
        name += f" ω{k}={float(v):g}"  # per-class guidance: its own line
    if s.get("guidance_below") is not None and int(s["guidance_below"]) < 1000:
        name += f" guided t<{int(s['guidance_below'])}"  # guidance limited to the cleaner levels: its own line
    if s.get("distilled"):
        name += " student"  # the distilled student at the guided levels: its own line
    if s.get("precision") not in (None, "float32"):
        name += f" {s['precision']}"
    return name


def metrics(row: dict, real_rim: float | None) -> dict[str, float | None]:
    """The figures of one sweep row that the report compares."""
    def rel(pair):
        if not pair or pair[0] in (None, 0) or pair[1] is None:
            return None
        return pair[1] / pair[0]

    c = row.get("c2st") or {}
    n = row.get("nuclei_per_mm2") or {}
    a = row.get("nuclear_area_um2") or {}
    out = {
        "c2st": c.get("accuracy"),
        "kid": row.get("kid"),
        "fd": row.get("fd"),
        "nuclei": rel((n.get("real"), n.get("synthetic"))),
        "area": rel((a.get("real"), a.get("synthetic"))),
        "rim": (row["rim_od"] / real_rim) if (row.get("rim_od") is not None and real_rim) else None,
        "seam": row.get("seam_score"),
        "forwards": row.get("forwards"),
        "seconds": row.get("sample_seconds"),
    }
    for name, e in (row.get("per_class") or {}).items():
        out[f"nuclei {name}"] = rel(e.get("nuclei_per_mm2"))
        out[f"area {name}"] = rel(e.get("nuclear_area_um2"))
    return out


def mean_ci(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean, half-width of its 95 % t interval (None with one value) and the count."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None, 0
    m = float(np.mean(v))
    if len(v) < 2:
        return m, None, 1
    half = T95.get(len(v) - 1, 1.96) * float(np.std(v, ddof=1)) / math.sqrt(len(v))
    return m, half, len(v)


def summarise(data: dict, against: str = "omega") -> tuple[list[str], dict]:
    """``(metric names, {(solver, ω): {metric: (mean, half, n)}})``; with ``against="guidance_below"``
    the key is (solver at its ω, the timestep below which guidance ran: 1000 for every level)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in data["rows"]:
        s = r["setting"]
        if against == "guidance_below":
            plain = {k: v for k, v in s.items() if k != "guidance_below"}
            key = (f"{solver_name(plain)} ω{float(s['omega']):g}", float(s.get("guidance_below") or 1000))
        else:
            key = (solver_name(s), float(s["omega"]))
        groups.setdefault(key, []).append(metrics(r, data.get("real_rim_od")))
    names: list[str] = []
    for ms in groups.values():
        for m in ms:
            names += [k for k in m if k not in names]
    table = {k: {n: mean_ci([m.get(n) for m in ms]) for n in names} for k, ms in groups.items()}
    return names, table


def fmt(m, half, digits=2) -> str:
    if m is None:
        return "–"
    return f"{m:.{digits}f}" if half is None else f"{m:.{digits}f} ± {half:.{digits}f}"


def markdown(data: dict, names: list[str], table: dict, x_name: str = "ω") -> str:
    cols = ["c2st", "kid", "fd", "nuclei", "area", "rim", "seam", "forwards", "seconds"]
    cols = [c for c in cols if c in names or c in ("c2st", "kid", "fd")]
    cols += [n for n in names if n.startswith(("nuclei ", "area "))]
    digits = {"kid": 1, "fd": 1, "seconds": 0, "forwards": 0}
    lines = [f"| solver | {x_name} | seeds | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 3)]
    for (solver, omega) in sorted(table, key=lambda k: (k[0], k[1])):
        row = table[(solver, omega)]
        n = max(v[2] for v in row.values())
        lines.append(f"| {solver} | {omega:g} | {n} | "
                     + " | ".join(fmt(*row[c][:2], digits.get(c, 2)) if c in row else "–" for c in cols) + " |")
    return "\n".join(lines) + "\n"


COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def plot(names: list[str], table: dict, path: Path, panels: list[str] | None = None) -> None:
    """Small multiples against the key's second part (ω, or the guidance limit), one line per solver,
    bars = 95 % t intervals of the mean (clipped to the panel, whose axis spans the means)."""
    from PIL import Image, ImageDraw

    panels = panels or [n for n in ["c2st", "kid", "fd", "nuclei", "area", "rim", "seam", "forwards", "seconds"]
                        if n in names]
    solvers = sorted({k[0] for k in table})
    omegas = sorted({k[1] for k in table})
    pw, ph, pad = 300, 210, 44
    cols = 4
    rows_n = math.ceil(len(panels) / cols)
    img = Image.new("RGB", (cols * pw, rows_n * ph + 28), "white")
    d = ImageDraw.Draw(img)
    for i, s in enumerate(solvers):
        d.line([(10 + 150 * i, 14), (30 + 150 * i, 14)], fill=COLOURS[i % len(COLOURS)], width=3)
        d.text((34 + 150 * i, 8), s.replace("η", "eta ").replace("ω", "w"), fill="black")  # the default font has no η, ω
    for p, name in enumerate(panels):
        ox, oy = (p % cols) * pw, 28 + (p // cols) * ph
        # the axis follows the means (intervals of 2 or 3 seeds can be far wider: they are clipped)
        vals = [table[k][name][0] for k in table if table[k].get(name, (None,))[0] is not None]
        if name in ("nuclei", "area", "rim"):
            vals.append(1.0)  # the real tissue's value
        if not vals:
            continue
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-9:
            lo, hi = lo - 1, hi + 1
        lo, hi = lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo)
        x0, x1, y0, y1 = ox + pad, ox + pw - 12, oy + 20, oy + ph - 26
        d.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
        d.text((ox + pad, oy + 4), name + (" (synthetic / real)" if name in ("nuclei", "area", "rim") else ""),
               fill="black")
        sx = lambda w: x0 + (x1 - x0) * (omegas.index(w) + 0.5) / len(omegas)  # noqa: E731
        sy = lambda v: min(y1, max(y0, y1 - (y1 - y0) * (v - lo) / (hi - lo)))  # noqa: E731
        for w in omegas:
            d.text((sx(w) - 6, y1 + 4), f"{w:g}", fill="black")
        d.text((x0 - pad + 2, y0), f"{hi:.3g}", fill="black")
        d.text((x0 - pad + 2, y1 - 10), f"{lo:.3g}", fill="black")
        if name in ("nuclei", "area", "rim") and lo < 1 < hi:
            d.line([(x0, sy(1.0)), (x1, sy(1.0))], fill=(120, 120, 120), width=1)
        for i, s in enumerate(solvers):
            colour = COLOURS[i % len(COLOURS)]
            pts = []
            for w in omegas:
                m, half, _ = table.get((s, w), {}).get(name, (None, None, 0))
                if m is None:
                    continue
                x = sx(w) + (i - (len(solvers) - 1) / 2) * 5
                pts.append((x, sy(m)))
                if half is not None:
                    d.line([(x, sy(m - half)), (x, sy(m + half))], fill=colour, width=1)
                d.ellipse([x - 3, sy(m) - 3, x + 3, sy(m) + 3], fill=colour)
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
    img.save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path)
    p.add_argument("--md", type=Path, default=None, help="write the table here (default: print it)")
    p.add_argument("--png", type=Path, default=None, help="write the curves here")
    p.add_argument("--against", choices=("omega", "guidance_below"), default="omega",
                   help="what the curves run along: ω (default), or the timestep below which guidance ran")
    a = p.parse_args(argv)
    data = json.loads(a.json.read_text())
    names, table = summarise(data, a.against)
    text = markdown(data, names, table, "ω" if a.against == "omega" else "guided below t")
    if a.md:
        a.md.write_text(text)
    else:
        sys.stdout.write(text)
    if a.png:
        plot(names, table, a.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
