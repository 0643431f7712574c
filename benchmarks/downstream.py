"""Downstream utility of a shipped model: does a segmenter trained on its synthetic tiles work on real
tissue?

    python benchmarks/downstream.py --model default [--seeds 0 1 2] [--keep DIR]

The real tissue is the model's own: for the skin model (``default``), the CC0 skin slide's training
rows (rows < ``HELDOUT_FROM_ROW``, the rows the model learned from) and its held-out band (the rows
after, never trained on), label maps from ``masks_from_he``; for the tumour model, the two labelled
carcinoma images of ``data/more_he``, their top two thirds for training and their held-out bottom
thirds for testing, label maps from ``masks_from_nuclei`` (each part's from its own rows).  Tile
folders (256 px tiles):

* (a) real: the training rows' tiles with their masks;
* (b) synthetic: the model paints a canvas of each training part's size under the same label map
  (default sampling settings of its card unless ``--steps`` / ``--solver`` / ``--omega`` say
  otherwise); the same tiles are cut from it, with the same masks;
* (c) both folders together;
* control: (a) with its masks shuffled between tiles (a measure that passes this is lenient);
* test: the held-out band's tiles with their masks.

For each training set and seed, ``diffinfinite evaluate-segmentation``'s function trains the fixed
segmenter and tests it on the held-out band.  Prints one JSON object (mean IoU per set and seed,
per-class IoU, the ratio b / a) and writes it to ``benchmarks/results/downstream-<model>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SLIDE = ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"
SLIDE_MPP = 0.499


def tile_folder(rgb: np.ndarray, labels: np.ndarray, out: Path, tile: int = 256) -> int:
    from src_models.data.masks_from_he import write_training_folder

    info = write_training_folder(rgb, labels, out, tile=tile, unlabelled_every=0, keep_glass=3, seed=0)
    return info["tiles"]


def skin_parts() -> list[tuple]:
    """[(name, train rgb, train labels, test rgb, test labels)] of the CC0 skin slide."""
    from PIL import Image

    from src_models.data.masks_from_he import HELDOUT_FROM_ROW, derive_mask

    slide = np.asarray(Image.open(SLIDE).convert("RGB"))
    train_rgb, test_rgb = slide[:HELDOUT_FROM_ROW], slide[HELDOUT_FROM_ROW:]
    return [("skin", train_rgb, derive_mask(train_rgb, pixel_um=SLIDE_MPP), test_rgb,
             derive_mask(test_rgb, pixel_um=SLIDE_MPP))]


def tumour_folder(rgb: np.ndarray, labels: np.ndarray, out: Path, name: str) -> int:
    from src_models.data.masks_from_nuclei import CLASSES, COLOURS, write_tiles

    info = write_tiles(rgb, labels, out, name)
    (out / "classes.json").write_text(json.dumps({"classes": CLASSES, "colours": COLOURS}, indent=2) + "\n")
    return info["labelled"]


def _finished(path: Path) -> bool:
    from src_models.store.canvas import Canvas

    try:
        with Canvas.open(path) as c:
            _, ny, nx = c.region_grid
            return len(c.done_indices()) == ny * nx
    except Exception:  # not a canvas, or damaged: paint a new one
        return False


def synthetic_rgb(model, labels: np.ndarray, work: Path, seed: int, steps, solver, omega,
                  reuse: bool = False) -> tuple[np.ndarray, dict]:
    """The model's painting of a canvas under ``labels`` (cropped back to the label map's size)."""
    from quality import make_canvas

    from src_models.store.canvas import Canvas

    grid = model.card.factor * 8
    h, w = -(-labels.shape[0] // grid) * grid, -(-labels.shape[1] // grid) * grid
    padded = np.pad(labels, ((0, h - labels.shape[0]), (0, w - labels.shape[1])), mode="edge")
    path = work / f"synthetic-seed{seed}.zarr"
    if reuse and _finished(path):
        seconds, forwards = None, None
        print(f"reusing the finished canvas {path}", file=sys.stderr)
    else:
        seconds, forwards = make_canvas(model, padded, path, None, seed, steps, None, solver, omega=omega)
    with Canvas.open(path) as c:
        rgb = c.read_rgb(0, labels.shape[0], 0, labels.shape[1])
        settings = dict(c.settings)
    from src_models.synthesis.request import sampling_defaults

    card = sampling_defaults(model.card)  # what a setting left None (or empty) on the canvas sampled with
    return rgb, {"sample_seconds": None if seconds is None else round(seconds, 1), "forwards": forwards,
                 "settings": {k: settings.get(k)
                              for k in ("solver", "steps", "omega", "omega_per_class", "plan", "eta")},
                 "card_defaults": {**card, "omega_per_class": {str(k): v
                                                               for k, v in card["omega_per_class"].items()}}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="segmenter seeds (the canvas uses the first)")
    p.add_argument("--epochs", type=int, default=None, help="segmenter epochs (default: the protocol's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the card's)")
    p.add_argument("--solver", default=None)
    p.add_argument("--omega", type=float, default=None, help="guidance scale (default: the card's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep", type=Path, default=None, help="keep folders and canvases here")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reuse", action="store_true",
                   help="use a finished synthetic canvas already in --keep instead of painting it again")
    a = p.parse_args(argv)

    import torch

    from src_models.data.masks_from_nuclei import CLASSES as TUMOUR_CLASSES
    from src_models.evaluation.segmentation import DEFAULT_EPOCHS, evaluate_segmentation, write_outputs
    from src_models.data.masks_from_he import HELDOUT_FROM_ROW
    from src_models.models.loading import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model, "cpu")
    if model.card.classes[:4] == ["unknown", "glass", "epidermis", "dermis"]:
        tissue, parts = "skin", skin_parts()
        real_text = f"{SLIDE.name}: train rows < {HELDOUT_FROM_ROW}, test rows >= {HELDOUT_FROM_ROW}, {SLIDE_MPP} um/px"
    elif model.card.classes == TUMOUR_CLASSES:
        from src_models.data.masks_from_nuclei import labelled_parts

        tissue, parts = "tumour", labelled_parts(ROOT / "data" / "more_he")
        real_text = "data/more_he carcinoma images (histolytics 0.3.0, BSD-3): top two thirds train, bottom third test"
    else:
        raise SystemExit(f"{a.model}: this benchmark paints the skin slide's or the carcinoma images' classes; the "
                         f"model has {model.card.classes}")
    work = a.keep or Path(tempfile.mkdtemp(prefix="downstream-"))
    work.mkdir(parents=True, exist_ok=True)
    folders = {"real": work / "real", "test": work / "test", "synthetic": work / "synthetic"}
    tiles = {"real": 0, "test": 0, "synthetic": 0}
    samplings = []
    for name, train_rgb, train_lab, test_rgb, test_lab in parts:
        part_work = work if tissue == "skin" else work / name  # the skin canvas keeps its old place (--reuse)
        part_work.mkdir(parents=True, exist_ok=True)
        syn_rgb, sampling = synthetic_rgb(model, train_lab, part_work, a.seeds[0], a.steps, a.solver, a.omega,
                                          reuse=a.reuse and a.keep is not None)
        samplings.append(sampling)
        if tissue == "skin":
            tiles["real"] += tile_folder(train_rgb, train_lab, folders["real"])
            tiles["test"] += tile_folder(test_rgb, test_lab, folders["test"])
            tiles["synthetic"] += tile_folder(syn_rgb, train_lab, folders["synthetic"])
        else:
            tiles["real"] += tumour_folder(train_rgb, train_lab, folders["real"], name)
            tiles["test"] += tumour_folder(test_rgb, test_lab, folders["test"], name)
            tiles["synthetic"] += tumour_folder(syn_rgb, train_lab, folders["synthetic"], name)
    sampling = samplings[0] if len(samplings) == 1 else {
        "sample_seconds": None if any(s["sample_seconds"] is None for s in samplings)
        else round(sum(s["sample_seconds"] for s in samplings), 1),
        "forwards": None if any(s["forwards"] is None for s in samplings) else sum(s["forwards"] for s in samplings),
        "settings": samplings[0]["settings"]}
    sets = {"a_real": [folders["real"]], "b_synthetic": [folders["synthetic"]],
            "c_both": [folders["real"], folders["synthetic"]], "control_real_shuffled_masks": [folders["real"]]}
    rows = []
    for name, train in sets.items():
        for seed in a.seeds:
            t0 = time.perf_counter()
            res, extras = evaluate_segmentation(train, folders["test"], epochs=DEFAULT_EPOCHS if a.epochs is None else a.epochs, seed=seed,
                                                shuffle_masks=name.startswith("control"))
            write_outputs(work / f"seg-{name}-seed{seed}", res, extras)
            row = {"set": name, "seed": seed, "mean_iou": res["mean_iou"], "per_class_iou": res["per_class_iou"],
                   "mean_dice": res["mean_dice"], "n_train": res["n_train"], "steps": res["steps"],
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    def summary(name):
        v = np.array([r["mean_iou"] for r in rows if r["set"] == name], float)
        return {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4), "max": round(float(v.max()), 4),
                "n_seeds": len(v)}

    table = {name: summary(name) for name in sets}
    ratio = [r_b["mean_iou"] / r_a["mean_iou"] for r_a, r_b in zip(
        [r for r in rows if r["set"] == "a_real"], [r for r in rows if r["set"] == "b_synthetic"])]
    result = {
        "model": a.model, "tiles": tiles, "tile_px": 256, "sampling": sampling,
        "segmenter": {"protocol": "seg/1", "epochs": DEFAULT_EPOCHS if a.epochs is None else a.epochs},
        "real": real_text,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "mean_iou": table,
        "ratio_b_over_a": {"mean": round(float(np.mean(ratio)), 4), "min": round(float(np.min(ratio)), 4),
                           "max": round(float(np.max(ratio)), 4)},
        "runs": rows,
    }
    out = a.out or ROOT / "benchmarks" / "results" / f"downstream-{a.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
