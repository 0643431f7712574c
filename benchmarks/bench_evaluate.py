"""How long ``diffinfinite evaluate`` takes on a 2048² px canvas at 128 px tiles (target: under
2 minutes on a 2-core CPU), split into tiling, features and C2ST.

    python benchmarks/bench_evaluate.py [--size 2048] [--tile 128] [--threads 2]

The synthetic side is a tiny-test canvas sampled with 2 steps (its pixels are noise, but every
tile is kept: ``--min-tissue 0``, the worst case for feature time); the real side is the CC0
slide.  Prints one JSON object.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import torch

    from src_models.synthesis.canvases import new_canvas, put_mask
    from src_models.evaluation import evaluate
    from src_models.models.loading import load_model
    from src_models.synthesis.regions import synthesise
    from src_models.synthesis.request import SynthesisRequest

    torch.set_num_threads(a.threads)
    model = load_model("tiny-test", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.zarr"
        c = new_canvas(model.card, path, a.size, a.size, 512)
        put_mask(c, np.full(c.latent_shape, 3, np.uint8))
        list(synthesise(model, c, SynthesisRequest(model="tiny-test", steps=2, seed=0)))
        c.close()
        stages: dict[str, float] = {}
        last = {"stage": None, "t": time.perf_counter()}

        def progress(stage, done, total):
            now = time.perf_counter()
            stages[stage] = stages.get(stage, 0.0) + now - last["t"]
            last["t"] = now

        t0 = time.perf_counter()
        last["t"] = t0
        res, _ = evaluate([ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"], [path], tile=a.tile,
                          min_tissue=0.0, progress=progress)
        total = time.perf_counter() - t0
    print(json.dumps({
        "canvas_px": a.size, "tile_px": a.tile, "n_real": res["n_real"], "n_synthetic": res["n_synthetic"],
        "c2st_n_per_side": res["c2st"]["n_per_side"], "seconds_total": round(total, 1),
        "seconds_by_stage": {k: round(v, 1) for k, v in stages.items()},
        "threads": a.threads, "load_average": [round(v, 2) for v in os.getloadavg()],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
