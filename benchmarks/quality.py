"""Quality of a model against the held-out band of the CC0 slide, per class and per patch plan.

    python benchmarks/quality.py --model default [--steps 50] [--seeds 0 1] [--plans ...] [--tile 128]

The held-out band (rows >= ``HELDOUT_FROM_ROW`` of the slide's base level, 2220 x 919 px at
0.499 µm/px; no model of this project trains on it) is the real side.  Its own label map
(``masks_from_he``) is the layout of the synthetic side: for every seed and plan the model paints
a canvas of the band's size (at the model's pixel size) under that label map, so real and
synthetic tissue share one layout and differ only in what the model paints.  Each canvas is
evaluated with ``src_models.evaluation.evaluate``: all tissue, then per class (``--classes``),
plus the seam score.  Writes ``benchmarks/results/quality-<model>.json`` and prints the same JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLIDE = ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"
SLIDE_MPP = 0.499


def heldout_folder(root: Path) -> tuple[Path, np.ndarray]:
    """The held-out band as a training-style folder (images/ + masks/), and its label map."""
    from PIL import Image

    from src_models.data.masks_from_he import HELDOUT_FROM_ROW, derive_mask

    rgb = np.asarray(Image.open(SLIDE).convert("RGB"))[HELDOUT_FROM_ROW:]
    labels = derive_mask(rgb, pixel_um=SLIDE_MPP)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    dpi = 25400 / SLIDE_MPP
    Image.fromarray(rgb).save(root / "images" / "heldout.png", dpi=(dpi, dpi))
    Image.fromarray(labels).save(root / "masks" / "heldout.png")
    return root, labels


RIM_UM = 4.0  # width of the band on each side of glass/tissue borders (4 px at the v1 model's 1 um/px)


def rim(rgb: np.ndarray, labels: np.ndarray, mpp: float) -> dict:
    from src_models.evaluation.metrics import border_darkness

    r = border_darkness(rgb, labels, max(1, round(RIM_UM / mpp)))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}


def canvas_rim(path: Path) -> dict:
    from src_models.store.canvas import Canvas

    with Canvas.open(path) as c:
        rgb = c.read_rgb(0, c.height, 0, c.width)
        labels = np.asarray(c.mask[:]).repeat(c.factor, 0).repeat(c.factor, 1)
        return rim(rgb, labels, float(c.info.get("pixel_size_um") or SLIDE_MPP))


def make_canvas(model, labels: np.ndarray, path: Path, plan: str | None, seed: int, steps: int | None,
                region: int | None, solver: str | None = None, omega: float | None = None,
                eta: float | None = None, src_mpp: float = SLIDE_MPP, omega_per_class: dict | None = None,
                precision: str | None = None, distilled: bool | None = None, guidance_below: int | None = None):
    """Paint a canvas of the labels' physical size (``src_mpp`` µm/px) under them; returns seconds
    and forwards.  ``precision`` is the request's (None: the device's default; float32 is recorded as the
    default is, so a float32 canvas's settings do not name it).  ``distilled``: the request's (None: the
    model's student where it has one at this ω).  ``guidance_below``: the request's (None: the card's)."""
    from PIL import Image

    from src_models.synthesis.canvases import new_canvas, put_mask
    from src_models.synthesis.regions import synthesise
    from src_models.synthesis.request import SynthesisRequest

    card = model.card
    mpp = float(card.pixel_size_um or src_mpp)
    grid = card.factor * 8
    h = max(grid, int(labels.shape[0] * src_mpp / mpp) // grid * grid)
    w = max(grid, int(labels.shape[1] * src_mpp / mpp) // grid * grid)
    lat = Image.fromarray(labels.astype(np.uint8)).resize((w // card.factor, h // card.factor), Image.Resampling.NEAREST)
    extra = {"solver": solver} if solver else {}
    if omega is not None:
        extra["omega"] = float(omega)
    if eta is not None:
        extra["eta"] = float(eta)
    if omega_per_class:
        extra["omega_per_class"] = {int(k): float(v) for k, v in omega_per_class.items()}
    if precision:
        extra["precision"] = precision
    if distilled is not None:
        extra["distilled"] = bool(distilled)
    if guidance_below is not None:
        extra["guidance_below"] = int(guidance_below)
    request = SynthesisRequest(model=card.name, steps=steps, seed=seed, **(_plan_kwargs(plan) if plan else {}), **extra)
    canvas = new_canvas(card, path, h, w, region, overwrite=True, settings=request.settings())
    put_mask(canvas, np.asarray(lat))
    t0, forwards = time.perf_counter(), 0
    for ev in synthesise(model, canvas, request):
        forwards += ev.forwards
    canvas.close()
    return time.perf_counter() - t0, forwards


def _plan_kwargs(plan: str) -> dict:
    """The request fields that select a patch plan (``plan`` where the request has it)."""
    from src_models.synthesis.request import SynthesisRequest

    fields = SynthesisRequest.__dataclass_fields__
    return {"plan": plan} if "plan" in fields else {"schedule": plan}


def available_plans() -> list[str]:
    try:
        from src_models.sampling.plan import PLANS  # the registry, where there is one

        return list(PLANS)
    except ImportError:
        from src_models.sampling.sampler import SCHEDULES

        return list(SCHEDULES)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--plans", nargs="+", default=None, help="patch plans to compare (default: the first one only)")
    p.add_argument("--solver", default=None, help="ddim or dpmpp-2m (default: the request's default)")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--region", type=int, default=None, help="region size in px (default: the model's)")
    p.add_argument("--classes", default="1,2,3", help="classes to evaluate one by one (default 1,2,3)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep", type=Path, default=None, help="keep the canvases and reports in this folder")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/quality-<model>.json)")
    a = p.parse_args(argv)

    import torch

    from src_models.store.canvas import Canvas
    from src_models.evaluation import evaluate, write_report
    from src_models.models.loading import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model, "cpu")
    plans = a.plans or available_plans()[:1]
    classes = [int(c) for c in a.classes.split(",") if c.strip()]
    work = a.keep or Path(tempfile.mkdtemp(prefix="quality-"))
    real, labels = heldout_folder(work / "heldout")
    from PIL import Image

    real_rim = rim(np.asarray(Image.open(real / "images" / "heldout.png").convert("RGB")), labels, SLIDE_MPP)
    rows = []
    for plan in plans:
        for seed in a.seeds:
            path = work / f"{plan}-seed{seed}.zarr"
            seconds, forwards = make_canvas(model, labels, path, plan, seed, a.steps, a.region, a.solver)
            with Canvas.open(path) as c:
                solver = c.settings.get("solver")
            entry = {"plan": plan, "solver": solver, "seed": seed, "sample_seconds": round(seconds, 1),
                     "forwards": forwards}
            res, extras = evaluate([real], [path], tile=a.tile, seed=seed)
            write_report(work / f"report-{plan}-seed{seed}", res, extras)
            entry["all"] = _pick(res)
            entry["rim"] = canvas_rim(path)
            for c in classes:
                name = model.card.classes[c] if c < len(model.card.classes) else str(c)
                try:
                    r, _ = evaluate([real], [path], tile=a.tile, seed=seed, classes=[c],
                                    min_tissue=0.0, run_c2st=True)
                    entry[name] = _pick(r)
                except ValueError as e:  # too few tiles of that class at this tile size
                    entry[name] = {"error": str(e)}
            rows.append(entry)
            print(json.dumps(entry), file=sys.stderr)
    result = {
        "model": a.model,
        "model_pixel_size_um": model.card.pixel_size_um,
        "steps": a.steps,
        "solver": a.solver,
        "tile_px": a.tile,
        "seeds": a.seeds,
        "real": f"{SLIDE.name} rows >= held-out start, {SLIDE_MPP} um/px",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "real_rim": real_rim,
        "rim_um": RIM_UM,
        "runs": rows,
    }
    out = a.out or ROOT / "benchmarks" / "results" / f"quality-{a.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


def _pick(r: dict) -> dict:
    keys = ("n_real", "n_synthetic", "mpp", "fd", "precision", "recall", "authenticity", "c2st_accuracy",
            "nuclei_per_mm2", "nuclear_area_um2", "seam_score")
    out = {k: r.get(k) for k in keys}
    if r.get("c2st"):
        out["c2st_stderr"] = r["c2st"].get("stderr")
    return out


if __name__ == "__main__":
    sys.exit(main())
