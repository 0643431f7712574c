"""Checking a canvas against its region state: is every finished region really on disk?

For each finished region, :func:`verify_canvas` checks that the chunk files holding its level-0
pixels, its latents and its pyramid tiles are present and decode, and that the CRC-32 of its
pixels and latents equals the one recorded when the region was written.  :func:`repair` then
rebuilds what can be rebuilt (pyramid tiles, from level 0) and forgets sampled regions whose own
data is damaged, so the next run samples them again.  No torch, no napari.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from src_models.store.canvas import (COPIED, LATENT, PENDING, Canvas, CanvasDamagedError, CanvasError, crc,
                                     downsample2)


@dataclass
class VerifyReport:
    path: str
    regions: int
    done: int
    deep: bool
    damaged: dict[int, list[str]] = field(default_factory=dict)  # region index -> what is wrong
    pyramid_only: set[int] = field(default_factory=set)  # damaged only above level 0: rebuildable
    copied: set[int] = field(default_factory=set)  # damaged regions copied from elsewhere (slide, source canvas)
    own: set[int] = field(default_factory=set, repr=False)  # damaged in their level-0 pixels or latents
    records: list[str] = field(default_factory=list)  # region state records lost or disagreeing (restorable)
    mask: list[str] = field(default_factory=list)  # the mask against its signatures
    mask_fix: dict = field(default_factory=dict, repr=False)  # what of the mask's records a resume restores
    mask_changed: bool = False  # the user's mask itself differs or cannot be read: the tool cannot repair it

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.records and not self.mask

    def summary(self) -> str:
        how = "checksums, pyramid and mask" if self.deep else "chunk files present"
        if not self.damaged:
            head = f"{self.path}: {self.done} of {self.regions} regions finished, none damaged ({how})"
        else:
            listed = ", ".join(str(i) for i in sorted(self.damaged)[:20]) + (" ..." if len(self.damaged) > 20 else "")
            head = f"{self.path}: {len(self.damaged)} of {self.done} finished regions damaged ({listed})"
        extra = [f"region state: {t}" for t in self.records] + [f"mask: {t}" for t in self.mask]
        return "; ".join([head, *extra])

    def to_dict(self) -> dict:
        return {"canvas": self.path, "ok": self.ok, "regions": self.regions, "finished": self.done, "deep": self.deep,
                "damaged": {str(k): v for k, v in sorted(self.damaged.items())},
                "pyramid_only": sorted(self.pyramid_only), "copied": sorted(self.copied),
                "region_state": self.records, "mask": self.mask, "mask_changed": self.mask_changed}


def _missing(files, seen: dict) -> list[str]:
    out = []
    for p in files:
        if p not in seen:
            seen[p] = p.exists()
        if not seen[p]:
            out.append(p)
    return out


def _spans(n_regions: int, size: int, total_latent: int, scale: float, chunk: int, n_chunks: int):
    """For each chunk along one axis, the range [lo, hi) of region indices whose rows it holds
    (``scale``: array px per latent px)."""
    i = np.arange(n_regions)
    a = np.floor(i * size * scale).astype(np.int64)
    b = np.ceil(np.minimum(total_latent, (i + 1) * size) * scale).astype(np.int64)
    c = np.arange(n_chunks)
    lo = np.searchsorted(b, c * chunk, side="right")
    hi = np.searchsorted(a, (c + 1) * chunk, side="left")
    return lo, np.maximum(lo, hi)


def _quick(canvas: Canvas, report: VerifyReport, done_grid: np.ndarray) -> None:
    """Presence of the chunk files under finished regions, worked out per chunk (fast on any size)."""
    size, ny, nx = canvas.region_grid
    lh, lw = canvas.latent_shape
    sat = np.zeros((ny + 1, nx + 1), dtype=np.int64)  # summed-area table of the done grid
    sat[1:, 1:] = done_grid.astype(np.int64).cumsum(0).cumsum(1)
    arrays = [(str(level), canvas.factor / 2**level, level > 0) for level in range(canvas.levels)]
    arrays.append((LATENT, 1.0, False))
    for name, scale, pyramid in arrays:
        arr = canvas.array(name)
        (_, h, w), (_, ch, cw) = arr.shape, arr.chunks
        ncy, ncx = -(-h // ch), -(-w // cw)
        ylo, yhi = _spans(ny, size, lh, scale, ch, ncy)
        xlo, xhi = _spans(nx, size, lw, scale, cw, ncx)
        count = sat[yhi][:, xhi] - sat[ylo][:, xhi] - sat[yhi][:, xlo] + sat[ylo][:, xlo]
        base = canvas.path / name / "c" / "0"
        for cy, cx in zip(*np.nonzero(count)):
            p = base / str(cy) / str(cx)
            try:
                if p.stat().st_size > 0:  # (a stored chunk is never empty: even zeros are compressed)
                    continue
                what = f"empty chunk {p.relative_to(canvas.path).as_posix()}"
            except FileNotFoundError:
                what = f"missing chunk {p.relative_to(canvas.path).as_posix()}"
            sub = done_grid[ylo[cy] : yhi[cy], xlo[cx] : xhi[cx]]
            for iy, ix in zip(*np.nonzero(sub)):
                index = int((ylo[cy] + iy) * nx + xlo[cx] + ix)
                report.damaged.setdefault(index, []).append(what)
                if not pyramid:
                    report.own.add(index)


def verify_canvas(canvas: Canvas, deep: bool = True, progress=None) -> VerifyReport:
    """Check every finished region of ``canvas``; ``deep`` also decodes and checksums its data
    (otherwise only the presence of its chunk files is checked, which is fast on any size).
    ``progress(n, total)`` is called after each region (deep check)."""
    canvas.check()
    table = canvas.state_table()
    flat = table.reshape(-1, 4)
    done = [int(i) for i in (flat[:, 0] != PENDING).nonzero()[0]]
    report = VerifyReport(str(canvas.path), int(flat.shape[0]), len(done), deep)
    report.records = list(canvas.state_problems)
    if canvas.state_restored:
        report.records.append(f"{len(canvas.state_restored)} finished region(s) known only from the other record "
                              f"({', '.join(map(str, sorted(canvas.state_restored)[:20]))}); a resume restores them")
    if deep:
        report.mask, report.mask_fix = canvas.check_mask()
        report.mask_changed = any(("differ" in t or "cannot be read" in t) for t in report.mask)
    if not deep:
        _quick(canvas, report, table[..., 0] != PENDING)
        for index in report.damaged:
            if index not in report.own:
                report.pyramid_only.add(index)
            elif int(flat[index, 0]) == COPIED:
                report.copied.add(index)
        if progress is not None:
            progress(len(done), len(done))
        return report
    seen: dict = {}
    rel = lambda p: p.relative_to(canvas.path).as_posix()  # noqa: E731
    for n, index in enumerate(done, 1):
        r = canvas.region(index)
        state, rgb_crc, lat_crc, _ = (int(v) for v in flat[index])
        py0, py1, px0, px1 = r.px(canvas.factor)
        own, pyramid = [], []
        for p in _missing(canvas.chunk_files("0", [(0, 3), (py0, py1), (px0, px1)]), seen):
            own.append(f"missing chunk {rel(p)}")
        for p in _missing(canvas.chunk_files(LATENT, [(0, canvas.latent.shape[0]), (r.y0, r.y1), (r.x0, r.x1)]), seen):
            own.append(f"missing chunk {rel(p)}")
        rects = canvas.pyramid_rects(py0, py1, px0, px1)
        for level in range(1, canvas.levels):
            a, b, c, d = rects[level]
            for p in _missing(canvas.chunk_files(str(level), [(0, 3), (a, b), (c, d)]), seen):
                pyramid.append(f"missing chunk {rel(p)}")
        if deep:  # (a canvas of the marker-file layout opened read-only has no checksums yet)
            try:
                pixels = crc(canvas.read_array("0", (slice(None), slice(py0, py1), slice(px0, px1))))
                if pixels != rgb_crc and not canvas.legacy:
                    own.append("level-0 pixels differ from what was written")
            except CanvasDamagedError:
                own.append("level-0 pixels cannot be read (damaged chunk)")
            try:
                latents = crc(canvas.read_array(LATENT, (slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))))
                if latents != lat_crc and not canvas.legacy:
                    own.append("latents differ from what was written")
            except CanvasDamagedError:
                own.append("latents cannot be read (damaged chunk)")
            pyramid += _pyramid_problems(canvas, py0, py1, px0, px1)
        if own or pyramid:
            report.damaged[index] = own + pyramid
            if not own:
                report.pyramid_only.add(index)
            elif state == COPIED:
                report.copied.add(index)
        if progress is not None:
            progress(n, len(done))
    return report


def _pyramid_problems(canvas: Canvas, py0: int, py1: int, px0: int, px1: int) -> list[str]:
    """Every coarser level over a level-0 rectangle against the level computed again from level 0
    (a box grown to the coarsest level's grid, so each coarse pixel sees all its level-0 pixels)."""
    top = 2 ** (canvas.levels - 1)
    y0, x0 = py0 // top * top, px0 // top * top
    y1, x1 = min(canvas.height, -(-py1 // top) * top), min(canvas.width, -(-px1 // top) * top)
    try:
        block = canvas.read_array("0", (slice(None), slice(y0, y1), slice(x0, x1)))
    except CanvasDamagedError:
        return []  # level 0 itself is named by the caller
    out = []
    for level in range(1, canvas.levels):
        block = downsample2(block)
        s = 2**level
        # the coarse pixels made of this region's pixels only (one that also covers a neighbour still
        # being written would differ until the neighbour is done: it is checked with the levels below)
        a = -(-py0 // s)
        b = py1 // s if py1 < canvas.height else -(-py1 // s)
        c = -(-px0 // s)
        d = px1 // s if px1 < canvas.width else -(-px1 // s)
        if b <= a or d <= c:
            continue
        try:
            stored = canvas.read_array(str(level), (slice(None), slice(a, b), slice(c, d)))
        except CanvasDamagedError:
            out.append(f"pyramid level {level} cannot be read (damaged chunk)")
            continue
        want = block[:, a - y0 // s : b - y0 // s, c - x0 // s : d - x0 // s]
        if not np.array_equal(stored, want):
            out.append(f"pyramid level {level} differs from level 0 ({int((stored != want).sum())} values)")
    return out


def repair(canvas: Canvas, report: VerifyReport) -> tuple[list[int], list[int]]:
    """Rebuild the pyramid of regions damaged only above level 0, and forget the sampled regions
    whose own pixels or latents are damaged (the next run samples them again).  Copied regions
    are left as they are (their source is not in the canvas).  Returns (rebuilt, forgotten)."""
    if not canvas.writable:
        raise CanvasError(f"{canvas.path} is open read-only")
    if report.mask_changed:  # the user's mask: never guessed, never regenerated
        raise CanvasDamagedError(
            f"{canvas.path}: {'; '.join(t for t in report.mask if 'differ' in t or 'cannot be read' in t)}; the tool "
            "cannot know the labels you meant: restore the canvas from a backup, or if the change is yours accept it "
            f"with `diffinfinite verify --accept-mask {canvas.path}`, then resume")
    if canvas.state_problems:
        canvas.rewrite_state()
    if report.mask_fix:
        canvas.restore_mask_records(report.mask_fix)
    rebuilt = sorted(report.pyramid_only)
    for index in rebuilt:
        py0, py1, px0, px1 = canvas.region(index).px(canvas.factor)
        rects = canvas.pyramid_rects(py0, py1, px0, px1)
        for level in range(1, canvas.levels):  # damaged chunks are replaced whole, then refilled
            a, b, c, d = rects[level]
            for p in canvas.chunk_files(str(level), [(0, 3), (a, b), (c, d)]):
                p.unlink(missing_ok=True)
        canvas.rebuild_pyramid(py0, py1, px0, px1)
    forgotten = sorted(set(report.damaged) - report.pyramid_only - report.copied)
    for index in forgotten:  # chunks that cannot be decoded would stop the new write: drop them
        r = canvas.region(index)
        py0, py1, px0, px1 = r.px(canvas.factor)
        canvas.drop_undecodable(LATENT, [(0, canvas.latent.shape[0]), (r.y0, r.y1), (r.x0, r.x1)])
        for level, (a, b, c, d) in enumerate(canvas.pyramid_rects(py0, py1, px0, px1)):
            canvas.drop_undecodable(str(level), [(0, 3), (a, b), (c, d)])
    if forgotten:
        canvas.clear_done(forgotten)
    return rebuilt, forgotten
