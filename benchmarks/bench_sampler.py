"""Sampler benchmark: plans, solvers, and regions vs the whole-canvas sweep, side by side on one model.
Prints one JSON object.

    python benchmarks/bench_sampler.py [--model default] [--device cpu] [--sections plans,canvas,solvers]

``plans``: one area (``--area`` px, the standard 4-class mask) sampled with each batched plan (and the
    sequential loop with ``--seq-steps``): network forwards, windows per level, seconds, and how blind
    the plan's seams are (of the pixel pairs that two different windows write, the share where neither
    window sees the other pixel).
``canvas``: a ``--canvas`` px canvas of ``--region`` px regions under one tissue class, made region by
    region or with ``--sweep``, for each ``--canvas-configs`` entry (mode:plan:solver:steps[:eta]): seconds,
    forwards per image and the seam ratio of tests/test_seams.py (mean gradient across region borders
    over that across the other latent-pixel borders; 1 = no seam), with the same statistic half a
    region off the borders and the borders' rank among all line offsets (a seam ranks last).
``solvers``: one window under the standard mask, DDIM (η = 0) and DPM-Solver++(2M) at
    ``--solver-steps`` and 50, each against the same solver with ``--ref-steps`` steps from the same
    noise (its own limit): RMS latent distance and mean absolute pixel difference (0-255), over
    ``--seeds``; the distance between the two limits; seconds per image of DDIM-50 (η = 1, the
    release's setting) vs each.  (DDIM with the release's x0 clamp is not a consistent ODE solver:
    its result keeps moving with the step count; DPM-Solver++(2M) converges to its limit.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

from src_models.synthesis.canvases import new_canvas, put_mask
from src_models.models.codec import decode_latent
from src_models.sampling.guidance import omega_vector
from src_models.models.loading import load_model
from src_models.sampling.plan import PLANS
from src_models.sampling.sampler import SampleStats, effective_window, sample_area
from src_models.sampling.schedule import cosine_alphas_cumprod, ddim_time_pairs
from src_models.synthesis.sweep import level_rng
from src_models.models.device import resolve_device
from src_models.synthesis.regions import synthesise
from src_models.synthesis.request import SynthesisRequest


def standard_mask(h: int, w: int, num_classes: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    m = np.ones((h, w), np.uint8)
    m[x < w / 3] = 2
    m[(y - 0.6 * h) ** 2 + (x - 0.6 * w) ** 2 < (0.2 * h) ** 2] = 3
    m[y > 0.85 * h] = 4
    return np.minimum(m, num_classes - 1)


def seam_ratio(img: np.ndarray, region: int, factor: int, shift: int = 0) -> float:
    """tests/test_seams.py's figure: gradient across region borders / across other latent-pixel borders.
    With ``shift`` (px) the same figure for lines that are not region borders: the spread of the
    statistic itself."""
    grey = img.astype(np.float32).mean(-1)
    steps = (np.abs(np.diff(grey, axis=1)).mean(0) + np.abs(np.diff(grey, axis=0)).mean(1)) / 2
    idx = np.arange(len(steps))
    grid = idx[(idx + 1) % factor == 0]
    border = grid[(grid + 1 - shift) % region == 0]
    return float(steps[border].mean() / steps[np.setdiff1d(grid, border)].mean())


def _border_rank(img: np.ndarray, region: int, factor: int) -> dict:
    """Where the region borders' ratio ranks among the same statistic on every line offset (1 = lowest)."""
    r = [seam_ratio(img, region, factor, shift) for shift in range(0, region, factor)]
    return {"border_rank": sorted(r).index(r[0]) + 1, "offsets": len(r),
            "non_border_span": [round(min(r[1:]), 4), round(max(r[1:]), 4)]}


def blind_share(plan, size: int) -> float:
    """Of the adjacent pixel pairs written by two different windows, the share where neither window
    covers the other pixel."""
    owner = plan.owner_in(0, plan_h(plan), 0, plan_w(plan))
    wy, wx = plan.starts()
    blind = total = 0
    for a, b, dy, dx in ((owner[:, :-1], owner[:, 1:], 0, 1), (owner[:-1, :], owner[1:, :], 1, 0)):
        ys, xs = np.nonzero((a != b) & (a >= 0) & (b >= 0))
        pa, pb = a[ys, xs], b[ys, xs]
        qy, qx = ys + dy, xs + dx  # the second pixel of each pair

        def sees(w, y, x):
            return (wy[w] <= y) & (y < wy[w] + size) & (wx[w] <= x) & (x < wx[w] + size)

        blind += int((~sees(pa, qy, qx) & ~sees(pb, ys, xs)).sum())
        total += len(ys)
    return blind / max(total, 1)


