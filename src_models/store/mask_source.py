"""The class mask of a canvas: ``labels/mask`` at latent resolution with a pyramid of its own
(level i is level 0 at every 2^i-th pixel), written lazily from a *mask source* (the label image as
given, of any size, stretched over the latent grid) chunk by chunk as regions are written, with
``mask_written`` recording which level-0 chunks hold their final labels.

:class:`MaskSource` is a part of :class:`~src_models.store.canvas.Canvas` (mixed in)."""
from __future__ import annotations

import math

import numpy as np
import zarr

from src_models.durable import fsync_tree
from src_models.store.base import MASK_CRC, MASK_SOURCE, MASK_WRITTEN, CanvasDamagedError, CanvasError, _io_error, crc
from src_models.store.pyramid import halvings



def nearest_index(positions: np.ndarray, n_out: int, n_in: int) -> np.ndarray:
    """Source index of output positions when ``n_in`` samples are stretched (nearest) to ``n_out``."""
    return np.minimum(((positions + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def _stretch(src: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``src[ys][:, xs]`` for non-decreasing index arrays, by repeating runs (fast when stretching)."""
    uy, cy = np.unique(ys, return_counts=True)
    ux, cx = np.unique(xs, return_counts=True)
    return np.repeat(np.repeat(src[np.ix_(uy, ux)], cy, axis=0), cx, axis=1)


class MaskView:
    """The class mask at level 0 as an array: ``canvas.mask[y0:y1, x0:x1]`` reads the labels,
    wherever they are stored (written chunks, or the resized source of a lazily written mask);
    assignment writes them without the label check of :meth:`Canvas.write_mask`."""

    def __init__(self, canvas: "MaskSource"):
        self._c = canvas

    shape = property(lambda self: self._c.latent_shape)
    dtype = np.dtype("uint8")
    ndim = 2
    chunks = property(lambda self: self._c._array("labels/mask/0").chunks)

    @property
    def nchunks_initialized(self) -> int:
        """Chunks holding labels (a lazily written mask counts as wholly present)."""
        if self._c.has_mask_source:
            return int(np.prod([math.ceil(s / c) for s, c in zip(self.shape, self.chunks)]))
        return int(self._c._array("labels/mask/0").nchunks_initialized)

    def _rect(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (2 - len(key))
        out, steps, drop = [], [], []
        for axis, (k, n) in enumerate(zip(key, self.shape)):
            if isinstance(k, (int, np.integer)):
                k = int(k) + n if k < 0 else int(k)
                if not 0 <= k < n:
                    raise IndexError(f"index {k} out of range for axis of size {n}")
                out.append((k, k + 1))
                steps.append(1)
                drop.append(axis)
            elif isinstance(k, slice):
                a, b, s = k.indices(n)
                if s <= 0:
                    raise IndexError("the mask supports positive steps only")
                out.append((a, max(a, b)))
                steps.append(s)
            else:
                raise IndexError(f"unsupported index {k!r}")
        return out, steps, drop

    def __getitem__(self, key):
        ((y0, y1), (x0, x1)), steps, drop = self._rect(key)
        block = self._c.read_mask(y0, y1, x0, x1, steps=tuple(steps))
        for axis in reversed(drop):
            block = block.take(0, axis=axis)
        return block

    def __setitem__(self, key, value):
        ((y0, y1), (x0, x1)), steps, _ = self._rect(key)
        if steps != [1, 1]:
            raise IndexError("the mask is written in whole rectangles")
        labels = np.broadcast_to(np.asarray(value, dtype=np.uint8), (y1 - y0, x1 - x0))
        self._c._write_mask_block(np.array(labels), y0, x0)

    def __array__(self, dtype=None, copy=None):
        out = self[:, :]
        return out.astype(dtype) if dtype is not None else out


def _create_mask_arrays(group: zarr.Group, shape: tuple[int, int], levels: int, chunk: int,
                        overwrite: bool = False, keep_level0: bool = False) -> None:
    mask_g = group.require_group("labels").require_group("mask")
    for level, (h, w) in enumerate(halvings(*shape, levels)):
        if keep_level0 and level == 0:
            continue
        mask_g.create_array(str(level), shape=(h, w), chunks=(min(chunk, h), min(chunk, w)), dtype="uint8",
                            fill_value=0, dimension_names=("y", "x"), overwrite=overwrite)
    ch = min(chunk, shape[0]), min(chunk, shape[1])
    grid = (math.ceil(shape[0] / ch[0]), math.ceil(shape[1] / ch[1]))
    group.require_group("diffinfinite").create_array(
        "mask_written", shape=grid, chunks=tuple(min(1024, g) for g in grid), dtype="uint8", fill_value=0,
        overwrite=overwrite, config={"write_empty_chunks": True})
    # the signature of every written level-0 mask chunk (2**32 + CRC-32; 0: none written): verify
    # finds a mask changed behind the tool's back, and it is the second record of mask_written
    group.require_group("diffinfinite").create_array(
        "mask_crc", shape=grid, chunks=tuple(min(1024, g) for g in grid), dtype="uint64", fill_value=0,
        overwrite=overwrite, config={"write_empty_chunks": True})


class MaskSource:
    """Reading and writing the class mask, from its written chunks or its source."""


    @property
    def mask_levels(self) -> int:
        g = self.group["labels/mask"]
        return len(g.attrs["ome"]["multiscales"][0]["datasets"])


    @property
    def mask(self) -> MaskView:
        return MaskView(self)


    def mask_level(self, level: int) -> zarr.Array:
        return self._array(f"labels/mask/{level}")


    # ---------------------------------------------------------------- the mask
    @property
    def has_mask_source(self) -> bool:
        return bool(self.info.get("mask_source"))


    def _mask_source(self) -> np.ndarray:
        if self._source is None:
            self._source = self._read(MASK_SOURCE, slice(None))
        return self._source


    def _mask_written(self) -> np.ndarray:
        """(mask chunks down, across) bool: level-0 mask chunks that hold their final labels."""
        if self._written is not None:
            return self._written
        if self.legacy:
            arr = self._array("labels/mask/0")
            shape = tuple(math.ceil(s / c) for s, c in zip(arr.shape, arr.chunks))
            written = np.ones(shape, dtype=bool)
        else:
            written = self._read(MASK_WRITTEN, slice(None)).astype(bool)
        if self.writable:
            self._written = written
        return written


    def _set_written(self, cys: range, cxs: range) -> None:
        written = self._mask_written()
        if written[cys.start : cys.stop, cxs.start : cxs.stop].all():
            return
        written[cys.start : cys.stop, cxs.start : cxs.stop] = True
        arr = self._array(MASK_WRITTEN)
        ch = arr.chunks
        ys = slice((cys.start // ch[0]) * ch[0], min(arr.shape[0], -(-cys.stop // ch[0]) * ch[0]))
        xs = slice((cxs.start // ch[1]) * ch[1], min(arr.shape[1], -(-cxs.stop // ch[1]) * ch[1]))
        arr[ys, xs] = written[ys, xs].astype(np.uint8)


    def _mask_chunk(self) -> tuple[int, int]:
        return tuple(self._array("labels/mask/0").chunks)


    def read_mask(self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None,
                  level: int = 0, steps: tuple[int, int] = (1, 1)) -> np.ndarray:
        """The labels of rectangle [y0, y1) x [x0, x1) of mask level ``level`` (every ``steps``-th
        pixel), from written chunks or, where none was written yet, from the mask source."""
        name = f"labels/mask/{level}"
        arr = self.mask_level(level)
        h, w = arr.shape
        y1 = h if y1 is None else min(y1, h)
        x1 = w if x1 is None else min(x1, w)
        sy, sx = steps
        rows = np.arange(y0, max(y0, y1), sy)
        cols = np.arange(x0, max(x0, x1), sx)
        if not len(rows) or not len(cols):
            return np.zeros((len(rows), len(cols)), dtype=np.uint8)
        s = 2**level
        ch, cw = self._mask_chunk()
        rkey, ckey = (rows * s) // ch, (cols * s) // cw  # level-0 chunk of each output pixel
        ucy, rcount = np.unique(rkey, return_counts=True)
        ucx, ccount = np.unique(ckey, return_counts=True)
        wsub = self._mask_written()[np.ix_(ucy, ucx)]
        source = self.has_mask_source
        if wsub.all() or (not source and wsub.any() and sy == 1 and sx == 1):
            return self._read(name, (slice(y0, y1, sy), slice(x0, x1, sx)))
        if source:
            src = self._mask_source()
            lh, lw = self.latent_shape
            out = _stretch(src, nearest_index(rows * s, lh, src.shape[0]), nearest_index(cols * s, lw, src.shape[1]))
        else:
            out = np.zeros((len(rows), len(cols)), dtype=np.uint8)
        if wsub.any():  # read only the written chunks (a huge mask is mostly not written at first)
            rstart = np.concatenate([[0], np.cumsum(rcount)])
            cstart = np.concatenate([[0], np.cumsum(ccount)])
            for i, j in zip(*np.nonzero(wsub)):
                a, b, c, d = rstart[i], rstart[i + 1], cstart[j], cstart[j + 1]
                out[a:b, c:d] = self._read(name, (slice(rows[a], rows[b - 1] + 1, sy), slice(cols[c], cols[d - 1] + 1, sx)))
        return out


    def mask_grid(self, step: int) -> np.ndarray:
        """The level-0 mask at every ``step``-th latent pixel (from the pyramid when it can)."""
        level = int(math.log2(step)) if step > 0 and step & (step - 1) == 0 else -1
        if 0 <= level < self.mask_levels:
            return self.read_mask(level=level)
        return self.read_mask(steps=(step, step))


    def set_mask_source(self, labels: np.ndarray) -> None:
        """Make ``labels`` (any size) the canvas's mask, stretched (nearest) over the latent grid.

        Nothing of the full-size mask is written now: each level-0 chunk is written from the
        source when a region under it is written or when it is edited (:meth:`write_mask`), so a
        canvas of any size gets its mask at once."""
        self._check_writable()
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.size == 0:
            raise CanvasError(f"a mask must be a non-empty 2-D label image, got shape {labels.shape}")
        if int(labels.max()) >= len(self.classes):
            raise CanvasError(f"mask has label {int(labels.max())}, but the canvas has classes 0..{len(self.classes) - 1}")
        try:
            levels = self.mask_levels
            lh, lw = self.latent_shape
            _create_mask_arrays(self.group, (lh, lw), levels, self._mask_chunk()[0], overwrite=True)
            for name in [f"labels/mask/{i}" for i in range(levels)] + [MASK_WRITTEN, MASK_SOURCE, MASK_CRC]:
                self._arrays.pop(name, None)
            g = self.group["diffinfinite"]
            g.create_array("mask_source", shape=labels.shape, chunks=tuple(min(1024, s) for s in labels.shape),
                           dtype="uint8", fill_value=0, overwrite=True)
            self._array(MASK_SOURCE)[:] = labels.astype(np.uint8)
            fsync_tree(self.path / MASK_SOURCE)
            self._written = np.zeros(self._array(MASK_WRITTEN).shape, dtype=bool)
            self._source = labels.astype(np.uint8)
            self.set_info(mask_source=[int(labels.shape[0]), int(labels.shape[1])],
                          mask_source_crc=crc(self._source))
        except OSError as e:
            raise _io_error(self.path, e) from None


    def materialise_mask(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Write the level-0 mask chunks under a latent rectangle that still come from the source."""
        if not self.has_mask_source:
            return
        ch, cw = self._mask_chunk()
        written = self._mask_written()
        cys = range(y0 // ch, -(-y1 // ch))
        cxs = range(x0 // cw, -(-x1 // cw))
        if written[cys.start : cys.stop, cxs.start : cxs.stop].all():
            return
        lh, lw = self.latent_shape
        ey0, ey1 = cys.start * ch, min(lh, cys.stop * ch)
        ex0, ex1 = cxs.start * cw, min(lw, cxs.stop * cw)
        self._write_mask_block(self.read_mask(ey0, ey1, ex0, ex1), ey0, ex0)


    def write_mask(self, labels: np.ndarray, y0: int = 0, x0: int = 0) -> None:
        self._check_writable()
        if labels.ndim != 2:
            raise CanvasError(f"a mask must be a 2-D label image, got shape {labels.shape}")
        if labels.size and int(labels.max()) >= len(self.classes):
            raise CanvasError(f"mask has label {int(labels.max())}, but the canvas has classes 0..{len(self.classes) - 1}")
        self._write_mask_block(labels, y0, x0)


    def _write_mask_block(self, labels: np.ndarray, y0: int, x0: int) -> None:
        self._check_writable()
        lh, lw = self.latent_shape
        labels = np.asarray(labels).astype(np.uint8)[: max(0, lh - y0), : max(0, lw - x0)]
        h, w = labels.shape
        if not h or not w:
            return
        y1, x1 = y0 + h, x0 + w
        ch, cw = self._mask_chunk()
        cys = range(y0 // ch, -(-y1 // ch))
        cxs = range(x0 // cw, -(-x1 // cw))
        try:
            if self.has_mask_source and not self._mask_written()[cys.start : cys.stop, cxs.start : cxs.stop].all():
                # whole chunks, so the parts outside the rectangle keep their (source) labels
                ey0, ey1 = cys.start * ch, min(lh, cys.stop * ch)
                ex0, ex1 = cxs.start * cw, min(lw, cxs.stop * cw)
                block = self.read_mask(ey0, ey1, ex0, ex1)
                block[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0] = labels
                labels, y0, y1, x0, x1 = block, ey0, ey1, ex0, ex1
            self.mask_level(0)[y0:y1, x0:x1] = labels
            if self.has_mask_source:  # the written flag below must never point at a lost chunk
                self._sync_chunks("labels/mask/0", [(y0, y1), (x0, x1)], now=True)
            for level in range(1, self.mask_levels):  # level i: level i-1 at every other pixel
                y0, y1, x0, x1 = -(-y0 // 2), -(-y1 // 2), -(-x0 // 2), -(-x1 // 2)
                if y1 <= y0 or x1 <= x0:
                    break
                src = self._read(f"labels/mask/{level - 1}", (slice(2 * y0, 2 * y1, 2), slice(2 * x0, 2 * x1, 2)))
                self.mask_level(level)[y0:y1, x0:x1] = src
            self._record_mask_crc(cys, cxs)
            self._set_written(cys, cxs)
        except OSError as e:
            raise _io_error(self.path, e) from None


    # ---------------------------------------------------------------- the mask's signatures
    def _mask_chunk_box(self, cy: int, cx: int) -> tuple[slice, slice]:
        ch, cw = self._mask_chunk()
        lh, lw = self.latent_shape
        return slice(cy * ch, min(lh, (cy + 1) * ch)), slice(cx * cw, min(lw, (cx + 1) * cw))


    def _record_mask_crc(self, cys: range, cxs: range) -> None:
        """Record the signature of the level-0 mask chunks just written (durably, after them)."""
        if not getattr(self, "has_state_copy", False) or not self._exists(MASK_CRC):
            return
        lh, lw = self.latent_shape
        ch, cw = self._mask_chunk()
        self._sync_chunks("labels/mask/0", [(cys.start * ch, min(lh, cys.stop * ch)),
                                            (cxs.start * cw, min(lw, cxs.stop * cw))], now=True)
        sig = np.zeros((len(cys), len(cxs)), dtype=np.uint64)
        for i, cy in enumerate(cys):
            for j, cx in enumerate(cxs):
                sig[i, j] = (1 << 32) + crc(self._read("labels/mask/0", self._mask_chunk_box(cy, cx)))
        self._array(MASK_CRC)[cys.start : cys.stop, cxs.start : cxs.stop] = sig
        self._sync_chunks(MASK_CRC, [(cys.start, cys.stop), (cxs.start, cxs.stop)], now=True)


    def check_mask(self) -> tuple[list[str], dict]:
        """The mask against the signatures recorded when it was stored: (problems in words, what
        can be restored: ``written`` (chunk index pairs whose mask_written flag was lost) and
        ``unsigned`` (written chunks whose signature was lost)).  A changed or unreadable chunk
        cannot be restored by the tool (it is the user's mask)."""
        problems, fix = [], {"written": [], "unsigned": []}
        if not getattr(self, "has_state_copy", False) or self.legacy:
            return problems, fix
        try:
            sig = self._read(MASK_CRC, slice(None))
        except CanvasDamagedError:
            return [f"the mask's signatures ({MASK_CRC}) cannot be read"], fix
        written = self._read(MASK_WRITTEN, slice(None)).astype(bool)
        changed, unreadable = [], []
        for cy, cx in zip(*np.nonzero(sig)):
            try:
                block = self._read("labels/mask/0", self._mask_chunk_box(int(cy), int(cx)))
            except CanvasDamagedError:
                unreadable.append((int(cy), int(cx)))
                continue
            if (1 << 32) + crc(block) != int(sig[cy, cx]):
                changed.append((int(cy), int(cx)))
            elif not written[cy, cx]:
                fix["written"].append((int(cy), int(cx)))
        fix["unsigned"] = [(int(a), int(b)) for a, b in zip(*np.nonzero(written & (sig == 0)))]
        ch, cw = self._mask_chunk()
        where = lambda cells: ", ".join(f"y {a * ch} x {b * cw}" for a, b in cells[:5]) + (" ..." if len(cells) > 5 else "")  # noqa: E731
        if changed:
            problems.append(f"{len(changed)} mask chunk(s) differ from the mask that was stored (latent px {where(changed)})")
        if unreadable:
            problems.append(f"{len(unreadable)} mask chunk(s) cannot be read (latent px {where(unreadable)})")
        if fix["written"]:
            problems.append(f"{len(fix['written'])} mask chunk(s) are not marked written in {MASK_WRITTEN} though "
                            "their signature matches (restored by a resume)")
        if fix["unsigned"]:
            problems.append(f"{len(fix['unsigned'])} written mask chunk(s) lost their signature in {MASK_CRC} "
                            "(signed again by a resume)")
        if self.has_mask_source and "mask_source_crc" in self.info:
            try:
                if crc(self._read(MASK_SOURCE, slice(None))) != int(self.info["mask_source_crc"]):
                    problems.append("the mask source differs from the mask that was stored")
            except CanvasDamagedError:
                problems.append("the mask source cannot be read")
        return problems, fix


    def restore_mask_records(self, fix: dict) -> None:
        """Put back what :meth:`check_mask` found restorable: lost written flags, lost signatures."""
        self._check_writable()
        for cy, cx in fix.get("written", []):
            self._set_written(range(cy, cy + 1), range(cx, cx + 1))
        for cy, cx in fix.get("unsigned", []):
            self._record_mask_crc(range(cy, cy + 1), range(cx, cx + 1))
        self._sync_chunks(MASK_WRITTEN, [(0, self._array(MASK_WRITTEN).shape[0]), (0, self._array(MASK_WRITTEN).shape[1])])
        self.flush()


    def accept_mask(self) -> None:
        """Sign the mask as it is now (the user's own change made outside the tool)."""
        self._check_writable()
        if not self._exists(MASK_CRC):
            return
        sig = self._read(MASK_CRC, slice(None))
        written = self._mask_written()
        cells = sorted({(int(a), int(b)) for a, b in zip(*np.nonzero(sig | written.astype(np.uint64)))})
        for cy, cx in cells:
            self._read("labels/mask/0", self._mask_chunk_box(cy, cx))  # unreadable: say so, sign nothing
        for cy, cx in cells:
            self._record_mask_crc(range(cy, cy + 1), range(cx, cx + 1))
        if self.has_mask_source:
            self.set_info(mask_source_crc=crc(self._read(MASK_SOURCE, slice(None))))
