"""Data-set commands of ``diffinfinite``: annotations in, training tiles and exports out.

    diffinfinite make-dataset --slide S.svs --annotations A.geojson --class-map "Tumor=1,Stroma=2" --out DIR
    diffinfinite export-tiles CANVAS.zarr [CANVAS.zarr ...] --out DIR [--tile 512]
    diffinfinite export-annotations CANVAS.zarr --out MASK.geojson
    diffinfinite export-ome-tiff CANVAS.zarr --out CANVAS.ome.tif
    diffinfinite annotations-to-mask A.geojson --class-map ... --size WxH --out MASK.png

Each prints one JSON object on stdout; bad input ends with one line on stderr and exit status 2.
Only argparse is imported here at start-up; the work lives in ``src_models`` (annotations,
dataset, export).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from src_models.cli.common import EXIT_BAD_INPUT, UserError, parse_pair, parse_size, parse_xywh, run_command

HELP = {
    "make-dataset": "annotated slides (QuPath GeoJSON) to a training folder of tiles (see its --help)",
    "export-tiles": "finished canvases to image + mask tiles for a segmentation trainer",
    "export-annotations": "a canvas's mask to QuPath GeoJSON",
    "export-ome-tiff": "a canvas to a pyramidal, tiled OME-TIFF (QuPath and slide viewers open it)",
    "annotations-to-mask": "rasterise QuPath GeoJSON to a label image (for generate --mask)",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2)."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _rect(text: str) -> tuple[float, float, float, float]:
    return parse_xywh(text, float, "X,Y,W,H in level-0 px")


def _pair(text: str) -> tuple[float, float]:
    return parse_pair(text, "takes X,Y")


def _size(text: str) -> tuple[int, int]:
    return parse_size(text, positive=True)


def _labels(text: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated labels, e.g. 1,2; got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("needs at least one label")
    return out


def _annotation_options(p) -> None:
    p.add_argument("--annotation-offset", type=_pair, default=(0.0, 0.0), metavar="X,Y",
                   help="added to every coordinate after --annotation-downsample (level-0 px; default 0,0; "
                   "write negative values as --annotation-offset=-X,-Y)")
    p.add_argument("--annotation-downsample", type=float, default=1.0, metavar="D",
                   help="level-0 px per annotation unit (annotations drawn on a downsampled image; default 1)")
    p.add_argument("--overlap", choices=("last", "class-map"), default="last",
                   help="where features overlap: 'last' (default) the later feature in the file wins; "
                   "'class-map' classes listed later in --class-map win")


def build_parser(command: str) -> argparse.ArgumentParser:
    if command not in _PARSERS:
        raise KeyError(command)
    return _PARSERS[command](f"diffinfinite {command}")


def _make_dataset_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=(
        "Cut annotated slides into a training folder (images/, masks/, classes.json, manifest.csv, dataset.json) "
        "that `diffinfinite train --data DIR` reads. Tiles with at least --min-annotated of their area annotated "
        "are labelled (mask saved); other tissue tiles are unlabelled (class 0, the semi-supervised recipe)."))
    p.add_argument("--slide", type=Path, action="append", required=True,
                   help="slide (SVS, OME-TIFF, TIFF, OME-Zarr, PNG); repeat for several slides")
    p.add_argument("--annotations", action="append", default=[],
                   help="QuPath GeoJSON of the slide given at the same position ('-' for none); "
                   "omit for unlabelled slides")
    p.add_argument("--class-map", required=True, metavar="NAME=LABEL,...",
                   help="class names to labels, e.g. 'Tumor=1,Stroma=2,Necrosis=3' (names match without case)")
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    p.add_argument("--tile", type=int, default=512, help="tile side in output px (default 512)")
    p.add_argument("--stride", type=int, default=None, help="tile step in output px (default: --tile)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--level", type=int, default=None, help="read this pyramid level (default 0)")
    scale.add_argument("--mpp", type=float, default=None, help="output µm/px (box-averaged from a finer level)")
    p.add_argument("--slide-mpp", type=float, default=None, help="µm/px of level 0 when the slide does not say")
    p.add_argument("--unlabelled-fraction", type=float, default=1.0, metavar="F",
                   help="share of the unlabelled tissue tiles to keep (seeded; default 1)")
    p.add_argument("--min-tissue", type=float, default=0.25, help="tissue share an unlabelled tile needs (default 0.25)")
    p.add_argument("--min-annotated", type=float, default=0.1,
                   help="annotated share that makes a tile labelled (default 0.1)")
    p.add_argument("--exclude-rect", type=_rect, action="append", default=[], metavar="X,Y,W,H",
                   help="level-0 rectangle no tile may touch (e.g. a held-out band); repeatable, every slide")
    _annotation_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the unlabelled subsample (default 0)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="finish an interrupted run into the same folder")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing data set folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _export_tiles_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=(
        "Cut finished canvases into image + mask tiles (images/, masks/, classes.json, manifest.csv, "
        "dataset.json with provenance) for a segmentation trainer; tiles touching unfinished regions are skipped."))
    p.add_argument("canvas", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tile", type=int, default=512, help="tile side in px (default 512)")
    p.add_argument("--stride", type=int, default=None, help="tile step in px (default: --tile)")
    p.add_argument("--level", type=int, default=0, help="pyramid level to cut (default 0)")
    p.add_argument("--classes", type=_labels, default=None, metavar="1,2",
                   help="only tiles at least --min-class-fraction of these classes")
    p.add_argument("--min-class-fraction", type=float, default=0.5)
    p.add_argument("--min-tissue", type=float, default=0.0, help="only tiles with this tissue share (default 0)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true")
    mode.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def _export_annotations_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Write a canvas's class mask as QuPath GeoJSON (one MultiPolygon "
                "annotation per class, coordinates in canvas px); rasterising it again gives the same mask.")
    p.add_argument("canvas", type=Path)
    p.add_argument("--out", type=Path, required=True, help="GeoJSON file to write")
    p.add_argument("--classes", type=_labels, default=None, metavar="1,2", help="only these classes")
    p.add_argument("--include-unknown", action="store_true", help="also write class 0 (unknown)")
    p.add_argument("--overwrite", action="store_true")
    return p


def _export_ome_tiff_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Write a canvas as a pyramidal, tiled OME-TIFF (sub-resolutions in "
                "SubIFDs, µm/px and provenance in the OME-XML).")
    p.add_argument("canvas", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tile", type=int, default=256, help="TIFF tile side (multiple of 16; default 256)")
    p.add_argument("--compression", default="deflate", help="deflate (default, lossless), lzw, jpeg (quality 90), none")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def _annotations_to_mask_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Rasterise QuPath GeoJSON to a label image (PNG, TIFF or NPY); "
                "a mask pixel takes the label of the polygon under its centre.")
    p.add_argument("annotations", type=Path)
    p.add_argument("--class-map", required=True, metavar="NAME=LABEL,...")
    p.add_argument("--out", type=Path, required=True, help="label image to write (.png, .tif or .npy)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--size", type=_size, metavar="WxH", help="level-0 size the mask covers (px)")
    size.add_argument("--like", type=Path, metavar="SLIDE", help="cover this slide's level 0")
    p.add_argument("--downsample", type=float, default=1.0, help="level-0 px per mask px (default 1)")
    _annotation_options(p)
    p.add_argument("--overwrite", action="store_true")
    return p


_PARSERS = {"make-dataset": _make_dataset_parser, "export-tiles": _export_tiles_parser, "export-annotations": _export_annotations_parser, "export-ome-tiff": _export_ome_tiff_parser, "annotations-to-mask": _annotations_to_mask_parser}


def _bar(quiet: bool):
    """A progress callback (stage, done, total) drawing tqdm bars on stderr, and its closer."""
    from tqdm import tqdm

    bars: dict = {}

    def progress(stage, done, total):
        if quiet:
            return
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            unit = "B" if stage.startswith("hashing") else "tile"
            bar = bars[stage] = tqdm(total=total, desc=stage, unit=unit, unit_scale=unit == "B", file=sys.stderr,
                                     dynamic_ncols=True, disable=None)
        bar.update(done - bar.n)

    def close():
        for bar in bars.values():
            bar.close()

    return progress, close


def _warn(text: str) -> None:
    print(f"diffinfinite: warning: {text}", file=sys.stderr)


def cmd_make_dataset(a) -> dict:
    from src_models.io.annotations import parse_class_map
    from src_models.data.dataset import SlideInput, make_dataset

    from src_models.synthesis.request import check_seed

    check_seed("--seed", a.seed)
    if a.annotations and len(a.annotations) != len(a.slide):
        raise UserError(f"{len(a.slide)} --slide but {len(a.annotations)} --annotations; give one per slide "
                       "('-' for a slide without annotations)")
    for s in a.slide:
        if not s.exists():
            raise UserError(f"slide {s} does not exist")
    inputs = [SlideInput(s, None if not a.annotations or a.annotations[i] == "-" else Path(a.annotations[i]))
              for i, s in enumerate(a.slide)]
    progress, close = _bar(a.quiet)
    try:
        summary = make_dataset(
            inputs, a.out, parse_class_map(a.class_map), tile=a.tile, stride=a.stride, level=a.level, mpp=a.mpp,
            slide_mpp=a.slide_mpp, unlabelled_fraction=a.unlabelled_fraction, min_tissue=a.min_tissue,
            min_annotated=a.min_annotated, exclude=a.exclude_rect, offset=a.annotation_offset,
            downsample=a.annotation_downsample, overlap=a.overlap, seed=a.seed, resume=a.resume,
            overwrite=a.overwrite, progress=progress, warn=_warn)
    finally:
        close()
    return {"out": str(a.out), **{k: summary[k] for k in ("tiles", "labelled", "unlabelled", "background", "excluded",
                                                          "unlabelled_dropped")}}


def cmd_export_tiles(a) -> dict:
    from src_models.data.export import export_tiles

    progress, close = _bar(a.quiet)
    try:
        summary = export_tiles(a.canvas, a.out, tile=a.tile, stride=a.stride, level=a.level, classes=a.classes,
                               min_class_fraction=a.min_class_fraction, min_tissue=a.min_tissue,
                               overwrite=a.overwrite, resume=a.resume, progress=progress)
    finally:
        close()
    return {"out": str(a.out), **{k: summary[k] for k in ("tiles", "unfinished", "other_classes", "background")}}


def cmd_export_annotations(a) -> dict:
    from src_models.data.export import export_annotations

    if a.out.exists() and not a.overwrite:
        raise UserError(f"{a.out} exists; pass --overwrite to replace it")
    return export_annotations(a.canvas, a.out, classes=a.classes, include_unknown=a.include_unknown)


def cmd_export_ome_tiff(a) -> dict:
    from src_models.data.export import export_ome_tiff

    progress, close = _bar(a.quiet)
    try:
        return export_ome_tiff(a.canvas, a.out, tile=a.tile, compression=a.compression, overwrite=a.overwrite,
                               progress=progress)
    finally:
        close()


def cmd_annotations_to_mask(a) -> dict:
    import math

    import numpy as np

    from src_models.io.annotations import paint_order, labels_for, parse_class_map, rasterise, read_geojson

    if a.out.exists() and not a.overwrite:
        raise UserError(f"{a.out} exists; pass --overwrite to replace it")
    if a.out.suffix.lower() not in (".png", ".tif", ".tiff", ".npy"):
        raise UserError(f"{a.out}: write a label image as .png, .tif or .npy")
    if not (math.isfinite(a.downsample) and a.downsample > 0):
        raise UserError(f"--downsample must be a positive number, got {a.downsample}")
    class_map = parse_class_map(a.class_map)
    if a.like is not None:
        from src_models.data.dataset import open_levels

        s = open_levels(a.like)
        width, height = s.width, s.height
        s.close()
    else:
        width, height = a.size
    ann = read_geojson(a.annotations, a.annotation_offset, a.annotation_downsample)
    labels = labels_for(ann, class_map)
    wholly, partly = ann.outside(width, height)
    if len(wholly) == len(ann.features):
        raise UserError(f"{a.annotations}: every feature lies outside the {width}x{height} px area; "
                       "check --size/--like and --annotation-offset/--annotation-downsample")
    if wholly or partly:
        _warn(f"{a.annotations}: {len(wholly) + len(partly)} feature(s) reach beyond the {width}x{height} px area; "
              "the parts outside are ignored")
    shape = (max(1, int(height // a.downsample)), max(1, int(width // a.downsample)))
    mask, covered = rasterise(ann, labels, shape, (0.0, 0.0), a.downsample, paint_order(ann, class_map, a.overlap))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if a.out.suffix.lower() == ".npy":
        np.save(a.out, mask)
    elif a.out.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(a.out, mask)
    else:
        from PIL import Image

        Image.fromarray(mask).save(a.out)
    counts = np.bincount(mask.ravel(), minlength=max(class_map.values()) + 1)
    return {"mask": str(a.out), "size": [shape[1], shape[0]], "features": len(ann),
            "covered_fraction": round(float(covered.mean()), 4), "pixels_per_label": {str(k): int(v) for k, v in enumerate(counts) if v}}


FOLDER_OUTPUTS = ("make-dataset", "export-tiles")


def _check_out(name: str, a) -> None:
    """Before anything is read: the output is never the current directory, a folder above it or one
    holding an input; a file output is never an existing folder."""
    from src_models.store.base import CanvasError
    from src_models.store.safety import check_out_path, describe

    out = getattr(a, "out", None)
    if out is None:
        return
    inputs = []
    for key in ("canvas", "slide", "annotations", "like"):
        v = getattr(a, key, None)
        for item in v if isinstance(v, list) else [v]:
            if item is not None and str(item) != "-":
                inputs.append(Path(item))
    folder = name in FOLDER_OUTPUTS
    try:
        check_out_path(out, inputs, what="data set folder" if folder else "file")
    except CanvasError as e:
        raise UserError(str(e)) from None
    if not folder and out.is_dir():
        raise UserError(f"--out {out} is {describe(out)}; {name} writes a file: give a file name")


COMMANDS = {
    "make-dataset": cmd_make_dataset,
    "export-tiles": cmd_export_tiles,
    "export-annotations": cmd_export_annotations,
    "export-ome-tiff": cmd_export_ome_tiff,
    "annotations-to-mask": cmd_annotations_to_mask,
}


def main(argv: list[str] | None = None) -> int:
    """``argv`` starts with the command name (``make-dataset ...``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"diffinfinite: error: unknown data command {argv[:1]}; one of {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        a = build_parser(argv[0]).parse_args(argv[1:])
    except SystemExit as e:
        return int(e.code or 0)

    def command():
        _check_out(argv[0], a)
        print(json.dumps(COMMANDS[argv[0]](a)))
        return 0

    return run_command(command, kept="what was written is kept (run again with --resume)")


if __name__ == "__main__":
    sys.exit(main())
