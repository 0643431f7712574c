"""``diffinfinite``: the command line.

    diffinfinite generate --mask MASK --out OUT.zarr [options]
    diffinfinite demo [--out DIR]
    diffinfinite train ...              (see ``diffinfinite train --help``)
    diffinfinite distil --model M --data DIR --out DIR   (a one-pass guidance-distilled student; see its --help)
    diffinfinite check-reference FILE   (conformance with the published release)
    diffinfinite convert CKPT OUT_DIR   (published checkpoint -> project model directory)
    diffinfinite import-slide SLIDE --out OUT.zarr
    diffinfinite inpaint CANVAS (--rect X,Y,W,H | --where AREA.png [--rect X,Y,W,H]) [--mask M | --label L]
    diffinfinite outpaint CANVAS --out NEW.zarr --pad T,R,B,L
    diffinfinite make-mask --out MASK.png --size WxH [--model M]
    diffinfinite evaluate --real PATH.. --synthetic PATH.. [--out DIR]   (see its --help)
    diffinfinite evaluate-segmentation --train DIR.. --test DIR [--out DIR]   (segmenter trained here, tested there)
    diffinfinite generate-many --jobs JOBS.csv|DIR --out DIR [--scheduler ADDR | --local-workers N]   (see its --help)
    diffinfinite verify CANVAS          (are the finished regions really on disk?)
    diffinfinite make-dataset | export-tiles | export-annotations | export-ome-tiff | annotations-to-mask
                                        (annotations in, data sets out: see data.py)

Bad input ends with one line on stderr and exit status 2, never a traceback (every command runs
under :func:`src_models.cli.common.run_command`).  The commands translate their arguments and call
the core's use cases (:mod:`src_models.synthesis.canvases`); they decide nothing themselves.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

from src_models.cli.common import (UserError, add_distilled_option, add_precision_option, add_run_options, check_output,
                                   check_run_args, follow_canvas, parse_pads, parse_rect, parse_size, progress_bar, resolve_request,
                                   run_and_preview, run_command)

# make-mask --layout; the same as src_models.synthesis.layouts.LAYOUT_KINDS (kept here so that the
# parser is built without importing the layout code; a test checks they agree)
LAYOUT_CHOICES = ("auto", "anatomy", "learned", "procedural")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffinfinite", description="DiffInfinite: mask-guided synthesis of large H&E images")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_editing(sub)
    _add_passthrough(sub)
    _add_model_commands(sub)
    return parser


def _add_generate(sub) -> None:
    """generate and demo."""
    g = sub.add_parser("generate", help="synthesise an OME-Zarr canvas under a label mask")
    g.add_argument("--mask", required=True, type=Path, help="label image: PNG, TIFF or NPY (one class per pixel)")
    g.add_argument("--out", required=True, type=Path, help="output canvas (.zarr directory)")
    g.add_argument("--class-map", default=None, metavar="S=T,...",
                   help="send mask label S to the model's class T, e.g. 1=2,4=3 (for masks made for other models, "
                        "such as the DiffInfinite release's grey-coded PNGs and 5/10-class label maps)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--size", type=parse_size, default=None, metavar="WxH", help="canvas size in px")
    size.add_argument("--scale", type=float, default=None, help="canvas px per mask px (default 1)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    mode.add_argument("--resume", action="store_true", help="finish the regions of OUT not done yet")
    add_run_options(g)

    d = sub.add_parser("demo", help="run the shipped default model on a built-in mask")
    d.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for demo.zarr and demo.png")
    d.add_argument("--size", type=parse_size, default=(512, 512), metavar="WxH")
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.add_argument("--model", default="default")
    add_precision_option(d)
    add_distilled_option(d)


def _add_editing(sub) -> None:
    """import-slide, inpaint, outpaint."""
    s = sub.add_parser("import-slide", help="copy a real slide (SVS, OME-TIFF, OME-Zarr) into a canvas for inpainting")
    s.add_argument("slide", type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--model", default="default")
    s.add_argument("--device", default="auto")
    s.add_argument("--region-size", type=int, default=None, metavar="PX")
    s.add_argument("--overwrite", action="store_true")
    add_precision_option(s, "the encoder's arithmetic")

    i = sub.add_parser("inpaint", help="regenerate an area of a canvas (a rectangle or any shape) with its "
                                       "surroundings as context")
    i.add_argument("canvas", type=Path)
    i.add_argument("--rect", type=parse_rect, default=None, metavar="X,Y,W,H",
                   help="rectangle in px: the area to redo, or, with --where, where the AREA image goes")
    i.add_argument("--where", type=Path, default=None, metavar="AREA.png",
                   help="the area to redo, any shape: an image (PNG, TIFF, NPY) whose nonzero pixels are redone; "
                        "the canvas's size, or resized to --rect")
    src = i.add_mutually_exclusive_group()
    src.add_argument("--mask", type=Path, default=None,
                     help="new labels for the area (resized to the rectangle, or to the AREA image's extent; with "
                          "--where written only where AREA is nonzero)")
    src.add_argument("--label", type=int, default=None, help="fill the area with one label")
    i.add_argument("--class-map", default=None, metavar="S=T,...",
                   help="send --mask label S to the model's class T, e.g. 9=2 (masks made for other models, such "
                        "as the DiffInfinite release's inpainting masks: 0 keep, another value the 10-class label "
                        "to paint; pass the same file as --where and --mask)")
    i.add_argument("--resume", action="store_true",
                   help="finish an interrupted inpaint (nothing new scheduled; the area is taken from the canvas)")
    add_run_options(i)

    o = sub.add_parser("outpaint", help="extend a canvas beyond its border into a new canvas")
    o.add_argument("canvas", type=Path)
    o.add_argument("--out", required=True, type=Path)
    o.add_argument("--pad", type=parse_pads, required=True, metavar="TOP,RIGHT,BOTTOM,LEFT", help="px to add per side")
    o.add_argument("--label", type=int, default=0, help="mask label of the new border (default 0, unknown)")
    o.add_argument("--overwrite", action="store_true")
    add_run_options(o)


def _add_passthrough(sub) -> None:
    """Commands with a parser of their own (train, evaluate, the data-set commands, generate-many):
    listed here for --help, parsed where they live."""
    t = sub.add_parser("train", help="train a codec and image model from tiles (see its --help)", add_help=False)
    t.add_argument("args", nargs=argparse.REMAINDER)
    t = sub.add_parser("distil", add_help=False,
                       help="distil a model's guided sampling into a one-pass student, a new model directory (see its --help)")
    t.add_argument("args", nargs=argparse.REMAINDER)
    e = sub.add_parser("evaluate", help="compare synthetic with real tissue (see its --help); prints JSON", add_help=False)
    e.add_argument("args", nargs=argparse.REMAINDER)
    e = sub.add_parser("evaluate-segmentation", add_help=False,
                       help="train a small segmenter on tile folders, test it on real tiles; prints JSON (see its --help)")
    e.add_argument("args", nargs=argparse.REMAINDER)
    from src_models.cli.data import HELP as DATA_HELP  # annotations in, data sets out (cli_data.py)

    for name, text in DATA_HELP.items():
        sub.add_parser(name, help=text, add_help=False).add_argument("args", nargs=argparse.REMAINDER)
    m = sub.add_parser("generate-many", help="many canvases on a dask.distributed cluster (see its --help)", add_help=False)
    m.add_argument("args", nargs=argparse.REMAINDER)


def _add_model_commands(sub) -> None:
    """check-reference, convert, verify, make-mask."""
    c = sub.add_parser("check-reference", help="compare with the release's reference vectors")
    c.add_argument("file", type=Path)
    c.add_argument("--tolerance", type=float, default=None, help="maximum relative error (default 1e-5)")
    c.add_argument("--device", default=None, help="torch device (default cpu)")
    v = sub.add_parser("convert", help="convert a published model-N.pt checkpoint to a model directory")
    v.add_argument("checkpoint", type=Path)
    v.add_argument("out", type=Path)
    v.add_argument("--vae", type=Path, default=None, help="folder of the SD-2 VAE (diffusers layout)")
    v.add_argument("--mask-checkpoint", type=Path, default=None, help="the published mask model's model-N.pt")
    v.add_argument("--classes", default=None, help="class names, comma separated (default: the release's)")

    y = sub.add_parser("verify", help="check that a canvas's finished regions are on disk as they were written")
    y.add_argument("canvas", type=Path)
    y.add_argument("--quick", action="store_true", help="only check that chunk files are present (no decoding)")
    y.add_argument("--json", action="store_true", help="print the report as one JSON object")
    y.add_argument("--accept-mask", action="store_true",
                   help="sign the canvas's mask as it is now (after you changed it outside this tool on purpose)")

    k = sub.add_parser("make-mask", help="make a label mask: from the model's anatomy recipe, with its mask diffusion "
                       "model, or procedurally")
    k.add_argument("--out", required=True, type=Path, help="label PNG to write (with a colour preview beside it)")
    k.add_argument("--size", type=parse_size, required=True, metavar="WxH")
    k.add_argument("--model", default="default")
    k.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto",
                   help="anatomy: the card's recipe (a section, nests in stroma); learned: the layout diffusion model; "
                   "procedural: smoothed random fields; auto (default): the first of these the model has")
    k.add_argument("--subtype", type=int, default=0, help="mask model condition (release: 0 adenocarcinoma, 1 squamous)")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--steps", type=int, default=None,
                   help="denoising steps of a diffusion layout (default: the card's layout model's, else 50)")
    k.add_argument("--cond-drop", type=float, default=None, metavar="P",
                   help="mask model: probability that a window is denoised without its subtype condition "
                   "(default 0.5, as the release samples; 0 always conditions)")
    add_precision_option(k, "the learned layout network's arithmetic")
    k.add_argument("--device", default="auto")


def _repair(canvas) -> None:
    """Before a resume: the core's check and repair of the finished regions, with a progress bar
    and its notices as warnings."""
    from src_models.synthesis.canvases import repair_finished

    done = len(canvas.done_indices())
    bar = progress_bar(done, "checking finished regions") if done else None

    def progress(n, total):
        bar.update(n - bar.n)

    def notice(text):
        warnings.warn(text, RuntimeWarning, stacklevel=2)

    try:
        repair_finished(canvas, progress=progress if bar else None, notice=notice)
    finally:
        if bar is not None:
            bar.close()


def _said(canvas: str, preview) -> int:
    """The two lines a run ends with: the canvas (and what was done) and its preview."""
    print(f"canvas: {canvas}")
    print(f"preview: {preview}")
    return 0


def _warn(text: str) -> None:
    warnings.warn(text, RuntimeWarning, stacklevel=2)


def _model(spec, device, preloaded):
    """The run's model, loaded after every check that needs none (the tests hook in here)."""
    from src_models.models.loading import load_for_run

    return load_for_run(spec, device, preloaded)


