"""Power study of the classifier two-sample test (C2ST): from how many tiles a side does it detect
known defects of real tissue?

Real tissue: the CC0 skin slide in data/cmu_small_region (0.499 µm/px), cut into tiles of
``--tile`` px at ``--stride`` px, grouped by spatial blocks of ``--block`` px that are dealt to two
halves like a checkerboard, so both halves hold the same mix of epidermis and dermis and no tile
crosses a block.  One half stays as it is ("real"); the other half is the "synthetic" side, taken
from a copy of the slide with one defect (``src_models.evaluation.perturb.DEFECTS``) or, for the
null check, unchanged.  For each defect and each n (tiles a side) the C2ST of
``src_models.evaluation.c2st`` runs with its fixed protocol (and with the minimum-n rule off), once
per seed; the seed draws the subsample and the networks.  Prints one JSON object; ``--out`` writes
it to a file as well.

    python benchmarks/c2st_power.py --n 32 64 128 256 --seeds 0 1 --out benchmarks/results/c2st_power.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src_models.evaluation import c2st as C  # noqa: E402
from src_models.evaluation.perturb import DEFECTS  # noqa: E402
from src_models.evaluation.sources import tissue_fraction  # noqa: E402

SLIDE = ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"
MPP = 0.499


def halves(rgb: np.ndarray, tile: int, stride: int, block: int, min_tissue: float = 0.5):
    """Tile corners of the two checkerboard halves: {0: [(y, x, block_id)], 1: [...]}, tissue only."""
    out = {0: [], 1: []}
    h, w = rgb.shape[:2]
    for by in range(h // block):
        for bx in range(w // block):
            half = (by + bx) % 2
            for oy in range(0, block - tile + 1, stride):
                for ox in range(0, block - tile + 1, stride):
                    y, x = by * block + oy, bx * block + ox
                    if tissue_fraction(rgb[y : y + tile, x : x + tile], MPP) >= min_tissue:
                        out[half].append((y, x, (by, bx)))
    return out


def cut(rgb, corners, tile):
    return [np.ascontiguousarray(rgb[y : y + tile, x : x + tile]) for y, x, _ in corners]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[32, 64, 128, 256], help="tiles a side")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--defects", nargs="+", default=["none", *DEFECTS], help="'none' is real against real")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    import torch
    from PIL import Image

    torch.set_num_threads(a.threads)
    rgb = np.asarray(Image.open(SLIDE).convert("RGB"))
    corners = halves(rgb, a.tile, a.stride, a.block)
    overlap = min(1.0, (a.stride / a.tile) ** 2)
    rows = []
    for name in a.defects:
        other = rgb if name == "none" else DEFECTS[name](rgb)
        real_all, syn_all = cut(rgb, corners[0], a.tile), cut(other, corners[1], a.tile)
        rg_all, sg_all = [c[2] for c in corners[0]], [c[2] for c in corners[1]]
        for n in a.n:
            for seed in a.seeds:
                rng = np.random.default_rng(10_000 + seed)
                # whole blocks, in a seeded order, until n tiles a side: fewer blocks, as a small canvas has
                def take(groups):
                    keys = list(dict.fromkeys(groups))
                    picked, chosen = [], set()
                    for j in rng.permutation(len(keys)):
                        chosen.add(keys[j])
                        picked = [i for i, g in enumerate(groups) if g in chosen]
                        if len(picked) >= n:
                            break
                    return picked[:n]

                ri, si = take(rg_all), take(sg_all)
                t0 = time.perf_counter()
                res = C.c2st([real_all[i] for i in ri], [syn_all[i] for i in si], seed=seed,
                             real_groups=[rg_all[i] for i in ri], synthetic_groups=[sg_all[i] for i in si],
                             overlap=overlap, min_per_side=0)
                row = {"defect": name, "n": n, "seed": seed, "accuracy": res["accuracy"], "ci95": res["ci95"],
                       "p_value": res["p_value"], "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    out = {
        "protocol": C.PROTOCOL, "tile": a.tile, "stride": a.stride, "block": a.block, "mpp": MPP,
        "tiles_available": {"real_half": len(corners[0]), "other_half": len(corners[1])},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {a.threads} threads",
        "load_average_at_end": os.getloadavg()[0], "rows": rows,
    }
    text = json.dumps(out, indent=1)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
