"""What every ``diffinfinite`` command shares: exit codes, the bad-input error, argument types,
the run options of generate/inpaint/outpaint/generate-many and their translation into a
:class:`~src_models.synthesis.request.SynthesisRequest`, and :func:`run_command`, the one top-level
handler every command runs under (SIGTERM, Ctrl+C, warnings, one line per error).

Only argparse and the standard library are imported here at start-up.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from pathlib import Path

from src_models.errors import DiffInfiniteError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it


class UserError(DiffInfiniteError):
    """Bad command-line input (the message names the option)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``systemctl stop``, ``kill``): handled like Ctrl+C."""


def on_sigterm(signum, frame):
    raise Terminated()


def parse_size(text: str, positive: bool = False) -> tuple[int, int]:
    """``WxH`` as (width, height); ``positive``: both above 0 (else the command checks them)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 2048x1024 (width x height), got {text!r}") from None
    if positive and (w <= 0 or h <= 0):
        raise argparse.ArgumentTypeError(f"needs a positive width and height, got {text!r}")
    return w, h


def parse_omega_class(text: str) -> tuple[int, float]:
    try:
        k, v = text.split("=")
        return int(k), float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--omega-class takes LABEL=OMEGA, e.g. 2=6, got {text!r}") from None


def parse_pair(text: str, what: str) -> tuple[float, float]:
    """Two comma-separated numbers; ``what`` says what they are in the message."""
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
    return a, b


def parse_centre(text: str) -> tuple[float, float]:
    return parse_pair(text, "--centre takes Y,X in pixels")


def parse_xywh(text: str, number=int, what: str = "X,Y,W,H in px") -> tuple:
    """``X,Y,W,H`` with a positive width and height (``number``: int or float)."""
    try:
        x, y, w, h = (number(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes {what}, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"needs a positive width and height, got {text!r}")
    return x, y, w, h


def parse_rect(text: str) -> tuple[int, int, int, int]:
    """``--rect X,Y,W,H`` (px) as (y0, y1, x0, x1)."""
    x, y, w, h = parse_xywh(text)
    return y, y + h, x, x + w


def parse_pads(text: str) -> tuple[int, int, int, int]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"--pad takes TOP,RIGHT,BOTTOM,LEFT in px, got {text!r}")
    return vals