def _size(args, mask_shape) -> tuple[int, int]:
    """(height, width) px: ``--size``, else the mask's size times ``--scale``."""
    if args.size is not None:
        width, height = args.size
        return height, width
    scale = args.scale if args.scale is not None else 1.0
    return int(round(mask_shape[0] * scale)), int(round(mask_shape[1] * scale))


def cmd_generate(args) -> int:
    from src_models.models.device import resolve_device
    from src_models.models.loading import find_card
    from src_models.store.canvas import CanvasError, CanvasLockedError
    from src_models.store.provenance import source_entry
    from src_models.synthesis.canvases import (AUTO, CanvasMismatchError, CanvasSpec, auto_region_size, check_existing,
                                               check_spec, open_for_run, read_mask_for_model)

    # 1. the arguments alone; 2. with the model card (no weights); 3. against the canvas on
    # disk (read only); then the model loads, and only then is anything written
    check_run_args(args)
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale > 0):
        raise UserError(f"--scale must be a positive number, got {args.scale}")
    check_output(args.out, overwrite=args.overwrite, resume=args.resume, inputs=[args.mask, args.preview])
    device = resolve_device(args.device)
    card, preloaded = find_card(args.model)
    class_map = None
    if args.class_map is not None:
        from src_models.io.foreign_masks import parse_class_map

        class_map = parse_class_map(args.class_map)
    mask = read_mask_for_model(args.mask, card, class_map, warn=_warn)
    height, width = _size(args, mask.shape)
    if args.resume and args.out.exists():  # what is left open goes on as the canvas was made
        follow_canvas(args, args.out, card)
    request = resolve_request(args, card, device)
    region_size = None if args.region_size == AUTO else args.region_size
    spec = CanvasSpec(args.out, height, width, mask, request.settings(), region_size,
                      sources=None if args.resume else [source_entry(args.mask, "mask")], mask_name=str(args.mask),
                      inputs=(args.mask,))
    check_spec(card, spec)
    done = 0
    if args.resume:
        try:
            done = check_existing(spec, card).done
        except CanvasMismatchError as e:
            raise UserError(f"--resume: {e}") from None
    model = _model(args.model, device, preloaded)
    if args.region_size == AUTO and not args.resume:
        spec.region_size = auto_region_size(card, device, model.unet)
    bar = progress_bar(done, "checking finished regions") if done else None
    try:
        canvas = open_for_run(spec, card, resume=args.resume, overwrite=args.overwrite, notice=_warn,
                              progress=(lambda n, total: bar.update(n - bar.n)) if bar else None)
    except CanvasMismatchError as e:
        raise UserError(f"--resume: {e}") from None
    except CanvasError as e:
        # another run made OUT while this one loaded its model: the same words as the early check
        if args.resume or isinstance(e, CanvasLockedError) or args.overwrite or not args.out.exists():
            raise
        from src_models.store.safety import exists_message

        raise UserError(exists_message(args.out)) from None
    finally:
        if bar is not None:
            bar.close()
    with canvas:
        preview = args.preview or args.out.with_suffix(".png")
        n = run_and_preview(model, canvas, request, preview)
    return _said(f"{args.out}  ({width}x{height} px, {n} regions sampled, model {card.name}, device {device})", preview)


