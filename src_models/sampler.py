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

With per-class guidance the parallel schedule runs, for each window, one pass per label found on
the latent grid of the window's *cell* (plus the shared null pass): a label present only in the
part of the window that is not written back would guide only pixels that are thrown away, so its
pass is skipped (the pixels written are the same; on the CPU the smaller batches can change the
last bits of a network's output, as any change of batch composition does).

No host-device synchronisation inside a level: plans, labels and pass tables are made on the CPU
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

from .guidance import LABEL_MAP, PER_CLASS, guided_eps, host_to_device
from .plan import grid_plan, sequential_window
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


def _window_index(wy: np.ndarray, wx: np.ndarray, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (N, size) of the windows at corners (wy, wx), on ``device`` (no sync)."""
    ar = np.arange(size)
    return host_to_device(np.stack([wy[:, None] + ar, wx[:, None] + ar]), device)


def _gather(a: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Stack the windows of ``a`` (C, H, W) at ``index`` (from :func:`_window_index`) into (N, C, s, s)."""
    ys, xs = index
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

    def draw(shape):  # noise from the CPU generator: the same numbers on every device
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def renoise(t, z):
        return q_sample(context, t, alphas_cumprod, z)

    labels_in_window = LabelCounter(mask_np, k)
    # per-class passes are needed only for the labels on the latent grid of the cell written back
    labels_in_cell = LabelCounter(mask_np[::k, ::k], 1) if conditioning == PER_CLASS else None

    def guided(xs, ms, labels, t):
        """Launch the guided passes of the stacked windows ``xs`` (class masks ``ms``) at level t."""
        ts = torch.full((xs.shape[0],), t, dtype=torch.long, device=device)
        eps = guided_eps(denoiser, xs, ts, ms, omega, conditioning, max_batch, labels)
        passes = xs.shape[0] + sum(len(lab) if conditioning == PER_CLASS else int(bool(lab)) for lab in labels)
        stats.forwards += passes
        return eps, passes

    levels = len(pairs)
    x = noise.float().clone()
    if schedule == "parallel":

        def prepare(li):
            """Level ``li``'s plan, labels, indices and noise: CPU work, copied without a sync.
            Random numbers are drawn in level order (context noise, then level noise)."""
            t, t_next = pairs[li]
            plan = grid_plan(H, W, window, rng)
            wy, wx = plan.starts()
            if labels_in_cell is not None:
                rows, cols = np.array(plan.rows)[:, :2], np.array(plan.cols)[:, :2]
                cy, cx = np.repeat(rows, len(cols), axis=0), np.tile(cols, (len(rows), 1))
                labels = labels_in_cell.rects(cy[:, 0], cy[:, 1], cx[:, 0], cx[:, 1])
            else:
                labels = labels_in_window(wy, wx, window)
            ctx_z = host_to_device(draw(context.shape), device) if known is not None else None
            lvl_z = host_to_device(draw((C, H, W)), device) if (eta > 0 and t_next >= 0) else None
            owners = host_to_device(np.stack([np.ascontiguousarray(a) for a in plan.owners()]), device)
            return {
                "plan": plan,
                "labels": labels,
                "index": _window_index(wy, wx, window, device),
                "mask_index": _window_index(wy * k, wx * k, window * k, device),
                "owners": owners,
                "ctx_z": ctx_z,
                "lvl_z": lvl_z,
            }

        nxt = prepare(0) if levels else None
        for li, (t, t_next) in enumerate(pairs):
            if _is_cancelled(cancel):
                raise Cancelled()
            cur = nxt
            src = torch.where(known, renoise(t, cur["ctx_z"]), x) if known is not None else x
            xs = _gather(src, cur["index"])
            eps, passes = guided(xs, _gather(mask_dev, cur["mask_index"]), cur["labels"], t)
            # the device works on this level's passes; plan the next one meanwhile
            nxt = prepare(li + 1) if li + 1 < levels else None
            nz = _gather(cur["lvl_z"], cur["index"]) if cur["lvl_z"] is not None else None
            x_next, x0 = ddim_step(xs, eps, t, t_next, alphas_cumprod, eta, noise=nz)
            # every pixel takes the value of the one window whose cell holds it
            owner, ly, lx = cur["owners"]
            x = x_next[owner, :, ly, lx].permute(2, 0, 1).contiguous()
            x0_area = x0[owner, :, ly, lx].permute(2, 0, 1) if callback is not None else None
            plan = cur["plan"]
            stats.windows_per_level.append(len(plan))
            stats.forwards_per_level.append(passes)
            if callback is not None:
                callback(LevelInfo(li + 1, levels, len(plan), stats.forwards, x0_area))
    else:
        # the release's order; the step counters live on the CPU only (the device never reports back)
        counts = np.zeros((H, W), dtype=np.int64)
        eligible = np.ones((H, W), dtype=bool) if known is None else ~known.cpu().numpy()
        x_prev = x.clone()
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
                level_noise = host_to_device(draw((C, H, W)), device) if (eta > 0 and t_next >= 0) else None
                ctx_noisy = renoise(t, host_to_device(draw(context.shape), device)) if known is not None else None
            w, _ = sequential_window(counts, eligible, window, rng)
            sy, sx = slice(w.y, w.y + window), slice(w.x, w.x + window)
            at_level = counts[sy, sx] == level
            upd_np = at_level & eligible[sy, sx]
            cur_m, upd = host_to_device(np.stack([at_level, upd_np]), device)
            cur, prev = x[:, sy, sx], x_prev[:, sy, sx]
            inp = torch.where(cur_m, cur, prev)
            if known is not None:
                inp = torch.where(known[sy, sx], ctx_noisy[:, sy, sx], inp)
            labels = labels_in_window(np.array([w.y]), np.array([w.x]), window)
            ms = mask_dev[None, :, w.y * k : (w.y + window) * k, w.x * k : (w.x + window) * k]
            eps, passes = guided(inp[None], ms, labels, t)
            nz = level_noise[None, :, sy, sx] if level_noise is not None else None
            x_next, _ = ddim_step(inp[None], eps, t, t_next, alphas_cumprod, eta, noise=nz)
            x_prev[:, sy, sx] = torch.where(upd, cur, prev)
            x[:, sy, sx] = torch.where(upd, x_next[0], cur)
            counts[sy, sx] += upd_np
            windows += 1
            passes_level += passes
    if known is not None:
        x = torch.where(known, context, x)
    return x
