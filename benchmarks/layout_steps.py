"""How many denoising steps the learned layout model needs: layouts drawn at several step counts
from the same seeds, measured with the anatomy recipe's measures (docs/layouts.md) and two generic
ones, against the card's 50 steps and the real label maps.

    python benchmarks/layout_steps.py --models default tumour --settings ddim:50:1 ddim:20:1 dpmpp-2m:10 \
        --seeds 0 1 2 3 4 5 6 7 --out benchmarks/results/layout-steps.json --sheet docs/layout_steps.png

A setting is SOLVER:STEPS[:ETA][:bf16] (η for DDIM only; without it the solver's own default; ``bf16``:
the layout network under bfloat16 autocast, e.g. ``ddim:20:1 ddim:20:1:bf16`` for what bf16 changes).

Every layout covers a 2048² px image on the mask grid (8 px a cell), as ``scripts/layout_figure.py``
draws the recipe's.  Per layout: the recipe's measures (``measure_section`` for the skin model,
``measure_nests`` for the tumour model), each class's share, the class-border length per mm² of image
(how broken up the layout is: salt and pepper scores high), the layout network's calls and CPU seconds,
and the share of cells that agree with the same seed's layout at the first setting given.
The summary gives each measure's mean with its 95 % t interval over the seeds, and the mean paired
difference from the first setting with its interval.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

from layout_figure import (CELL, SIDE, SKIN_PAL, TUMOUR_PAL,  # noqa: E402  (the layouts figure's canvas, colours, real maps)
                           skin_training_labels, tumour_training_labels)

PALETTES = {"default": SKIN_PAL, "tumour": TUMOUR_PAL}


def border_per_mm2(labels: np.ndarray, px_um: float) -> float:
    """Length of class borders (µm, between 4-neighbours) per mm² of the layout."""
    edges = int((labels[1:] != labels[:-1]).sum() + (labels[:, 1:] != labels[:, :-1]).sum())
    area_mm2 = labels.size * (px_um / 1000.0) ** 2
    return edges * px_um / area_mm2


def measures(labels: np.ndarray, recipe: dict, px_um: float, num_classes: int) -> dict:
    """The card recipe's own measures (``recipe_summary``, with the recipe's class indices), each
    class's share and the border length."""
    from src_models.synthesis.anatomy import recipe_summary

    r = recipe_summary(labels, recipe, px_um)
    if recipe["kind"] == "section":
        out = dict(tissue_share=r["tissue_share"], surface_share=r["surface_share"],
                   surface_border_share=r["surface_border_share"], surface_depth_um=r["surface_depth_um"][1],
                   pieces=r["pieces"])
    else:
        out = dict(nest_share=r["nest_share"][0], nest_diameter_um=r["nest_diameter_um"],
                   edge_depth_um_p90=r["edge_depth_um"][1], edge_fill=r["edge_fill"],
                   background_share=r["background_share"])
    for c in range(1, num_classes):
        out[f"share_{c}"] = round(float((labels == c).mean()), 4)
    out["border_mm_per_mm2"] = round(border_per_mm2(labels, px_um) / 1000.0, 2)
    return out