def cmd_demo(args) -> int:
    from src_models.cli.common import cli_option
    from src_models.io.masks import procedural_mask
    from src_models.models.device import resolve_device
    from src_models.models.loading import find_card, load_for_run
    from src_models.synthesis.canvases import check_size, mask_rgb, new_canvas, put_mask
    from src_models.synthesis.request import SynthesisRequest

    request = SynthesisRequest(model=str(args.model), steps=args.steps, seed=args.seed)
    request.check(option=cli_option)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; demo writes a folder (demo.zarr, demo.png): choose another --out")
    out = args.out / "demo.zarr"
    check_output(out, overwrite=True, option="the demo canvas")  # a re-run replaces only its own canvas
    device = resolve_device(args.device)
    card, preloaded = find_card(args.model)
    width, height = args.size
    check_size(card, height, width)
    model = load_for_run(args.model, device, preloaded)
    card = model.card
    args.out.mkdir(parents=True, exist_ok=True)
    request = SynthesisRequest(model=str(args.model), steps=args.steps, seed=args.seed, device=str(device),
                               precision=args.precision, distilled=args.distilled).resolved(card)
    # the previous demo canvas stays until the new one has its first region
    canvas = new_canvas(card, out, height, width, overwrite=True, settings=request.settings(),
                        replace_when_sampled=True)
    lh, lw = canvas.latent_shape
    mask = procedural_mask(lh, lw, list(range(1, card.num_classes)), seed=args.seed)
    put_mask(canvas, mask)
    from skimage import io

    with canvas:
        n = run_and_preview(model, canvas, request, args.out / "demo.png")
    mask_png = args.out / "demo_mask.png"
    io.imsave(mask_png, mask_rgb(mask, card.colours), check_contrast=False)
    _said(f"{out}  ({width}x{height} px, {n} regions, model {card.name}, device {device})", args.out / "demo.png")
    print(f"mask: {mask_png}  (procedural layout of classes {', '.join(card.classes[1:])})")
    return 0


