"""``diffinfinite``: the command line.

    diffinfinite generate --mask MASK --out OUT.zarr [options]
    diffinfinite demo [--out DIR]
    diffinfinite train ...              (see ``diffinfinite train --help``)
    diffinfinite check-reference FILE   (conformance with the published release)
    diffinfinite convert CKPT OUT_DIR   (published checkpoint -> project model directory)
    diffinfinite import-slide SLIDE --out OUT.zarr
    diffinfinite inpaint CANVAS --rect X,Y,W,H [--mask M | --label L]
    diffinfinite outpaint CANVAS --out NEW.zarr --pad T,R,B,L
    diffinfinite make-mask --out MASK.png --size WxH [--model M]
    diffinfinite evaluate --real PATH.. --synthetic PATH.. [--out DIR]   (see its --help)
    diffinfinite evaluate-segmentation --train DIR.. --test DIR [--out DIR]   (segmenter trained here, tested there)
    diffinfinite generate-many --jobs JOBS.csv|DIR --out DIR [--scheduler ADDR | --local-workers N]   (see its --help)
    diffinfinite verify CANVAS          (are the finished regions really on disk?)
    diffinfinite make-dataset | export-tiles | export-annotations | export-ome-tiff | annotations-to-mask
                                        (annotations in, data sets out: see cli_data.py)

Bad input ends with one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import warnings
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it
MAX_STEPS = 1000  # the diffusion schedule's training steps


class UserError(Exception):
    pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``systemctl stop``, ``kill``): handled like Ctrl+C."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 2048x1024 (width x height), got {text!r}") from None
    return w, h


def _parse_omega_class(text: str) -> tuple[int, float]:
    try:
        k, v = text.split("=")
        return int(k), float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--omega-class takes LABEL=OMEGA, e.g. 2=6, got {text!r}") from None


def _parse_centre(text: str) -> tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--centre takes Y,X in pixels, got {text!r}") from None
    return y, x


def _parse_rect(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rect takes X,Y,W,H in px, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"--rect needs a positive width and height, got {text!r}")
    return y, y + h, x, x + w


def _parse_pads(text: str) -> tuple[int, int, int, int]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"--pad takes TOP,RIGHT,BOTTOM,LEFT in px, got {text!r}")
    return vals


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from src_models.request import PLANS, SOLVERS  # numpy only: no torch at start-up

    p.add_argument("--model", default="default", help="built-in name (default, tiny-test) or a model directory")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising levels (default: the model card's for ddim, the solver's for others)")
    p.add_argument("--omega", type=float, default=None, help="guidance ω for every class (scale = ω + 1; default: the card's)")
    p.add_argument("--omega-class", type=_parse_omega_class, action="append", default=[], metavar="LABEL=OMEGA",
                   help="ω for one class, repeatable")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM η (default 1 = stochastic, as the release; 0 = deterministic); dpmpp-2m takes 0 only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--plan", default=None, metavar="|".join(PLANS),
                   help=("patch order: " + "; ".join(f"{k}: {v.description}" for k, v in PLANS.items())
                         + " (default: the model's)").replace("%", "%%"))
    p.add_argument("--solver", default="ddim", metavar="|".join(SOLVERS),
                   help="how a level's noise estimate moves the latents: "
                   + "; ".join(f"{k}: {v.description}" for k, v in SOLVERS.items()) + " (default ddim)")
    p.add_argument("--resample", type=int, default=1, metavar="U",
                   help="where a region has finished or real surroundings (inpaint, outpaint, later regions): run "
                   "each level U times, re-noised in between, so new tissue continues the old (RePaint; U x the "
                   "network calls there; ddim only; default 1)")
    p.add_argument("--sweep", action="store_true",
                   help="sample all regions together, level by level over the whole canvas, latent state on disk "
                   "(resumable at the last finished level); default: region by region")
    p.add_argument("--schedule", default=None, help=argparse.SUPPRESS)  # deprecated name of --plan
    p.add_argument("--region-size", type=int, default=None, metavar="PX", help="region side in px (default: 8 windows)")
    p.add_argument("--max-batch", type=int, default=None, help="network batch rows per call (default: from the device's memory)")
    p.add_argument("--no-fast", dest="fast", action="store_false",
                   help="call the network as it is (no channels_last, no fp16 autocast on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network for the window size (CUDA)")
    p.add_argument("--centre", type=_parse_centre, default=None, metavar="Y,X", help="regions nearest this point go first")
    p.add_argument("--preview", type=Path, default=None, help="PNG preview path (default: OUT with .png)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffinfinite", description="DiffInfinite: mask-guided synthesis of large H&E images")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="synthesise an OME-Zarr canvas under a label mask")
    g.add_argument("--mask", required=True, type=Path, help="label image: PNG, TIFF or NPY (one class per pixel)")
    g.add_argument("--out", required=True, type=Path, help="output canvas (.zarr directory)")
    g.add_argument("--class-map", default=None, metavar="S=T,...",
                   help="send mask label S to the model's class T, e.g. 1=2,4=3 (for masks made for other models, "
                        "such as the DiffInfinite release's grey-coded PNGs and 5/10-class label maps)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--size", type=_parse_size, default=None, metavar="WxH", help="canvas size in px")
    size.add_argument("--scale", type=float, default=None, help="canvas px per mask px (default 1)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    mode.add_argument("--resume", action="store_true", help="finish the regions of OUT not done yet")
    _add_run_options(g)

    d = sub.add_parser("demo", help="run the shipped default model on a built-in mask")
    d.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for demo.zarr and demo.png")
    d.add_argument("--size", type=_parse_size, default=(512, 512), metavar="WxH")
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.add_argument("--model", default="default")

    s = sub.add_parser("import-slide", help="copy a real slide (SVS, OME-TIFF, OME-Zarr) into a canvas for inpainting")
    s.add_argument("slide", type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--model", default="default")
    s.add_argument("--device", default="auto")
    s.add_argument("--region-size", type=int, default=None, metavar="PX")
    s.add_argument("--overwrite", action="store_true")

    i = sub.add_parser("inpaint", help="regenerate a rectangle of a canvas with its surroundings as context")
    i.add_argument("canvas", type=Path)
    i.add_argument("--rect", type=_parse_rect, required=True, metavar="X,Y,W,H", help="rectangle in px")
    src = i.add_mutually_exclusive_group()
    src.add_argument("--mask", type=Path, default=None, help="new labels for the rectangle (resized to it)")
    src.add_argument("--label", type=int, default=None, help="fill the rectangle with one label")
    i.add_argument("--resume", action="store_true", help="finish an interrupted inpaint (no new rectangle)")
    _add_run_options(i)

    o = sub.add_parser("outpaint", help="extend a canvas beyond its border into a new canvas")
    o.add_argument("canvas", type=Path)
    o.add_argument("--out", required=True, type=Path)
    o.add_argument("--pad", type=_parse_pads, required=True, metavar="TOP,RIGHT,BOTTOM,LEFT", help="px to add per side")
    o.add_argument("--label", type=int, default=0, help="mask label of the new border (default 0, unknown)")
    o.add_argument("--overwrite", action="store_true")
    _add_run_options(o)

    t = sub.add_parser("train", help="train a codec and image model from tiles (see its --help)", add_help=False)
    t.add_argument("args", nargs=argparse.REMAINDER)
    e = sub.add_parser("evaluate", help="compare synthetic with real tissue (see its --help); prints JSON", add_help=False)
    e.add_argument("args", nargs=argparse.REMAINDER)
    e = sub.add_parser("evaluate-segmentation", add_help=False,
                       help="train a small segmenter on tile folders, test it on real tiles; prints JSON (see its --help)")
    e.add_argument("args", nargs=argparse.REMAINDER)
    from .cli_data import HELP as DATA_HELP  # annotations in, data sets out (cli_data.py)

    for name, text in DATA_HELP.items():
        sub.add_parser(name, help=text, add_help=False).add_argument("args", nargs=argparse.REMAINDER)
    m = sub.add_parser("generate-many", help="many canvases on a dask.distributed cluster (see its --help)", add_help=False)
    m.add_argument("args", nargs=argparse.REMAINDER)
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

    k = sub.add_parser("make-mask", help="make a label mask: with the model's mask diffusion model, or procedurally")
    k.add_argument("--out", required=True, type=Path, help="label PNG to write (with a colour preview beside it)")
    k.add_argument("--size", type=_parse_size, required=True, metavar="WxH")
    k.add_argument("--model", default="default")
    k.add_argument("--subtype", type=int, default=0, help="mask model condition (release: 0 adenocarcinoma, 1 squamous)")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--steps", type=int, default=50)
    k.add_argument("--cond-drop", type=float, default=None, metavar="P",
                   help="mask model: probability that a window is denoised without its subtype condition "
                   "(default 0.5, as the release samples; 0 always conditions)")
    k.add_argument("--device", default="auto")
    return parser


def _progress_bar(total_levels: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total_levels, desc=desc, unit="level", file=sys.stderr, dynamic_ncols=True, disable=None)


def _run(model, canvas, request, preview_path: Path) -> int:
    from src_models.synthesis import pending_regions, synthesise

    todo = pending_regions(canvas, request)
    if request.sweep:
        bar = _progress_bar(None, f"sweep of {len(todo)} regions")
        bar.unit = "tile"
    else:
        bar = _progress_bar(len(todo) * request.steps, f"{len(todo)} regions")
    last = {"level": 0}

    def progress(p):
        if hasattr(p, "tiles"):  # a sweep: one tile of one level done
            bar.total = p.levels * p.tiles
            bar.update((p.level - 1) * p.tiles + p.tile - bar.n)
            bar.set_postfix_str(f"level {p.level}/{p.levels}", refresh=False)
            return
        bar.update(p.level - last["level"])
        last["level"] = p.level if p.level < p.levels else 0

    try:
        for ev in synthesise(model, canvas, request, progress=progress):
            bar.set_postfix_str(f"region {ev.done}/{ev.total}", refresh=False)
    finally:
        bar.close()
    from src_models.api import save_preview

    save_preview(canvas, preview_path)
    return len(todo)


def _request(args, card, device, area=None):
    from src_models.request import LEGACY_SCHEDULES
    from src_models.synthesis import SynthesisRequest

    plan = args.plan
    if args.schedule is not None:
        if args.schedule not in LEGACY_SCHEDULES:
            raise UserError(f"unknown --schedule {args.schedule!r}; --schedule is now --plan ({', '.join(LEGACY_SCHEDULES)} "
                            "become grid and sequential)")
        warnings.warn("--schedule is deprecated; use --plan (parallel is now called grid)", RuntimeWarning, stacklevel=2)
        plan = plan or LEGACY_SCHEDULES[args.schedule]
    request = SynthesisRequest(
        model=str(args.model), steps=args.steps, omega=card.default_omega if args.omega is None else args.omega,
        omega_per_class=dict(args.omega_class), eta=args.eta, seed=args.seed, plan=plan, solver=args.solver,
        sweep=args.sweep, device=str(device), max_batch=args.max_batch, centre=args.centre, area=area, fast=args.fast,
        compile=args.compile, resample=args.resample,
    )
    _check_steps(request.steps)
    for k in request.omega_per_class:
        if not 0 <= k < card.num_classes:
            raise UserError(f"ω given for class {k}, but the model has classes 0..{card.num_classes - 1}")
    try:
        return request.resolved(card)
    except ValueError as e:
        raise UserError(str(e)) from None


def _check_steps(steps) -> None:
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if steps is not None and steps > MAX_STEPS:
        raise UserError(f"--steps must be at most {MAX_STEPS} (the schedule's training steps), got {steps}")


def _finite(name: str, value, low: float | None = 0.0, high: float | None = None) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    if low is not None and value < low:
        raise UserError(f"{name} must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise UserError(f"{name} must be at most {high:g}, got {value:g}")


def _check_run_args(args) -> None:
    """Checks of the run options that need nothing but the arguments (no model, no disk)."""
    _check_steps(args.steps)
    _finite("--omega", args.omega)
    for k, v in args.omega_class:
        _finite(f"--omega-class {k}", v)
    _finite("--eta", args.eta, 0.0, 1.0)
    if args.max_batch is not None and args.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.region_size is not None and args.region_size <= 0:
        raise UserError(f"--region-size must be positive, got {args.region_size}")
    if args.centre is not None and not all(math.isfinite(v) for v in args.centre):
        raise UserError(f"--centre must be two finite numbers, got {args.centre}")


def _device(name):
    from src_models.synthesis import resolve_device

    return resolve_device(name)


def _card(spec):
    """The model card without loading weights where it can (a model directory, tiny-test);
    a published checkpoint is loaded whole.  Returns (card, model or None)."""
    from src_models.card import BUILTIN_DIRS, ModelCard, ModelError

    if str(spec) == "tiny-test":
        from src_models.tiny import tiny_test_card

        return tiny_test_card(), None
    directory = BUILTIN_DIRS.get(str(spec), Path(spec))
    if directory.is_dir():
        return ModelCard.load(directory), None
    if not directory.exists():
        raise ModelError(f"model {str(spec)!r} not found (expected a model directory with card.json)")
    from src_models.models import load_model

    model = load_model(spec, "cpu")
    return model.card, model


def _model(spec, device, preloaded):
    if preloaded is not None:
        return preloaded.to(device)
    from src_models.models import load_model

    return load_model(spec, device)


def _check_and_repair(canvas) -> None:
    """Before a resume: check every finished region against its checksums; rebuild damaged
    pyramid tiles and sample damaged regions again (and say so)."""
    from src_models.verify import repair, verify_canvas

    done = len(canvas.done_indices())
    bar = _progress_bar(done, "checking finished regions") if done else None

    def progress(n, total):
        bar.update(n - bar.n)

    try:
        report = verify_canvas(canvas, deep=True, progress=progress if bar else None)
    finally:
        if bar is not None:
            bar.close()
    if report.ok:
        return
    rebuilt, forgotten = repair(canvas, report)
    if rebuilt:
        warnings.warn(f"pyramid tiles of {len(rebuilt)} region(s) were damaged and are rebuilt from level 0 "
                      f"({', '.join(map(str, rebuilt[:20]))})", RuntimeWarning, stacklevel=2)
    if forgotten:
        first = report.damaged[forgotten[0]][0]
        warnings.warn(f"{len(forgotten)} damaged region(s) will be generated again "
                      f"({', '.join(map(str, forgotten[:20]))}; region {forgotten[0]}: {first})",
                      RuntimeWarning, stacklevel=2)
    if report.copied:
        warnings.warn(f"{len(report.copied)} damaged region(s) hold copied content that cannot be generated again "
                      f"({', '.join(map(str, sorted(report.copied)[:20]))}); import the source again",
                      RuntimeWarning, stacklevel=2)


def _generate_mask(args, card):
    """The --mask file in the model's classes: the release's grey codes decoded, --class-map applied."""
    from src_models.foreign_masks import load_for_model, parse_class_map

    class_map = parse_class_map(args.class_map) if args.class_map is not None else None
    mask, found = load_for_model(args.mask, card.colours, card.classes, class_map)
    if found.kind == "grey":
        warnings.warn(f"{args.mask} is a {found.describe()}", RuntimeWarning, stacklevel=2)
    return mask


def cmd_generate(args) -> int:
    from src_models.api import (check_region_size, check_size, mask_signature, mask_unwritten, new_canvas_with_mask,
                                store_mask)
    from src_models.canvas import Canvas
    from src_models.request import settings_diff

    # 1. the arguments alone; 2. with the model card (no weights); 3. against the canvas on
    # disk (read only); then the model loads, and only then is anything written
    _check_run_args(args)
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale > 0):
        raise UserError(f"--scale must be a positive number, got {args.scale}")
    if args.out.exists() and not (args.overwrite or args.resume):
        raise UserError(f"{args.out} exists; pass --overwrite to replace it or --resume to finish it")
    if args.resume and not args.out.exists():
        raise UserError(f"--resume: {args.out} does not exist")
    device = _device(args.device)
    card, preloaded = _card(args.model)
    mask = _generate_mask(args, card)
    if args.size is not None:
        width, height = args.size
    else:
        scale = args.scale if args.scale is not None else 1.0
        height, width = int(round(mask.shape[0] * scale)), int(round(mask.shape[1] * scale))
    check_size(card, height, width)
    if args.region_size is not None:
        check_region_size(card, args.region_size)
    request = _request(args, card, device)
    signature = mask_signature(mask)
    if args.resume:
        with Canvas.open(args.out, "r") as canvas:
            if (canvas.height, canvas.width) != (height, width):
                raise UserError(f"--resume: {args.out} is {canvas.width}x{canvas.height} px, not {width}x{height}")
            if args.region_size and args.region_size != canvas.region_size:
                raise UserError(f"--resume: {args.out} uses regions of {canvas.region_size} px, not {args.region_size}")
            diffs = settings_diff(canvas.settings, request.settings(), card)
            if diffs:
                text = ", ".join(f"{k}: canvas {a!r} vs now {b!r}" for k, (a, b) in diffs.items())
                raise UserError(f"--resume: settings differ from the run that made {args.out} ({text})")
            # no signature: the run that made it stopped while writing the mask (nothing sampled yet)
            unfinished_mask = mask_unwritten(canvas)
            if not unfinished_mask and canvas.info.get("mask_signature") != signature:
                raise UserError(f"--resume: {args.mask} is not the mask {args.out} was made with")
    model = _model(args.model, device, preloaded)
    if args.resume:
        canvas = Canvas.open(args.out, "r+")
        try:
            if unfinished_mask:
                store_mask(canvas, mask)
            _check_and_repair(canvas)
        except BaseException:
            canvas.close()
            raise
    else:
        from src_models.provenance import source_entry

        from src_models.canvas import CanvasError, CanvasLockedError

        try:
            canvas = new_canvas_with_mask(card, args.out, height, width, mask, args.region_size,
                                          overwrite=args.overwrite, settings=request.settings(),
                                          sources=[source_entry(args.mask, "mask")])
        except CanvasError as e:
            # another run made OUT while this one loaded its model: the same words as the early check
            if isinstance(e, CanvasLockedError) or args.overwrite or not args.out.exists():
                raise
            raise UserError(f"{args.out} exists; pass --overwrite to replace it or --resume to finish it") from None
    with canvas:
        preview = args.preview or args.out.with_suffix(".png")
        n = _run(model, canvas, request, preview)
    print(f"canvas: {args.out}  ({width}x{height} px, {n} regions sampled, model {card.name}, device {device})")
    print(f"preview: {preview}")
    return 0


def cmd_demo(args) -> int:
    from src_models.api import mask_rgb, new_canvas, put_mask
    from src_models.maskio import procedural_mask
    from src_models.models import load_model
    from src_models.synthesis import SynthesisRequest, resolve_device

    _check_steps(args.steps)
    device = resolve_device(args.device)
    card, _ = _card(args.model)
    width, height = args.size
    from src_models.api import check_size

    check_size(card, height, width)
    model = load_model(args.model, device)
    card = model.card
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "demo.zarr"
    try:
        request = SynthesisRequest(model=str(args.model), steps=args.steps, omega=card.default_omega, seed=args.seed,
                                   device=str(device)).resolved(card)
    except ValueError as e:
        raise UserError(str(e)) from None
    canvas = new_canvas(card, out, height, width, overwrite=True, settings=request.settings())
    lh, lw = canvas.latent_shape
    mask = procedural_mask(lh, lw, list(range(1, card.num_classes)), seed=args.seed)
    put_mask(canvas, mask)
    from skimage import io

    mask_png = args.out / "demo_mask.png"
    io.imsave(mask_png, mask_rgb(mask, card.colours), check_contrast=False)
    with canvas:
        n = _run(model, canvas, request, args.out / "demo.png")
    print(f"canvas: {out}  ({width}x{height} px, {n} regions, model {card.name}, device {device})")
    print(f"preview: {args.out / 'demo.png'}")
    print(f"mask: {mask_png}  (procedural layout of classes {', '.join(card.classes[1:])})")
    return 0


def cmd_import_slide(args) -> int:
    from src_models.editing import import_slide
    from src_models.models import load_model
    from src_models.synthesis import resolve_device
    from tqdm import tqdm

    if not args.slide.exists():
        raise UserError(f"slide {args.slide} does not exist")
    if args.out.exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; pass --overwrite to replace it")
    if args.region_size is not None and args.region_size <= 0:
        raise UserError(f"--region-size must be positive, got {args.region_size}")
    model = load_model(args.model, resolve_device(args.device))
    bar = tqdm(desc="importing", unit="region", file=sys.stderr, disable=None)

    def progress(n, total):
        bar.total = total
        bar.update(n - bar.n)

    try:
        canvas, report = import_slide(args.slide, model, args.out, args.region_size, args.overwrite, progress)
    finally:
        bar.close()
    canvas.close()
    print(json.dumps({"canvas": str(args.out), **report}))
    return 0


def _check_canvas_model(canvas, card):
    if canvas.factor != card.factor or canvas.latent.shape[0] != int(card.codec.get("channels", 4)):
        raise UserError(f"{canvas.path} was made for a model with factor {canvas.factor} and "
                        f"{canvas.latent.shape[0]} latent channels; model {card.name!r} does not fit it")


def cmd_inpaint(args) -> int:
    from src_models.canvas import Canvas
    from src_models.editing import prepare_inpaint
    from src_models.maskio import check_labels, load_mask

    _check_run_args(args)
    device = _device(args.device)
    card, preloaded = _card(args.model)
    mask = load_mask(args.mask, card.colours) if args.mask else None
    if mask is not None:
        check_labels(mask, card.classes, str(args.mask))
    if args.label is not None:
        import numpy as np

        check_labels(np.array([[args.label]]), card.classes, name=f"--label {args.label}")
    with Canvas.open(args.canvas, "r") as canvas:
        _check_canvas_model(canvas, card)
        if args.resume and not canvas.jobs():
            raise UserError(f"--resume: {args.canvas} has no unfinished inpaint")
    request = _request(args, card, device)
    model = _model(args.model, device, preloaded)
    with Canvas.open(args.canvas, "r+") as canvas:
        if args.resume:
            _check_and_repair(canvas)
            from src_models.editing import align_rect

            rect = align_rect(canvas, args.rect)
        else:
            rect = prepare_inpaint(canvas, args.rect, mask=mask, label=args.label)
        request = _request(args, card, device, area=rect)
        preview = args.preview or args.canvas.with_suffix(".png")
        n = _run(model, canvas, request, preview)
    print(f"canvas: {args.canvas}  (rectangle y {rect[0]}:{rect[1]}, x {rect[2]}:{rect[3]} px; {n} regions sampled)")
    print(f"preview: {preview}")
    return 0


def cmd_outpaint(args) -> int:
    from src_models.editing import outpaint

    _check_run_args(args)
    device = _device(args.device)
    card, preloaded = _card(args.model)
    request = _request(args, card, device)
    if args.out.exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; pass --overwrite to replace it")
    if not args.canvas.exists():
        raise UserError(f"{args.canvas} does not exist")
    model = _model(args.model, device, preloaded)
    canvas = outpaint(args.canvas, model, args.out, args.pad, label=args.label, overwrite=args.overwrite)
    with canvas:
        preview = args.preview or args.out.with_suffix(".png")
        n = _run(model, canvas, request, preview)
    print(f"canvas: {args.out}  ({canvas.width}x{canvas.height} px; {n} regions sampled)")
    print(f"preview: {preview}")
    return 0


def cmd_verify(args) -> int:
    from src_models.canvas import Canvas, CanvasDamagedError
    from src_models.verify import verify_canvas

    if not args.canvas.exists():
        raise UserError(f"{args.canvas} does not exist")
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
        bar = _progress_bar(len(canvas.done_indices()), "checking regions")

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
        if not report.ok:
            print("  run `diffinfinite generate ... --resume` (or inpaint --resume) to generate them again")
    return 0 if report.ok else 1


def cmd_train(args) -> int:
    from src_models.train import main as train_main

    return int(train_main(args.args) or 0)


def cmd_check_reference(args) -> int:
    from src_models.reference_check import main as check_main

    argv = [str(args.file)]
    if args.tolerance is not None:
        argv += ["--tolerance", str(args.tolerance)]
    if args.device is not None:
        argv += ["--device", args.device]
    return int(check_main(argv))


def cmd_convert(args) -> int:
    from src_models.release_ckpt import convert_release_checkpoint

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    out = convert_release_checkpoint(args.checkpoint, args.out, vae_dir=args.vae, classes=classes,
                                     mask_checkpoint=args.mask_checkpoint)
    print(json.dumps({"model_dir": str(out)}))
    return 0


def cmd_make_mask(args) -> int:
    from skimage import io

    from src_models.api import mask_rgb
    from src_models.maskio import procedural_mask
    from src_models.models import load_model
    from src_models.synthesis import resolve_device

    width, height = args.size
    model = load_model(args.model, resolve_device(args.device))
    card = model.card
    from src_models.mask_model import generate_layout, is_layout_model

    if model.mask_unet is not None and is_layout_model(card):
        mask = generate_layout(model, (height, width), seed=args.seed, steps=args.steps)
        how = f"layout diffusion model of {card.name}"
    elif model.mask_unet is not None:
        from src_models.release_mask import generate_release_mask

        if height % 32 or width % 32:
            raise UserError(f"the mask model needs sides that are multiples of 32 px, got {width}x{height}")
        kw = {} if args.cond_drop is None else {"cond_drop": args.cond_drop}
        try:
            mask = generate_release_mask(model, (height, width), args.subtype, args.seed, steps=args.steps, **kw)
        except ValueError as e:
            raise UserError(str(e)) from None
        how = f"mask diffusion model of {card.name}, subtype {args.subtype}"
    else:
        mask = procedural_mask(height, width, list(range(1, card.num_classes)), seed=args.seed)
        how = f"procedural layout (model {card.name} has no mask model)"
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
    from .cli_data import HELP

    return HELP


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["train"]:  # everything after "train" belongs to the training module's parser
        ns = argparse.Namespace(command="train", args=argv[1:])
    elif argv[:1] == ["evaluate-segmentation"]:  # the downstream-utility measure
        from .cli_evaluate import main_segmentation

        return main_segmentation(argv[1:])
    elif argv[:1] == ["evaluate"]:  # likewise for the evaluation tool's
        from .cli_evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    elif argv[:1] and argv[0] in _data_commands():  # and for the data-set commands (cli_data.py)
        from .cli_data import main as data_main

        return data_main(argv)
    elif argv[:1] == ["generate-many"]:  # and the many-canvas runner's
        from .cli_many import main as many_main

        return many_main(argv[1:])
    else:
        ns = parser.parse_args(argv)
    from src_models.canvas import CanvasError
    from src_models.card import ModelError
    from src_models.maskio import MaskError
    from src_models.slide import SlideError
    from src_models.synthesis import SynthesisError

    def show(message, category, *args, **kwargs):
        print(f"diffinfinite: warning: {message}", file=sys.stderr)

    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)  # every run tells its own warnings
        warnings.showwarning = show
        try:
            return COMMANDS[ns.command](ns)
        except (UserError, CanvasError, ModelError, MaskError, SlideError, SynthesisError) as e:
            print(f"diffinfinite: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except Terminated:
            print("diffinfinite: terminated (SIGTERM); finished regions are kept (run again with --resume)",
                  file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            print("diffinfinite: interrupted; finished regions are kept (run again with --resume)", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
