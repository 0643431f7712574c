"""The tumour model's derived labels over the H&E they come from (``docs/tumour_labels.png``).

    python scripts/tumour_labels_figure.py [--out docs/tumour_labels.png] [--width 640]
                                           [--detail-out docs/tumour_labels_detail.png]

One panel per image of ``data/more_he``: the H&E with the label map that
``python -m src_models.data.masks_from_nuclei`` derives (a light fill in the class colour, unknown
darkened, the class borders drawn), the training rows and the held-out bottom third labelled
separately as the command does, the held-out line dashed, and a 100 µm scale bar; all panels at
the same scale.  The tiatoolbox image has no nuclei types: it is shown without labels (all of it
trains as class 0).  The detail is a 1200 x 600 px part of the nest image at its own resolution
(0.5 µm/px) across the held-out line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import src_models.data.masks_from_nuclei as M  # noqa: E402

DATA = ROOT / "data" / "more_he"
TITLES = {
    "hgsc_nest": "histolytics hgsc_nest (ovarian carcinoma nest)",
    "hgsc_stromal": "histolytics hgsc_stromal (carcinoma stroma)",
    "tia_target": "tiatoolbox target (no types: class 0)",
}


def overlay(rgb: np.ndarray, labels: np.ndarray | None, fill: float = 0.28, unknown: float = 0.5,
            border: int = 1) -> np.ndarray:
    """The H&E with a light fill of each class colour, unknown darkened, and the class borders
    (``border`` px to each side of a class change)."""
    if labels is None:
        return rgb.copy()
    colour = M.colourise(labels).astype(np.float32)
    a = np.where(labels == M.UNKNOWN, unknown, fill)[..., None]
    out = rgb.astype(np.float32) * (1 - a) + colour * a
    edge = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    if border > 1:
        from scipy.ndimage import binary_dilation

        edge = binary_dilation(edge, iterations=border - 1)
    out[edge] = np.where(labels[edge, None] == M.UNKNOWN, 255.0, colour[edge])
    return out.astype(np.uint8)


def labelled_image(src: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """The image and its label map, the training rows and the held-out rows derived separately."""
    rgb, types = M.load_source(DATA, src)
    if types is None:
        return rgb, None
    cut = src["heldout_from_row"]
    labels = np.concatenate([M.derive_labels(rgb[:cut], types[:cut]), M.derive_labels(rgb[cut:], types[cut:])])
    return rgb, labels


def panel(rgb, labels, cut: int, title: str, scale: float):
    from PIL import Image, ImageDraw, ImageFont

    # the overlay is drawn after the resize, so that its borders keep their width
    width = round(rgb.shape[1] * scale)
    img = Image.fromarray(rgb).resize((width, round(rgb.shape[0] * scale)), Image.Resampling.LANCZOS)
    if labels is not None:
        small = np.asarray(Image.fromarray(labels).resize(img.size, Image.Resampling.NEAREST))
        img = Image.fromarray(overlay(np.asarray(img), small, border=2))
    font = ImageFont.load_default(size=15)
    canvas = Image.new("RGB", (width, img.height + 26), "white")
    canvas.paste(img, (0, 26))
    d = ImageDraw.Draw(canvas)
    d.text((4, 5), title, fill="black", font=font)
    y = 26 + round(cut * scale)
    for x in range(0, width, 14):  # dashed held-out line, black under white
        d.line([(x, y), (min(width, x + 8), y)], fill="black", width=4)
        d.line([(x, y), (min(width, x + 8), y)], fill="white", width=2)
    d.rectangle([4, y + 4, 160, y + 24], fill="white")
    d.text((8, y + 6), "held out below", fill="black", font=font)
    d.rectangle([4, y - 24, 160, y - 4], fill="white")
    d.text((8, y - 22), "training above", fill="black", font=font)
    bar = round(100 / M.PIXEL_UM * scale)  # 100 µm
    yb = canvas.height - 12
    d.rectangle([width - bar - 12, yb - 20, width - 4, yb + 8], fill="white")
    d.line([(width - bar - 8, yb), (width - 8, yb)], fill="black", width=4)
    d.text((width - bar - 8, yb - 19), "100 um", fill="black", font=font)
    return canvas


def legend(width: int):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=15)
    canvas = Image.new("RGB", (width, 30), "white")
    d = ImageDraw.Draw(canvas)
    x = 6
    for name, colour in zip(M.CLASSES, M.COLOURS):
        d.rectangle([x, 7, x + 18, 25], fill=colour, outline="black")
        d.text((x + 24, 8), f"{M.CLASSES.index(name)} {name}", fill="black", font=font)
        x += 34 + int(d.textlength(f"0 {name}", font=font))
    d.text((x + 10, 8), f"labels derived at {M.PIXEL_UM} um/px; training rows and held-out third labelled separately; all panels at the same scale",
           fill="black", font=font)
    return canvas


def main(argv=None) -> int:
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "tumour_labels.png"))
    p.add_argument("--width", type=int, default=640, help="width in px of a 1500 px image's panel (default 640)")
    p.add_argument("--detail-out", default=str(ROOT / "docs" / "tumour_labels_detail.png"),
                   help="the full-resolution detail ('' for none)")
    a = p.parse_args(argv)
    panels, full = [], {}
    scale = a.width / 1500  # the same physical scale for every image
    for src in M.SOURCES:
        rgb, labels = labelled_image(src)
        full[src["name"]] = (rgb, labels)
        panels.append(panel(rgb, labels, src["heldout_from_row"], TITLES[src["name"]], scale))
    gap = 8
    height = max(pn.height for pn in panels)
    total = sum(pn.width for pn in panels) + (len(panels) - 1) * gap
    sheet = Image.new("RGB", (total, height + 30), "white")
    x = 0
    for pn in panels:
        sheet.paste(pn, (x, 0))
        x += pn.width + gap
    sheet.paste(legend(total), (0, height))
    # an adaptive palette keeps the PNG small; the H&E keeps its look at this size
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(a.out, optimize=True)
    print(f"wrote {a.out} ({Path(a.out).stat().st_size / 1e6:.2f} MB)")
    if a.detail_out:
        rgb, labels = full["hgsc_nest"]
        y0, y1, x0, x1 = 700, 1300, 150, 1350  # across the held-out line: nest, infiltrate, stroma
        det = overlay(rgb[y0:y1, x0:x1], labels[y0:y1, x0:x1], border=2)
        img = Image.fromarray(det)
        from PIL import ImageDraw

        d = ImageDraw.Draw(img)
        y = M.SOURCES[0]["heldout_from_row"] - y0
        for x in range(0, img.width, 14):
            d.line([(x, y), (min(img.width, x + 8), y)], fill="black", width=4)
            d.line([(x, y), (min(img.width, x + 8), y)], fill="white", width=2)
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(a.detail_out, optimize=True)
        print(f"wrote {a.detail_out} ({Path(a.detail_out).stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
