"""The figure of docs/default_model.md's "Edge blending": the held-out square inpainted with and
without the edge blending, beside the real tissue, at the same scale and with no outline drawn
over the edge (an outline would hide the very step the figure is about).

    python scripts/inpaint_blend_figure.py [--model default] [--seed 0] [--out docs/inpainting_blend.png]

Top row: the square and 64 px around it (1:1); bottom row: its top-left corner, 2x nearest.
Columns: real | plain decode | blended.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "inpainting_blend.png")
    a = p.parse_args(argv)
    from PIL import Image, ImageDraw

    import bench_inpaint as bench
    import src_models.synthesis.blend as blend
    from src_models.models.loading import load_model

    model = load_model(a.model, "cpu")
    name, rgb, mpp = bench.sources(0)[0]
    shipped = blend.edge_blend
    images, seams = {}, {}
    for kind in ("plain", "blended"):
        blend.edge_blend = (lambda decoded, *args, **kwargs: decoded) if kind == "plain" else shipped
        with tempfile.TemporaryDirectory() as tmp:
            out, rect, _, _ = bench.inpaint_once(model, rgb, mpp, 256, 50, a.seed, 1, Path(tmp))
        images[kind] = out
        seams[kind] = bench.seam_and_density(out, rect, model.card.factor)["seam"]
    blend.edge_blend = shipped
    h, w = images["plain"].shape[:2]
    real = rgb[:h, :w]
    seams["real"] = bench.seam_and_density(real, rect, model.card.factor)["seam"]
    y0, y1, x0, x1 = rect
    m = 64
    panels = [("real", "real", real), ("plain decode", "plain", images["plain"]),
              ("blended", "blended", images["blended"])]
    top = [img[y0 - m : y1 + m, x0 - m : x1 + m] for _, _, img in panels]
    corner = [np.kron(img[y0 - m : y0 + 128, x0 - m : x0 + 128], np.ones((2, 2, 1), np.uint8)) for _, _, img in panels]
    side, gap, head = top[0].shape[0], 8, 22
    sheet = Image.new("RGB", (3 * side + 2 * gap, 2 * side + gap + head), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, ((title, key, _), t, c) in enumerate(zip(panels, top, corner)):
        x = i * (side + gap)
        draw.text((x + 4, 4), f"{title}: seam {seams[key]:.2f}", fill=(0, 0, 0))
        sheet.paste(Image.fromarray(np.ascontiguousarray(t)), (x, head))
        sheet.paste(Image.fromarray(np.ascontiguousarray(c)), (x, head + side + gap))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out)
    print(a.out, seams)
    return 0


if __name__ == "__main__":
    sys.exit(main())
