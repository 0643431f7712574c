"""Tiled application of a codec (or any tile-wise map) with the four-tiling Hann blend.

A large latent is cut into square tiles four times: the plain grid and the grids shifted by half a
tile horizontally, vertically and both.  Every tile's output is weighted by a 2-D Hann window
(sin² with a half-pixel offset, so no weight is exactly 0) and the weighted outputs are summed and
divided by the summed weights.  Along each axis a plain tile and a shifted tile overlap with
weights sin² and cos², so in the interior the windows already sum to one; tiles touching the
canvas border have the border half of their window flattened to one, because nothing else
covers that strip.  Tile edges therefore always carry (almost) zero weight, except on the
canvas border: no seam survives.

Sides that are not a multiple of the tile get an extra tile flush with the far border; the
normalisation by the summed weights keeps the blend exact there too.  All tiles of all four
tilings are stacked and handed to the map in batches of ``batch``.
"""
from __future__ import annotations

import math

import torch


def axis_starts(size: int, tile: int) -> list[tuple[int, bool, bool]]:
    """Tile starts along one axis, with (touches start, touches end) flags, plain and shifted."""
    if size <= tile:
        return [(0, True, True)]
    plain = list(range(0, size - tile + 1, tile))
    if plain[-1] + tile < size:
        plain.append(size - tile)
    shifted = list(range(tile // 2, size - tile + 1, tile))
    starts = sorted(set(plain) | set(shifted))
    return [(s, s == 0, s + tile >= size) for s in starts]


def hann_1d(n: int, flat_start: bool, flat_end: bool, device=None) -> torch.Tensor:
    """sin²(π(i + ½)/n), with the first / second half set to one when flagged."""
    i = torch.arange(n, dtype=torch.float64, device=device)
    w = torch.sin(math.pi * (i + 0.5) / n) ** 2
    if flat_start:
        w[: n // 2] = 1.0
    if flat_end:
        w[n // 2 :] = 1.0
    return w.to(torch.float32)


def tiled_map(fn, x: torch.Tensor, tile: int, scale: float = 1.0, batch: int = 8) -> torch.Tensor:
    """Apply ``fn`` ((N, C, t, t) -> (N, C', t·scale, t·scale)) to the overlapping tiles of ``x``
    (B, C, H, W) and blend the outputs into (B, C', H·scale, W·scale) (float32)."""
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got {tuple(x.shape)}")
    b, _, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    if th == h and tw == w:
        return fn(x).float()
    oh, ow, oth, otw = (round(v * scale) for v in (h, w, th, tw))
    ys, xs = axis_starts(h, th), axis_starts(w, tw)
    for s, _, _ in ys + xs:
        if abs(s * scale - round(s * scale)) > 1e-6:
            raise ValueError(f"tile offsets times the scale {scale} must be whole pixels (size {h}x{w}, tile {tile})")
    jobs = [(i, y, x0) for i in range(b) for y in ys for x0 in xs]
    out = weight = None
    for k in range(0, len(jobs), batch):
        chunk = jobs[k : k + batch]
        res = fn(torch.stack([x[i, :, y[0] : y[0] + th, x0[0] : x0[0] + tw] for i, y, x0 in chunk])).float()
        if out is None:
            out = torch.zeros((b, res.shape[1], oh, ow), dtype=torch.float32, device=res.device)
            weight = torch.zeros((b, 1, oh, ow), dtype=torch.float32, device=res.device)
        for r, (i, (y, y_first, y_last), (x0, x_first, x_last)) in zip(res, chunk):
            wy = hann_1d(oth, y_first, y_last, res.device)
            wx = hann_1d(otw, x_first, x_last, res.device)
            win = wy[:, None] * wx[None, :]
            oy, ox = round(y * scale), round(x0 * scale)
            out[i, :, oy : oy + oth, ox : ox + otw] += r * win
            weight[i, :, oy : oy + oth, ox : ox + otw] += win
    return out / weight


def tiled_decode(decode_fn, z: torch.Tensor, tile: int = 64, factor: int = 8, batch: int = 8) -> torch.Tensor:
    """Decode latents ``z`` (B, C, h, w) tile by tile (``tile`` latent pixels) with the Hann blend."""
    return tiled_map(decode_fn, z, tile, float(factor), batch)


def tiled_encode(encode_fn, img: torch.Tensor, tile: int = 512, factor: int = 8, batch: int = 8) -> torch.Tensor:
    """Encode images (B, 3, H, W) tile by tile (``tile`` pixels) with the Hann blend."""
    if img.shape[-1] % factor or img.shape[-2] % factor:
        raise ValueError(f"image size {tuple(img.shape[-2:])} is not a multiple of the codec factor {factor}")
    return tiled_map(encode_fn, img, tile, 1.0 / factor, batch)
