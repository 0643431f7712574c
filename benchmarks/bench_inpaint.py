"""Inpainting into real tissue: does a regenerated square continue its surroundings?

    python benchmarks/bench_inpaint.py [--model default] [--steps 50] [--square 256] [--resample 1 3] [--omega 0 1 3] [--seed 0 1 2] [--sheet docs/inpainting.png]
                                       [--region-size 256] [--offset DY,DX] [--threads N] [--no-blend]

Real tissue: a 768² px crop of the CC0 slide's held-out band (never trained on) and, when
``../shared`` is there, the DiffInfinite release's real lung patches (512² px, MIT).  Each is
imported as a canvas (its latents encoded by the model's codec) with labels derived from it
(``masks_from_he``), and the square at its centre is sampled again under those labels with the
surroundings as context.  Figures per source and setting:

* ``seam``: mean absolute grey step across the square's four edges over the same across the other
  latent-pixel lines within 64 px of the square (1.0 = the edge does not stand out);
* ``od_inside`` / ``od_ring``: mean optical density inside the square and in a 32 px ring around it
  (a flat or pale block reads far from its ring);
* seconds, and the network passes (``forwards``) and regions the inpaint ran.

``--region-size`` (default 256) is the canvas's region side and ``--offset`` moves the square from the
crop's centre (px), so that the square can fill one region, lie inside a larger one, or straddle
several.
Prints one JSON object; ``--sheet`` writes original | inpainted pictures (square outlined) for each.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SLIDE = ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"
LUNG = ROOT.parent / "shared" / "data" / "release_patches" / "real"


def sources(n_lung: int) -> list[tuple[str, np.ndarray, float]]:
    from PIL import Image

    from src_models.data.masks_from_he import HELDOUT_FROM_ROW

    img = np.asarray(Image.open(SLIDE).convert("RGB"))
    out = [("cmu_heldout", img[HELDOUT_FROM_ROW + 64 : HELDOUT_FROM_ROW + 832, 700:1468], 0.499)]
    for p in sorted(LUNG.glob("lung_real_*.jpg"))[:n_lung] if LUNG.is_dir() else []:
        out.append((p.stem, np.asarray(Image.open(p).convert("RGB")), 0.5))
    return out


def seam_and_density(rgb: np.ndarray, rect, factor: int, band: int = 64, ring: int = 32) -> dict:
    y0, y1, x0, x1 = rect
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    H, W = grey.shape
    a0, a1, b0, b1 = max(1, y0 - band), min(H, y1 + band), max(1, x0 - band), min(W, x1 + band)
    dy = np.abs(grey[1:] - grey[:-1])  # dy[i]: step between rows i and i+1 (line i+1)
    dx = np.abs(grey[:, 1:] - grey[:, :-1])
    edge = [dy[y0 - 1, x0:x1], dy[y1 - 1, x0:x1], dx[y0:y1, x0 - 1], dx[y0:y1, x1 - 1]]
    rows = [r for r in range(a0, a1) if r % factor == 0 and r not in (y0, y1)]
    cols = [c for c in range(b0, b1) if c % factor == 0 and c not in (x0, x1)]
    other = [dy[r - 1, b0:b1] for r in rows] + [dx[a0:a1, c - 1] for c in cols]
    od = -np.log10((rgb.astype(np.float32) + 1) / 256).sum(-1)
    inside = od[y0:y1, x0:x1].mean()
    outer = od[max(0, y0 - ring) : y1 + ring, max(0, x0 - ring) : x1 + ring]
    ring_mean = (outer.sum() - od[y0:y1, x0:x1].sum()) / (outer.size - (y1 - y0) * (x1 - x0))
    return {"seam": round(float(np.concatenate(edge).mean() / np.concatenate(other).mean()), 4),
            "od_inside": round(float(inside), 4), "od_ring": round(float(ring_mean), 4)}


def inpaint_once(model, rgb: np.ndarray, mpp: float, square: int, steps: int, seed: int, resample: int, work: Path,
                 omega: float | None = None, solver: str | None = None, region_size: int = 256, offset=(0, 0)):
    from PIL import Image

    from src_models.store.canvas import Canvas
    from src_models.synthesis.editing import import_slide, prepare_inpaint
    from src_models.data.masks_from_he import derive_mask
    from src_models.synthesis.regions import synthesise
    from src_models.synthesis.request import SynthesisRequest

    f = model.card.factor
    src = work / "src.png"
    dpi = 25400 / mpp
    Image.fromarray(rgb).save(src, dpi=(dpi, dpi))
    canvas, _ = import_slide(src, model, work / "c.zarr", region_size=region_size, overwrite=True)
    labels = derive_mask(rgb[: canvas.height, : canvas.width], pixel_um=mpp)
    lat = np.asarray(Image.fromarray(labels).resize((canvas.width // f, canvas.height // f), Image.Resampling.NEAREST))
    canvas.write_mask(lat)
    cy, cx = canvas.height // 2 + int(offset[0]), canvas.width // 2 + int(offset[1])
    rect = (cy - square // 2, cy + square // 2, cx - square // 2, cx + square // 2)
    rect = prepare_inpaint(canvas, (rect[0], rect[1], rect[2], rect[3]), mask=labels[rect[0]:rect[1], rect[2]:rect[3]])
    extra = {k: v for k, v in (("omega", omega), ("solver", solver)) if v is not None}
    request = SynthesisRequest(model=model.card.name, steps=steps, seed=seed, area=rect, resample=resample, **extra)
    t0 = time.perf_counter()
    events = list(synthesise(model, canvas, request))
    seconds = time.perf_counter() - t0
    out = canvas.read_rgb(0, canvas.height, 0, canvas.width)
    canvas.close()
    return out, rect, seconds, {"forwards": sum(e.forwards for e in events), "regions": len(events)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--square", type=int, default=256)
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds")
    p.add_argument("--omega", type=float, nargs="+", default=[None], help="guidance scales (default: the card's)")
    p.add_argument("--solver", default=None, help="solver (default: the card's)")
    p.add_argument("--resample", type=int, nargs="+", default=[1])
    p.add_argument("--lung", type=int, default=2, help="how many of the release's real lung patches (if present)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--region-size", type=int, default=256, help="the canvas's region side in px")
    p.add_argument("--offset", default="0,0", metavar="DY,DX", help="move the square from the centre (px)")
    p.add_argument("--sheet", type=Path, default=None)
    p.add_argument("--no-blend", action="store_true",
                   help="write the plain decode in the square (as before stop 8), for an A/B of the edge blending")
    a = p.parse_args(argv)
    if a.no_blend:
        import src_models.synthesis.blend as blend

        blend.edge_blend = lambda decoded, *args, **kwargs: decoded
    import torch

    from src_models.models.loading import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model, "cpu")
    offset = tuple(int(v) for v in a.offset.split(","))
    rows, pictures = [], []
    for name, rgb, mpp in sources(a.lung):
        for u, omega, seed in ((u, w, s) for u in a.resample for w in a.omega for s in a.seed):
            with tempfile.TemporaryDirectory() as tmp:
                out, rect, seconds, work = inpaint_once(model, rgb, mpp, a.square, a.steps, seed, u, Path(tmp), omega,
                                                        a.solver, a.region_size, offset)
            h, w = out.shape[:2]
            entry = {"source": name, "resample": u, "omega": omega, "seed": seed, "seconds": round(seconds, 1), **work,
                     "real": seam_and_density(rgb[:h, :w], rect, model.card.factor),
                     "inpainted": seam_and_density(out, rect, model.card.factor)}
            rows.append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
            if seed == a.seed[0]:
                pictures.append((f"{name}, resample {u}, omega {omega if omega is not None else 'card'}", rgb[:h, :w], out, rect))
    if a.sheet:
        _sheet(pictures, a.sheet)
    print(json.dumps({"model": a.model, "card_omega": model.card.default_omega,  # what "omega": null ran with
                      "card_omega_per_class": model.card.default_omega_per_class,
                      "card_guidance_below": getattr(model.card, "default_guidance_below", None),
                      "steps": a.steps, "solver": a.solver, "square": a.square, "edge_blend": not a.no_blend,
                      "region_size": a.region_size, "offset": list(offset), "runs": rows,
                      "torch_threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()]}))
    return 0


def _sheet(pictures, path: Path) -> None:
    from PIL import Image, ImageDraw

    rows = []
    for title, real, out, (y0, y1, x0, x1) in pictures:
        pair = []
        for img in (real, out):
            im = Image.fromarray(np.ascontiguousarray(img))
            ImageDraw.Draw(im).rectangle([x0 - 1, y0 - 1, x1, y1], outline=(0, 200, 0), width=1)
            pair.append(np.asarray(im))
        h = max(p.shape[0] for p in pair)
        row = np.concatenate([np.pad(p, ((0, h - p.shape[0]), (0, 8), (0, 0)), constant_values=255) for p in pair], 1)
        head = Image.new("RGB", (row.shape[1], 22), (255, 255, 255))
        ImageDraw.Draw(head).text((4, 4), f"{title}: real | inpainted (square outlined)", fill=(0, 0, 0))
        rows.append(np.concatenate([np.asarray(head), row], 0))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)


if __name__ == "__main__":
    sys.exit(main())
