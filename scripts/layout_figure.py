"""The layouts figure of docs/layouts.md: real label maps beside layouts drawn from anatomy recipes
measured on them, and the recipe's measures over many drawn layouts (median and 10th–90th
percentile) against the real ones.

    python scripts/layout_figure.py [--seeds 20] [--out docs/layouts_anatomy.png] [--json docs/layouts_anatomy.json]

Skin: the default model's card recipe against the CC0 slide's training rows (masks_from_he).
Tumour: a ``nests`` recipe measured here on the training parts of the BSD-3 ovarian carcinoma
images (masks_from_nuclei), the recipe a tumour model's card will carry.
Every layout is drawn on a canvas of 2048² image px on the mask grid (8 px a cell).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SKIN_PAL = np.array([[0, 0, 0], [232, 232, 232], [106, 45, 143], [232, 122, 176]], np.uint8)
TUMOUR_PAL = np.array([[0, 0, 0], [232, 232, 232], [240, 160, 0], [44, 160, 44], [0, 192, 224]], np.uint8)
SIDE = 2048
CELL = 8


def _fit(img: np.ndarray, side: int = 300) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(img)
    k = side / max(im.size)
    im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.Resampling.NEAREST)
    out = np.full((side, side, 3), 255, np.uint8)
    out[: im.height, : im.width] = np.asarray(im)
    return np.pad(out, ((4, 4), (4, 4), (0, 0)), constant_values=255)


def _spread(rows: list[dict], key: str, index: int | None = None) -> list[float]:
    v = np.array([r[key][index] if index is not None else r[key] for r in rows], float)
    return [round(float(x), 3) for x in np.percentile(v, [50, 10, 90])]


def skin_training_labels() -> np.ndarray:
    """The CC0 slide's training rows' label map (masks_from_he), at 0.499 µm/px."""
    from PIL import Image

    from src_models.data.masks_from_he import HELDOUT_FROM_ROW, derive_mask

    slide = np.asarray(Image.open(ROOT / "data" / "cmu_small_region" / "cmu_small_region.png").convert("RGB"))
    return derive_mask(slide[:HELDOUT_FROM_ROW], pixel_um=0.499)


def tumour_training_labels() -> list[np.ndarray]:
    """The training parts (held-out rows cut off) of the labelled BSD-3 carcinoma images (masks_from_nuclei)."""
    from src_models.data import masks_from_nuclei as mfn

    out = []
    for src in mfn.SOURCES:
        rgb, types = mfn.load_source(ROOT / "data" / "more_he", src)
        if types is None:
            continue
        labels = mfn.derive_labels(rgb, types)
        out.append(labels[: mfn.heldout_from_row(labels.shape[0])])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "layouts_anatomy.png")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "layouts_anatomy.json")
    a = p.parse_args(argv)

    from PIL import Image

    from src_models.data import masks_from_nuclei as mfn
    from src_models.models.loading import find_card
    from src_models.synthesis.anatomy import draw_recipe, measure_nests, recipe_summary
    from src_models.synthesis.layouts import layout_recipe

    card, _ = find_card("default")
    skin_recipe = layout_recipe(card)
    skin_real = skin_training_labels()
    tumour_real = tumour_training_labels()
    tumour_recipe = measure_nests(tumour_real, mfn.PIXEL_UM, background=1, nest=2, matrix=3, edge=4)

    grid = SIDE // CELL
    result = {"canvas_px": SIDE, "cell_px": CELL, "seeds": a.seeds}
    rows = []
    for name, recipe, real, pal, mpp in (("skin (default model)", skin_recipe, [skin_real], SKIN_PAL, 0.499),
                                         ("tumour (nests recipe)", tumour_recipe, tumour_real, TUMOUR_PAL, mfn.PIXEL_UM)):
        drawn = [draw_recipe(recipe, (grid, grid), mpp * CELL, seed=s) for s in range(a.seeds)]
        measures = [recipe_summary(d, recipe, mpp * CELL) for d in drawn]
        keys = ([("tissue_share", None), ("surface_share", None), ("surface_border_share", None),
                 ("surface_depth_um", 1), ("pieces", None)] if recipe["kind"] == "section" else
                [("nest_share", 0), ("nest_diameter_um", None), ("edge_depth_um", 1), ("edge_fill", None),
                 ("background_share", None)])
        result[name] = {"recipe": recipe,
                        "drawn_median_p10_p90": {f"{k}" + (f"[{i}]" if i is not None else ""): _spread(measures, k, i)
                                                 for k, i in keys}}
        tiles = [_fit(pal[r]) for r in real[:2]] + [_fit(pal[d]) for d in drawn[:4]]
        rows.append(np.concatenate(tiles, 1))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows], 0)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(a.out)
    a.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
