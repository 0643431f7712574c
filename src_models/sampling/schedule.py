"""The noise schedule (the cosine ᾱ), the release's time pairs and the single DDIM update, with the
conventions of the published release.

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


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t), clamped to [-1, 1]."""
    x0 = (x_t - (1.0 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
    return x0.clamp(-1.0, 1.0)


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t,
    t_next,
    alphas_cumprod: torch.Tensor,
    eta: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update from ``t`` to ``t_next``; returns ``(x_next, x0_pred)``.

    ε is used as given (it is not recomputed from the clamped x0), as in the release.  When
    ``t_next < 0`` the result is x0 itself.  ``t``/``t_next`` are ints or (B,) tensors.
    The update is computed in float32 whatever the dtype of ``eps``.
    """
    x_t = x_t.float()
    eps = eps.float()
    a_t = _alpha(alphas_cumprod, t, x_t)
    x0 = predict_x0(x_t, eps, a_t)
    t_next_t = torch.as_tensor(t_next, dtype=torch.long)
    if bool((t_next_t < 0).all()):
        return x0, x0
    a_n = _alpha(alphas_cumprod, t_next, x_t)
    sigma = eta * ((1 - a_t / a_n) * (1 - a_n) / (1 - a_t)).clamp(min=0).sqrt()
    c = (1 - a_n - sigma**2).clamp(min=0).sqrt()
    x_next = a_n.sqrt() * x0 + c * eps
    if eta > 0:
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, dtype=torch.float32, device="cpu").to(x_t.device)
        x_next = x_next + sigma * noise
    if (t_next_t < 0).any():  # mixed batch: rows that end the chain take x0
        last = (t_next_t < 0).to(x_t.device).reshape(-1, *([1] * (x_t.dim() - 1)))
        x_next = torch.where(last, x0, x_next)
    return x_next, x0


def q_sample(x0: torch.Tensor, t: int, alphas_cumprod: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward-noise clean latents to step ``t`` (used to train and to re-noise context)."""
    if t < 0:
        return x0
    a = _alpha(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise
