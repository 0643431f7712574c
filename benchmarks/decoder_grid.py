"""The pattern a latent decoder paints with the latent grid's period, on real held-out tissue.

    python benchmarks/decoder_grid.py [--model default [MODEL ...]] [--crop 512x1024] [--threads 1] [--out JSON]

The CC0 slide's held-out crop (the sweeps' ``--crop``) is encoded and decoded by each model's codec
(its round trip), and for the real crop and each round trip:

* ``peaks``: the grey image's power at the spatial frequencies of the codec's grid (1/4 and 1/2
  cycles/px along rows, columns and the diagonal for a factor-4 codec) over the median power of the
  7 x 7 frequencies around it (about 1 where there is no periodic pattern);
* ``pattern_grey``: the root mean square of :func:`src_models.training.train.latent_grid_pattern`
  over the whole crop, in grey levels per channel (the coherent part that repeats with the grid);
* ``band_power``: the round trip's power over the real crop's in bands of spatial frequency
  (cycles/px), from 64 px Hann-windowed patches of tissue (mean grey below 215);
* ``mae``: the round trip's mean absolute error against the real crop (grey levels).

Prints and writes one JSON object.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from json_out import emit  # noqa: E402

BANDS = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.71))
GREY = np.array([0.299, 0.587, 0.114], np.float32)


def grid_peaks(rgb: np.ndarray, factor: int) -> dict:
    g = rgb.astype(np.float32) @ GREY
    power = np.abs(np.fft.fft2(g - g.mean())) ** 2
    h, w = g.shape
    out = {}
    for k in range(1, factor // 2 + 1):
        for name, (fy, fx) in (("rows", (h * k // factor, 0)), ("cols", (0, w * k // factor)),
                               ("diagonal", (h * k // factor, w * k // factor))):
            around = power[max(fy - 3, 0) : fy + 4, max(fx - 3, 0) : fx + 4]
            out[f"{name} {k}/{factor}"] = round(float(power[fy, fx] / np.median(around)), 1)
    return out


def pattern_grey(rgb: np.ndarray, factor: int) -> list[float]:
    import torch

    from src_models.training.train import latent_grid_pattern

    x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
    p = latent_grid_pattern(x, factor)[0]
    return [round(float(v), 3) for v in p.pow(2).mean(dim=(1, 2)).sqrt()]


def band_power(rgb: np.ndarray, n: int = 64, step: int = 32, tissue: float = 215.0) -> np.ndarray:
    g = rgb.astype(np.float32) @ GREY
    win = np.outer(np.hanning(n), np.hanning(n))
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None])
    total, count = np.zeros((n, n)), 0
    for y in range(0, g.shape[0] - n + 1, step):
        for x in range(0, g.shape[1] - n + 1, step):
            p = g[y : y + n, x : x + n]
            if p.mean() > tissue:
                continue
            total += np.abs(np.fft.fft2((p - p.mean()) * win)) ** 2
            count += 1
    total /= max(count, 1)
    return np.array([total[(f >= lo) & (f < hi)].mean() for lo, hi in BANDS])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["default"])
    p.add_argument("--crop", default="512x1024", help="HxW: the centre of the held-out band")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=ROOT / "out" / "decoder_grid")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)

    import torch
    from PIL import Image

    from codec_error import round_trip
    from src_models.models.loading import load_model
    from sweep_sampling import skin_heldout

    torch.set_num_threads(a.threads)
    crop = tuple(int(v) for v in a.crop.split("x"))
    folder = skin_heldout(a.work / f"heldout-{a.crop}", crop)
    real = np.asarray(Image.open(folder / "images" / "heldout.png").convert("RGB"))
    real_bands = band_power(real)
    rows = {"real": {"peaks": grid_peaks(real, 4), "pattern_grey": pattern_grey(real, 4)}}
    for spec in a.model:
        codec = load_model(spec, "cpu").codec
        f = int(codec.factor)
        rt = round_trip(codec, real[: real.shape[0] // f * f, : real.shape[1] // f * f])
        ref = real[: rt.shape[0], : rt.shape[1]]
        rows[spec] = {"peaks": grid_peaks(rt, f), "pattern_grey": pattern_grey(rt, f),
                      "band_power": {f"{lo}-{hi}": round(float(v), 3)
                                     for (lo, hi), v in zip(BANDS, band_power(rt) / real_bands)},
                      "mae": round(float(np.abs(rt.astype(np.float32) - ref).mean()), 3)}
    result = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
              "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "threads": a.threads,
                          "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
                          "load": os.getloadavg()},
              "crop": a.crop, "rows": rows}
    emit(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
