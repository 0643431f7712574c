"""What gives synthetic tiles away to the C2ST: colour, fine texture, or the structure left when both
are taken out.  The same tiles as a sweep's row (``src_models.evaluation.evaluate``'s tiling), the
same classifier protocol, run again on transformed copies of both sides:

* ``as is``: the figure the sweeps quote;
* ``grey``: both sides turned to luminance (the three channels equal), so no colour cue is left;
* ``colour-matched``: the synthetic tiles' CIELAB channels shifted and scaled to the real set's mean
  and standard deviation (a diagnosis: it uses the real set's statistics, which no model may);
* ``blurred``: both sides blurred (Gaussian, σ = ``--sigma-um`` µm), so fine texture and nuclear
  detail are gone and colour and coarse structure remain;
* ``grey + blurred``: only coarse structure of the grey levels;
* ``compression-matched``: the synthetic tiles given the real set's JPEG compression: the real tiles'
  8 x 8 block grid is found from their line-to-line grey steps (its phase, and how much stronger the
  steps on the grid's lines are than elsewhere), and each synthetic tile is JPEG-encoded on that grid at
  the quality whose block strength comes closest to the real set's (a diagnosis like colour matching:
  it uses the real set's statistics).  The CC0 skin slide is an Aperio JPEG scan; the carcinoma images
  show no such grid;
* ``low-passed``: both sides with the finest scale taken out: spatial frequencies above
  ``--cutoff`` cycles/px (default 0.3, a period of 3.3 px, far below a nucleus) removed per tile
  (reflect-padded FFT, a raised-cosine edge 0.05 wide), so only the pixel-level noise floor and
  the decoder's finest rendering are gone.

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

VARIANTS = ("as is", "grey", "colour-matched", "blurred", "grey + blurred", "compression-matched", "low-passed")
BLOCK = 8  # the JPEG block side
QUALITIES = (95, 92, 90, 88, 85, 80, 75, 70, 60, 50)


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


def low_passed(tiles: list[np.ndarray], cutoff: float, width: float = 0.05) -> list[np.ndarray]:
    """Each tile with its spatial frequencies above ``cutoff`` cycles/px removed (raised-cosine edge
    ``width`` wide), the tile reflect-padded by half its side first so its borders do not ring."""
    out = []
    for t in tiles:
        h, w = t.shape[:2]
        x = np.pad(t.astype(np.float32), ((h // 2, h // 2), (w // 2, w // 2), (0, 0)), mode="reflect")
        fy, fx = np.fft.fftfreq(x.shape[0])[:, None], np.fft.rfftfreq(x.shape[1])[None]
        r = np.sqrt(fy ** 2 + fx ** 2)
        gain = np.clip((cutoff + width / 2 - r) / width, 0.0, 1.0)
        gain = 0.5 - 0.5 * np.cos(np.pi * gain)
        y = np.fft.irfft2(np.fft.rfft2(x, axes=(0, 1)) * gain[..., None], s=x.shape[:2], axes=(0, 1))
        out.append(y[h // 2 : h // 2 + h, w // 2 : w // 2 + w].round().clip(0, 255).astype(np.uint8))
    return out


def block_grid(tiles: list[np.ndarray]) -> dict:
    """Where the 8 x 8 block grid of a set of equally placed tiles lies, and how strong it is.

    For each of the 8 phases of the row lines (the grey step between rows i - 1 and i, for i = phase
    mod 8) and of the column lines, the mean absolute step over every tile; the grid's phase is the
    strongest, its strength that mean over the median of the other seven (1.0: no grid).
    """
    rows, cols = np.zeros(BLOCK), np.zeros(BLOCK)
    for t in tiles:
        g = t.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        dy, dx = np.abs(np.diff(g, axis=0)).mean(1), np.abs(np.diff(g, axis=1)).mean(0)
        for k in range(BLOCK):  # dy[i] is the step onto row i + 1
            rows[k] += dy[(np.arange(len(dy)) + 1) % BLOCK == k].mean()
            cols[k] += dx[(np.arange(len(dx)) + 1) % BLOCK == k].mean()
    out = {}
    for name, prof in (("rows", rows), ("cols", cols)):
        k = int(prof.argmax())
        out[name] = {"phase": k, "strength": round(float(prof[k] / np.median(np.delete(prof, k))), 4)}
    return out


def jpeg_on_grid(tile: np.ndarray, quality: int, phase: tuple[int, int]) -> np.ndarray:
    """``tile`` JPEG-encoded (4:4:4) with its block lines at rows/columns ``phase`` mod 8."""
    import io

    from PIL import Image

    a, b = (-phase[0]) % BLOCK, (-phase[1]) % BLOCK
    padded = np.pad(tile, ((a, 0), (b, 0), (0, 0)), mode="edge")
    buf = io.BytesIO()
    Image.fromarray(padded).save(buf, "JPEG", quality=quality, subsampling=0)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))[a:, b:]


def compression_matched(synthetic: list[np.ndarray], real: list[np.ndarray]) -> tuple[list[np.ndarray], dict]:
    """The synthetic tiles JPEG-encoded on the real set's block grid, at the quality (of
    ``QUALITIES``) whose mean block strength comes closest to the real set's; and what was chosen."""
    grid = block_grid(real)
    phase = (grid["rows"]["phase"], grid["cols"]["phase"])
    target = (grid["rows"]["strength"] + grid["cols"]["strength"]) / 2
    probe = synthetic[:: max(1, len(synthetic) // 64)]
    best = None
    for q in QUALITIES:
        g = block_grid([jpeg_on_grid(t, q, phase) for t in probe])
        if (g["rows"]["phase"], g["cols"]["phase"]) != phase:
            continue
        gap = abs((g["rows"]["strength"] + g["cols"]["strength"]) / 2 - target)
        if best is None or gap < best[0]:
            best = (gap, q)
    q = best[1] if best else QUALITIES[0]
    out = [jpeg_on_grid(t, q, phase) for t in synthetic]
    return out, {"real_grid": grid, "synthetic_grid_before": block_grid(synthetic),
                 "quality": q, "synthetic_grid_after": block_grid(out)}


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
    p.add_argument("--cutoff", type=float, default=0.3, help="the low-passed variant's cutoff (cycles/px)")
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
            "low-passed": lambda: (low_passed(rr, a.cutoff), low_passed(ss, a.cutoff)),
        }
        row = {"set": label, "seed": seed, "n_real": len(rr), "n_synthetic": len(ss)}

        def matched():
            out, row["compression"] = compression_matched(ss, rr)
            return rr, out

        sides["compression-matched"] = matched
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
                          "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
                          "load": os.getloadavg()},
              "tile": a.tile, "stride": a.stride, "sigma_um": a.sigma_um, "cutoff": a.cutoff, "rows": rows,
              "summary_mean_ci95_n": summary}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