def cmd_import_slide(args) -> int:
    from tqdm import tqdm

    from src_models.models.device import resolve_device
    from src_models.models.loading import load_model
    from src_models.synthesis.editing import import_slide
    from src_models.synthesis.request import check_number

    if not args.slide.exists():
        raise UserError(f"slide {args.slide} does not exist")
    check_output(args.out, overwrite=args.overwrite, inputs=[args.slide])
    check_number("--region-size", args.region_size, 1)
    model = load_model(args.model, resolve_device(args.device))
    bar = tqdm(desc="importing", unit="region", file=sys.stderr, disable=None)

    def progress(n, total):
        bar.total = total
        bar.update(n - bar.n)

    try:
        canvas, report = import_slide(args.slide, model, args.out, args.region_size, args.overwrite, progress,
                                      model_spec=str(args.model), precision=args.precision)
    finally:
        bar.close()
    canvas.close()
    cx, cy = report["cropped_px"]
    if cx or cy:
        _warn(f"the slide is {report['slide_size'][0]}x{report['slide_size'][1]} px; its last {cx} column(s) and "
              f"{cy} row(s) were left out to fit the model's grid ({report['canvas_size'][0]}x"
              f"{report['canvas_size'][1]} px canvas)")
    print(json.dumps({"canvas": str(args.out), **report}))
    return 0