def real_measures(card) -> list[dict]:
    """The same measures on the real training label maps (held-out parts left out), on the mask grid."""
    from src_models.synthesis.layouts import layout_recipe

    px = float(card.pixel_size_um)
    maps = [skin_training_labels()] if layout_recipe(card)["kind"] == "section" else tumour_training_labels()
    # on the layouts' grid: one label a cell, taken at the cell's centre
    return [dict(measures(m[CELL // 2::CELL, CELL // 2::CELL], layout_recipe(card), px * CELL, card.num_classes),
                 shape=list(m.shape)) for m in maps]


def parse_setting(text: str) -> tuple[str, int, float | None, str]:
    """(solver, steps, η or None, precision) of SOLVER:STEPS[:ETA][:bf16]."""
    parts = text.split(":")
    precision = "float32"
    if len(parts) > 2 and parts[-1] == "bf16":
        precision, parts = "bf16", parts[:-1]
    if len(parts) not in (2, 3):
        raise SystemExit(f"a setting is SOLVER:STEPS[:ETA][:bf16], got {text!r}")
    return parts[0], int(parts[1]), (float(parts[2]) if len(parts) == 3 else None), precision


def summarise(rows: list[dict], base: str) -> dict:
    from sweep_report import mean_ci

    out: dict = {}
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        first = {r["seed"]: r for r in mine if r["setting"] == base}
        out[model] = {}
        for setting in dict.fromkeys(r["setting"] for r in mine):
            group = [r for r in mine if r["setting"] == setting]
            entry = {}
            for key in group[0]["measures"]:
                m, half, n = mean_ci([r["measures"][key] for r in group])
                d, dhalf, _ = mean_ci([r["measures"][key] - first[r["seed"]]["measures"][key]
                                       for r in group if r["seed"] in first])
                entry[key] = {"mean": m, "ci95": half, "n": n, "diff_from_base": d, "diff_ci95": dhalf}
            for key in ("calls", "cpu_seconds", "agreement_with_base"):
                m, half, n = mean_ci([r[key] for r in group])
                entry[key] = {"mean": m, "ci95": half, "n": n}
            out[model][setting] = entry
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["default", "tumour"])
    p.add_argument("--settings", nargs="+", default=["ddim:50:1", "ddim:20:1", "ddim:10:1"],
                   help="SOLVER:STEPS[:ETA]; the first is the base the others are compared with")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sheet", type=Path, help="PNG: the first four seeds' layouts, one row per model and setting")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from src_models.models.loading import load_model
    from src_models.models.native.mask_model import generate_layout

    from src_models.synthesis.layouts import layout_recipe

    load_before = os.getloadavg()
    rows, layouts, real = [], {}, {}
    for name in a.models:
        model = load_model(name)
        recipe = layout_recipe(model.card)
        if recipe is None:
            raise SystemExit(f"model {name}: its card has no anatomy recipe to measure layouts with")
        real[name] = real_measures(model.card)
        calls = [0]
        hook = model.mask_unet.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        px_um = float(model.card.pixel_size_um) * CELL
        for seed in a.seeds:
            base = None
            for setting in a.settings:
                solver, steps, eta, precision = parse_setting(setting)
                calls[0] = 0
                t0 = time.process_time()
                labels = generate_layout(model, (SIDE // CELL, SIDE // CELL), seed=seed, steps=steps,
                                         image_px=(SIDE, SIDE), solver=solver, eta=eta, precision=precision)
                cpu = time.process_time() - t0
                base = labels if base is None else base
                row = {"model": name, "setting": setting, "seed": seed, "calls": calls[0], "cpu_seconds": round(cpu, 2),
                       "agreement_with_base": round(float((labels == base).mean()), 4),
                       "measures": measures(labels, recipe, px_um, model.card.num_classes)}
                rows.append(row)
                layouts[(name, setting, seed)] = labels
                print(json.dumps(row), flush=True)
        hook.remove()

    result = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": a.threads,
                    "torch": torch.__version__, "load_before": load_before},
        "canvas_px": SIDE, "cell_px": CELL, "base": a.settings[0],
        "real": real,
        "rows": rows, "summary": summarise(rows, a.settings[0]),
    }
    result["machine"]["load_after"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    if a.sheet:
        from PIL import Image

        from layout_figure import _fit as fit_tile

        lines = []
        for name in a.models:
            for setting in a.settings:
                tiles = [fit_tile(PALETTES[name][layouts[(name, setting, s)]]) for s in a.seeds[:4]]
                lines.append(np.concatenate(tiles, 1))
        Image.fromarray(np.concatenate(lines, 0)).save(a.sheet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
