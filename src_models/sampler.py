"""Random patch diffusion over an area of latent pixels.

``sample_area`` is a pure function in the manner of k-diffusion's ``sample_*``: a denoiser
callable, the starting noise, the schedule, a few options, a ``callback`` for progress and a
``cancel`` token.  No I/O, no state kept between calls.

Two schedules:

``parallel`` (default)
    at every level a fresh random-offset grid of windows tiles the area; every latent pixel is
    written exactly once per level and all windows of the level read only that level's values,
    so the whole level runs as one batch of network passes.
``sequential`` (the release's order)
    a per-pixel step counter; one window at a time is centred on a random pixel with the lowest
    count; pixels one level ahead are fed their previous-level value; only pixels at the lowest
    level are written and advanced.

Context (inpainting): where ``known`` is true the area holds finished latents ``context``; at
every level they are re-noised to that level (q(x_t | x0)) and fed to the windows, and they are
returned unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .guidance import LABEL_MAP, PER_CLASS, guided_eps
from .plan import Window, grid_plan, sequential_window
from .schedule import ddim_step, q_sample

SCHEDULES = ("parallel", "sequential")


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


def _is_cancelled(cancel) -> bool:
    return cancel is not None and (cancel() if callable(cancel) else cancel.is_set())


class LabelCounter:
    """Which labels lie in any window of a mask, in O(1) per window and label (integral images)."""

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
        if not self.labels:
            return [[] for _ in range(len(wy))]
        y0, x0 = wy * self.k, wx * self.k
        y1, x1 = y0 + size * self.k, x0 + size * self.k
        present = np.stack([s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0] > 0 for s in self.sums], axis=1)
        labels = np.asarray(self.labels)
        return [labels[row].tolist() for row in present]


def _gather(a: torch.Tensor, wy: np.ndarray, wx: np.ndarray, size: int) -> torch.Tensor:
    """Stack the windows of ``a`` (C, H, W) at corners (wy, wx) into (N, C, size, size), in one op."""
    ar = np.arange(size)
    ys = torch.as_tensor(wy[:, None] + ar, device=a.device)
    xs = torch.as_tensor(wx[:, None] + ar, device=a.device)
    return a[:, ys[:, :, None], xs[:, None, :]].permute(1, 0, 2, 3)


def effective_window(size: int, height: int, width: int, multiple: int = 8) -> int:
    """The window side for an area: ``size``, or the largest multiple of ``multiple`` that fits."""
    side = min(size, height, width)
    if side < size:
        side -= side % multiple
    if side < multiple:
        raise ValueError(f"an area of {height}x{width} latent pixels is too small for the model (minimum {multiple})")
    return side


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
    schedule: str = "parallel",
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    rng: np.random.Generator | None = None,
    context: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    max_batch: int = 32,
    conditioning: str | None = None,
    callback=None,
    cancel=None,
    stats: SampleStats | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` (C, H, W) under ``mask`` (1, H·k, W·k) labels; returns the clean latent.

    Random numbers come from ``generator`` (a CPU ``torch.Generator``: noise) and ``rng`` (numpy:
    window placement), so a result is reproducible across devices for the same seeds.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    conditioning = conditioning or getattr(denoiser, "conditioning", PER_CLASS)
    if conditioning not in (PER_CLASS, LABEL_MAP):
        raise ValueError(f"unknown conditioning {conditioning!r}")
    rng = rng if rng is not None else np.random.default_rng(0)
    stats = stats if stats is not None else SampleStats()
    device = noise.device
    C, H, W = noise.shape
    k = mask.shape[-1] // W
    if mask.shape[-2] != H * k or mask.shape[-1] != W * k:
        raise ValueError(f"mask {tuple(mask.shape[-2:])} is not a multiple of the latent area {(H, W)}")
    mask_np = mask[0].detach().cpu().numpy()
    mask_dev = mask.to(device=device, dtype=torch.long)
    if known is not None:
        known = known.to(device=device, dtype=torch.bool)
        context = context.to(device=device, dtype=torch.float32)
    omega = torch.as_tensor(omega, dtype=torch.float32, device=device)

    def randn(shape):
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    def renoise(t):
        return q_sample(context, t, alphas_cumprod, randn(context.shape)) if known is not None else None

    count_labels = LabelCounter(mask_np, k)

    def run_windows(xs, wy, wx, t, t_next, level_noise):
        """Denoise the stacked windows ``xs`` (corners wy, wx) from t to t_next in one guided batch."""
        labels = count_labels(wy, wx, window)
        ms = _gather(mask_dev, wy * k, wx * k, window * k)
        ts = torch.full((len(wy),), t, dtype=torch.long, device=device)
        eps = guided_eps(denoiser, xs, ts, ms, omega, conditioning, max_batch, labels)
        passes = len(wy) + sum(len(lab) if conditioning == PER_CLASS else int(bool(lab)) for lab in labels)
        stats.forwards += passes
        nz = _gather(level_noise, wy, wx, window) if level_noise is not None else None
        x_next, x0 = ddim_step(xs, eps, t, t_next, alphas_cumprod, eta, noise=nz)
        return x_next, x0, passes

    levels = len(pairs)
    x = noise.float().clone()
    if schedule == "parallel":
        for li, (t, t_next) in enumerate(pairs):
            if _is_cancelled(cancel):
                raise Cancelled()
            src = torch.where(known, renoise(t), x) if known is not None else x
            plan = grid_plan(H, W, window, rng)
            wy, wx = plan.starts()
            level_noise = randn((C, H, W)) if (eta > 0 and t_next >= 0) else None
            x_next, x0, passes = run_windows(_gather(src, wy, wx, window), wy, wx, t, t_next, level_noise)
            # every pixel takes the value of the one window whose cell holds it
            owner, ly, lx = (torch.as_tensor(np.ascontiguousarray(a), device=device) for a in plan.owners())
            x = x_next[owner, :, ly, lx].permute(2, 0, 1).contiguous()
            x0_area = x0[owner, :, ly, lx].permute(2, 0, 1) if callback is not None else None
            stats.windows_per_level.append(len(plan))
            stats.forwards_per_level.append(passes)
            if callback is not None:
                callback(LevelInfo(li + 1, levels, len(plan), stats.forwards, x0_area))
    else:
        counts = np.zeros((H, W), dtype=np.int64)
        eligible = np.ones((H, W), dtype=bool) if known is None else ~known.cpu().numpy()
        x_prev = x.clone()
        counts_t = torch.zeros((H, W), dtype=torch.long, device=device)
        eligible_t = torch.as_tensor(eligible, device=device)
        level_now, level_noise, ctx_noisy = -1, None, None
        windows = passes_level = 0
        if not eligible.any():
            levels = 0
        while eligible.any():
            if _is_cancelled(cancel):
                raise Cancelled()
            level = int(counts[eligible].min())
            if level != level_now:
                if level_now >= 0:
                    stats.windows_per_level.append(windows)
                    stats.forwards_per_level.append(passes_level)
                    if callback is not None:
                        callback(LevelInfo(level_now + 1, levels, windows, stats.forwards, None))
                if level >= levels:
                    break
                level_now, windows, passes_level = level, 0, 0
                t, t_next = pairs[level]
                level_noise = randn((C, H, W)) if (eta > 0 and t_next >= 0) else None
                ctx_noisy = renoise(t)
            w, _ = sequential_window(counts, eligible, window, rng)
            sy, sx = slice(w.y, w.y + window), slice(w.x, w.x + window)
            c = counts_t[sy, sx]
            cur, prev = x[:, sy, sx], x_prev[:, sy, sx]
            inp = torch.where(c == level, cur, prev)
            if known is not None:
                inp = torch.where(known[sy, sx], ctx_noisy[:, sy, sx], inp)
            x_next, _, passes = run_windows(inp[None], np.array([w.y]), np.array([w.x]), t, t_next, level_noise)
            upd = (c == level) & eligible_t[sy, sx]
            x_prev[:, sy, sx] = torch.where(upd, cur, prev)
            x[:, sy, sx] = torch.where(upd, x_next[0], cur)
            counts_t[sy, sx] += upd.long()
            counts[sy, sx] += upd.cpu().numpy()
            windows += 1
            passes_level += passes
    if known is not None:
        x = torch.where(known, context, x)
    return x