def _check_canvas_model(canvas, card):
    if canvas.factor != card.factor or canvas.latent.shape[0] != int(card.codec.get("channels", 4)):
        raise UserError(f"{canvas.path} was made for a model with factor {canvas.factor} and "
                        f"{canvas.latent.shape[0]} latent channels; model {card.name!r} does not fit it")


def _read_where(args, canvas) -> tuple:
    """``--where`` as (map, origin): canvas-sized, or resized (nearest) to the checked ``--rect``."""
    from src_models.io.masks import MaskError, load_mask, resize_labels
    from src_models.synthesis.editing import check_rect

    try:
        where = load_mask(args.where)
    except MaskError as e:
        raise UserError(f"--where: {e}") from None
    h, w = where.shape
    if args.rect is not None:
        y0, y1, x0, x1 = check_rect(canvas, args.rect)
        where, origin = resize_labels(where, (y1 - y0, x1 - x0)), (y0, x0)
    elif (h, w) != (canvas.height, canvas.width):
        raise UserError(f"--where {args.where} is {w}x{h} px; without --rect it must be the canvas's size "
                        f"({canvas.width}x{canvas.height} px): give --rect X,Y,W,H to place it (resized to the rectangle)")
    else:
        origin = (0, 0)
    if not where.any():
        raise UserError(f"--where {args.where} marks nothing to redo (no nonzero pixel)")
    return where, origin


def cmd_inpaint(args) -> int:
    from src_models.io.masks import check_labels
    from src_models.models.device import resolve_device
    from src_models.models.loading import find_card, load_for_run
    from src_models.store.canvas import Canvas
    from src_models.synthesis.canvases import read_mask_for_model
    from src_models.synthesis.editing import check_rect, prepare_inpaint, prepare_redo, scheduled_area

    check_run_args(args)
    if args.resume and args.where is not None:
        raise UserError(f"--resume finishes the inpaint already scheduled on {args.canvas}: leave out --where")
    if not args.resume and args.rect is None and args.where is None:
        raise UserError("inpaint needs the area to redo: --rect X,Y,W,H or --where AREA.png")
    device = resolve_device(args.device)
    card, preloaded = find_card(args.model)
    if args.class_map is not None and args.mask is None:
        raise UserError("--class-map maps the labels of --mask: give --mask too")
    class_map = None
    if args.class_map is not None:
        from src_models.io.foreign_masks import parse_class_map

        class_map = parse_class_map(args.class_map)
    mask = read_mask_for_model(args.mask, card, class_map, warn=_warn) if args.mask else None
    if args.label is not None:
        import numpy as np

        check_labels(np.array([[args.label]]), card.classes, name=f"--label {args.label}")
    with Canvas.open(args.canvas, "r") as canvas:
        _check_canvas_model(canvas, card)
        if args.resume and not canvas.jobs():
            raise UserError(f"--resume: {args.canvas} has no unfinished inpaint")
        if args.rect is not None:
            check_rect(canvas, args.rect)  # on the grid and inside the canvas, or the nearest that are
        where = _read_where(args, canvas) if args.where is not None else None
    resolve_request(args, card, device)
    model = load_for_run(args.model, device, preloaded)
    if args.resume:  # the inpaint goes on as it was started
        follow_canvas(args, args.canvas, card)
    with Canvas.open(args.canvas, "r+") as canvas:
        if args.resume:
            _repair(canvas)
            rect = check_rect(canvas, args.rect) if args.rect is not None else scheduled_area(canvas)
        elif where is not None:
            rect = prepare_redo(canvas, where[0], origin=where[1], mask=mask, label=args.label)
        else:
            rect = prepare_inpaint(canvas, args.rect, mask=mask, label=args.label)
        request = resolve_request(args, card, device, area=rect)
        preview = args.preview or args.canvas.with_suffix(".png")
        n = run_and_preview(model, canvas, request, preview)
    what = "area" if where is not None else "rectangle"
    return _said(f"{args.canvas}  ({what} y {rect[0]}:{rect[1]}, x {rect[2]}:{rect[3]} px; {n} regions sampled)",
                 preview)


