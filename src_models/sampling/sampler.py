"""Random patch diffusion over an area of latent pixels: a *plan* times a *solver*.

``sample_area`` is a pure function in the manner of k-diffusion's ``sample_*``: a denoiser
callable, the starting noise, the noise schedule (ᾱ) and time pairs, a few options, a ``callback``
for progress and a ``cancel`` token.  No I/O, no state kept between calls.

The plan (:mod:`src_models.sampling.plan`: ``grid``, ``release``, ``sequential``) says which windows run at
each level and which pixels each writes back; the solver (:mod:`src_models.sampling.solvers`: ``ddim``,
``dpmpp-2m``) says how a level's ε moves the latents.  For the batched plans one short loop runs
each level: gather the windows from the level's values, denoise them (classifier-free guidance
around the denoiser, :func:`src_models.sampling.guidance.guided_eps`), scatter each pixel's ε from the
window that owns it, and step the whole area (solvers are pointwise, so stepping the area after
the scatter is the same as stepping every window before it).  ``sequential`` runs the release's
own loop, one window at a time with per-pixel step counters, as the reference.

Random numbers: window placement from ``rng`` (numpy); noise from ``generator`` (a CPU
``torch.Generator``), drawn once per level for the whole area: first the solver's level noise
(DDIM with η > 0), then the context noise (inpainting).  ``release`` and ``sequential`` consume
both identically, so with the same seeds they give the same latents (within float32 round-off:
the network sees other batch sizes).

With per-class guidance a window runs one pass per label among the pixels it *writes* (plus the
shared null pass): a label present only where it writes nothing would guide only pixels that are
thrown away.

No host-device synchronisation inside a level: plans, labels and index tables are made on the CPU
(the next level's while the device works on this one) and reach the device by non-blocking copies
from pinned memory; nothing is read back until the area is done.

Context (inpainting): where ``known`` is true the area holds finished latents ``context``; at
every level they are re-noised to that level (q(x_t | x0)) and fed to the windows, and they are
returned unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from src_models.sampling.guidance import LABEL_MAP, PER_CLASS, count_forwards, free_labels, guided_eps, host_to_device
from src_models.sampling.plan import check_plan, effective_window, owner_local, sequential_window  # noqa: F401 - effective_window re-exported
from src_models.sampling.schedule import q_sample
from src_models.sampling.solvers import make_solver


class Cancelled(Exception):
    """Raised inside a sampler when its cancel token is set."""


@dataclass
class LevelInfo:
    """Progress payload handed to ``callback`` after each finished level."""

    level: int  # 1-based count of finished levels
    levels: int
    windows: int  # windows run at this level
    forwards: int  # network passes (batch rows) so far
    x0: torch.Tensor | None = None  # predicted clean latent of the area (C, H, W), for previews


@dataclass
class SampleStats:
    forwards: int = 0
    windows_per_level: list[int] = field(default_factory=list)
    forwards_per_level: list[int] = field(default_factory=list)


def is_cancelled(cancel) -> bool:
    return cancel is not None and (cancel() if callable(cancel) else cancel.is_set())


class LabelCounter:
    """Which labels lie in any rectangle of a mask, in O(1) per rectangle and label (integral images)."""

    def __init__(self, mask_np: np.ndarray, k: int):
        self.k = k
        self.labels = [int(v) for v in np.unique(mask_np) if v != 0]
        self.sums = []
        for lab in self.labels:
            s = np.zeros((mask_np.shape[0] + 1, mask_np.shape[1] + 1), dtype=np.int64)
            s[1:, 1:] = np.cumsum(np.cumsum(mask_np == lab, axis=0), axis=1)
            self.sums.append(s)

    def __call__(self, wy: np.ndarray, wx: np.ndarray, size: int) -> list[list[int]]:
        """Labels present in the windows with top-left corners (wy, wx) (latent px) and side ``size``."""
        return self.rects(wy, wy + size, wx, wx + size)

    def rects(self, y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> list[list[int]]:
        """Labels present in the rectangles [y0, y1) × [x0, x1) (latent px)."""
        if not self.labels:
            return [[] for _ in range(len(y0))]
        k = self.k
        y0, y1, x0, x1 = (np.asarray(a) * k for a in (y0, y1, x0, x1))
        present = np.stack([s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0] > 0 for s in self.sums], axis=1)
        labels = np.asarray(self.labels)
        return [labels[row].tolist() for row in present]


def owned_labels(owner: np.ndarray, lat_mask: np.ndarray, n: int) -> list[list[int]]:
    """Non-zero labels among the pixels each of the ``n`` windows writes (``owner`` -1: nobody's)."""
    sel = owner >= 0
    span = int(lat_mask.max()) + 1 if lat_mask.size else 1
    hits = np.bincount(owner[sel] * span + lat_mask[sel].astype(np.int64), minlength=n * span).reshape(n, span) > 0
    hits[:, 0] = False
    return [np.flatnonzero(row).tolist() for row in hits]


def pass_labels(conditioning: str, owner, lat_mask, in_window: LabelCounter, wy, wx, size: int) -> list[list[int]]:
    """The labels each window runs a guided pass for: per class, those it writes; with a
    whole label map, any label in the window (it changes the ε of every pixel of the window)."""
    if conditioning == PER_CLASS:
        return owned_labels(owner, lat_mask, len(wy))
    return in_window(wy, wx, size)


def window_index(wy: np.ndarray, wx: np.ndarray, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (N, size) of the windows at corners (wy, wx), on ``device`` (no sync)."""
    ar = np.arange(size)
    return host_to_device(np.stack([wy[:, None] + ar, wx[:, None] + ar]), device)


def gather(a: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Stack the windows of ``a`` (C, H, W) at ``index`` (from :func:`window_index`) into (N, C, s, s)."""
    ys, xs = index
    return a[:, ys[:, :, None], xs[:, None, :]].permute(1, 0, 2, 3)


def scatter(windows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(C, h, w) from (N, C, s, s): each pixel from its owner window; ``table`` = (owner, ly, lx)."""
    own, ly, lx = table
    return windows[own, :, ly, lx].permute(2, 0, 1)


class Guided:
    """Classifier-free guidance around the denoiser for stacked windows; counts the passes.

    ``guidance_below`` limits guidance to the levels with timestep t below it: the noisier levels
    take ω 0 for every class, so a whole-label-map model runs its conditional pass alone there
    (None or 1000: every level is guided).

    ``student`` (a guidance-distilled copy of the denoiser, whose single pass already gives the guided
    ε) runs the guided levels instead, in one pass at ω 0; the others stay with ``denoiser`` at ω 0.
    Without a limit the student is simply the run's ``denoiser``, at ω 0."""

    def __init__(self, denoiser, omega, conditioning: str, max_batch: int, stats: SampleStats, device,
                 guidance_below: int | None = None, student=None):
        if conditioning not in (PER_CLASS, LABEL_MAP):
            raise ValueError(f"unknown conditioning {conditioning!r}")
        self.denoiser, self.conditioning, self.device = denoiser, conditioning, device
        omega = torch.as_tensor(omega, dtype=torch.float32)
        self.free = free_labels(omega, conditioning)  # before ω moves to the device
        self.omega = omega.to(device)
        # ω 0 for every class: its free classes decided on the host, its vector made on the device (no copy)
        self.free_unguided = free_labels(torch.zeros(omega.shape, dtype=torch.float32), conditioning)
        self.omega_unguided = torch.zeros(omega.shape, dtype=torch.float32, device=device)
        self.guidance_below = None if guidance_below is None else int(guidance_below)
        self.student = student
        self.max_batch, self.stats = max_batch, stats

    def __call__(self, xs: torch.Tensor, ms: torch.Tensor, labels: list[list[int]], t: int):
        ts = torch.full((xs.shape[0],), t, dtype=torch.long, device=self.device)
        net = self.denoiser
        if self.guidance_below is not None and int(t) >= self.guidance_below:
            omega, free = self.omega_unguided, self.free_unguided
        elif self.student is not None:  # its one pass is the guided ε
            omega, free, net = self.omega_unguided, self.free_unguided, self.student
        else:
            omega, free = self.omega, self.free
        eps = guided_eps(net, xs, ts, ms, omega, self.conditioning, self.max_batch, labels, free=free)
        passes = count_forwards(labels, self.conditioning, free)
        self.stats.forwards += passes
        return eps, passes


class _Area:
    """The constants of one ``sample_area`` call: sizes, mask (host and device), context."""

    def __init__(self, noise, mask, known, context, alphas, window: int, conditioning: str):
        self.device = noise.device
        self.C, self.H, self.W = noise.shape
        self.k = mask.shape[-1] // self.W
        if mask.shape[-2] != self.H * self.k or mask.shape[-1] != self.W * self.k:
            raise ValueError(f"mask {tuple(mask.shape[-2:])} is not a multiple of the latent area {(self.H, self.W)}")
        self.window, self.conditioning, self.alphas = window, conditioning, alphas
        self.mask_np = mask[0].detach().cpu().numpy()
        self.lat_mask = self.mask_np[:: self.k, :: self.k]
        self.mask_dev = mask.to(device=self.device, dtype=torch.long)
        self.in_window = LabelCounter(self.mask_np, self.k)
        self.known = None if known is None else known.to(device=self.device, dtype=torch.bool)
        self.context = None if known is None else context.to(device=self.device, dtype=torch.float32)
        self.eligible = None if known is None else ~known.cpu().numpy().astype(bool)

    def source(self, x: torch.Tensor, t: int, ctx_z) -> torch.Tensor:
        """The level's values: ``x``, with the context re-noised to ``t`` where known."""
        if self.known is None:
            return x
        return torch.where(self.known, q_sample(self.context, t, self.alphas, ctx_z), x)

    def draw_level(self, solver, t_next: int, draw):
        """This level's noise, drawn for the whole area: the solver's, then the context's."""
        lvl_z = host_to_device(draw((self.C, self.H, self.W)), self.device) if solver.needs_noise(t_next) else None
        ctx_z = host_to_device(draw((self.C, self.H, self.W)), self.device) if self.known is not None else None
        return lvl_z, ctx_z


def _prepare(area: _Area, info, pairs, li: int, solver, rng, draw) -> dict:
    """Level ``li`` of a batched plan: windows, labels, index tables, noise (CPU work, no sync)."""
    plan = info.build(area.H, area.W, area.window, rng, area.eligible)
    wy, wx = plan.starts()
    lvl_z, ctx_z = area.draw_level(solver, pairs[li][1], draw)
    k, s, dev = area.k, area.window, area.device
    level = {
        "windows": len(plan),
        "index": window_index(wy, wx, s, dev),
        "mask_index": window_index(wy * k, wx * k, s * k, dev),
        "lvl_z": lvl_z,
        "ctx_z": ctx_z,
    }
    if info.fuse == "mean":  # every window writes all its pixels: its passes cover every label in it
        level["labels"] = area.in_window(wy, wx, s)
        level["fuse"] = _mean_fuser(wy, wx, s, area)
    else:
        owner = plan.owner_in(0, area.H, 0, area.W)
        level["labels"] = pass_labels(area.conditioning, owner, area.lat_mask, area.in_window, wy, wx, s)
        table = host_to_device(np.stack(owner_local(plan, owner, 0, 0)), dev)
        level["fuse"] = lambda eps_w, _t=table: scatter(eps_w, _t)
    return level


def _mean_fuser(wy: np.ndarray, wx: np.ndarray, s: int, area: _Area):
    """(N, C, s, s) window ε -> (C, H, W): the mean over the windows covering each pixel."""
    cover = np.zeros((area.H, area.W), np.float32)
    for y, x in zip(wy.tolist(), wx.tolist()):
        cover[y : y + s, x : x + s] += 1
    inv = host_to_device(1.0 / np.maximum(cover, 1), area.device)

    def fuse(eps_w: torch.Tensor) -> torch.Tensor:
        acc = torch.zeros((eps_w.shape[1], area.H, area.W), dtype=eps_w.dtype, device=eps_w.device)
        for n, (y, x) in enumerate(zip(wy.tolist(), wx.tolist())):
            acc[:, y : y + s, x : x + s] += eps_w[n]
        return acc * inv.to(eps_w.dtype)

    return fuse


def _resample_level(area: _Area, cur: dict, guided: Guided, solver, x, state, t: int, t_next: int, draw):
    """RePaint's resampling: take the level's result back to ``t`` (q(x_t | x_t_next), fresh noise)
    and run the level again, with the context re-noised afresh; the generated part thus sees its
    known surroundings once more at every level."""
    a_t, a_n = float(area.alphas[t]), float(area.alphas[t_next])
    z = host_to_device(draw(tuple(x.shape)), area.device)
    x = (a_t / a_n) ** 0.5 * x + (1.0 - a_t / a_n) ** 0.5 * z
    lvl_z, ctx_z = area.draw_level(solver, t_next, draw)
    xs = gather(area.source(x, t, ctx_z), cur["index"])
    eps_w, passes = guided(xs, gather(area.mask_dev, cur["mask_index"]), cur["labels"], t)
    x, x0, state = solver.step(x, cur["fuse"](eps_w), t, t_next, state, lvl_z)
    return x, x0, state, passes


def _run_batched(area: _Area, info, guided: Guided, solver, pairs, x, rng, draw, callback, cancel, resample=1):
    """The batched plans: gather, denoise, scatter ε, step; the next level is planned meanwhile."""
    state = solver.init(x)
    nxt = _prepare(area, info, pairs, 0, solver, rng, draw) if pairs else None
    for li, (t, t_next) in enumerate(pairs):
        if is_cancelled(cancel):
            raise Cancelled()
        cur = nxt
        xs = gather(area.source(x, t, cur["ctx_z"]), cur["index"])
        eps_w, passes = guided(xs, gather(area.mask_dev, cur["mask_index"]), cur["labels"], t)
        # the device works on this level's passes; plan the next one meanwhile
        nxt = _prepare(area, info, pairs, li + 1, solver, rng, draw) if li + 1 < len(pairs) else None
        x, x0, state = solver.step(x, cur["fuse"](eps_w), t, t_next, state, cur["lvl_z"])
        for _ in range(resample - 1 if (area.known is not None and t_next >= 0) else 0):
            x, x0, state, more = _resample_level(area, cur, guided, solver, x, state, t, t_next, draw)
            passes += more
        guided.stats.windows_per_level.append(cur["windows"])
        guided.stats.forwards_per_level.append(passes)
        if callback is not None:
            callback(LevelInfo(li + 1, len(pairs), cur["windows"], guided.stats.forwards, x0))
    return x


def _sequential_level(area: _Area, guided: Guided, solver, run: dict, level: int, t: int, t_next: int):
    """One level of the release's own loop: one window at a time, centred on a random pixel with
    the lowest step count; pixels one level ahead are fed their previous-level value; only pixels
    at this level are written and advanced.  Returns (windows, passes) of the level."""
    x, x_prev, x0_area, state, counts = run["x"], run["x_prev"], run["x0"], run["state"], run["counts"]
    lvl_z, ctx_z = area.draw_level(solver, t_next, run["draw"])
    ctx_noisy = area.source(x, t, ctx_z) if area.known is not None else None
    s, k, windows, passes = area.window, area.k, 0, 0
    while (counts[run["eligible"]] == level).any():
        w, _ = sequential_window(counts, run["eligible"], s, run["rng"])
        sy, sx = slice(w.y, w.y + s), slice(w.x, w.x + s)
        at_level = counts[sy, sx] == level
        upd_np = at_level & run["eligible"][sy, sx]
        cur_m, upd = host_to_device(np.stack([at_level, upd_np]), area.device)
        cur, prev = x[:, sy, sx], x_prev[:, sy, sx]
        inp = torch.where(cur_m, cur, prev)
        if ctx_noisy is not None:
            inp = torch.where(area.known[sy, sx], ctx_noisy[:, sy, sx], inp)
        labels = area.in_window(np.array([w.y]), np.array([w.x]), s)
        ms = area.mask_dev[None, :, w.y * k : (w.y + s) * k, w.x * k : (w.x + s) * k]
        eps, n = guided(inp[None], ms, labels, t)
        window_state = {key: v[None, :, sy, sx] for key, v in state.items()}
        nz = lvl_z[None, :, sy, sx] if lvl_z is not None else None
        x_next, x0, new_state = solver.step(inp[None], eps, t, t_next, window_state, nz)
        x_prev[:, sy, sx] = torch.where(upd, cur, prev)
        x[:, sy, sx] = torch.where(upd, x_next[0], cur)
        x0_area[:, sy, sx] = torch.where(upd, x0[0], x0_area[:, sy, sx])
        for key, v in state.items():
            v[:, sy, sx] = torch.where(upd, new_state[key][0], v[:, sy, sx])
        counts[sy, sx] += upd_np
        windows, passes = windows + 1, passes + n
    return windows, passes


def _run_sequential(area: _Area, info, guided: Guided, solver, pairs, x, rng, draw, callback, cancel):
    """The release's order, level by level; the step counters live on the CPU only."""
    eligible = np.ones((area.H, area.W), dtype=bool) if area.eligible is None else area.eligible
    run = {"x": x, "x_prev": x.clone(), "x0": x.clone(), "state": solver.init(x), "rng": rng, "draw": draw,
           "counts": np.zeros((area.H, area.W), dtype=np.int64), "eligible": eligible}
    for li, (t, t_next) in enumerate(pairs if eligible.any() else []):
        if is_cancelled(cancel):
            raise Cancelled()
        windows, passes = _sequential_level(area, guided, solver, run, li, t, t_next)
        guided.stats.windows_per_level.append(windows)
        guided.stats.forwards_per_level.append(passes)
        if callback is not None:
            callback(LevelInfo(li + 1, len(pairs), windows, guided.stats.forwards, run["x0"]))
    return run["x"]


@torch.inference_mode()
def sample_area(
    denoiser,
    noise: torch.Tensor,
    mask: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    pairs: list[tuple[int, int]],
    omega: torch.Tensor,
    *,
    window: int,
    plan: str = "grid",
    solver: str = "ddim",
    eta: float | None = None,
    generator: torch.Generator | None = None,
    rng: np.random.Generator | None = None,
    context: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    max_batch: int = 32,
    conditioning: str | None = None,
    callback=None,
    cancel=None,
    stats: SampleStats | None = None,
    resample: int = 1,
    guidance_below: int | None = None,
    student=None,
) -> torch.Tensor:
    """Denoise ``noise`` (C, H, W) under ``mask`` (1, H·k, W·k) labels; returns the clean latent.

    With ``known`` context and ``resample`` > 1 every level runs ``resample`` times, re-noised back
    to its start in between (RePaint), so the generated part harmonises with its surroundings
    (batched plans only; ``resample`` x the forwards).

    ``guidance_below`` (None: every level) guides only the levels with timestep t below it; the
    others run with ω 0 (:class:`Guided`); a guidance-distilled ``student`` of the denoiser runs the
    guided levels in one pass where given.

    ``plan`` and ``solver`` name entries of :data:`src_models.sampling.plan.PLANS` and
    :data:`src_models.sampling.solvers.SOLVERS`; ``eta`` (None: the solver's default) is DDIM's η.
    Random numbers come from ``generator`` (a CPU ``torch.Generator``: noise) and ``rng`` (numpy:
    window placement), so a result is reproducible across devices for the same seeds.
    """
    info = check_plan(plan)
    stepper = make_solver(solver, alphas_cumprod, pairs, eta)
    conditioning = conditioning or getattr(denoiser, "conditioning", PER_CLASS)
    area = _Area(noise, mask, known, context, alphas_cumprod, window, conditioning)
    stats = stats if stats is not None else SampleStats()
    guided = Guided(denoiser, omega, conditioning, max_batch, stats, area.device, guidance_below, student)
    rng = rng if rng is not None else np.random.default_rng(0)

    def draw(shape):  # noise from the CPU generator: the same numbers on every device
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    if info.batched:
        x = _run_batched(area, info, guided, stepper, pairs, noise.float().clone(), rng, draw, callback, cancel,
                         resample)
    else:
        x = _run_sequential(area, info, guided, stepper, pairs, noise.float().clone(), rng, draw, callback, cancel)
    if area.known is not None:
        x = torch.where(area.known, area.context, x)
    return x
