"""The one sampling set-up: what every caller of :func:`~src_models.sampling.sampler.sample_area`
needs besides the denoiser and the noise (the schedule's ᾱ, the level pairs, ω per class and the
window for an area).  Canvas synthesis, the layout and release mask models, the sample sheet and
the benchmarks all start here, so a change of schedule or time pairs reaches every one of them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from src_models.sampling.guidance import omega_vector
from src_models.sampling.sampler import effective_window
from src_models.sampling.schedule import cosine_alphas_cumprod, ddim_time_pairs

__all__ = ["SamplingSetup", "sampling_setup", "effective_window"]


@dataclass(frozen=True)
class SamplingSetup:
    alphas: torch.Tensor  # ᾱ_t of the cosine schedule, float32 (T,)
    pairs: list[tuple[int, int]]  # (t, t_next) per level, the release's time pairs
    omega: torch.Tensor  # ω per class (class 0 never guided), on the CPU

    @property
    def levels(self) -> int:
        return len(self.pairs)


def sampling_setup(steps: int, num_classes: int, omega: float = 0.0,
                   per_class: dict[int, float] | None = None) -> SamplingSetup:
    """Schedule, ``steps`` level pairs and the ω vector of ``num_classes`` classes (``omega`` 0:
    unguided, as the mask models sample)."""
    return SamplingSetup(cosine_alphas_cumprod(), ddim_time_pairs(int(steps)),
                         omega_vector(num_classes, omega, per_class))
