"""ω = 0 without null passes: the same canvas painted with every window's null pass (as before) and
without (a whole-label-map model at ω = 0 for every class needs none), in turn, A B A B.

    python benchmarks/bench_null_skip.py --model tumour --pairs 2

The label map is the centre 384 × 384 px of the tumour model's held-out nest crop (built as
``sweep_sampling.py --heldout tumour`` builds it) for the tumour model, a two-class map otherwise.
Prints one JSON object: sampling seconds and network calls per run, and how far the two canvases
differ (largest difference in grey levels, share of values that differ).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tumour")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch

    import src_models.sampling.sampler as sampler_module
    from quality import make_canvas
    from src_models.models.loading import load_model
    from src_models.store.canvas import Canvas

    torch.set_num_threads(a.threads)
    model = load_model(a.model, "cpu")
    work = Path(tempfile.mkdtemp(prefix="null-skip-"))
    if model.card.classes[1:] == ["background", "tumour", "stroma", "infiltrate"]:
        from PIL import Image
        from sweep_sampling import tumour_heldout

        real = tumour_heldout(work / "tumour-384x768", (384, 768))
        labels = np.asarray(Image.open(real / "masks" / "hgsc_nest.png"))[:, 192:576]
        mpp = 0.5
    else:
        labels = np.full((384, 384), 1, np.uint8)
        labels[:, 192:] = min(2, len(model.card.classes) - 1)
        mpp = float(model.card.pixel_size_um or 0.5)
    real_free = sampler_module.free_labels
    runs, images = [], {}
    for k in range(a.pairs):
        for name in ("with null passes", "without"):
            sampler_module.free_labels = (lambda omega, conditioning: frozenset()) if name != "without" else real_free
            path = work / f"{k}-{name.split()[0]}.zarr"
            try:
                seconds, forwards = make_canvas(model, labels, path, None, a.seed, a.steps, None, "ddim", omega=0.0,
                                                eta=1.0, src_mpp=mpp)
            finally:
                sampler_module.free_labels = real_free
            with Canvas.open(path) as c:
                images[name] = c.read_rgb(0, c.height, 0, c.width).astype(np.int16)
            runs.append({"pair": k, "run": name, "sample_seconds": round(seconds, 1), "forwards": forwards,
                         "load_average": round(os.getloadavg()[0], 2)})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    d = np.abs(images["with null passes"] - images["without"])
    print(json.dumps({"model": a.model, "steps": a.steps, "omega": 0.0, "px": list(labels.shape),
                      "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
                                 f"{a.threads} threads",
                      "runs": runs, "max_difference": int(d.max()), "share_differing": float((d > 0).mean())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
