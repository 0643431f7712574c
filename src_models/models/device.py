"""Which torch device a name means: ``auto`` picks CUDA, then MPS, then the CPU."""
from __future__ import annotations

import warnings

import torch

from src_models.errors import DiffInfiniteError


class DeviceError(DiffInfiniteError, RuntimeError):
    """A device name that no run can use (message says which names can)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable GPU falls back with a warning."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            warnings.warn(f"{name} requested but CUDA is not available; running on the CPU", RuntimeWarning, stacklevel=2)
            return torch.device("cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{name} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            warnings.warn("mps requested but not available; running on the CPU", RuntimeWarning, stacklevel=2)
            return torch.device("cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
