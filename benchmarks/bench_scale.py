"""Whole-slide scale: peak host (and GPU) memory and seconds to the first region on disk for
canvases of growing size, generating the same number of regions on each.  Prints one JSON object.

    python benchmarks/bench_scale.py [--sizes 8192 32768 131072] [--regions 4] [--model tiny-test]

Each size runs in a fresh process so that peak memory (ru_maxrss) is its own.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(size: int, regions: int, model_name: str, region_px: int, steps: int, device: str) -> dict:
    import resource

    import numpy as np
    import torch

    from src_models.synthesis.canvases import new_canvas
    from src_models.models.loading import load_model
    from src_models.models.device import resolve_device
    from src_models.synthesis.regions import synthesise
    from src_models.synthesis.request import SynthesisRequest

    dev = resolve_device(device)
    model = load_model(model_name, dev)
    card = model.card
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        canvas = new_canvas(card, Path(tmp) / "c.zarr", size, size, region_px)
        created = time.perf_counter() - t0
        # a block of regions at the centre; the mask is written only there
        side = int(np.ceil(np.sqrt(regions)))
        c0 = size // 2 - side * region_px // 2
        c0 -= c0 % region_px
        y0, y1, x0, x1 = c0, c0 + side * region_px, c0, c0 + side * region_px
        f = card.factor
        lab = np.ones(((y1 - y0) // f, (x1 - x0) // f), np.uint8)
        lab[:, lab.shape[1] // 2 :] = min(2, card.num_classes - 1)
        canvas.write_mask(lab, y0 // f, x0 // f)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        request = SynthesisRequest(model=model_name, steps=steps, seed=0, area=(y0, y1, x0, x1),
                                   centre=((y0 + y1) / 2, (x0 + x1) / 2))
        t1 = time.perf_counter()
        first = None
        done = 0
        for ev in synthesise(model, canvas, request):
            done += 1
            if first is None:
                first = time.perf_counter() - t1
            if done == regions:
                break
        total = time.perf_counter() - t1
        canvas.close()
    out = {
        "size_px": size, "regions_generated": done, "region_px": region_px, "canvas_create_s": round(created, 4),
        "first_region_s": round(first, 3), "total_s": round(total, 3),
        "peak_host_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if dev.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        out["card"] = torch.cuda.get_device_name(dev)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--regions", type=int, default=4)
    p.add_argument("--region-px", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--model", default="tiny-test")
    p.add_argument("--device", default="auto")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one is not None:
        print(json.dumps(one(a.one, a.regions, a.model, a.region_px, a.steps, a.device)))
        return
    runs = []
    for size in a.sizes:
        cmd = [sys.executable, __file__, "--one", str(size), "--regions", str(a.regions), "--region-px", str(a.region_px),
               "--steps", str(a.steps), "--model", a.model, "--device", a.device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    rss = [r["peak_host_rss_mib"] for r in runs]
    summary = {"model": a.model, "steps": a.steps, "runs": runs,
               "host_rss_spread": round((max(rss) - min(rss)) / min(rss), 4)}
    if all("peak_gpu_mib" in r for r in runs):
        gpu = [r["peak_gpu_mib"] for r in runs]
        summary["gpu_spread"] = round((max(gpu) - min(gpu)) / max(min(gpu), 1e-9), 4)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
