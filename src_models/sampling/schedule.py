"""The noise schedule (the cosine ᾱ) and the release's time pairs, with the conventions of the
published release.  The DDIM update itself is :class:`src_models.sampling.solvers.DDIM` (the one
DDIM of the project; the tests keep a float32 copy of the release's update to check it against).

"Noise schedule" here always means ᾱ_t; the order in which patches are denoised is a *plan*
(:mod:`src_models.sampling.plan`) and how a level's ε moves the latents is a *solver* (:mod:`src_models.sampling.solvers`).
Everything here is a pure function of tensors: no model, no state.  ᾱ is computed in float64 and
handed out as float32, like the release's buffers; the time pairs are computed in float32, as the
release computes them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

TRAIN_STEPS = 1000


def cosine_alphas_cumprod(timesteps: int = TRAIN_STEPS, s: float = 0.008) -> torch.Tensor:
    """Cumulative alphas of the cosine schedule (Nichol & Dhariwal), betas clipped to 0.999."""
    steps = timesteps + 1
    x = np.linspace(0, timesteps, steps, dtype=np.float64)
    f = np.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    f = f / f[0]
    betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    return torch.from_numpy(np.cumprod(1.0 - betas)).to(torch.float32)


def ddim_time_pairs(steps: int, timesteps: int = TRAIN_STEPS) -> list[tuple[int, int]]:
    """Consecutive (t, t_next) pairs exactly as the release makes them:
    ``torch.linspace(-1, T-1, S+1)`` in float32, reversed, cast to int (truncation).

    The last pair ends at ``t_next = -1``, where the update returns the predicted x0.  The float32
    rounding matters: for 139 step counts S between 1 and 1000 one timestep differs from float64
    ``numpy.linspace`` (the first is S = 26: timestep 498 here, 499 in float64).
    """
    if steps < 1 or steps > timesteps:
        raise ValueError(f"steps must be between 1 and {timesteps}, got {steps}")
    times = torch.linspace(-1, timesteps - 1, steps + 1, dtype=torch.float32).flip(0).to(torch.int64).tolist()
    return list(zip(times[:-1], times[1:]))


def _alpha(alphas_cumprod: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t as a float32 tensor broadcastable against ``like`` (B, C, H, W); t may be int or (B,)."""
    t = torch.as_tensor(t, dtype=torch.long)
    if t.dim() == 0 and t.device.type == "cpu":  # a plain step number: no device round trip
        a = alphas_cumprod.to(device="cpu", dtype=torch.float32)[t.clamp(min=0)]
        return torch.where(t < 0, torch.ones_like(a), a)
    a = alphas_cumprod.to(torch.float32)[t.clamp(min=0).cpu()].to(like.device)
    a = torch.where(t.to(a.device) < 0, torch.ones_like(a), a)
    return a.reshape(-1, *([1] * (like.dim() - 1))) if a.dim() else a


def q_sample(x0: torch.Tensor, t: int, alphas_cumprod: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward-noise clean latents to step ``t`` (used to train and to re-noise context)."""
    if t < 0:
        return x0
    a = _alpha(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise
