"""Patch plans: which windows are denoised at one level of random patch diffusion.

A plan is data (numpy only): every entry is a square ``window`` read from the latent and the
``cell`` of it that is written back.  Plans are made on the CPU ahead of the network calls.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    y: int  # top-left of the window that is read (window side = plan's size)
    x: int
    cy0: int  # the cell written back, in the same (area) coordinates; inside the window
    cy1: int
    cx0: int
    cx1: int


def _axis_cells(n: int, size: int, offset: int) -> list[tuple[int, int]]:
    """Cut [0, n) at offset, offset + size, ... into pieces no longer than ``size``."""
    cuts = sorted({0, n, *range(offset % size or size, n, size)})
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _place(a: int, b: int, n: int, size: int) -> int:
    """Start of a window of ``size`` that contains [a, b) and stays inside [0, n)."""
    centre = (a + b) // 2
    return int(min(max(centre - size // 2, 0), n - size))


@dataclass(frozen=True)
class GridPlan:
    """A random-offset grid of cells; window ``i`` is row ``i // len(cols)``, column ``i % len(cols)``.

    ``rows``/``cols`` hold (cell start, cell end, window start) per grid row/column.
    """

    size: int
    rows: tuple[tuple[int, int, int], ...]
    cols: tuple[tuple[int, int, int], ...]

    def windows(self) -> list[Window]:
        return [Window(wy, wx, a, b, c, d) for a, b, wy in self.rows for c, d, wx in self.cols]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Window top-left corners (y, x) for every window, in window order."""
        wy = np.array([r[2] for r in self.rows])
        wx = np.array([c[2] for c in self.cols])
        return np.repeat(wy, len(wx)), np.tile(wx, len(wy))

    def owners(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every pixel of the area: the window that writes it and its (y, x) inside that window."""
        def axis(cells):
            owner = np.concatenate([np.full(b - a, i) for i, (a, b, _) in enumerate(cells)])
            local = np.concatenate([np.arange(a, b) - w for a, b, w in cells])
            return owner, local

        ry, ly = axis(self.rows)
        cx, lx = axis(self.cols)
        n = ry[:, None] * len(self.cols) + cx[None, :]
        return n, np.broadcast_to(ly[:, None], n.shape), np.broadcast_to(lx[None, :], n.shape)


def grid_plan(height: int, width: int, size: int, rng: np.random.Generator) -> GridPlan:
    """A random-offset grid: the cells tile the area exactly once; every window stays inside.

    The grid is shifted by a random offset at every level, so cell borders never stay put.
    """
    if size > height or size > width:
        raise ValueError(f"window {size} does not fit an area of {height}x{width}")
    oy, ox = (int(v) for v in rng.integers(0, size, size=2))
    rows = tuple((a, b, _place(a, b, height, size)) for a, b in _axis_cells(height, size, oy))
    cols = tuple((c, d, _place(c, d, width, size)) for c, d in _axis_cells(width, size, ox))
    return GridPlan(size, rows, cols)


def parallel_plan(height: int, width: int, size: int, rng: np.random.Generator) -> list[Window]:
    """The windows of :func:`grid_plan`, row-major."""
    return grid_plan(height, width, size, rng).windows()


def sequential_window(counts: np.ndarray, eligible: np.ndarray, size: int, rng: np.random.Generator) -> tuple[Window, int]:
    """The release's order: centre a window on a random eligible pixel with the lowest count.

    Returns the window (whose cell is the whole window; the caller writes only pixels at the
    lowest level) and that lowest level.
    """
    height, width = counts.shape
    level = int(counts[eligible].min())
    ys, xs = np.nonzero(eligible & (counts == level))
    k = int(rng.integers(0, len(ys)))
    cy, cx = int(ys[k]), int(xs[k])
    wy = int(min(max(cy - size // 2, 0), height - size))
    wx = int(min(max(cx - size // 2, 0), width - size))
    return Window(wy, wx, wy, wy + size, wx, wx + size), level
