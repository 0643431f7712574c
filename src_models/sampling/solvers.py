"""Solvers (steppers): how one level's ε moves the latents, in the manner of diffusers' schedulers
and k-diffusion's samplers.

A solver is made for one run (the noise schedule ᾱ and the time pairs), then::

    state = solver.init(x)                                     # per-pixel buffers, like x
    x, x0, state = solver.step(x, eps, t, t_next, state, noise)

Every update is *pointwise*: a pixel's new value depends only on its own x, ε, state and noise.
So a plan may step whole areas, tiles or single windows, and gather or scatter the state like the
latents.  The coefficients are plain floats computed on the host from ᾱ (float32, as the release's
buffers), so a step never waits for the device.  Predicted x0 is clamped to [-1, 1] as in the
release, and ε is never recomputed from the clamped x0.  ``t_next = -1`` ends the chain: the step
returns x0.

``ddim``
    the release's DDIM update; η = 1 (stochastic, the release's setting) by default, 0 deterministic.
``dpmpp-2m``
    DPM-Solver++(2M) (Lu et al. 2022), the multistep data-prediction form for ε-models, on the
    release's cosine ᾱ: with λ_t = log(√ᾱ_t / √(1-ᾱ_t)), h = λ_next − λ_t and r = h_prev / h,
    D = (1 + 1/2r)·x0_t − (1/2r)·x0_prev (first order, D = x0_t, at the first level), and
    x_next = (σ_next/σ_t)·x_t − √ᾱ_next·(e^{−h} − 1)·D.  Deterministic (η = 0).  It keeps the
    previous level's x0 per pixel (``state["x0"]``).

No torch import here, so the CLI and the widgets can read :data:`SOLVERS` without it.  Adding a
solver: write its class and add it to :data:`SOLVERS`.
"""
from __future__ import annotations

import math


class Solver:
    """Base class: ᾱ as host floats and the time pairs of the run."""

    name = ""
    description = ""
    default_steps: int | None = None  # None: the model card's default
    default_eta = 0.0
    stochastic = False  # accepts η > 0

    def __init__(self, alphas_cumprod, pairs, eta: float | None = None):
        self.alphas = [float(a) for a in alphas_cumprod.float().cpu().tolist()]
        self.pairs = [(int(a), int(b)) for a, b in pairs]
        self.eta = float(self.default_eta if eta is None else eta)
        self.prev = {t: tp for (tp, _), (t, _) in zip(self.pairs, self.pairs[1:])}  # t -> previous level's t

    def alpha(self, t: int) -> float:
        """ᾱ_t; ᾱ_{-1} = 1 (the clean end of the chain)."""
        return 1.0 if t < 0 else self.alphas[t]

    def init(self, x) -> dict:
        """Per-pixel buffers (tensors shaped like ``x``) the solver keeps between levels."""
        return {}

    def needs_noise(self, t_next: int) -> bool:
        """Whether the step to ``t_next`` takes a standard-normal ``noise`` shaped like x."""
        return False

    def x0(self, x, eps, t: int):
        """Predicted clean latent, clamped to [-1, 1]."""
        a = self.alpha(t)
        return ((x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)).clamp(-1.0, 1.0)

    def step(self, x, eps, t: int, t_next: int, state: dict, noise=None):
        raise NotImplementedError


class DDIM(Solver):
    name = "ddim"
    description = "DDIM, the release's update; eta 1 (stochastic, the release's setting) by default"
    default_steps = None
    default_eta = 1.0
    stochastic = True

    def needs_noise(self, t_next: int) -> bool:
        return self.eta > 0 and t_next >= 0

    def step(self, x, eps, t: int, t_next: int, state: dict, noise=None):
        x, eps = x.float(), eps.float()
        x0 = self.x0(x, eps, t)
        if t_next < 0:
            return x0, x0, state
        a_t, a_n = self.alpha(t), self.alpha(t_next)
        sigma = self.eta * math.sqrt(max((1 - a_t / a_n) * (1 - a_n) / (1 - a_t), 0.0))
        c = math.sqrt(max(1 - a_n - sigma**2, 0.0))
        x_next = math.sqrt(a_n) * x0 + c * eps
        if self.needs_noise(t_next):
            if noise is None:
                raise ValueError("DDIM with eta > 0 needs noise for every step but the last")
            x_next = x_next + sigma * noise.float()
        return x_next, x0, state


class DPMSolverPP2M(Solver):
    name = "dpmpp-2m"
    description = "DPM-Solver++(2M), deterministic multistep; provisional default 20 steps"
    default_steps = 20  # provisional: to be set from fd / c2st against 50 DDIM steps on the default model
    default_eta = 0.0
    stochastic = False

    def init(self, x) -> dict:
        return {"x0": x.float().new_zeros(x.shape)}

    def lam(self, t: int) -> float:
        a = self.alpha(t)
        return 0.5 * math.log(a / (1.0 - a))

    def step(self, x, eps, t: int, t_next: int, state: dict, noise=None):
        x, eps = x.float(), eps.float()
        x0 = self.x0(x, eps, t)
        if t_next < 0:
            return x0, x0, {**state, "x0": x0}
        a_t, a_n = self.alpha(t), self.alpha(t_next)
        h = self.lam(t_next) - self.lam(t)
        t_prev = self.prev.get(t)
        d = x0
        if t_prev is not None:
            r = (self.lam(t) - self.lam(t_prev)) / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * state["x0"].float()
        x_next = math.sqrt((1 - a_n) / (1 - a_t)) * x - math.sqrt(a_n) * math.expm1(-h) * d
        return x_next, x0, {**state, "x0": x0}


SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (DDIM, DPMSolverPP2M)}


def check_solver(name: str, eta: float | None = None) -> float:
    """The one place that validates a solver and its η; returns the η to use."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r} (use {', '.join(SOLVERS)})")
    cls = SOLVERS[name]
    if eta is None:
        return float(cls.default_eta)
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a number >= 0, got {eta}")
    if eta > 0 and not cls.stochastic:
        raise ValueError(f"solver {name} is deterministic; eta {eta} applies to ddim only (use eta 0)")
    return eta


def make_solver(name: str, alphas_cumprod, pairs, eta: float | None = None) -> Solver:
    eta = check_solver(name, eta)
    return SOLVERS[name](alphas_cumprod, pairs, eta)
