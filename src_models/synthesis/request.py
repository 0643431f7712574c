"""The plain values that describe a run and the events it yields (no torch here, so a GUI can
build a request without importing it).

This is the one place that checks the options of a run and fills in their defaults:
:meth:`SynthesisRequest.check` checks every field (the plan through
:func:`src_models.sampling.plan.check_plan`, the solver and η through
:func:`src_models.sampling.solvers.check_solver`, the numbers through :func:`check_number`), and
:meth:`SynthesisRequest.resolved` fills in what was left open from the model card (plan, steps, η,
ω).  The interfaces only translate their input into a request: the CLI names its options
(``--steps``) through ``check(option=...)``, a job table its columns.  The CLI and the widgets list
:data:`PLANS` and :data:`SOLVERS`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from src_models.errors import DiffInfiniteError
from src_models.models.card import DEFAULT_OMEGA, DEFAULT_STEPS
from src_models.sampling.plan import PLANS, check_plan
from src_models.sampling.solvers import SOLVERS, check_solver

if TYPE_CHECKING:  # annotations only
    import torch

__all__ = ["PLANS", "SOLVERS", "SynthesisRequest", "RegionDone", "RegionProgress", "SweepProgress", "RequestError",
           "default_plan", "card_settings", "normalise_settings", "sampling_defaults", "settings_diff", "check_number",
           "MAX_STEPS", "GUIDE_ALL", "SPARSE_SETTINGS", "machine_precision", "recorded_precision",
           "recorded_guidance_below"]

MAX_STEPS = 1000  # the models' training steps
MAX_RESAMPLE = 20
MAX_ETA = 1.0  # DDIM's η: 0 deterministic, 1 the release's stochastic sampler
GUIDE_ALL = 1000  # guidance_below that guides every level (timesteps run from 0 to 999)
# the settings() keys stored only when a run differs from what canvases made before them did
SPARSE_SETTINGS = ("precision", "distilled", "guidance_below")


class RequestError(DiffInfiniteError, ValueError):
    """An option of a run that no run can use (message names the option and says why)."""


def check_number(name: str, value, low: float | None = None, high: float | None = None) -> None:
    """``value`` (None: not given) must be a finite number within [``low``, ``high``]; ``name`` is the
    option as the user wrote it (``--omega``, a job table's ``omega``)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value}")
    if low is not None and value < low:
        raise RequestError(f"{name} must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise RequestError(f"{name} must be at most {high:g}, got {value:g}")


MAX_SEED = 2**64 - 1  # seeds are stored in the region state as uint64


def check_seed(name: str, value) -> None:
    """A seed must be a whole number in [0, 2**64 - 1] (checked before anything runs)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= MAX_SEED:
        raise RequestError(f"{name} must be a whole number from 0 to 2**64-1 ({MAX_SEED}), got {value}")


# the patch-order option was called "schedule" before plans and solvers were apart
LEGACY_SCHEDULES = {"parallel": "grid", "sequential": "sequential"}


def default_plan(card) -> str:
    """``release`` for the published checkpoints (the release's own distribution), ``grid`` for
    the project's models (trained and judged with it; fewer windows)."""
    arch = (getattr(card, "unet", None) or {}).get("arch", "")
    return "release" if str(arch).startswith("release") else "grid"


PRECISIONS = ("float32", "bf16")  # the network's arithmetic; the latents, schedule and solver stay float32
AUTO_PRECISION = "auto"  # the device's default (machine_precision)


@dataclass
class SynthesisRequest:
    """Everything a run needs, as plain values (built on the GUI thread or from the CLI).

    ``plan`` None means the model's default (:func:`default_plan`); ``solver``, ``steps``, ``eta`` and
    ``omega`` None the model card's sampling defaults (:func:`sampling_defaults`, the one place
    every interface takes them from).  :meth:`resolved` fills them in for a model card.
    """

    model: str = "default"
    steps: int | None = None
    omega: float | None = None
    omega_per_class: dict[int, float] = field(default_factory=dict)
    eta: float | None = None
    seed: int = 0
    plan: str | None = None
    solver: str | None = None
    sweep: bool = False  # whole canvas level by level (src_models/synthesis/sweep.py) instead of region by region
    device: str = "auto"
    area: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) px: only regions touching it
    centre: tuple[float, float] | None = None  # (y, x) px: nearest regions go first
    max_batch: int | None = None  # network batch rows per call; None: from the device's memory (halved on OOM)
    fast: bool = True  # channels_last, and fp16 autocast + a memory-sized batch on CUDA (src_models/models/fast.py)
    compile: bool = False  # torch.compile the network for the window size (CUDA)
    # "bf16": bfloat16 autocast around the network; None or "auto": the device's default (bf16 on a CPU with
    # native bfloat16, else float32; DIFFINFINITE_PRECISION overrides it; docs/cpu_speed.md), named by resolved()
    precision: str | None = None
    halo: int | None = None  # latent px of context around each region (default: half a window)
    resample: int = 1  # where there is context: each level run this many times, re-noised in between (RePaint)
    # classifier-free guidance only at the levels with timestep t below this (0 to 1000; 1000: every level);
    # the noisier levels run the conditional pass alone.  None: the card's (sampling_defaults)
    guidance_below: int | None = None
    # the card's guidance-distilled student (one pass per window; src_models/training/distil.py): None uses it
    # where the card has one and the run's ω is the ω it was distilled at, False never, True requires it
    distilled: bool | None = None

    def check(self, card=None, option: Callable[[str], str] | None = None) -> None:
        """Raise :class:`RequestError` (one line, naming the option) for values no run can use.

        ``option(field)`` names a field as the interface calls it (the CLI: ``--steps``,
        ``--omega-class 2``); each bound is then reported on its own ("at least", "at most").
        With a model ``card`` the labels of per-class ω are checked against its classes too.
        """
        name = option or (lambda f: f)
        check_seed(name("seed"), self.seed)
        if option is not None or self.steps is None or 1 <= int(self.steps) <= MAX_STEPS:
            check_number(name("steps"), self.steps, 1, MAX_STEPS)
        else:  # the API's words for the steps range
            raise RequestError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        check_number(name("omega"), self.omega, 0.0)
        for k, v in self.omega_per_class.items():
            check_number(name(f"omega_per_class {k}"), v, 0.0)
            if card is not None and not 0 <= int(k) < card.num_classes:
                raise RequestError(f"ω given for class {k}, but the model has classes 0..{card.num_classes - 1}")
        if option is not None:  # the API's words for a negative η are check_solver's, below
            check_number(name("eta"), self.eta, 0.0, MAX_ETA)
        check_number(name("max_batch"), self.max_batch, 1)
        if self.centre is not None and not all(math.isfinite(v) for v in self.centre):
            raise RequestError(f"{name('centre')} must be two finite numbers, got {self.centre}")
        try:
            if self.plan is not None:
                check_plan(self.plan)
            check_solver(self._solver(card), self.eta)
        except ValueError as e:
            raise RequestError(str(e)) from None
        check_number(name("eta"), self.eta, None, MAX_ETA)
        if self.precision not in (None, AUTO_PRECISION, *PRECISIONS):
            raise RequestError(f"{name('precision')} must be one of {AUTO_PRECISION}, {', '.join(PRECISIONS)}, "
                               f"got {self.precision!r}")
        gb = self.guidance_below
        if gb is not None and (isinstance(gb, bool) or not isinstance(gb, numbers.Integral) or not 0 <= gb <= GUIDE_ALL):
            raise RequestError(f"{name('guidance_below')} must be a whole number from 0 to {GUIDE_ALL} "
                               f"(the timestep below which levels are guided), got {gb}")
        if not 1 <= int(self.resample) <= MAX_RESAMPLE:
            raise RequestError(f"resample must be between 1 and {MAX_RESAMPLE}, got {self.resample}")
        if int(self.resample) > 1 and self._solver(card) != "ddim":
            raise RequestError(f"resample needs the ddim solver (a multistep solver's history does not survive "
                               f"re-noising); got {self._solver(card)}")

    def _solver(self, card=None) -> str:
        return self.solver or sampling_defaults(card)["solver"]

    def resolved(self, card=None, option: Callable[[str], str] | None = None) -> "SynthesisRequest":
        """A checked copy with plan, solver, steps, η and ω filled in for ``card`` (a model card)."""
        self.check(card, option)
        plan = self.plan or (default_plan(card) if card is not None else "grid")
        d = sampling_defaults(card, self.solver)
        steps = self.steps if self.steps is not None else d["steps"]
        eta = check_solver(d["solver"], self.eta if self.eta is not None else d["eta"])
        if self.omega is None:  # the card's ω, per class where it has them, under the user's own per-class ω
            omega, per_class = d["omega"], {**d["omega_per_class"], **self.omega_per_class}
        else:  # a global ω of the user's replaces the card's whole choice
            omega, per_class = self.omega, dict(self.omega_per_class)
        # the student runs the guided levels (t below the limit; 1000: every level) in one pass each
        guidance_below = int(self.guidance_below if self.guidance_below is not None else d["guidance_below"])
        name = option or (lambda f: f)
        if self.distilled is None:  # left open: the student runs where its card makes it the default
            distilled = default_student(card, float(omega), per_class, guidance_below)
        elif self.distilled and not uses_student(card, float(omega), per_class):
            why = ("model has no distilled student" if getattr(card, "guided_unet", None) is None else
                   f"student was distilled at ω {_guided_omega_text(card)}, not the ω asked for")
            raise RequestError(f"{name('distilled')}: the {why}")
        elif self.distilled and guidance_below > (top := student_t_below(card)):
            raise RequestError(f"{name('distilled')}: the student was distilled for the levels below t {top} only; "
                               f"guided below {guidance_below} it would run levels it never learned "
                               f"({name('guidance_below')} {top} or lower)")
        else:
            distilled = bool(self.distilled)
        precision = self.precision if self.precision in PRECISIONS else machine_precision(self.device)
        return dataclasses.replace(self, plan=plan, solver=d["solver"], steps=int(steps), eta=eta, omega=float(omega),
                                   omega_per_class=per_class, distilled=distilled, precision=precision,
                                   guidance_below=guidance_below)

    def settings(self) -> dict:
        """The values that decide the pixels (device and batch size do not)."""
        return {
            "model": str(self.model),
            "steps": None if self.steps is None else int(self.steps),
            "omega": None if self.omega is None else float(self.omega),
            "omega_per_class": {str(k): float(v) for k, v in sorted(self.omega_per_class.items())},
            "eta": None if self.eta is None else float(self.eta),
            "seed": int(self.seed),
            "plan": self.plan,
            "solver": self.solver,
            "sweep": bool(self.sweep),
            "halo": self.halo,
            "resample": int(self.resample),
            # guidance at every level is what every canvas made before this option was: stored only when limited
            **({"guidance_below": int(self.guidance_below)}
               if self.guidance_below is not None and int(self.guidance_below) < GUIDE_ALL else {}),
            # float32 is what every canvas made before this option was: stored only when not float32
            # (a resolved request names its precision; None, the device's default, is not stored)
            **({"precision": self.precision} if self.precision == "bf16" else {}),
            # two passes per window is what every canvas made before students existed: stored only when distilled
            **({"distilled": True} if self.distilled else {}),
        }


def recorded_precision(settings: dict) -> str | None:
    """The precision a canvas's stored settings record: ``bf16``, or ``float32`` (not named) once a run
    has recorded its settings (a run's always name its seed); None where no run has (a new canvas's
    :func:`card_settings`), so the next run takes the device's default."""
    if settings.get("precision") in PRECISIONS:
        return settings["precision"]
    return "float32" if "seed" in settings else None


def recorded_guidance_below(settings: dict, card_value: int) -> int:
    """The guidance limit a canvas's stored settings record: its own where stored (only limits below
    1000 are); 1000, every level, where a run recorded settings without one (every canvas made before
    the option); ``card_value`` (the model card's) where no run has recorded settings yet."""
    if "guidance_below" in settings:
        return int(settings["guidance_below"])
    return GUIDE_ALL if "seed" in settings else int(card_value)


def machine_precision(device: str = "auto") -> str:
    """The precision a run on ``device`` (a name: auto, cpu, cuda:N) takes where it leaves it open
    (:func:`src_models.models.fast.default_precision`; imports torch, so not for the GUI thread: the
    dock sends ``auto`` and its worker resolves it).  A bad ``DIFFINFINITE_PRECISION`` raises
    :class:`RequestError`."""
    from src_models.models.device import resolve_device
    from src_models.models.fast import default_precision

    try:
        return default_precision(resolve_device(device) if str(device) == "auto" else str(device))
    except (ValueError, RuntimeError) as e:
        raise RequestError(str(e)) from None


def normalise_settings(stored: dict, card=None) -> dict:
    """Stored settings of a canvas in today's terms: a canvas made before plans and solvers had
    ``schedule`` (parallel = grid) and always DDIM, region by region.  With the model ``card``,
    defaults left open (plan, steps, η stored as None) are filled in as a run would resolve them."""
    out = dict(stored)
    if "schedule" in out and "plan" not in out:
        out["plan"] = LEGACY_SCHEDULES.get(out.pop("schedule"), None)
        out.setdefault("solver", "ddim")
        out.setdefault("sweep", False)
    out.setdefault("resample", 1)  # canvases made before resampling existed ran each level once
    out["guidance_below"] = recorded_guidance_below(out, card_guidance_below(card) if card is not None else GUIDE_ALL)
    if card is not None:
        if out.get("plan") is None:
            out["plan"] = default_plan(card)
        if out.get("solver") is None or out["solver"] in SOLVERS:
            d = sampling_defaults(card, out.get("solver"))
            out["solver"] = d["solver"]
            if out.get("eta") is None:
                out["eta"] = check_solver(d["solver"], d["eta"])
            if out.get("steps") is None:
                out["steps"] = d["steps"]
        if "distilled" not in out:  # stored only when the student ran; omega left open: as a run resolves it
            d = sampling_defaults(card)
            stored_pc = {int(k): float(v) for k, v in (out.get("omega_per_class") or {}).items()}
            out["distilled"] = out.get("omega") is None and default_student(
                card, d["omega"], {**d["omega_per_class"], **stored_pc}, out["guidance_below"])
        if out.get("omega") is None:
            d = sampling_defaults(card)
            out["omega"] = d["omega"]
            stored_pc = {int(k): float(v) for k, v in (out.get("omega_per_class") or {}).items()}
            out["omega_per_class"] = {str(k): v for k, v in sorted({**d["omega_per_class"], **stored_pc}.items())}
    return out


def _omega_table(num_classes: int, omega: float, per_class: dict) -> list[float]:
    """ω of every class as a run uses it (class 0 never guided), without torch."""
    w = [float(omega)] * num_classes
    for k, v in per_class.items():
        if 0 <= int(k) < num_classes:
            w[int(k)] = float(v)
    w[0] = 0.0
    return w


def _guided_omega_text(card) -> str:
    g = card.guided_unet
    pc = ", ".join(f"class {k}: {v:g}" for k, v in sorted((g.get("omega_per_class") or {}).items()))
    return f"{float(g['omega']):g}" + (f" ({pc})" if pc else "")


def uses_student(card, omega: float, per_class: dict) -> bool:
    """Whether ``card`` has a guidance-distilled student for exactly this ω (per class too)."""
    g = getattr(card, "guided_unet", None)
    if not g:
        return False
    n = card.num_classes
    return _omega_table(n, omega, per_class) == _omega_table(n, g["omega"], g.get("omega_per_class") or {})


def student_by_default(card) -> bool:
    """Whether runs that leave ``distilled`` open use the card's student (at its ω): its entry's
    ``by_default``, true unless the card says otherwise (a shipped student measured worse than its
    teacher is opt-in)."""
    g = getattr(card, "guided_unet", None)
    return bool(g) and bool(g.get("by_default", True))


def student_t_below(card) -> int:
    """The timestep below which ``card``'s student was distilled (its ``guided_unet.t_below``; 1000: every
    level).  A run never hands it the levels above."""
    g = getattr(card, "guided_unet", None) or {}
    return int(g.get("t_below", GUIDE_ALL))


def default_student(card, omega: float, per_class: dict, guidance_below: int) -> bool:
    """Whether a run at this ω and guidance limit that leaves ``distilled`` open runs the card's
    student: the one rule for :meth:`SynthesisRequest.resolved`, the settings a canvas records and the
    benchmarks.  A student distilled for the levels below some t only is not the default where the
    run guides above it."""
    return (student_by_default(card) and uses_student(card, omega, per_class)
            and int(guidance_below) <= student_t_below(card))


def sampling_defaults(card=None, solver: str | None = None) -> dict:
    """What a run samples with where the user left it open: the model card's solver, and with it the
    card's steps and η; with another ``solver``, that solver's own steps and η (DDIM: 50 steps, η 1 as
    the release).  ω is the card's whatever the solver, with its per-class ω (``omega_per_class``).  A
    card from before cards named a solver sampled with DDIM at its ``default_steps``.  No interface
    keeps defaults of its own: the CLI, the Python API, the napari dock and ``generate-many`` all
    resolve requests through this function."""
    card_solver = getattr(card, "default_solver", None) or "ddim"
    solver = solver or card_solver
    if solver not in SOLVERS:
        check_solver(solver)  # the one wording for an unknown solver
    if solver == card_solver:
        steps = int(getattr(card, "default_steps", None) or SOLVERS[solver].default_steps or DEFAULT_STEPS)
        eta = getattr(card, "default_eta", None)
    else:
        steps, eta = int(SOLVERS[solver].default_steps or DEFAULT_STEPS), None
    return {"solver": solver, "steps": steps, "eta": check_solver(solver, eta),
            "omega": float(getattr(card, "default_omega", DEFAULT_OMEGA)),
            "omega_per_class": dict(getattr(card, "omega_per_class", {})),
            "guidance_below": card_guidance_below(card)}


def card_guidance_below(card) -> int:
    """The timestep below which ``card``'s runs are guided where they leave it open (1000: every level)."""
    gb = getattr(card, "default_guidance_below", None)
    return GUIDE_ALL if gb is None else int(gb)


def card_settings(card, spec: str) -> dict:
    """The settings a new canvas for model ``spec`` records: the card's steps and ω (per class too), and
    whether its distilled student runs them."""
    d = sampling_defaults(card)
    student = default_student(card, d["omega"], d["omega_per_class"], d["guidance_below"])
    return {"model": str(spec), "steps": int(d["steps"]), "omega": d["omega"],
            "omega_per_class": {str(k): v for k, v in sorted(d["omega_per_class"].items())},
            **({"distilled": True} if student else {}),
            **({"guidance_below": d["guidance_below"]} if d["guidance_below"] < GUIDE_ALL else {})}


def settings_diff(stored: dict, new: dict, card=None) -> dict:
    """``{name: (stored, new)}`` for the settings that differ, both sides normalised alike."""
    a, b = normalise_settings(stored, card), normalise_settings(new, card)
    return {k: (a.get(k), v) for k, v in b.items() if a.get(k) != v}


@dataclass
class RegionDone:
    index: int
    bbox: tuple[int, int, int, int]  # (y0, y1, x0, x1) px
    done: int  # regions finished in this run so far
    total: int  # regions this run has to do
    forwards: int  # network passes for this region (a sweep: of the whole sweep so far)
    seconds: float
    # px this region counts for in the speed records: its own px scaled by the box it sampled over the
    # box of the whole region (a small regeneration job counts for less); None: the bbox's px
    work_px: int | None = None

    @property
    def cost_px(self) -> int:
        """What :class:`~src_models.synthesis.estimate.RunClock` adds for this region."""
        if self.work_px is not None:
            return int(self.work_px)
        y0, y1, x0, x1 = self.bbox
        return (y1 - y0) * (x1 - x0)


@dataclass
class RegionProgress:
    """Progress inside the region in flight (after each denoising level).  ``bbox`` is what the
    region writes (the region, or the bounding box of its regeneration job), ``area`` what it
    samples (``bbox`` and the context around it)."""

    index: int
    bbox: tuple[int, int, int, int]
    level: int
    levels: int
    forwards: int
    x0: torch.Tensor | None  # predicted clean latent of the sampled area, for previews
    area: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) px of the sampled area (x0's extent)


@dataclass
class SweepProgress:
    """Progress of a whole-canvas sweep: one tile of one level is done (``level`` is 1-based; the
    level is finished, and on disk, when ``tile == tiles``)."""

    level: int
    levels: int
    tile: int  # 1-based tile of this level
    tiles: int
    forwards: int  # network passes of this run so far
    x0: torch.Tensor | None  # predicted clean latent of the tile (C, h, w), for previews
    area: tuple[int, int, int, int]  # (y0, y1, x0, x1) px of the tile (x0's extent)