def plan_h(plan):
    return plan.rows[-1][1] if hasattr(plan, "rows") else int(plan.wy.max()) + plan.size


def plan_w(plan):
    return plan.cols[-1][1] if hasattr(plan, "cols") else int(plan.wx.max()) + plan.size


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_area(model, mask, steps, plan, solver, seed, device, max_batch, eta=None, noise=None):
    card = model.card
    h, w = mask.shape
    window = effective_window(card.patch_size, h, w, getattr(model.unet, "size_multiple", 8))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((int(card.codec.get("channels", 4)), h, w), generator=g) if noise is None else noise
    stats = SampleStats()
    _sync(device)
    t = time.perf_counter()
    z = sample_area(model.unet, x.to(device), torch.from_numpy(mask.astype(np.int64))[None].to(device),
                    cosine_alphas_cumprod(), ddim_time_pairs(steps), omega_vector(card.num_classes, card.default_omega),
                    window=window, plan=plan, solver=solver, eta=eta, generator=g, rng=np.random.default_rng(seed),
                    max_batch=max_batch, stats=stats)
    _sync(device)
    return z, stats, time.perf_counter() - t, window


def plans_section(model, a, device) -> dict:
    side = a.area // model.card.factor
    mask = standard_mask(side, side, model.card.num_classes)
    out = {"area_px": a.area, "latent": side, "steps": a.plan_steps, "solver": "ddim", "eta": 1.0}
    todo = [("grid", a.plan_steps), ("release", a.plan_steps)] + ([("sequential", a.seq_steps)] if a.seq_steps else [])
    for plan, steps in todo:
        times = []
        for _ in range(a.repeats):
            _, stats, secs, window = run_area(model, mask, steps, plan, "ddim", a.seed, device, a.max_batch)
            times.append(secs)
        out[plan] = {"steps": steps, "window_latent": window, "seconds_median": round(statistics.median(times), 3),
                     "forwards_per_image": stats.forwards, "forwards_per_level_mean": round(stats.forwards / steps, 2),
                     "windows_per_level_mean": round(sum(stats.windows_per_level) / steps, 2)}
        if PLANS[plan].batched:
            shares = [blind_share(PLANS[plan].build(side, side, window, level_rng(a.seed, lv), None), window)
                      for lv in range(10)]
            out[plan]["blind_seam_pair_share"] = round(float(np.mean(shares)), 4)
    g, r = out["grid"], out["release"]
    out["release_over_grid_forwards"] = round(r["forwards_per_image"] / g["forwards_per_image"], 3)
    return out


