"""Helpers shared by the tests that watch a canvas another process writes."""
from __future__ import annotations

from src_models.store.canvas import Canvas, CanvasError


def finished_regions(path) -> int:
    """Finished regions of a canvas another process may be writing (0 while it is being made)."""
    try:
        with Canvas.open(path) as c:
            return len(c.done_indices())
    except CanvasError:
        return 0