def cmd_outpaint(args) -> int:
    from src_models.models.device import resolve_device
    from src_models.models.loading import find_card, load_for_run
    from src_models.synthesis.editing import outpaint

    check_run_args(args)
    device = resolve_device(args.device)
    card, preloaded = find_card(args.model)
    request = resolve_request(args, card, device)
    if not args.canvas.exists():
        raise UserError(f"{args.canvas} does not exist")
    check_output(args.out, overwrite=args.overwrite, inputs=[args.canvas])
    model = load_for_run(args.model, device, preloaded)
    canvas = outpaint(args.canvas, model, args.out, args.pad, label=args.label, overwrite=args.overwrite)
    with canvas:
        preview = args.preview or args.out.with_suffix(".png")
        n = run_and_preview(model, canvas, request, preview)
    return _said(f"{args.out}  ({canvas.width}x{canvas.height} px; {n} regions sampled)", preview)


def cmd_verify(args) -> int:
    from src_models.store.canvas import Canvas, CanvasDamagedError
    from src_models.store.verify import verify_canvas

    if not args.canvas.exists():
        raise UserError(f"{args.canvas} does not exist")
    if args.accept_mask:
        with Canvas.open(args.canvas, "r+") as canvas:
            canvas.accept_mask()
    try:
        canvas = Canvas.open(args.canvas, "r")
        canvas.check()
    except CanvasDamagedError as e:
        if args.json:
            print(json.dumps({"canvas": str(args.canvas), "ok": False, "error": str(e)}))
        else:
            print(str(e))
        return 1
    with canvas:
        bar = progress_bar(len(canvas.done_indices()), "checking regions")

        def progress(n, total):
            bar.update(n - bar.n)

        try:
            report = verify_canvas(canvas, deep=not args.quick, progress=progress)
        finally:
            bar.close()
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.summary())
        for index, problems in sorted(report.damaged.items()):
            print(f"  region {index}: {'; '.join(problems)}")
        if report.mask_changed:
            print("  the mask is yours: restore the canvas from a backup, or accept the mask as it is now with "
                  f"`diffinfinite verify --accept-mask {args.canvas}`")
        if report.damaged or report.records or (report.mask and not report.mask_changed):
            print("  run `diffinfinite generate ... --resume` (or inpaint --resume) to repair it and generate "
                  "damaged regions again")
    return 0 if report.ok else 1


def cmd_train(args) -> int:
    from src_models.training.train import main as train_main

    return int(train_main(args.args) or 0)


def cmd_check_reference(args) -> int:
    from src_models.models.release.reference_check import main as check_main

    argv = [str(args.file)]
    if args.tolerance is not None:
        argv += ["--tolerance", str(args.tolerance)]
    if args.device is not None:
        argv += ["--device", args.device]
    return int(check_main(argv))


