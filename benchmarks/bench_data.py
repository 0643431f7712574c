"""Annotations in, data sets out: seconds for make-dataset on the CC0 slide, for vectorising a
canvas-sized mask to GeoJSON and rasterising it back, and for writing a canvas as a pyramidal
OME-TIFF.  Prints one JSON object.

    python benchmarks/bench_data.py [--mask-side 4096] [--canvas-side 8192]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mask-side", type=int, default=4096, help="side of the procedural label mask (px)")
    p.add_argument("--canvas-side", type=int, default=8192, help="side of the canvas written as OME-TIFF (px)")
    a = p.parse_args()
    import numpy as np

    from src_models.io.annotations import labels_for, mask_to_geojson, parse_geojson, parse_class_map, rasterise
    from src_models.store.canvas import Canvas
    from src_models.data.dataset import SlideInput, make_dataset
    from src_models.data.export import export_ome_tiff
    from src_models.io.masks import procedural_mask

    slide = ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"
    geo = ROOT / "data" / "cmu_small_region" / "cmu_small_region.geojson"
    out: dict = {"machine_load_1min": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cmap = parse_class_map("Glass=1,Epidermis=2,Dermis=3")
        for name, kw in (("make_dataset_cc0_1um_tile128", {"tile": 128, "mpp": 1.0, "slide_mpp": 0.5}),
                         ("make_dataset_cc0_level0_tile512", {"tile": 512})):
            t = time.perf_counter()
            s = make_dataset([SlideInput(slide, geo)], tmp / name, cmap, exclude=[(0, 2048, 2220, 919)], **kw)
            out[name] = {"seconds": round(time.perf_counter() - t, 2), "tiles": s["tiles"], "labelled": s["labelled"],
                         "unlabelled": s["unlabelled"]}

        n = a.mask_side
        mask = procedural_mask(n, n, [1, 2, 3], seed=0)
        t = time.perf_counter()
        fc = mask_to_geojson(mask, ["unknown", "a", "b", "c"])
        t_vec = time.perf_counter() - t
        text = json.dumps(fc)
        ann = parse_geojson(json.loads(text))
        t = time.perf_counter()
        back, _ = rasterise(ann, labels_for(ann, {"a": 1, "b": 2, "c": 3}), mask.shape)
        t_ras = time.perf_counter() - t
        out["geojson_round_trip"] = {"mask_side": n, "polygons": sum(len(f.polygons) for f in ann.features),
                                     "vertices": int(sum(len(r) for f in ann.features for p in f.polygons for r in p)),
                                     "geojson_mb": round(len(text) / 1e6, 2), "vectorise_s": round(t_vec, 2),
                                     "rasterise_s": round(t_ras, 2), "identical": bool((back == mask).all())}

        side = a.canvas_side
        c = Canvas.create(tmp / "c.zarr", side, side, factor=4, latent_channels=4, region_size=1024,
                          classes=["unknown", "a"], colours=["#000000", "#ff0000"], pixel_size_um=1.0)
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
        for r in c.regions():
            y0, y1, x0, x1 = r.px(4)
            c.write_region(r, base[: y1 - y0, : x1 - x0])
            c.mark_done(r.index)
        c.close()
        for comp in ("deflate", "jpeg"):
            t = time.perf_counter()
            res = export_ome_tiff(tmp / "c.zarr", tmp / f"c_{comp}.ome.tif", compression=comp)
            out[f"ome_tiff_{comp}"] = {"canvas_side": side, "seconds": round(time.perf_counter() - t, 2),
                                        "mb": round(res["bytes"] / 1e6, 1), "levels": res["levels"]}
    out["machine_load_1min_end"] = os.getloadavg()[0]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
