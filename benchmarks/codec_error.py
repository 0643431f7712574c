"""How faithfully a model's codec carries real tissue: encode then decode images (in one piece where the
codec's budget allows, as regions are) and compare the pixels.

    python benchmarks/codec_error.py --model default tumour --images out/sweep_tumour/tumour-384x768/images/*.png

Prints one JSON object: per model and image, the mean absolute error in grey levels (0-255, over all
pixels and channels) and the mean RGB of the real and of the decoded image (a codec that washes out a
stain shows it there first).
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


def round_trip(codec, rgb: np.ndarray) -> np.ndarray:
    import torch

    from src_models.models.codec import decode_latent, encode_rgb

    return decode_latent(codec, torch.from_numpy(encode_rgb(codec, rgb, "cpu")))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["default"])
    p.add_argument("--images", type=Path, nargs="+", required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch
    from PIL import Image

    from src_models.models.loading import load_model

    torch.set_num_threads(a.threads)
    rows = []
    for spec in a.model:
        model = load_model(spec, "cpu")
        f = model.card.factor
        for path in a.images:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            rgb = rgb[: rgb.shape[0] // f * f, : rgb.shape[1] // f * f]
            out = round_trip(model.codec, rgb)
            rows.append({"model": spec, "image": str(path), "px": list(rgb.shape[:2]),
                         "mae": round(float(np.abs(out.astype(np.float64) - rgb).mean()), 2),
                         "mean_rgb_real": [round(float(v), 1) for v in rgb.reshape(-1, 3).mean(0)],
                         "mean_rgb_decoded": [round(float(v), 1) for v in out.reshape(-1, 3).mean(0)]})
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
                                 f"{a.threads} threads", "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
