"""A picture sheet for a sampling sweep: the real held-out crop beside canvases the sweep kept
(``benchmarks/sweep_sampling.py --keep DIR``), the same window of each at full resolution.

    python scripts/sweep_sheet.py out/sweep/canvases --canvases ddim_50_1-w1.0-s0 ddim_50_1-w3.0-s0 \
        dpmpp-2m_20-w1.0-s0 --window 0,0,384,384 --out docs/sweep_default_sheet.png
    # the tumour model's sweep (--heldout tumour --crop 384x768 --keep out/sweep_tumour): one held-out image's canvases
    python scripts/sweep_sheet.py out/sweep_tumour --prefix hgsc_nest \
        --real out/sweep_tumour/tumour-384x768/images/hgsc_nest.png --canvases ddim_50_1-w0.0-s0 ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from src_models.store.canvas import Canvas

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("keep", type=Path, help="the sweep's --keep folder")
    p.add_argument("--canvases", nargs="+", required=True, help="canvas names without the prefix and '.zarr'")
    p.add_argument("--prefix", default="heldout", help="the held-out image's name that starts each canvas's name")
    p.add_argument("--real", type=Path, default=None,
                   help="the real held-out image (default: the skin sweep's heldout-*/images/heldout.png)")
    p.add_argument("--window", default="0,0,384,384", help="Y,X,H,W in px")
    p.add_argument("--mask", type=Path, default=None, help="the held-out image's label map, shown first in --model's colours")
    p.add_argument("--model", default="default", help="whose class colours draw --mask")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    y0, x0, h, w = (int(v) for v in a.window.split(","))
    reals = [a.real] if a.real else sorted(a.keep.glob("heldout-*/images/heldout.png"))
    if not reals:
        raise SystemExit(f"{a.keep} holds no held-out crop (heldout-*/images/heldout.png)")
    tiles = [("real (held-out rows)", np.asarray(Image.open(reals[0]).convert("RGB"))[y0:y0 + h, x0:x0 + w])]
    if a.mask:
        from src_models.io.colours import hex_rgb
        from src_models.models.loading import find_card

        card, _ = find_card(a.model)
        lut = np.array([hex_rgb(c) for c in card.colours], np.uint8)
        tiles.insert(0, ("label map", lut[np.asarray(Image.open(a.mask))[y0:y0 + h, x0:x0 + w]]))
    for name in a.canvases:
        with Canvas.open(a.keep / f"{a.prefix}-{name}.zarr") as c:
            tiles.append((name, c.read_rgb(y0, y0 + h, x0, x0 + w)))
    gap, head = 8, 22
    sheet = Image.new("RGB", (len(tiles) * (w + gap) - gap, h + head), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, tile) in enumerate(tiles):
        sheet.paste(Image.fromarray(np.ascontiguousarray(tile)), (i * (w + gap), head))
        draw.text((i * (w + gap) + 4, 5), name, fill="black")
    sheet.save(a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
