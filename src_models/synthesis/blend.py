"""Edge blending: sampled pixels meet kept pixels without a step.

When a part of a canvas is sampled again next to content that stays (an inpainted square in an
imported slide, a region outpainted beside real tissue), the sampler sees the kept latents as
context, but the pixels written are the decoder's, and the kept pixels next to them are the
originals.  Measured on the held-out skin band (docs/default_model.md, "Edge blending"), the step
between the two is most of the square's seam.

:func:`edge_blend` removes that step the way gradient-domain image editing does: the written pixels
become ``decoded + c``, where ``c`` is the harmonic (membrane) interpolation of the difference
``kept - decoded`` found on the kept pixels that touch the written ones.  At the border the
written pixel then differs from its kept neighbour by the decoder's own local gradient; the
correction's fine detail dies out within a few pixels and its smooth part (a colour or brightness
offset) fades to zero ``band`` pixels in.  Only written pixels change; kept pixels and the latents
are never touched.  numpy and scipy only (no torch), so it is cheap to test on its own.
"""
from __future__ import annotations

import numpy as np

BAND_PX = 64  # how far into the written area the correction reaches (it is 0 from there on)


def neighbours(mask: np.ndarray) -> np.ndarray:
    """Pixels 4-adjacent to ``mask`` (``mask`` itself excluded)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    return ndimage.binary_dilation(mask) & ~mask  # the default structure is the 4-neighbour cross


def edge_blend(decoded: np.ndarray, kept_rgb: np.ndarray, write: np.ndarray, kept: np.ndarray,
               band: int = BAND_PX) -> np.ndarray:
    """The pixels to write: ``decoded`` with its step against the kept pixels removed.

    ``decoded`` and ``kept_rgb`` are (H, W, 3) uint8 over the same rectangle: the decode of the
    sampled latents and what the canvas holds now.  ``write`` (H, W bool) marks the pixels about to
    be written, ``kept`` those that stay as they are; pixels in neither (not yet sampled, or to be
    rewritten by someone else) neither pull nor hold the correction.  Returns a new uint8 array
    equal to ``decoded`` outside ``write``.
    """
    decoded = np.asarray(decoded)
    if decoded.shape != kept_rgb.shape or decoded.shape[:2] != write.shape or write.shape != kept.shape:
        raise ValueError(f"edge_blend: shapes differ: decoded {decoded.shape}, kept {kept_rgb.shape}, "
                         f"write {write.shape}, kept map {kept.shape}")
    write = write.astype(bool) & ~kept.astype(bool)
    boundary = neighbours(write) & kept.astype(bool)
    if not boundary.any():
        return decoded.copy()
    from scipy import ndimage
    from scipy.sparse import csr_matrix, diags
    from scipy.sparse.linalg import cg

    # the unknowns: written pixels within `band` of the boundary (beyond it the correction is 0)
    dist = ndimage.distance_transform_edt(~boundary)
    dom = write & (dist <= band)
    # a piece of the domain that touches no kept pixel has nothing to follow: it stays as decoded
    labels, _ = ndimage.label(dom)
    touching = np.unique(labels[neighbours(boundary) & dom])
    dom = np.isin(labels, touching[touching > 0])
    if not dom.any():
        return decoded.copy()

    H, W = dom.shape
    index = np.full((H, W), -1, np.int64)
    ys, xs = np.nonzero(dom)
    n = len(ys)
    index[ys, xs] = np.arange(n)
    residual = kept_rgb.astype(np.float64) - decoded.astype(np.float64)
    diag = np.zeros(n)
    rhs = np.zeros((n, decoded.shape[2]))
    rows, cols = [], []
    fixed_zero = write & ~dom  # written beyond the band: held at no correction
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
        p, qy, qx = np.nonzero(inside)[0], qy[inside], qx[inside]
        q = index[qy, qx]
        free = q >= 0
        rows.append(p[free])
        cols.append(q[free])
        held = boundary[qy, qx]
        np.add.at(rhs, p[held], residual[qy[held], qx[held]])
        counted = free | held | fixed_zero[qy, qx]  # other neighbours: no flux (Neumann)
        np.add.at(diag, p[counted], 1.0)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    A = csr_matrix((np.concatenate([diag, -np.ones(len(rows))]),
                    (np.concatenate([np.arange(n), rows]), np.concatenate([np.arange(n), cols]))), shape=(n, n))
    precondition = diags(1.0 / diag)
    out = decoded.astype(np.float64)
    for c in range(rhs.shape[1]):
        sol, info = cg(A, rhs[:, c], rtol=1e-6, maxiter=20 * (band + 16), M=precondition)
        if info < 0:  # a breakdown, not merely slow convergence: write the plain decode
            return decoded.copy()
        out[ys, xs, c] += sol
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def blend_kept_edges(canvas, region, box, target: np.ndarray, rgb: np.ndarray,
                     known: np.ndarray | None = None) -> np.ndarray:
    """``rgb``, the decode of the latent rectangle ``box`` = (y0, y1, x0, x1), with its step against
    the canvas pixels that stay removed (:func:`edge_blend`) where ``region``'s ``target`` cells
    (region-local bool map) are about to be written.

    What stays: cells with finished content (``known``, the canvas's :meth:`known_map` of the box
    when not given) outside what is written, except, when the whole region is written, generated
    neighbours that :func:`src_models.synthesis.run.refresh_borders` rewrites along the border from
    this same decode (:func:`~src_models.synthesis.run.refreshed_neighbours`): no step to remove
    there.  A canvas made by the sampler alone is therefore unchanged; an imported slide, or what an
    inpaint keeps, is followed.
    """
    y0, y1, x0, x1 = box
    known = canvas.known_map(y0, y1, x0, x1) if known is None else known
    write = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    iy0, iy1, ix0, ix1 = max(y0, region.y0), min(y1, region.y1), max(x0, region.x0), min(x1, region.x1)
    write[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = target[iy0 - region.y0 : iy1 - region.y0,
                                                             ix0 - region.x0 : ix1 - region.x0]
    kept = known & ~write
    if target.all():
        from src_models.synthesis.run import refreshed_neighbours

        for r in refreshed_neighbours(canvas, region, y0, y1, x0, x1):
            kept[max(r.y0, y0) - y0 : min(r.y1, y1) - y0, max(r.x0, x0) - x0 : min(r.x1, x1) - x0] = False
    if not (kept & neighbours(write)).any():
        return rgb
    f = canvas.factor
    up = np.ones((f, f), dtype=bool)
    return edge_blend(rgb, canvas.read_rgb(y0 * f, y1 * f, x0 * f, x1 * f), np.kron(write, up), np.kron(kept, up))
