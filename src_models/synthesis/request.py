"""The plain values that describe a run and the events it yields (no torch here, so a GUI can
build a request without importing it).

Options of a run are checked in one place each: the plan by :func:`src_models.sampling.plan.check_plan`,
the solver and η by :func:`src_models.sampling.solvers.check_solver`, all of them together by
:meth:`SynthesisRequest.check`.  The CLI and the widgets list :data:`PLANS` and :data:`SOLVERS`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from src_models.sampling.plan import PLANS, check_plan
from src_models.sampling.solvers import SOLVERS, check_solver

if TYPE_CHECKING:  # annotations only
    import torch

__all__ = ["PLANS", "SOLVERS", "SynthesisRequest", "RegionDone", "RegionProgress", "SweepProgress",
           "default_plan", "normalise_settings", "settings_diff", "MAX_STEPS"]

MAX_STEPS = 1000  # the models' training steps
MAX_RESAMPLE = 20
# the patch-order option was called "schedule" before plans and solvers were apart
LEGACY_SCHEDULES = {"parallel": "grid", "sequential": "sequential"}


def default_plan(card) -> str:
    """``release`` for the published checkpoints (the release's own distribution), ``grid`` for
    the project's models (trained and judged with it; fewer windows)."""
    arch = (getattr(card, "unet", None) or {}).get("arch", "")
    return "release" if str(arch).startswith("release") else "grid"


@dataclass
class SynthesisRequest:
    """Everything a run needs, as plain values (built on the GUI thread or from the CLI).

    ``plan`` None means the model's default (:func:`default_plan`); ``steps`` None the solver's
    default (for ``ddim`` the model card's); ``eta`` None the solver's (``ddim`` 1, as the release;
    ``dpmpp-2m`` 0).  :meth:`resolved` fills them in for a model card.
    """

    model: str = "default"
    steps: int | None = None
    omega: float = 3.0
    omega_per_class: dict[int, float] = field(default_factory=dict)
    eta: float | None = None
    seed: int = 0
    plan: str | None = None
    solver: str = "ddim"
    sweep: bool = False  # whole canvas level by level (src_models/synthesis/sweep.py) instead of region by region
    device: str = "auto"
    area: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) px: only regions touching it
    centre: tuple[float, float] | None = None  # (y, x) px: nearest regions go first
    max_batch: int | None = None  # network batch rows per call; None: from the device's memory (halved on OOM)
    fast: bool = True  # channels_last, and fp16 autocast + a memory-sized batch on CUDA (src_models/models/fast.py)
    compile: bool = False  # torch.compile the network for the window size (CUDA)
    halo: int | None = None  # latent px of context around each region (default: half a window)
    resample: int = 1  # where there is context: each level run this many times, re-noised in between (RePaint)

    def check(self) -> None:
        """Raise ValueError (one line, naming the option) for values no run can use."""
        if self.plan is not None:
            check_plan(self.plan)
        check_solver(self.solver, self.eta)
        if self.steps is not None and not 1 <= int(self.steps) <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 1 <= int(self.resample) <= MAX_RESAMPLE:
            raise ValueError(f"resample must be between 1 and {MAX_RESAMPLE}, got {self.resample}")
        if int(self.resample) > 1 and self.solver != "ddim":
            raise ValueError(f"resample needs the ddim solver (a multistep solver's history does not survive "
                             f"re-noising); got {self.solver}")

    def resolved(self, card=None) -> "SynthesisRequest":
        """A checked copy with plan, steps and η filled in for ``card`` (a model card)."""
        self.check()
        plan = self.plan or (default_plan(card) if card is not None else "grid")
        steps = self.steps
        if steps is None:
            steps = SOLVERS[self.solver].default_steps or int(getattr(card, "default_steps", 50))
        eta = check_solver(self.solver, self.eta)
        return dataclasses.replace(self, plan=plan, steps=int(steps), eta=eta)

    def settings(self) -> dict:
        """The values that decide the pixels (device and batch size do not)."""
        return {
            "model": str(self.model),
            "steps": None if self.steps is None else int(self.steps),
            "omega": float(self.omega),
            "omega_per_class": {str(k): float(v) for k, v in sorted(self.omega_per_class.items())},
            "eta": None if self.eta is None else float(self.eta),
            "seed": int(self.seed),
            "plan": self.plan,
            "solver": self.solver,
            "sweep": bool(self.sweep),
            "halo": self.halo,
            "resample": int(self.resample),
        }


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
    if card is not None:
        solver = out.get("solver") or "ddim"
        if out.get("plan") is None:
            out["plan"] = default_plan(card)
        if out.get("eta") is None and solver in SOLVERS:
            out["eta"] = check_solver(solver, None)
        if out.get("steps") is None and solver in SOLVERS:
            out["steps"] = int(SOLVERS[solver].default_steps or getattr(card, "default_steps", 50))
    return out


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


@dataclass
class RegionProgress:
    """Progress inside the region in flight (after each denoising level)."""

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
