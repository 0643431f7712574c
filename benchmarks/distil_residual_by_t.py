"""Where along the noise levels a guidance-distilled student misses its teacher (issue 23).

    python benchmarks/distil_residual_by_t.py --model out/distil/skin_cond_6k --data out/v2_data
                                             [--n 64] [--buckets 0-100,100-250,...] [--seed 7] [--out FILE.json]

For each band of timesteps ``t`` (0 clean … 999 pure noise), on ``--n`` noised 128 px crops of the
training rows drawn with ``t`` uniform in the band (the same crops and noise for every model, from
``--seed``), one JSON row:

* ``residual``: E|student − guided|² / E|cond − guided|², what ``diffinfinite distil`` reports on its
  probe, here per band (0: the teacher's guided ε exactly; 1: no better than its plain conditional pass);
* ``guidance``: E|cond − guided|² / E|guided|², how much guidance changes ε in that band at all (a large
  residual where guidance hardly matters costs little).

The student is the model directory's ``unet_guided.safetensors`` over its UNet; the teacher its UNet
at the card's ω (per class too).  Float32, on the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from json_out import emit  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a model directory with a distilled student")
    p.add_argument("--data", required=True, type=Path, help="the training folder the model learned from")
    p.add_argument("--n", type=int, default=64, help="crops per band")
    p.add_argument("--buckets", default="0-100,100-250,250-500,500-750,750-1000")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    from src_models.models.loading import guided_network, load_model
    from src_models.sampling.guidance import omega_vector
    from src_models.sampling.schedule import cosine_alphas_cumprod
    from src_models.synthesis.request import sampling_defaults
    from src_models.training.distil import guided_target
    from src_models.training.train import LatentCrops, load_training_set

    model = load_model(a.model, "cpu")
    if model.card.guided_unet is None:
        p.error(f"{a.model} has no distilled student")
    teacher = model.unet.float().eval()
    student = guided_network(model).float().eval()
    d = sampling_defaults(model.card)
    omega = omega_vector(model.card.num_classes, d["omega"], d["omega_per_class"])
    data = load_training_set(a.data, model.card.classes, model.card.colours)
    gen = torch.Generator().manual_seed(a.seed)
    crops = LatentCrops(data.tiles, model.codec.eval(), int(model.card.patch_px), gen, device=torch.device("cpu"),
                        progress=False)
    alphas = cosine_alphas_cumprod()
    rows = []
    t0 = time.perf_counter()
    for band in a.buckets.split(","):
        lo, hi = (int(v) for v in band.split("-"))
        z0, mask, _ = crops.sample(a.n)
        t = torch.randint(lo, hi, (a.n,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        al = alphas[t].view(-1, 1, 1, 1)
        xt = al.sqrt() * z0.cpu() + (1 - al).sqrt() * noise
        with torch.no_grad():
            target = guided_target(teacher, xt, t, mask, omega)
            cond = teacher(xt, t, mask).float()
            own = student(xt, t, mask).float()
        gap = (cond - target).pow(2).mean()
        rows.append({"t": [lo, hi], "n": a.n, "residual": float((own - target).pow(2).mean() / gap.clamp(min=1e-20)),
                     "guidance": float(gap / target.pow(2).mean().clamp(min=1e-20))})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = {"model": str(a.model), "data": str(a.data), "seed": a.seed, "seconds": time.perf_counter() - t0,
           "machine": {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                       "load": os.getloadavg()}, "bands": rows}
    emit(out, a.out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
