"""Sampler benchmark: network forwards, windows and seconds of the parallel and the sequential
(release-order) schedules on the same mask, side by side.  Prints one JSON object.

    python benchmarks/bench_sampler.py [--model default] [--size 512] [--steps 20] [--device cpu]

The mask is the standard 4-class layout of the GPU benchmark (class 1 everywhere; class 2 left
third; class 3 a disc; class 4 a bottom band), with labels clipped to the model's classes.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from src_models.guidance import omega_vector
from src_models.models import load_model
from src_models.sampler import SampleStats, effective_window, sample_area
from src_models.schedule import cosine_alphas_cumprod, ddim_time_pairs
from src_models.synthesis import resolve_device


def standard_mask(h: int, w: int, num_classes: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    m = np.ones((h, w), np.uint8)
    m[x < w / 3] = 2
    m[(y - 0.6 * h) ** 2 + (x - 0.6 * w) ** 2 < (0.2 * h) ** 2] = 3
    m[y > 0.85 * h] = 4
    return np.minimum(m, num_classes - 1)


def run_once(model, mask, steps, schedule, seed, device, max_batch):
    card = model.card
    h, w = mask.shape
    window = effective_window(card.patch_size, h, w, getattr(model.unet, "size_multiple", 8))
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((int(card.codec.get("channels", 4)), h, w), generator=g).to(device)
    stats = SampleStats()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    z = sample_area(model.unet, noise, torch.from_numpy(mask.astype(np.int64))[None].to(device), cosine_alphas_cumprod(),
                    ddim_time_pairs(steps), omega_vector(card.num_classes, card.default_omega).to(device), window=window,
                    schedule=schedule, generator=g, rng=np.random.default_rng(seed), max_batch=max_batch, stats=stats)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return z, stats, time.perf_counter() - t, window


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--size", type=int, default=512, help="image side in px")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seq-steps", type=int, default=None, help="steps for the sequential schedule (default: --steps)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    model = load_model(a.model, device)
    card = model.card
    side = a.size // card.factor
    mask = standard_mask(side, side, card.num_classes)
    out = {
        "model": card.name, "size_px": a.size, "latent": [side, side], "steps": a.steps,
        "device": str(device), "card": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "conditioning": card.conditioning,
    }
    for schedule, steps in (("parallel", a.steps), ("sequential", a.seq_steps or a.steps)):
        times = []
        for r in range(a.repeats):
            _, stats, secs, window = run_once(model, mask, steps, schedule, a.seed, device, a.max_batch)
            times.append(secs)
        out[schedule] = {
            "steps": steps, "window_latent": window, "seconds_median": round(statistics.median(times), 3),
            "forwards_per_image": stats.forwards, "forwards_per_level_mean": round(stats.forwards / steps, 2),
            "windows_per_level_mean": round(sum(stats.windows_per_level) / steps, 2),
            "windows_per_level": stats.windows_per_level[:5] + (["..."] if steps > 5 else []),
        }
    par, seq = out["parallel"], out["sequential"]
    out["forwards_ratio_sequential_over_parallel"] = round(
        (seq["forwards_per_image"] / seq["steps"]) / (par["forwards_per_image"] / par["steps"]), 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
