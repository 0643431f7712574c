"""The latent box a region samples, in plain numbers (no torch), so that the sampler, the estimate
said before a run and the dock agree on it.

A region is sampled in a box: the part of it to write (the *target*: the whole region, or the
cells of its regeneration job) grown by the halo of context on every side and, where that is
smaller, to one window, inside the canvas (:func:`expand`).  A region without a job samples its
whole area plus halo, as it always did; a region with a small job samples only the job's bounding
box plus halo, so redoing 256² px inside a 1024 px region costs a box of about 384² px, not the
region's 1152² px.  What a box costs, in the units the speed records use (:func:`work_px`), is the
region's pixels scaled by its box over the box of the whole region.
"""
from __future__ import annotations

import numpy as np

from src_models.sampling.plan import effective_window


def expand(a: int, b: int, n: int, halo: int, minimum: int) -> tuple[int, int]:
    """[a, b) grown by ``halo`` each side and, when shorter, to ``minimum``, inside [0, n)."""
    a, b = max(0, a - halo), min(n, b + halo)
    short = minimum - (b - a)
    if short > 0:  # grow to the window size, inside the canvas
        a = max(0, a - (short + 1) // 2)
        b = min(n, a + minimum)
        a = max(0, b - minimum)
    return a, b


def target_bbox(region, target: np.ndarray | None) -> tuple[int, int, int, int]:
    """Latent (y0, y1, x0, x1) of the cells ``target`` (a region-local bool map; None or all
    true: the whole region) marks; the region itself when it marks none."""
    whole = (region.y0, region.y1, region.x0, region.x1)
    if target is None or target.all() or not target.any():
        return whole
    rows, cols = np.flatnonzero(target.any(axis=1)), np.flatnonzero(target.any(axis=0))
    return (region.y0 + int(rows[0]), region.y0 + int(rows[-1]) + 1,
            region.x0 + int(cols[0]), region.x0 + int(cols[-1]) + 1)


def sample_box(region, target: np.ndarray | None, latent_shape, halo: int, window: int) -> tuple[int, int, int, int]:
    """Latent (y0, y1, x0, x1) a region samples: its target's bounding box grown by ``halo`` and
    to at least ``window`` (the whole region when ``target`` is None or all true)."""
    lh, lw = latent_shape
    y0, y1, x0, x1 = target_bbox(region, target)
    return (*expand(y0, y1, lh, halo, window), *expand(x0, x1, lw, halo, window))


def box_area(box) -> int:
    y0, y1, x0, x1 = box
    return max(0, y1 - y0) * max(0, x1 - x0)


def window_and_halo(patch_size: int, latent_shape, halo: int | None = None, multiple: int = 8) -> tuple[int, int]:
    """(window, halo) in latent px as a run on this canvas uses them (``halo`` None: half a window)."""
    lh, lw = latent_shape
    window = effective_window(int(patch_size), lh, lw, multiple)
    return window, (int(halo) if halo is not None else window // 2)


def work_px(region, box, latent_shape, halo: int, window: int, factor: int) -> int:
    """Image px a region's sampling counts for in the speed records (seconds per px and step,
    :mod:`src_models.synthesis.estimate`): the region's own px when it samples its whole box, and
    that scaled by (its box / the whole region's box) when it samples a smaller one."""
    own = (region.y1 - region.y0) * (region.x1 - region.x0) * factor * factor
    whole = box_area(sample_box(region, None, latent_shape, halo, window))
    return own if whole <= 0 else int(round(own * box_area(box) / whole))


def area_cells(where: np.ndarray, factor: int, latent_shape, origin=(0, 0), scale: int = 1):
    """The latent cells an area to redo touches: ``where`` is a map (nonzero = redo) whose
    element (i, j) covers image px [oy + i·scale, oy + (i+1)·scale) x [ox + j·scale, ...) for
    ``origin`` = (oy, ox); any cell an element touches counts.  Returns (cells, ly0, lx0): a bool
    map cropped to the touched cells and clipped to the canvas, and its corner in latent px; cells
    None when nothing is marked on the canvas."""
    where = np.asarray(where)
    if where.ndim != 2:
        raise ValueError(f"the area to redo must be a 2-D map, got shape {where.shape}")
    marked = where != 0
    rows, cols = np.flatnonzero(marked.any(axis=1)), np.flatnonzero(marked.any(axis=0))
    if not len(rows):
        return None, 0, 0
    marked = marked[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    f, s = int(factor), int(scale)
    oy, ox = int(origin[0]) + int(rows[0]) * s, int(origin[1]) + int(cols[0]) * s  # image px of the crop's corner
    if s % f == 0 and oy % f == 0 and ox % f == 0:  # whole cells per element (the dock's layers)
        cells, ly0, lx0 = np.repeat(np.repeat(marked, s // f, axis=0), s // f, axis=1), oy // f, ox // f
    else:  # px, or elements off the cell grid: to px, then any px of a cell marks it
        px = np.repeat(np.repeat(marked, s, axis=0), s, axis=1) if s > 1 else marked
        ly0, lx0 = oy // f, ox // f
        pad = ((oy - ly0 * f, -(oy + px.shape[0]) % f), (ox - lx0 * f, -(ox + px.shape[1]) % f))
        px = np.pad(px, pad)
        cells = px.reshape(px.shape[0] // f, f, px.shape[1] // f, f).any(axis=(1, 3))
    lh, lw = latent_shape
    cy0, cx0 = max(0, -ly0), max(0, -lx0)
    cy1, cx1 = min(cells.shape[0], lh - ly0), min(cells.shape[1], lw - lx0)
    if cy1 <= cy0 or cx1 <= cx0 or not cells[cy0:cy1, cx0:cx1].any():
        return None, 0, 0
    return cells[cy0:cy1, cx0:cx1], ly0 + cy0, lx0 + cx0
