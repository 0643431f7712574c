"""Issue 19, item 2: the skin training folder plus carcinoma tiles from data/more_he as unlabelled (class 0) tiles.

Copies DATA (images/, masks/, classes.json: the output of masks_from_he) into OUT and adds N tiles, drawn
with a seeded generator, of EXTRA/images (the training split of masks_from_nuclei: the top two thirds of each more_he
image) without its mask, so the trainer sees it as class 0.  Refuses to write into an existing folder.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="out/v2_data", help="the skin training folder (masks_from_he --out)")
    p.add_argument("--extra", default="out/tumour_data/train",
                   help="the more_he training split (masks_from_nuclei --out, its train/ folder)")
    p.add_argument("--n", type=int, default=20, help="extra tiles to add (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    p.add_argument("--out", required=True, help="new folder to write")
    a = p.parse_args(argv)
    data, extra, out = Path(a.data), Path(a.extra), Path(a.out)
    if out.exists():
        print(f"{out} exists; choose a new folder", file=sys.stderr)
        return 2
    if a.n < 1:
        print("--n must be at least 1", file=sys.stderr)
        return 2
    src = sorted(p for p in (extra / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif"))
    own = {p.name for p in (data / "images").iterdir()}
    picked = sorted(random.Random(a.seed).sample(src, min(a.n, len(src))))
    clash = [p.name for p in picked if p.name in own]
    if clash:
        print(f"tile names in both folders: {clash[:3]}", file=sys.stderr)
        return 2
    shutil.copytree(data, out)
    for t in picked:
        shutil.copy2(t, out / "images" / t.name)
    n_img = len(list((out / "images").iterdir()))
    n_mask = len(list((out / "masks").iterdir()))
    print(json.dumps({"out": str(out), "tiles": n_img, "labelled": n_mask, "extra_unlabelled": len(picked),
                      "extra": [t.name for t in picked]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