def cmd_convert(args) -> int:
    from src_models.models.release.checkpoint import convert_release_checkpoint

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    out = convert_release_checkpoint(args.checkpoint, args.out, vae_dir=args.vae, classes=classes,
                                     mask_checkpoint=args.mask_checkpoint)
    print(json.dumps({"model_dir": str(out)}))
    return 0


def cmd_make_mask(args) -> int:
    from skimage import io

    from src_models.models.device import resolve_device
    from src_models.synthesis.canvases import mask_rgb
    from src_models.models.loading import find_card, load_for_run
    from src_models.synthesis.layouts import ANATOMY, LEARNED, RELEASE, draw_layout, layout_source
    from src_models.synthesis.request import check_number, check_seed

    check_seed("--seed", args.seed)
    if args.steps is not None:
        check_number("--steps", args.steps, 1, 1000)
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder; make-mask writes a PNG file, e.g. --out {args.out / 'mask.png'}")
    width, height = args.size
    device = resolve_device(args.device)
    card, preloaded = find_card(args.model)
    planned = layout_source(card, args.layout)  # a kind the model lacks: one line before anything loads
    model = None  # an anatomy recipe or a procedural layout needs the card only
    if planned in (LEARNED, RELEASE):
        model = load_for_run(args.model, device, preloaded)  # a checkpoint is read once
        card = model.card
    # the diffusion layouts take minutes: a bar of their denoising levels (the others are instant)
    bar = progress_bar(None, "drawing the layout") if planned in (LEARNED, RELEASE) else None

    def on_level(info):  # one tick per denoising level, with the time left
        if bar is not None:
            bar.total = info.levels
            bar.update(info.level - bar.n)

    try:
        mask, source = draw_layout(model, (height, width), seed=args.seed, steps=args.steps, subtype=args.subtype,
                                   cond_drop=args.cond_drop, kind=args.layout, callback=on_level, card=card,
                                   precision=args.precision)
    finally:
        if bar is not None:
            bar.close()
    how = {ANATOMY: f"anatomy recipe of {card.name} ({(card.extra.get('layout_recipe') or {}).get('kind')})",
           LEARNED: f"layout diffusion model of {card.name}",
           RELEASE: f"mask diffusion model of {card.name}, subtype {args.subtype}"}.get(
        source, "procedural layout" if args.layout == "procedural" else f"procedural layout (model {card.name} has no mask model)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(args.out, mask, check_contrast=False)
    colour = args.out.with_name(args.out.stem + "_colour.png")
    io.imsave(colour, mask_rgb(mask, card.colours), check_contrast=False)
    print(json.dumps({"mask": str(args.out), "preview": str(colour), "size": [width, height], "made_by": how}))
    return 0


COMMANDS = {
    "generate": cmd_generate,
    "demo": cmd_demo,
    "import-slide": cmd_import_slide,
    "inpaint": cmd_inpaint,
    "outpaint": cmd_outpaint,
    "train": cmd_train,
    "check-reference": cmd_check_reference,
    "convert": cmd_convert,
    "make-mask": cmd_make_mask,
    "verify": cmd_verify,
}


def _data_commands():
    from src_models.cli.data import HELP

    return HELP


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # everything after "train" belongs to the training module's parser
        ns = argparse.Namespace(command="train", args=argv[1:])
    elif argv[:1] == ["distil"]:  # and after "distil" to the distillation's
        from src_models.training.distil import main as distil_main

        return int(distil_main(argv[1:]) or 0)
    elif argv[:1] == ["evaluate-segmentation"]:  # the downstream-utility measure
        from src_models.cli.evaluate import main_segmentation

        return main_segmentation(argv[1:])
    elif argv[:1] == ["evaluate"]:  # likewise for the evaluation tool's
        from src_models.cli.evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    elif argv[:1] and argv[0] in _data_commands():  # and for the data-set commands (data.py)
        from src_models.cli.data import main as data_main

        return data_main(argv)
    elif argv[:1] == ["generate-many"]:  # and the many-canvas runner's
        from src_models.cli.many import main as many_main

        return many_main(argv[1:])
    else:
        ns = build_parser().parse_args(argv)
    return run_command(COMMANDS[ns.command], ns)


if __name__ == "__main__":
    sys.exit(main())
