"""The image pyramid of a canvas: level 0 written region by region (pixels and latents, limited to
the pixels a job regenerates), each coarser level the 2 x 2 mean of the one below, every chunk file
fsync'd before the region state that vouches for it.

:class:`Pyramid` is a part of :class:`~src_models.store.canvas.Canvas` (mixed in)."""
from __future__ import annotations

import numpy as np

from src_models.store.base import LATENT, CanvasDamagedError, CanvasError, _io_error, _reason
from src_models.store.regions import Region


def pyramid_shapes(height: int, width: int, min_side: int = 256) -> list[tuple[int, int]]:
    shapes = [(height, width)]
    while max(shapes[-1]) > min_side:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def halvings(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    shapes = [(height, width)]
    for _ in range(levels - 1):
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def downsample2(img: np.ndarray) -> np.ndarray:
    """Mean of 2x2 blocks over the last two axes; an odd edge averages what it has."""
    h, w = img.shape[-2:]
    ph, pw = h % 2, w % 2
    if ph or pw:
        pad = [(0, 0)] * (img.ndim - 2) + [(0, ph), (0, pw)]
        img = np.pad(img, pad, mode="edge")
    f = img.astype(np.float32)
    out = (f[..., 0::2, 0::2] + f[..., 1::2, 0::2] + f[..., 0::2, 1::2] + f[..., 1::2, 1::2]) / 4
    return np.rint(out).astype(img.dtype)


class Pyramid:
    """Writing and reading the image pyramid and the latents."""


    # ---------------------------------------------------------------- writing
    def write_region(self, region: Region, rgb: np.ndarray, latent: np.ndarray | None = None,
                     where: np.ndarray | None = None) -> None:
        """Write a region's pixels (h, w, 3) uint8 and latents, then refresh the pyramid above it.

        ``where`` (region-local latent bool map) limits the write to those latent pixels (and
        the image pixels under them); the rest keeps its content.  Every chunk file it wrote is
        fsync'd before any region state is written (:meth:`mark_done`, :meth:`flush`).
        """
        self.write_block(region.y0, region.y1, region.x0, region.x1, rgb, latent, where)


    def write_block(self, y0: int, y1: int, x0: int, x1: int, rgb: np.ndarray, latent: np.ndarray | None = None,
                    where: np.ndarray | None = None) -> None:
        """Write the latent rectangle [y0, y1) x [x0, x1): its pixels (h·f, w·f, 3) uint8 and,
        optionally, its latents, limited to ``where`` (a latent bool map) when given; then
        refresh the pyramid above it, fsync what was written, and update the checksums of
        finished regions it changed."""
        self._check_writable()
        f = self.factor
        py0, py1, px0, px1 = y0 * f, y1 * f, x0 * f, x1 * f
        if rgb.shape != (py1 - py0, px1 - px0, 3) or rgb.dtype != np.uint8:
            raise CanvasError(f"block {y0}:{y1}, {x0}:{x1}: expected ({py1 - py0}, {px1 - px0}, 3) uint8, "
                              f"got {rgb.shape} {rgb.dtype}")
        try:
            pixels = np.moveaxis(rgb, -1, 0)
            if latent is not None:
                latent = latent.astype(np.float32)
            if where is not None and not where.all():
                big = np.repeat(np.repeat(where, f, axis=0), f, axis=1)
                pixels = np.where(big[None], pixels, self._read("0", (slice(None), slice(py0, py1), slice(px0, px1))))
                if latent is not None:
                    latent = np.where(where[None], latent, self._read(LATENT, (slice(None), slice(y0, y1), slice(x0, x1))))
            self.image(0)[:, py0:py1, px0:px1] = pixels
            if latent is not None:
                self.latent[:, y0:y1, x0:x1] = latent
            self.update_pyramid(py0, py1, px0, px1)
            self.materialise_mask(y0, y1, x0, x1)
            self._sync_image(py0, py1, px0, px1)
            if latent is not None:
                self._sync_chunks(LATENT, [(0, self.latent.shape[0]), (y0, y1), (x0, x1)])
        except OSError as e:
            raise _io_error(self.path, e) from None
        except CanvasError:
            raise
        except Exception as e:  # a partial chunk write decodes the chunk first: it may be damaged
            raise CanvasDamagedError(f"{self.path} is damaged: a chunk under latent rectangle y {y0}:{y1}, "
                                     f"x {x0}:{x1} cannot be read ({_reason(e)}); run `diffinfinite verify` on it") from None
        self._refresh_checksums(y0, y1, x0, x1)


    def write_pixels(self, y0: int, x0: int, rgb: np.ndarray) -> None:
        """Write any (h, w, 3) uint8 block at level 0 and refresh the pyramid above it."""
        self._check_writable()
        h, w = rgb.shape[:2]
        try:
            self.image(0)[:, y0 : y0 + h, x0 : x0 + w] = np.moveaxis(rgb, -1, 0)
            self.update_pyramid(y0, y0 + h, x0, x0 + w)
            self._sync_image(y0, y0 + h, x0, x0 + w)
        except OSError as e:
            raise _io_error(self.path, e) from None
        f = self.factor
        self._refresh_checksums(y0 // f, -(-(y0 + h) // f), x0 // f, -(-(x0 + w) // f))


    def write_latent(self, y0: int, x0: int, latent: np.ndarray) -> None:
        """Write a (C, h, w) latent block (durably) at latent position (y0, x0)."""
        self._check_writable()
        c, h, w = latent.shape
        try:
            self.latent[:, y0 : y0 + h, x0 : x0 + w] = latent.astype(np.float32)
            self._sync_chunks(LATENT, [(0, c), (y0, y0 + h), (x0, x0 + w)])
        except OSError as e:
            raise _io_error(self.path, e) from None
        self._refresh_checksums(y0, y0 + h, x0, x0 + w)


    def update_pyramid(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Recompute the coarser levels over a level-0 rectangle (each level from the one below)."""
        for level in range(1, self.levels):
            src, dst = self.image(level - 1), self.image(level)
            y0, x0 = (y0 // 2) * 2, (x0 // 2) * 2  # even-aligned in the finer level
            y1, x1 = min(src.shape[1], y1 + (y1 % 2)), min(src.shape[2], x1 + (x1 % 2))
            block = self._read(str(level - 1), (slice(None), slice(y0, y1), slice(x0, x1)))
            dst[:, y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = downsample2(block)
            y0, y1, x0, x1 = y0 // 2, (y1 + 1) // 2, x0 // 2, (x1 + 1) // 2


    def pyramid_rects(self, y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int, int, int]]:
        """The rectangle of each level (0 first) that a level-0 rectangle's pixels feed."""
        rects = [(y0, y1, x0, x1)]
        for level in range(1, self.levels):
            y0, y1, x0, x1 = y0 // 2, (y1 + 1) // 2, x0 // 2, (x1 + 1) // 2
            rects.append((y0, y1, x0, x1))
        return rects


    def _sync_image(self, y0: int, y1: int, x0: int, x1: int) -> None:
        for level, (a, b, c, d) in enumerate(self.pyramid_rects(y0, y1, x0, x1)):
            self._sync_chunks(str(level), [(0, 3), (a, b), (c, d)])


    def read_rgb(self, y0: int, y1: int, x0: int, x1: int, level: int = 0) -> np.ndarray:
        return np.moveaxis(self._read(str(level), (slice(None), slice(y0, y1), slice(x0, x1))), 0, -1)


    def read_latent(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._read(LATENT, (slice(None), slice(y0, y1), slice(x0, x1)))

    def rebuild_pyramid(self, py0: int, py1: int, px0: int, px1: int) -> None:
        """Recompute the pyramid over a level-0 rectangle grown to whole chunks of every level (so
        the parts of a replaced chunk outside the rectangle are refilled too), durably."""
        rects = self.pyramid_rects(py0, py1, px0, px1)
        y0, y1, x0, x1 = py0, py1, px0, px1
        for level in range(1, self.levels):
            ch = self.image(level).chunks
            a, b, c, d = rects[level]
            s = 2**level
            y0, x0 = min(y0, (a // ch[1]) * ch[1] * s), min(x0, (c // ch[2]) * ch[2] * s)
            y1 = max(y1, min(self.height, -(-b // ch[1]) * ch[1] * s))
            x1 = max(x1, min(self.width, -(-d // ch[2]) * ch[2] * s))
        self.update_pyramid(y0, y1, x0, x1)
        self._sync_image(y0, y1, x0, x1)
        self.flush()

    def drop_undecodable(self, name: str, bounds) -> None:
        """Delete the chunk files of array ``name`` under ``bounds`` that cannot be decoded (a new
        write into them would fail reading them first); they read as the fill value until written."""
        arr = self._array(name)
        for p in self.chunk_files(name, bounds):
            if not p.exists():
                continue
            idx = [int(v) for v in p.relative_to(self.path / name / "c").parts]
            box = tuple(slice(i * c, min(n, (i + 1) * c)) for i, c, n in zip(idx, arr.chunks, arr.shape))
            try:
                self._read(name, box)
            except CanvasDamagedError:
                p.unlink()
