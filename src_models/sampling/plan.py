"""Patch plans: which windows are denoised at one level of random patch diffusion, and which
latent pixels each of them writes back.

A plan is data (numpy only, no torch: the CLI and the widgets read :data:`PLANS`).  Every window
is a square of ``size`` latent pixels read from the level's values; every latent pixel is written
by exactly one window of the level (its *owner*), or by none where it holds known content.
Window positions never depend on latent values, so a whole level is planned on the CPU ahead of
the network calls.

``grid``
    a random-offset grid of cells, one window per cell, centred on it and kept inside the area;
    each window writes its cell.  Cheapest in windows, but both sides of an interior cell border
    are written by windows that do not see across it.
``release``
    the release's window positions and write rule: at each level a window is centred on a random
    pixel not yet written at that level (the release's lowest-count pixel), clamped inside the
    area, and writes the pixels of it not yet written; repeated until every pixel is written.
    About 40-50 % more windows than ``grid``; windows overlap, so almost no border is blind.
``sequential``
    the same windows as ``release``, but run one at a time with the release's per-pixel step
    counters (the reference the batched ``release`` plan is tested against; slow).
``tiled`` and ``average`` (for comparison only)
    a fixed tiling with no random offset, and MultiDiffusion-style fusion: fixed windows at half a
    window's stride whose ε is averaged where they overlap.  They answer the paper's claim that
    moving the patches beats tiling.

A plan object has ``len()``, ``starts() -> (wy, wx)`` (window corners, window order) and
``owner_in(y0, y1, x0, x1)``: for every pixel of that rectangle the index of the window that
writes it, -1 for none.  Adding a plan: write its builder ``(height, width, size, rng, eligible)``
and add it to :data:`PLANS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np



def effective_window(size: int, height: int, width: int, multiple: int = 8) -> int:
    """The window side for an area: ``size``, or the largest multiple of ``multiple`` that fits."""
    side = min(size, height, width)
    if side < size:
        side -= side % multiple
    if side < multiple:
        raise ValueError(f"an area of {height}x{width} latent pixels is too small for the model (minimum {multiple})")
    return side

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


def _axis_owner(cells, lo: int, hi: int) -> np.ndarray:
    """Cell index of every coordinate in [lo, hi) (cells sorted, covering the axis)."""
    ends = np.array([b for _, b, _ in cells])
    return np.searchsorted(ends, np.arange(lo, hi), side="right")


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

    def owner_in(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The window that writes each pixel of [y0, y1) x [x0, x1) (every pixel has one)."""
        ry, cx = _axis_owner(self.rows, y0, y1), _axis_owner(self.cols, x0, x1)
        return ry[:, None] * len(self.cols) + cx[None, :]

    def owners(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every pixel of the area: the window that writes it and its (y, x) inside that window."""
        height, width = self.rows[-1][1], self.cols[-1][1]
        return owner_local(self, self.owner_in(0, height, 0, width), 0, 0)


def grid_plan(height: int, width: int, size: int, rng: np.random.Generator, eligible=None) -> GridPlan:
    """A random-offset grid: the cells tile the area exactly once; every window stays inside.

    The grid is shifted by a random offset at every level, so cell borders never stay put.
    ``eligible`` is ignored: known pixels are written too, and replaced by their content.
    """
    if size > height or size > width:
        raise ValueError(f"window {size} does not fit an area of {height}x{width}")
    oy, ox = (int(v) for v in rng.integers(0, size, size=2))
    rows = _merge([(a, b, _place(a, b, height, size)) for a, b in _axis_cells(height, size, oy)])
    cols = _merge([(c, d, _place(c, d, width, size)) for c, d in _axis_cells(width, size, ox)])
    return GridPlan(size, rows, cols)


def _merge(cells: list[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    """Join neighbouring cells whose windows coincide (an axis no longer than the window): one
    window then writes both, instead of two identical windows."""
    out = [cells[0]]
    for a, b, w in cells[1:]:
        if w == out[-1][2]:
            out[-1] = (out[-1][0], b, w)
        else:
            out.append((a, b, w))
    return tuple(out)


def grid_windows(height: int, width: int, size: int, rng: np.random.Generator) -> list[Window]:
    """The windows of :func:`grid_plan`, row-major."""
    return grid_plan(height, width, size, rng).windows()


@dataclass(frozen=True)
class ReleasePlan:
    """One level of the release's plan: windows in the order the release runs them.  A pixel is
    written by the first window that covers it, unless it is not ``eligible`` (known content)."""

    size: int
    wy: np.ndarray
    wx: np.ndarray
    eligible: np.ndarray | None  # (H, W) bool over the whole area, or None: every pixel

    def __len__(self) -> int:
        return len(self.wy)

    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        return self.wy, self.wx

    def owner_in(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        s = self.size
        owner = np.full((y1 - y0, x1 - x0), -1, dtype=np.int64)
        hit = np.flatnonzero((self.wy < y1) & (self.wy + s > y0) & (self.wx < x1) & (self.wx + s > x0))
        for i in hit[::-1]:  # the first window that covers a pixel writes it: assign in reverse order
            wy, wx = int(self.wy[i]), int(self.wx[i])
            owner[max(wy, y0) - y0 : min(wy + s, y1) - y0, max(wx, x0) - x0 : min(wx + s, x1) - x0] = i
        if self.eligible is not None:
            owner[~self.eligible[y0:y1, x0:x1]] = -1
        return owner


def release_plan(height: int, width: int, size: int, rng: np.random.Generator, eligible=None) -> ReleasePlan:
    """The release's windows for one level, computed ahead: until every eligible pixel is written,
    pick one of the pixels not yet written uniformly (``rng.integers`` over them in row-major order,
    as :func:`sequential_window` picks the lowest-count pixel), centre a window on it, clamp it
    inside the area, and mark its pixels written.  Host memory: one byte per latent pixel."""
    if size > height or size > width:
        raise ValueError(f"window {size} does not fit an area of {height}x{width}")
    left = np.ones((height, width), dtype=bool) if eligible is None else np.array(eligible, dtype=bool)
    per_row = left.sum(axis=1)
    total = int(per_row.sum())
    wys, wxs = [], []
    while total:
        k = int(rng.integers(0, total))
        cum = np.cumsum(per_row)
        cy = int(np.searchsorted(cum, k, side="right"))
        cx = int(np.flatnonzero(left[cy])[k - (int(cum[cy - 1]) if cy else 0)])
        wy = min(max(cy - size // 2, 0), height - size)
        wx = min(max(cx - size // 2, 0), width - size)
        block = left[wy : wy + size, wx : wx + size]
        written = block.sum(axis=1)
        per_row[wy : wy + size] -= written
        total -= int(written.sum())
        block[...] = False
        wys.append(wy)
        wxs.append(wx)
    return ReleasePlan(size, np.array(wys, dtype=np.int64), np.array(wxs, dtype=np.int64),
                       None if eligible is None else np.asarray(eligible, dtype=bool))


def owner_local(plan, owner: np.ndarray, y0: int, x0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``owner`` (of the rectangle at y0, x0) and each pixel's (y, x) inside its window; pixels that
    no window writes get window 0 and (0, 0) (their value is not used)."""
    wy, wx = plan.starts()
    own = np.maximum(owner, 0)
    ys = np.arange(y0, y0 + owner.shape[0])[:, None]
    xs = np.arange(x0, x0 + owner.shape[1])[None, :]
    ly = np.where(owner >= 0, ys - wy[own], 0)
    lx = np.where(owner >= 0, xs - wx[own], 0)
    return own, ly, lx


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


def tiled_plan(height: int, width: int, size: int, rng: np.random.Generator, eligible=None) -> GridPlan:
    """A fixed tiling: the grid of ``grid`` without its random offset, the same at every level (the
    last row and column of windows are pushed inside the area and write what is left).  Kept for
    comparison: its cell borders never move, so nothing hides them."""
    if size > height or size > width:
        raise ValueError(f"window {size} does not fit an area of {height}x{width}")
    rows = _merge([(a, b, _place(a, b, height, size)) for a, b in _axis_cells(height, size, 0)])
    cols = _merge([(c, d, _place(c, d, width, size)) for c, d in _axis_cells(width, size, 0)])
    return GridPlan(size, rows, cols)


@dataclass(frozen=True)
class AveragePlan:
    """Windows on a fixed half-window stride (the last ones flush with the area's edge); every pixel
    takes the *mean* ε of all the windows that cover it (MultiDiffusion's fusion), not one owner's."""

    size: int
    wy: np.ndarray
    wx: np.ndarray

    def __len__(self) -> int:
        return len(self.wy)

    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        return self.wy, self.wx


def average_plan(height: int, width: int, size: int, rng: np.random.Generator, eligible=None) -> AveragePlan:
    """Overlapping windows at a stride of half a window, the same at every level (for comparison)."""
    if size > height or size > width:
        raise ValueError(f"window {size} does not fit an area of {height}x{width}")

    def axis(n):
        stride = max(1, size // 2)
        starts = list(range(0, n - size + 1, stride))
        if starts[-1] != n - size:
            starts.append(n - size)
        return np.array(starts, dtype=np.int64)

    ys, xs = axis(height), axis(width)
    return AveragePlan(size, np.repeat(ys, len(xs)), np.tile(xs, len(ys)))


@dataclass(frozen=True)
class PlanInfo:
    name: str
    description: str
    batched: bool  # True: one batch of windows per level (build gives the level's plan)
    build: Callable | None  # (height, width, size, rng, eligible) -> plan
    fuse: str = "owner"  # how a pixel gets its ε: "owner" (the one window that writes it) or "mean" (of all)


PLANS: dict[str, PlanInfo] = {
    "grid": PlanInfo("grid", "a random-offset grid of windows per level, every pixel written once; fewest windows "
                     "(default for the project's models)", True, grid_plan),
    "release": PlanInfo("release", "the release's window positions and write rule, one batch per level; the "
                        "release's result for about 40-50 % more windows (default for published checkpoints)",
                        True, release_plan),
    "sequential": PlanInfo("sequential", "the release's one-window-at-a-time order with step counters; the "
                           "reference for 'release' (slow)", False, None),
    "tiled": PlanInfo("tiled", "a fixed tiling, the same at every level (no random offsets); for comparison",
                      True, tiled_plan),
    "average": PlanInfo("average", "fixed windows at a half-window stride, ε averaged where they overlap "
                        "(MultiDiffusion-style); for comparison", True, average_plan, fuse="mean"),
}


def check_plan(name: str) -> PlanInfo:
    """The one place that validates a plan name."""
    if name not in PLANS:
        raise ValueError(f"unknown plan {name!r} (use {', '.join(PLANS)})")
    return PLANS[name]
