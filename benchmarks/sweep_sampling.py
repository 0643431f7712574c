"""Sampling defaults by measurement: sweep guidance ω, solver, steps (and η) for one model on held-out
real tissue, and write one row per setting and seed.

    python benchmarks/sweep_sampling.py --model default --heldout skin \
        --omegas 0 0.5 1 1.5 2 3 --solvers dpmpp-2m:20 dpmpp-2m:30 ddim:50:0 ddim:50:1 --seeds 0 1 2

``--omega-class 3=0`` sets one class's ω in every setting (per-class guidance; repeatable).
``--precision bf16`` runs every setting under bfloat16 autocast (the setting then names it).
A model with a guidance-distilled student runs it for the setting at its ω (the setting names it,
``distilled``) where its card makes it the default, and with ``--distilled`` also where it is opt-in,
at the guided levels (those below the limit below; all of them at 1000), the teacher's conditional pass
at the others; ``--no-distilled`` runs the model's own two passes.  ``--guidance-below T`` guides only the levels with
timestep below T (default: the card's; the setting names it where it is below 1000).

``--heldout skin`` is the CC0 slide's held-out band (rows >= 2048, labels from ``masks_from_he``);
``--heldout tumour`` the held-out bottom third of the two labelled carcinoma images in ``data/more_he``
(labels from ``masks_from_nuclei``, derived from those rows alone); ``--crop`` takes the centre of each;
``--heldout DIR`` is any folder with ``images/`` and ``masks/`` (label maps) of held-out real tissue,
such as the tumour model's (``masks_from_nuclei``'s ``heldout/``); images without a mask are used as
real tissue only.  For each setting and seed the model paints one canvas per labelled held-out image
under that image's own label map (same physical size, the model's pixel size), and every canvas
together is compared with every real image by ``src_models.evaluation.evaluate`` at ``--tile`` px
every ``--stride`` px: C2ST with its interval, KID ± error, FD, nuclei per mm² and median nuclear area
for all tissue and per class, the seam score, the dark-rim statistic along the background class, and
the sampling seconds and network calls.

The output JSON is rewritten after every row, and a rerun skips the rows it already holds, so a sweep
can be stopped and continued (also in another session).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SKIN_SLIDE = ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"
SKIN_MPP = 0.499
RIM_UM = 4.0


def skin_heldout(root: Path, crop: tuple[int, int] | None = None) -> Path:
    """The held-out band (or its centre ``crop`` of (h, w) px) as a folder with ``images/`` and ``masks/``."""
    from PIL import Image

    from src_models.data.masks_from_he import HELDOUT_FROM_ROW, derive_mask

    if (root / "masks" / "heldout.png").is_file():
        return root
    rgb = np.asarray(Image.open(SKIN_SLIDE).convert("RGB"))[HELDOUT_FROM_ROW:]
    if crop:
        h, w = min(crop[0], rgb.shape[0]), min(crop[1], rgb.shape[1])
        y0, x0 = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
        rgb = rgb[y0:y0 + h, x0:x0 + w]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    dpi = 25400 / SKIN_MPP
    Image.fromarray(rgb).save(root / "images" / "heldout.png", dpi=(dpi, dpi))
    Image.fromarray(derive_mask(rgb, pixel_um=SKIN_MPP)).save(root / "masks" / "heldout.png")
    return root


def tumour_heldout(root: Path, crop: tuple[int, int] | None = None) -> Path:
    """The held-out parts of the labelled carcinoma images (or their centre ``crop``), with their
    labels, as a folder with ``images/`` and ``masks/``."""
    from PIL import Image

    from src_models.data.masks_from_nuclei import PIXEL_UM, labelled_parts

    if (root / "masks").is_dir() and any((root / "masks").iterdir()):
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    dpi = 25400 / PIXEL_UM
    for name, _, _, rgb, labels in labelled_parts(ROOT / "data" / "more_he", PIXEL_UM, train=False):
        if crop:
            h, w = min(crop[0], rgb.shape[0]), min(crop[1], rgb.shape[1])
            y0, x0 = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
            rgb, labels = rgb[y0:y0 + h, x0:x0 + w], labels[y0:y0 + h, x0:x0 + w]
        Image.fromarray(np.ascontiguousarray(rgb)).save(root / "images" / f"{name}.png", dpi=(dpi, dpi))
        Image.fromarray(np.ascontiguousarray(labels)).save(root / "masks" / f"{name}.png")
    return root


def parse_solver(text: str) -> dict:
    """'dpmpp-2m:20' or 'ddim:50:1' (solver, steps, optional η)."""
    parts = text.split(":")
    out = {"solver": parts[0], "steps": int(parts[1]) if len(parts) > 1 else None}
    if len(parts) > 2:
        out["eta"] = float(parts[2])
    return out


def key_of(setting: dict, seed: int) -> str:
    return json.dumps({**setting, "seed": seed}, sort_keys=True)


def rim_of(paths: list[Path], background: int, tissue: list[int]) -> float | None:
    """Mean optical density of the tissue within RIM_UM of the background class, over canvases."""
    from src_models.evaluation.metrics import border_darkness
    from src_models.store.canvas import Canvas

    num = den = 0.0
    for p in paths:
        with Canvas.open(p) as c:
            rgb = c.read_rgb(0, c.height, 0, c.width)
            labels = np.asarray(c.mask[:]).repeat(c.factor, 0).repeat(c.factor, 1)
            mpp = float(c.info.get("pixel_size_um") or SKIN_MPP)
        r = border_darkness(rgb, labels, max(1, round(RIM_UM / mpp)), glass=(background,), tissue=tuple(tissue))
        if r.get("inner") is not None:
            num += r["inner"] * r["inner_px"]
            den += r["inner_px"]
    return round(num / den, 4) if den else None


def real_rim(folder: Path, mpp: float, background: int, tissue: list[int]) -> float | None:
    from PIL import Image

    from src_models.evaluation.metrics import border_darkness

    num = den = 0.0
    for m in sorted((folder / "masks").iterdir()):
        img = next((folder / "images" / (m.stem + e) for e in (".png", ".jpg", ".tif") if (folder / "images" / (m.stem + e)).is_file()), None)
        if img is None:
            continue
        rgb = np.asarray(Image.open(img).convert("RGB"))
        r = border_darkness(rgb, np.asarray(Image.open(m)), max(1, round(RIM_UM / mpp)), glass=(background,),
                            tissue=tuple(tissue))
        if r.get("inner") is not None:
            num += r["inner"] * r["inner_px"]
            den += r["inner_px"]
    return round(num / den, 4) if den else None


def summary(res: dict) -> dict:
    """The figures of one evaluation that the sweep keeps."""
    def c2st(c):
        if not c:
            return None
        return {k: c.get(k) for k in ("accuracy", "ci95", "p_value", "n_per_side", "n_effective", "cpu_capability",
                                      "torch_threads")}

    out = {k: res.get(k) for k in ("n_real", "n_synthetic", "kid", "kid_stderr", "fd", "fd_real_halves", "precision",
                                   "recall", "seam_score")}
    out["c2st"] = c2st(res.get("c2st"))
    out["nuclei_per_mm2"] = res.get("nuclei_per_mm2")
    out["nuclear_area_um2"] = res.get("nuclear_area_um2")
    out["per_class"] = {
        name: {"n_real": e["n_real"], "n_synthetic": e["n_synthetic"], "kid": e.get("kid"), "kid_stderr": e.get("kid_stderr"),
               "c2st": c2st(e.get("c2st")),
               "nuclei_per_mm2": [e["real"]["nuclei_per_mm2"], e["synthetic"]["nuclei_per_mm2"]],
               "nuclear_area_um2": [e["real"]["nuclear_area_um2"], e["synthetic"]["nuclear_area_um2"]]}
        for name, e in res.get("per_class", {}).items()
    }
    out["warnings"] = res.get("warnings")
    return out


def main(argv=None) -> int:
    from src_models.cli.common import parse_omega_class

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--heldout", default="skin",
                   help="'skin' (the CC0 band), 'tumour' (the carcinoma images' held-out thirds) or a folder with "
                        "images/ and masks/")
    p.add_argument("--heldout-mpp", type=float, default=None, help="µm/px of a --heldout folder (default: the model's)")
    p.add_argument("--omegas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    p.add_argument("--omega-class", type=parse_omega_class, action="append", default=[], metavar="K=V",
                   help="ω of class K in every setting (repeatable): per-class guidance")
    p.add_argument("--solvers", nargs="+", default=["dpmpp-2m:20"], help="SOLVER:STEPS[:ETA]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--background", type=int, default=1, help="the class whose border the rim statistic follows")
    p.add_argument("--crop", default=None, help="HxW: only the centre of each held-out image (a quicker sweep)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-distilled", action="store_true",
                   help="never run the model's guidance-distilled student (default: where the model has one by default "
                   "and the setting's ω is the one it was distilled at; the setting then names it)")
    p.add_argument("--distilled", action="store_true",
                   help="run the model's student at its ω also where its card makes it opt-in")
    p.add_argument("--guidance-below", type=int, default=None, metavar="T",
                   help="guide only the levels with timestep below T (1000: every level; default: the card's; "
                   "a setting names it where it is below 1000)")
    p.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                   help="the network's arithmetic in every setting (bf16: bfloat16 autocast; docs/cpu_speed.md)")
    p.add_argument("--no-c2st", action="store_true")
    p.add_argument("--keep", type=Path, default=None, help="keep canvases here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/sweep-<model>.json)")
    a = p.parse_args(argv)

    import torch

    from quality import make_canvas

    from src_models.evaluation import evaluate
    from src_models.synthesis.request import GUIDE_ALL, card_guidance_below, default_student, uses_student
    from src_models.models.loading import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model, "cpu")
    card = model.card
    work = a.keep or Path(tempfile.mkdtemp(prefix="sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    crop = tuple(int(v) for v in a.crop.lower().split("x")) if a.crop else None
    if a.heldout == "skin":
        real, src_mpp = skin_heldout(work / (f"heldout-{a.crop}" if crop else "heldout"), crop), SKIN_MPP
    elif a.heldout == "tumour":
        from src_models.data.masks_from_nuclei import PIXEL_UM

        real, src_mpp = tumour_heldout(work / (f"tumour-{a.crop}" if crop else "tumour"), crop), PIXEL_UM
    else:
        if crop:
            raise SystemExit("--crop applies to --heldout skin or tumour only")
        real, src_mpp = Path(a.heldout), float(a.heldout_mpp or card.pixel_size_um or 0.5)
    tissue = [c for c in range(1, len(card.classes)) if c != a.background]
    out_path = a.out or ROOT / "benchmarks" / "results" / f"sweep-{a.model}.json"
    data = json.loads(out_path.read_text()) if out_path.is_file() else {}
    rows = data.get("rows", [])
    done = {key_of(r["setting"], r["seed"]) for r in rows}
    from PIL import Image

    labelled = [(m, np.asarray(Image.open(m))) for m in sorted((real / "masks").iterdir())]
    header = {"model": a.model, "heldout": str(a.heldout), "crop": a.crop, "tile": a.tile, "stride": a.stride,
              "real_rim_od": real_rim(real, src_mpp, a.background, tissue), "rim_um": RIM_UM}
    per_class = {str(k): v for k, v in a.omega_class}
    tag = "".join(f"-c{k}w{v:g}" for k, v in sorted(per_class.items()))
    for spec in a.solvers:
        for omega in a.omegas:
            guided = a.guidance_below if a.guidance_below is not None else card_guidance_below(model.card)
            student = not a.no_distilled and (uses_student(model.card, omega, per_class) if a.distilled
                                              else default_student(model.card, omega, per_class, guided))
            setting = {**parse_solver(spec), "omega": omega, **({"omega_per_class": per_class} if per_class else {}),
                       **({"precision": a.precision} if a.precision != "float32" else {}),
                       **({"distilled": True} if student else {}),
                       **({"guidance_below": guided} if guided < GUIDE_ALL else {})}
            for seed in a.seeds:
                if key_of(setting, seed) in done:
                    continue
                paths, seconds, forwards = [], 0.0, 0
                for m, labels in labelled:
                    bf = "-bf16" if a.precision != "float32" else ""
                    gb = f"-gb{guided}" if guided < GUIDE_ALL else ""
                    gb += "-student" if student else ""
                    path = work / f"{m.stem}-{spec.replace(':', '_')}-w{omega}{tag}{bf}{gb}-s{seed}.zarr"
                    s, f = make_canvas(model, labels, path, None, seed, setting.get("steps"), None,
                                       setting.get("solver"), omega=setting.get("omega"), eta=setting.get("eta"),
                                       src_mpp=src_mpp, omega_per_class=per_class, precision=a.precision,
                                       distilled=student, guidance_below=guided)
                    paths.append(path)
                    seconds += s
                    forwards += f
                res, _ = evaluate([real], paths, tile=a.tile, stride=a.stride, seed=seed, run_c2st=not a.no_c2st,
                                  real_mpp=src_mpp)
                row = {"setting": setting, "seed": seed, "sample_seconds": round(seconds, 1), "forwards": forwards,
                       "rim_od": rim_of(paths, a.background, tissue), **summary(res),
                       "threads": torch.get_num_threads(), "load_average": round(os.getloadavg()[0], 2)}
                rows.append(row)
                machine = (f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
                           f"{torch.backends.cpu.get_cpu_capability()}")
                data = {**data, **header, "machine": machine, "rows": rows}  # keeps a note written by hand
                out_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = out_path.with_suffix(".tmp.json")
                tmp.write_text(json.dumps(data, indent=1) + "\n")
                tmp.replace(out_path)
                c = row["c2st"] or {}
                print(json.dumps({"setting": setting, "seed": seed, "c2st": c.get("accuracy"), "kid": row["kid"],
                                  "nuclei": row["nuclei_per_mm2"], "rim": row["rim_od"], "s": row["sample_seconds"]}),
                      file=sys.stderr, flush=True)
                if a.keep is None:
                    import shutil

                    for path in paths:
                        shutil.rmtree(path, ignore_errors=True)
    print(json.dumps({"rows": len(rows), "out": str(out_path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