def parse_region_size(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--region-size takes a number of px or auto, got {text!r}") from None


def add_run_options(p: argparse.ArgumentParser) -> None:
    from src_models.synthesis.request import PLANS, SOLVERS  # numpy only: no torch at start-up

    p.add_argument("--model", default="default", help="built-in name (default, tumour, tiny-test) or a model directory")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising levels (default: the model card's for ddim, the solver's for others)")
    p.add_argument("--omega", type=float, default=None,
                   help="guidance ω for every class (scale = ω + 1; default: the card's, with its per-class ω, "
                   "which an --omega replaces)")
    p.add_argument("--omega-class", type=parse_omega_class, action="append", default=[], metavar="LABEL=OMEGA",
                   help="ω for one class, repeatable")
    p.add_argument("--guidance-below", type=int, default=None, metavar="T",
                   help="guide only the levels with timestep below T (0 to 1000; 1000: every level); the noisier "
                   "levels run the conditional pass alone, one network pass per window instead of two (default: "
                   "the card's; the shipped models' were measured, docs/sampling_defaults.md)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM η (default 1 = stochastic, as the release; 0 = deterministic); dpmpp-2m takes 0 only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--plan", default=None, metavar="|".join(PLANS),
                   help=("patch order: " + "; ".join(f"{k}: {v.description}" for k, v in PLANS.items())
                         + " (default: the model's)").replace("%", "%%"))
    p.add_argument("--solver", default=None, metavar="|".join(SOLVERS),
                   help="how a level's noise estimate moves the latents: "
                   + "; ".join(f"{k}: {v.description}" for k, v in SOLVERS.items())
                   + " (default: the model card's, with its steps and eta)")
    p.add_argument("--resample", type=int, default=1, metavar="U",
                   help="where a region has finished or real surroundings (inpaint, outpaint, later regions): run "
                   "each level U times, re-noised in between, so new tissue continues the old (RePaint; U x the "
                   "network calls there; ddim only; default 1)")
    p.add_argument("--sweep", action="store_true",
                   help="sample all regions together, level by level over the whole canvas, latent state on disk "
                   "(resumable at the last finished level); default: region by region")
    p.add_argument("--schedule", default=None, help=argparse.SUPPRESS)  # deprecated name of --plan
    p.add_argument("--region-size", type=parse_region_size, default=None, metavar="PX|auto",
                   help="region side in px (default: 8 windows); auto: sized for the device, as the napari dock does "
                   "(256 px on the CPU)")
    p.add_argument("--max-batch", type=int, default=None, help="network batch rows per call (default: from the device's memory)")
    p.add_argument("--no-fast", dest="fast", action="store_false",
                   help="call the network as it is (no channels_last, no fp16 autocast on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network for the window size (CUDA)")
    add_precision_option(p)
    add_distilled_option(p)
    p.add_argument("--centre", type=parse_centre, default=None, metavar="Y,X", help="regions nearest this point go first")
    p.add_argument("--preview", type=Path, default=None, help="PNG preview path (default: OUT with .png)")


def add_precision_option(p, what: str = "the network's arithmetic") -> None:
    p.add_argument("--precision", choices=("auto", "float32", "bf16"), default="auto",
                   help=f"{what}: bf16 = bfloat16 autocast; auto (default): bf16 on a CPU with native bfloat16 "
                   "(AVX512_BF16 or AMX: faster at the same held-out quality), float32 elsewhere, or what the "
                   "environment variable DIFFINFINITE_PRECISION names; a resume goes on in the canvas's precision "
                   "(docs/cpu_speed.md)")


def add_distilled_option(p) -> None:
    p.add_argument("--distilled", action=argparse.BooleanOptionalAction, default=None,
                   help="the model's guidance-distilled student runs the guided levels (those below "
                   "--guidance-below; all of them at 1000), one network pass per window instead of two, at the omega "
                   "it was distilled at (default: where its card makes it the default, as for a model made by "
                   "'diffinfinite distil'; the shipped default model's student is opt-in; --no-distilled: always two "
                   "passes at the guided levels; see docs/cpu_speed.md)")


def progress_bar(total_levels: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total_levels, desc=desc, unit="level", file=sys.stderr, dynamic_ncols=True, disable=None)


def run_and_preview(model, canvas, request, preview_path: Path) -> int:
    from src_models.synthesis.estimate import RunClock, estimate_run, request_mode
    from src_models.synthesis.regions import pending_regions, synthesise
    from src_models.synthesis.request import SweepProgress

    todo = pending_regions(canvas, request)
    device = getattr(model, "device", request.device)
    print(f"diffinfinite: this run: {estimate_run(canvas, request, device).text()}", file=sys.stderr, flush=True)
    clock = RunClock(request.model, device, request.steps, request.sweep, request_mode(request))
    if request.sweep:
        bar = progress_bar(None, f"sweep of {len(todo)} regions")
        bar.unit = "tile"
    else:
        bar = progress_bar(len(todo) * request.steps, f"{len(todo)} regions")
    last = {"level": 0}

    def progress(p):
        if isinstance(p, SweepProgress):  # a sweep: one tile of one level done
            bar.total = p.levels * p.tiles
            bar.update((p.level - 1) * p.tiles + p.tile - bar.n)
            bar.set_postfix_str(f"level {p.level}/{p.levels}", refresh=False)
            return
        bar.update(p.level - last["level"])
        last["level"] = p.level if p.level < p.levels else 0

    clock.start()
    try:
        for ev in synthesise(model, canvas, request, progress=progress):
            bar.set_postfix_str(f"region {ev.done}/{ev.total}", refresh=False)
            clock.add(ev.cost_px)
    finally:
        bar.close()
    clock.finish()  # the next estimate on this device rests on it too
    from src_models.synthesis.canvases import save_preview

    save_preview(canvas, preview_path)
    return len(todo)


# the names the CLI gives the request's fields (messages name the option the user typed)
OPTIONS = {"steps": "--steps", "omega": "--omega", "eta": "--eta", "max_batch": "--max-batch", "centre": "--centre"}


def cli_option(field: str) -> str:
    """A request field as the command line spells it (``omega_per_class 2`` -> ``--omega-class 2``)."""
    if field.startswith("omega_per_class "):
        return "--omega-class " + field.split(" ", 1)[1]
    return OPTIONS.get(field, "--" + field.replace("_", "-"))


def request_from_args(args, device="auto", area=None, plan: str | None = None):
    """The run options as a :class:`SynthesisRequest` (translation only: defaults left open are
    filled and every value checked by :meth:`SynthesisRequest.resolved`)."""
    from src_models.synthesis.request import SynthesisRequest

    return SynthesisRequest(
        model=str(args.model), steps=args.steps, omega=args.omega, omega_per_class=dict(args.omega_class),
        eta=args.eta, seed=args.seed, plan=plan if plan is not None else args.plan, solver=args.solver,
        sweep=args.sweep, device=str(device), max_batch=args.max_batch, centre=args.centre, area=area,
        fast=args.fast, compile=args.compile, resample=args.resample, precision=args.precision,
        distilled=args.distilled, guidance_below=args.guidance_below,
    )


def check_output(path: Path, *, overwrite: bool, resume: bool | None = None, inputs=(), option: str = "--out") -> None:
    """An output path checked before anything loads: never the current directory or a folder
    holding an input; an existing one only with ``--overwrite`` (and then only a canvas this tool
    made) or ``--resume`` (``resume`` None: the command has no --resume)."""
    from src_models.store.base import CanvasError
    from src_models.store.safety import check_out_path, check_replaceable, exists_message

    try:
        check_out_path(path, inputs, option)
        there = path.exists()  # (through a link: what it points at; a dangling link is made there)
        if there and overwrite:
            check_replaceable(path, inputs, option)
        elif there and not resume:
            raise UserError(exists_message(path, option, resume=resume is not None))
        elif resume and not there:
            raise UserError(f"--resume: {path} does not exist")
    except CanvasError as e:
        raise UserError(str(e)) from None


def check_run_args(args) -> None:
    """The run options checked before any card, model or canvas is read: the request's own
    checks, in the options' names, and the region size's sign."""
    from src_models.synthesis.request import check_number

    request_from_args(args).check(option=cli_option)
    region_size = getattr(args, "region_size", None)
    if region_size != "auto":
        check_number("--region-size", region_size, 1)


def follow_canvas(args, path, card, fields=()) -> None:
    """Before a run goes on with a canvas that exists: the options left open (``--distilled``
    unset, ``--precision auto``, ``--guidance-below`` unset) take what the canvas was made with
    (:func:`~src_models.synthesis.canvases.made_with`), so a resumed canvas is finished as it was
    started.  ``fields`` names options a job table sets itself, which stay as given."""
    from src_models.synthesis.canvases import made_with

    made = made_with(path, card)
    if getattr(args, "distilled", False) is None and "distilled" not in fields:
        args.distilled = made.get("distilled")
    if getattr(args, "precision", None) == "auto" and "precision" not in fields:
        args.precision = made.get("precision", "auto")
    if getattr(args, "guidance_below", False) is None and "guidance_below" not in fields:
        args.guidance_below = made.get("guidance_below")


def resolve_request(args, card, device, area=None):
    """The request of the run options, resolved against ``card`` (the deprecated ``--schedule``
    read as ``--plan``)."""
    from src_models.synthesis.request import LEGACY_SCHEDULES

    plan = args.plan
    if args.schedule is not None:
        if args.schedule not in LEGACY_SCHEDULES:
            raise UserError(f"unknown --schedule {args.schedule!r}; --schedule is now --plan ({', '.join(LEGACY_SCHEDULES)} "
                            "become grid and sequential)")
        warnings.warn("--schedule is deprecated; use --plan (parallel is now called grid)", RuntimeWarning, stacklevel=2)
        plan = plan or LEGACY_SCHEDULES[args.schedule]
    return request_from_args(args, device, area, plan).resolved(card, option=cli_option)


def _quiet_abandoned_io() -> None:
    """An interrupted run abandons the store's writes for the region in flight (zarr runs them as
    asyncio tasks); at exit asyncio would report each as "Task was destroyed but it is pending!".
    Those writes belong to a region that is not marked done, so it is sampled again on --resume:
    the one line the handler prints says all there is, and the reports are silenced."""
    import atexit
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    # after the handler's own warning filters are undone, for what is finalised at exit
    atexit.register(warnings.filterwarnings, "ignore", message=r"coroutine .* was never awaited",
                    category=RuntimeWarning)


def run_command(fn, *args, kept: str = "finished regions are kept (run again with --resume)",
                also: tuple[type[BaseException], ...] = ()) -> int:
    """Run one command: the one top-level handler of every ``diffinfinite`` command.

    SIGTERM is handled like Ctrl+C (in the main thread); warnings are printed as one line each;
    a :class:`~src_models.errors.DiffInfiniteError` (or one of ``also``) or an ``OSError`` ends with
    one line on stderr and exit status 2; an interruption says what is ``kept``.  Anything else
    is a bug and keeps its traceback.
    """

    def show(message, category, *a, **k):
        print(f"diffinfinite: warning: {message}", file=sys.stderr)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)  # every run tells its own warnings
        warnings.showwarning = show
        try:
            return fn(*args)
        except (DiffInfiniteError, *also) as e:
            print(f"diffinfinite: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except OSError as e:
            print(f"diffinfinite: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
            return EXIT_BAD_INPUT
        except Terminated:
            _quiet_abandoned_io()
            print(f"diffinfinite: terminated (SIGTERM); {kept}", file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            _quiet_abandoned_io()
            print(f"diffinfinite: interrupted; {kept}", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
