"""Region-border seams for sampling settings: the seam test's layout (a 256² px canvas of 64 px regions
under one class, sampled region by region) for each setting and seed, with the border statistic ranked
among the same statistic on the lines that are not borders.

    python benchmarks/seam_sweep.py --settings ddim:50:1@3 dpmpp-2m:20@1 --seeds 1 2 3 \
        --out benchmarks/results/seams-default.json

A setting is SOLVER:STEPS[:ETA]@OMEGA.  For each canvas: ``ratio`` is the mean grey step across region
borders over the step across every other latent-pixel line (``seam_score``); ``offsets`` is the same
figure for the lines k·factor px after the borders (k = 1 … region/factor − 1, none of them borders), so
``rank`` (1 = the largest of all) says whether the borders stand out of the texture's own spread.
``--halo`` sets the latent px of finished context around each region (default: half a window);
``--sweep`` samples the whole canvas level by level instead (no region is finished before another).
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


def parse_setting(text: str) -> dict:
    spec, _, omega = text.partition("@")
    parts = spec.split(":")
    out = {"solver": parts[0], "steps": int(parts[1])}
    if len(parts) > 2:
        out["eta"] = float(parts[2])
    out["omega"] = float(omega) if omega else None
    return out


def border_figures(grey: np.ndarray, region: int, factor: int) -> dict:
    from src_models.evaluation.metrics import seam_score

    h, w = grey.shape

    def at(shift: int):
        return seam_score(grey, factor, np.arange(region + shift, h, region), np.arange(region + shift, w, region))

    ratio = at(0)
    offsets = [at(k * factor) for k in range(1, region // factor)]
    rank = 1 + sum(1 for o in offsets if o is not None and o > ratio)
    return {"ratio": round(ratio, 4), "offsets_max": round(max(offsets), 4), "offsets_min": round(min(offsets), 4),
            "rank": rank, "of": len(offsets) + 1}


def markdown(data: dict) -> str:
    """One row per setting: each seed's ratio with its rank, and the mean ratio."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sweep_report import solver_name
    groups: dict[str, list[dict]] = {}
    for r in data["rows"]:
        s = r["setting"]
        name = solver_name(s)  # solver, steps, η, guidance limit, as the sweeps' report names them
        name += f" halo {s['halo']}" if s.get("halo") is not None else ""
        name += f" resample {s['resample']}" if s.get("resample") is not None else ""
        name += " sweep" if s.get("sweep") else ""
        groups.setdefault(f"{name} | {s['omega']:g}", []).append(r)
    lines = ["| solver | ω | seed: ratio (rank of 16; largest non-border offset) | mean ratio |", "| --- | --- | --- | --- |"]
    for key, rows in groups.items():
        cells = "; ".join(f"{r['seed']}: {r['ratio']:.2f} ({r['rank']}; {r['offsets_max']:.2f})"
                          for r in sorted(rows, key=lambda r: r["seed"]))
        lines.append(f"| {key} | {cells} | {np.mean([r['ratio'] for r in rows]):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--settings", nargs="+", required=True, help="SOLVER:STEPS[:ETA]@OMEGA")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--region", type=int, default=64)
    p.add_argument("--label", type=int, default=3, help="the class under the whole canvas (default: dermis)")
    p.add_argument("--halo", type=int, default=None,
                   help="latent px of context around each region (default: the request's)")
    p.add_argument("--resample", type=int, default=None,
                   help="passes per denoising level (default: the request's, 1)")
    p.add_argument("--guidance-below", type=int, default=None, metavar="T",
                   help="guide only the levels with timestep below T (default: the card's; named in the setting)")
    p.add_argument("--sweep", action="store_true",
                   help="sample the whole canvas level by level (the request's sweep) instead of region by region")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report", action="store_true", help="print the table of --out's rows and stop")
    a = p.parse_args(argv)
    if a.report:
        sys.stdout.write(markdown(json.loads(a.out.read_text())))
        return 0

    import torch

    from src_models.models.loading import load_model
    from src_models.synthesis.canvases import new_canvas, put_mask
    from src_models.synthesis.regions import synthesise
    from src_models.synthesis.request import SynthesisRequest

    model = load_model(a.model, "cpu")
    data = json.loads(a.out.read_text()) if a.out.is_file() else {"rows": []}
    done = {json.dumps([r["setting"], r["seed"]], sort_keys=True) for r in data["rows"]}
    for text in a.settings:
        setting = parse_setting(text)
        if a.halo is not None:
            setting["halo"] = a.halo
        if a.resample is not None:
            setting["resample"] = a.resample
        if a.guidance_below is not None:
            setting["guidance_below"] = a.guidance_below
        if a.sweep:
            setting["sweep"] = True
        for seed in a.seeds:
            key = json.dumps([setting, seed], sort_keys=True)
            if key in done:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                c = new_canvas(model.card, Path(tmp) / "c.zarr", a.size, a.size, a.region)
                put_mask(c, np.full(c.latent_shape, a.label, np.uint8))
                extra = {k: setting[k] for k in ("halo", "resample", "guidance_below", "sweep")
                         if k in setting}  # else the request's own
                req = SynthesisRequest(model=a.model, solver=setting["solver"], steps=setting["steps"],
                                       eta=setting.get("eta"), omega=setting["omega"], seed=seed, **extra)
                t0 = time.perf_counter()
                events = list(synthesise(model, c, req))
                # a region's own passes; in a sweep each region reports the whole sweep's so far
                forwards = max(ev.forwards for ev in events) if a.sweep else sum(ev.forwards for ev in events)
                seconds = time.perf_counter() - t0
                img = np.moveaxis(np.asarray(c.image(0)[:]), 0, -1).astype(np.float32).mean(-1)
                c.close()
            row = {"setting": setting, "seed": seed, **border_figures(img, a.region, model.card.factor),
                   "forwards": forwards, "seconds": round(seconds, 1), "load_average": round(os.getloadavg()[0], 2)}
            data["rows"].append(row)
            data.update(model=a.model, size=a.size, region=a.region, label=a.label,
                        machine=f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
                                f"{torch.get_num_threads()} threads")
            a.out.parent.mkdir(parents=True, exist_ok=True)
            tmp_out = a.out.with_suffix(".tmp.json")
            tmp_out.write_text(json.dumps(data, indent=1) + "\n")
            tmp_out.replace(a.out)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
