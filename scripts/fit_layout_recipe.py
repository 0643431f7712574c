"""Measure a model's anatomy recipe (src_models/synthesis/anatomy.py) on its training label maps and
store it in the model card (``extra.layout_recipe``), so that Generate / make-mask draw sections.

    # the default skin model: labels derived from the CC0 slide's training rows
    python scripts/fit_layout_recipe.py --card src_models/weights/default --kind section \
        --from-he data/cmu_small_region/cmu_small_region.png --rows 0:2048 --mpp 0.499 \
        --classes glass=1,surface=2,core=3
    # a tumour model: its training label maps (masks_from_nuclei's labels/*train*.png)
    python scripts/fit_layout_recipe.py --card MODEL_DIR --kind nests --labels L1.png L2.png --mpp 0.5 \
        --classes background=1,nest=2,matrix=3,edge=4

Prints the recipe; ``--dry-run`` leaves the card alone.  The card is rewritten in place (through a
temporary file), other fields untouched.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--card", type=Path, required=True, help="model directory holding card.json")
    p.add_argument("--kind", choices=("section", "nests"), required=True)
    p.add_argument("--labels", type=Path, nargs="*", default=[], help="label map PNGs")
    p.add_argument("--from-he", type=Path, default=None, help="an H&E image whose labels masks_from_he derives")
    p.add_argument("--rows", default=None, help="START:STOP rows of --from-he (the training rows)")
    p.add_argument("--mpp", type=float, required=True, help="µm per pixel of the label maps")
    p.add_argument("--classes", required=True, help="role=class pairs, e.g. glass=1,surface=2,core=3")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)

    from PIL import Image

    from src_models.synthesis.anatomy import measure_nests, measure_section

    maps = [np.asarray(Image.open(f)) for f in a.labels]
    if a.from_he is not None:
        from src_models.data.masks_from_he import derive_mask

        rgb = np.asarray(Image.open(a.from_he).convert("RGB"))
        if a.rows:
            r0, r1 = (int(v) for v in a.rows.split(":"))
            rgb = rgb[r0:r1]
        maps.append(derive_mask(rgb, pixel_um=a.mpp))
    if not maps:
        raise SystemExit("give --labels or --from-he")
    roles = {k: int(v) for k, v in (kv.split("=") for kv in a.classes.split(","))}
    recipe = (measure_section if a.kind == "section" else measure_nests)(maps, a.mpp, **roles)
    sources = [str(f) for f in a.labels] + ([f"{a.from_he} rows {a.rows or 'all'} (masks_from_he)"] if a.from_he else [])
    recipe["measured_on"] = sources
    recipe["mpp"] = a.mpp
    print(json.dumps(recipe))
    if not a.dry_run:
        card_path = a.card / "card.json"
        card = json.loads(card_path.read_text())
        card.setdefault("extra", {})["layout_recipe"] = recipe
        tmp = card_path.with_name(card_path.name + ".tmp")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp, card_path)
        print(f"written to {card_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
