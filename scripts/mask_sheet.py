"""Layouts drawn by a model's mask model beside real ones (``docs/mask_sheet.png``).

    python scripts/mask_sheet.py --model default --out docs/mask_sheet.png [--seeds 0 1 2]

Real: the label map ``masks_from_he`` derives from the CC0 slide, in two parts: the training rows
(0-2047, what the layout model learned from) and the held-out band (rows 2048 on, never trained
on).  Generated: layouts of the held-out band's size (2220 x 919 px at the slide's 0.499 µm/px),
one per seed, drawn the way ``make-mask`` draws them.  All in the model's class colours, with a
scale bar of 200 µm.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLIDE = ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"
MPP = 0.499


def _panel(labels: np.ndarray, colours: list[str], title: str, width: int):
    from PIL import Image, ImageDraw

    from src_models.data.masks_from_he import colourise

    img = Image.fromarray(colourise(labels, colours))
    scale = width / img.width
    img = img.resize((width, max(1, round(img.height * scale))), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (width, img.height + 22), "white")
    canvas.paste(img, (0, 22))
    d = ImageDraw.Draw(canvas)
    d.text((4, 4), title, fill="black")
    bar = round(200 / MPP * scale)  # 200 µm
    y = canvas.height - 8
    d.line([(width - bar - 8, y), (width - 8, y)], fill="black", width=3)
    return canvas


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "mask_sheet.png")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--width", type=int, default=700, help="width of each panel in px")
    a = p.parse_args(argv)

    from PIL import Image

    from src_models.models.native.mask_model import generate_layout
    from src_models.data.masks_from_he import HELDOUT_FROM_ROW, derive_mask
    from src_models.models.loading import load_model

    model = load_model(a.model, "cpu")
    colours = model.card.colours
    rgb = np.asarray(Image.open(SLIDE).convert("RGB"))
    train = derive_mask(rgb[:HELDOUT_FROM_ROW], pixel_um=MPP)
    held = derive_mask(rgb[HELDOUT_FROM_ROW:], pixel_um=MPP)
    panels = [_panel(train, colours, "real: training rows 0-2047 (what the layout model learned from)", a.width),
              _panel(held, colours, "real: held-out band (rows 2048-2966)", a.width)]
    for seed in a.seeds:
        t0 = time.perf_counter()
        lab = generate_layout(model, held.shape, seed=seed)
        dt = time.perf_counter() - t0
        panels.append(_panel(lab, colours, f"generated, seed {seed} ({held.shape[1]} x {held.shape[0]} px, {dt:.0f} s)",
                             a.width))
        print(f"seed {seed}: {dt:.1f} s", file=sys.stderr)
    sheet = Image.new("RGB", (a.width, sum(q.height for q in panels) + 6 * len(panels)), "white")
    y = 0
    for q in panels:
        sheet.paste(q, (0, y))
        y += q.height + 6
    a.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
