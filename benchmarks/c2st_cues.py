"""What gives synthetic tiles away to the C2ST: colour, fine texture, or the structure left when both
are taken out.  The same tiles as a sweep's row (``src_models.evaluation.evaluate``'s tiling), the
same classifier protocol, run again on transformed copies of both sides:

* ``as is``: the figure the sweeps quote;
* ``grey``: both sides turned to luminance (the three channels equal), so no colour cue is left;
* ``colour-matched``: the synthetic tiles' CIELAB channels shifted and scaled to the real set's mean
  and standard deviation (a diagnosis: it uses the real set's statistics, which no model may);
* ``blurred``: both sides blurred (Gaussian, σ = ``--sigma-um`` µm), so fine texture and nuclear
  detail are gone and colour and coarse structure remain;
* ``grey + blurred``: only coarse structure of the grey levels.

    python benchmarks/c2st_cues.py --heldout skin --crop 512x1024 \
        --set skin3:0=out/sweep/canvases_s3_8000_s0/heldout-ddim_50_1-w1.0-c3w0-s0.zarr ... \
        --out benchmarks/results/c2st-cues.json

A set is LABEL:SEED=CANVAS[,CANVAS...]; SEED seeds the tiling and the classifier as in the sweep.
``--roundtrip MODEL`` adds, per ``--roundtrip-seeds`` seed, a set whose "synthetic" side is the real
held-out images encoded and decoded by MODEL's codec: what a perfect image UNet on that codec would
score, the floor under every model that paints through it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

VARIANTS = ("as is", "grey", "colour-matched", "blurred", "grey + blurred")


def grey(tiles: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for t in tiles:
        y = (0.299 * t[..., 0] + 0.587 * t[..., 1] + 0.114 * t[..., 2]).round().clip(0, 255).astype(np.uint8)
        out.append(np.repeat(y[..., None], 3, axis=2))
    return out


def blurred(tiles: list[np.ndarray], sigma_px: float) -> list[np.ndarray]:
    from scipy import ndimage as ndi

    return [ndi.gaussian_filter(t.astype(np.float32), (sigma_px, sigma_px, 0)).round().clip(0, 255).astype(np.uint8)
            for t in tiles]


def colour_matched(synthetic: list[np.ndarray], real: list[np.ndarray]) -> list[np.ndarray]:
    """Synthetic tiles with each CIELAB channel moved to the real set's mean and standard deviation."""
    from skimage import color

    def lab(ts):
        return [color.rgb2lab(t) for t in ts]

    rl, sl = lab(real), lab(synthetic)
    r = np.concatenate([x.reshape(-1, 3) for x in rl])
    s = np.concatenate([x.reshape(-1, 3) for x in sl])
    scale = r.std(0) / np.maximum(s.std(0), 1e-6)
    shift = r.mean(0) - s.mean(0) * scale
    return [(color.lab2rgb(x * scale + shift) * 255).round().clip(0, 255).astype(np.uint8) for x in sl]


def roundtrip(model_spec: str, real: Path, out: Path) -> Path:
    """A folder like ``real`` (images/, masks/) whose images went through the model's codec and back
    (``codec_error.round_trip``, the codec-error benchmark's own)."""
    import shutil

    from codec_error import round_trip
    from PIL import Image

    from src_models.models.loading import load_model

    codec = load_model(model_spec).codec
    (out / "images").mkdir(parents=True, exist_ok=True)
    shutil.copytree(real / "masks", out / "masks", dirs_exist_ok=True)
    for path in sorted((real / "images").iterdir()):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(round_trip(codec, rgb)).save(out / "images" / path.name)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heldout", choices=("skin", "tumour"), required=True)
    p.add_argument("--crop", default=None, help="HxW: the sweep's centre crop of the held-out part")
    p.add_argument("--set", dest="sets", action="append", metavar="LABEL:SEED=CANVAS[,CANVAS]")
    p.add_argument("--roundtrip", default=None, metavar="MODEL", help="add the codec round trip of the real images")
    p.add_argument("--roundtrip-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--sigma-um", type=float, default=2.0)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="NAME",
                   help=f"which of {', '.join(repr(v) for v in VARIANTS)} to run (default all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=ROOT / "out" / "c2st_cues")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from src_models.evaluation.c2st import c2st
    from src_models.evaluation.evaluate import evaluate
    from sweep_sampling import SKIN_MPP, skin_heldout, tumour_heldout

    crop = tuple(int(v) for v in a.crop.split("x")) if a.crop else None
    if a.heldout == "skin":
        real, mpp = skin_heldout(a.work / (f"heldout-{a.crop}" if crop else "heldout"), crop), SKIN_MPP
    else:
        from src_models.data.masks_from_nuclei import PIXEL_UM

        real, mpp = tumour_heldout(a.work / (f"tumour-{a.crop}" if crop else "tumour"), crop), PIXEL_UM
    sets = list(a.sets or [])
    if a.roundtrip:
        folder = roundtrip(a.roundtrip, real, a.work / f"roundtrip-{Path(a.roundtrip).name}-{a.heldout}-{a.crop or 'all'}")
        sets += [f"codec round trip:{s}={folder}" for s in a.roundtrip_seeds]
    rows = []
    for spec in sets:
        head, _, paths = spec.partition("=")
        label, _, seed = head.rpartition(":")
        seed = int(seed)
        _, extras = evaluate([real], [Path(x) for x in paths.split(",")], tile=a.tile, stride=a.stride, seed=seed,
                             run_c2st=False, real_mpp=mpp)
        r, s, tile_mpp = extras["real"], extras["synthetic"], extras["mpp"]
        overlap = (a.stride / a.tile) ** 2
        sigma_px = a.sigma_um / tile_mpp
        rr, ss = r.rgb(), s.rgb()
        sides = {
            "as is": lambda: (rr, ss),
            "grey": lambda: (grey(rr), grey(ss)),
            "colour-matched": lambda: (rr, colour_matched(ss, rr)),
            "blurred": lambda: (blurred(rr, sigma_px), blurred(ss, sigma_px)),
            "grey + blurred": lambda: (blurred(grey(rr), sigma_px), blurred(grey(ss), sigma_px)),
        }
        row = {"set": label, "seed": seed, "n_real": len(rr), "n_synthetic": len(ss)}
        for name in a.variants:
            x, y = sides[name]()
            res = c2st(x, y, seed=seed, real_groups=r.groups(), synthetic_groups=s.groups(), overlap=overlap)
            row[name] = {"accuracy": res["accuracy"], "ci95": res.get("ci95")}
        rows.append(row)
        print(json.dumps(row), flush=True)

    from sweep_report import mean_ci

    summary = {}
    for label in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == label]
        summary[label] = {name: mean_ci([r[name]["accuracy"] for r in mine]) for name in a.variants}
    result = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
              "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "threads": a.threads,
                          "torch": torch.__version__, "load": os.getloadavg()},
              "tile": a.tile, "stride": a.stride, "sigma_um": a.sigma_um, "rows": rows,
              "summary_mean_ci95_n": summary}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
