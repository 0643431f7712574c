"""The plain values that describe a run and the events it yields (no torch here, so a GUI can
build a request without importing it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    import torch


@dataclass
class SynthesisRequest:
    """Everything a run needs, as plain values (built on the GUI thread or from the CLI)."""

    model: str = "default"
    steps: int = 50
    omega: float = 3.0
    omega_per_class: dict[int, float] = field(default_factory=dict)
    eta: float = 1.0
    seed: int = 0
    schedule: str = "parallel"
    device: str = "auto"
    area: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) px: only regions touching it
    centre: tuple[float, float] | None = None  # (y, x) px: nearest regions go first
    max_batch: int | None = None  # network batch rows per call; None: from the device's memory (halved on OOM)
    fast: bool = True  # channels_last, and fp16 autocast + a memory-sized batch on CUDA (src_models/fast.py)
    compile: bool = False  # torch.compile the network for the window size (CUDA)
    halo: int | None = None  # latent px of context around each region (default: half a window)

    def settings(self) -> dict:
        """The values that decide the pixels (device and batch size do not)."""
        return {
            "model": str(self.model),
            "steps": int(self.steps),
            "omega": float(self.omega),
            "omega_per_class": {str(k): float(v) for k, v in sorted(self.omega_per_class.items())},
            "eta": float(self.eta),
            "seed": int(self.seed),
            "schedule": self.schedule,
            "halo": self.halo,
        }


@dataclass
class RegionDone:
    index: int
    bbox: tuple[int, int, int, int]  # (y0, y1, x0, x1) px
    done: int  # regions finished in this run so far
    total: int  # regions this run has to do
    forwards: int  # network passes for this region
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
