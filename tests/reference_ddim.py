"""The release's single DDIM update, as the release computes it (float32 tensors throughout): the
reference the project's one DDIM (:class:`src_models.sampling.solvers.DDIM`, host-float
coefficients) and the conformance check are tested against.  Test code only."""
from __future__ import annotations

import torch

from src_models.sampling.schedule import _alpha  # ᾱ_t looked up as the schedule does


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