def canvas_section(model, a, device) -> list[dict]:
    card, rows = model.card, []
    for spec in a.canvas_configs.split(","):
        mode, plan, solver, steps, *eta = spec.split(":")  # optional fifth field: DDIM's eta
        eta = float(eta[0]) if eta else None
        with TemporaryDirectory() as tmp:
            c = new_canvas(card, Path(tmp) / "c.zarr", a.canvas, a.canvas, a.region)
            put_mask(c, np.full(c.latent_shape, a.seam_class, np.uint8))
            req = SynthesisRequest(model=a.model, steps=int(steps), seed=a.seed, plan=plan, solver=solver, eta=eta,
                                   sweep=mode == "sweep", max_batch=a.max_batch, device=str(device))
            t = time.perf_counter()
            events = list(synthesise(model, c, req))
            secs = time.perf_counter() - t
            forwards = events[-1].forwards if mode == "sweep" else sum(e.forwards for e in events)
            img = np.moveaxis(np.asarray(c.image(0)[:]), 0, -1)
            rows.append({"mode": mode, "plan": plan, "solver": solver, "eta": req.resolved(card).eta,
                         "steps": int(steps), "seconds": round(secs, 2),
                         "forwards_per_image": forwards, "regions": len(events),
                         "seam_ratio": round(seam_ratio(img, a.region, card.factor), 4),
                         "control_ratio_half_region_off": round(seam_ratio(img, a.region, card.factor, a.region // 2), 4),
                         **_border_rank(img, a.region, card.factor)})
            c.close()
        print(json.dumps(rows[-1]), flush=True, file=__import__("sys").stderr)
    return rows


def solvers_section(model, a, device) -> dict:
    """Each deterministic solver against itself with ``--ref-steps`` steps from the same noise (how far
    from its own limit it still is), the distance between the two limits, and the release's DDIM-50
    (η = 1) for time.  One window under the standard mask, ``--seeds`` seeds."""
    card = model.card
    side = card.patch_size
    mask = standard_mask(side, side, card.num_classes)
    solvers = {"ddim": 0.0, "dpmpp-2m": None}
    out = {"area_latent": side, "plan": "release (one window per level here)", "ref_steps": a.ref_steps,
           "seeds": a.seeds, "runs": []}
    refs = {}
    for name, eta in solvers.items():
        for seed in range(a.seeds):
            z, _, _, _ = run_area(model, mask, a.ref_steps, "release", name, seed, device, a.max_batch, eta=eta)
            refs[name, seed] = (z, decode_latent(model.codec, z).astype(np.float32))
    out["limits_rms_latent_apart"] = round(float(np.mean([float((refs["ddim", s][0] - refs["dpmpp-2m", s][0]).pow(2).mean().sqrt())
                                                          for s in range(a.seeds)])), 4)
    out["latent_std"] = round(float(np.mean([float(refs["dpmpp-2m", s][0].std()) for s in range(a.seeds)])), 4)
    steps_list = sorted({int(n) for n in a.solver_steps.split(",")} | {50})
    for name, eta in [("ddim", 1.0)] + [(n, e) for n in solvers for e in [solvers[n]]]:
        for steps in ([50] if eta == 1.0 else steps_list):
            dist, pix, secs, fwd = [], [], [], 0
            for seed in range(a.seeds):
                z, stats, t, _ = run_area(model, mask, steps, "release", name, seed, device, a.max_batch, eta=eta)
                secs.append(t)
                fwd = stats.forwards
                if eta != 1.0:
                    ref_z, ref_rgb = refs[name, seed]
                    dist.append(float((z - ref_z).pow(2).mean().sqrt()))
                    pix.append(float(np.abs(decode_latent(model.codec, z).astype(np.float32) - ref_rgb).mean()))
            row = {"solver": name, "steps": steps, "eta": eta, "forwards_per_image": fwd,
                   "seconds_median": round(statistics.median(secs), 3)}
            if dist:
                row.update({"rms_latent_to_own_limit": round(float(np.mean(dist)), 4),
                            "mean_abs_px_to_own_limit": round(float(np.mean(pix)), 2)})
            out["runs"].append(row)
            print(json.dumps(row), flush=True, file=__import__("sys").stderr)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="auto")
    p.add_argument("--sections", default="plans,canvas,solvers")
    p.add_argument("--area", type=int, default=512, help="plans: area side in px")
    p.add_argument("--plan-steps", type=int, default=10)
    p.add_argument("--seq-steps", type=int, default=0, help="plans: steps of the sequential loop (0: skip)")
    p.add_argument("--canvas", type=int, default=256, help="canvas: side in px")
    p.add_argument("--region", type=int, default=64, help="canvas: region side in px")
    p.add_argument("--seam-class", type=int, default=None, help="canvas: the one label (default: the last class)")
    p.add_argument("--canvas-configs", default="regions:grid:ddim:20,regions:release:ddim:20,sweep:grid:ddim:20,"
                                               "sweep:release:ddim:20")
    p.add_argument("--solver-steps", default="10,15,20,25")
    p.add_argument("--ref-steps", type=int, default=250)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    model = load_model(a.model, device)
    a.seam_class = model.card.num_classes - 1 if a.seam_class is None else a.seam_class
    out = {"model": model.card.name, "device": str(device),
           "card": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "conditioning": model.card.conditioning,
           "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    sections = {"plans": plans_section, "canvas": canvas_section, "solvers": solvers_section}
    for name in a.sections.split(","):
        out[name] = sections[name](model, a, device)
    out["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
