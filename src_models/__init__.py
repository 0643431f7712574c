"""DiffInfinite's headless core: torch + numpy, never napari or Qt.

The documented Python API, importable from here (loaded on first use, so ``import src_models``
imports no torch)::

    from src_models import load_model, new_canvas, put_mask, load_mask, synthesise, SynthesisRequest
"""
from __future__ import annotations

import importlib

# public name -> module that defines it
_API = {
    "load_model": "src_models.models.loading",
    "new_canvas": "src_models.synthesis.canvases",
    "put_mask": "src_models.synthesis.canvases",
    "save_preview": "src_models.synthesis.canvases",
    "load_mask": "src_models.io.masks",
    "synthesise": "src_models.synthesis.regions",
    "SynthesisRequest": "src_models.synthesis.request",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'src_models' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
