"""Regions of a canvas and their state: the region grid, the ``region_state`` table (state, CRC-32
of the level-0 pixels and of the latents, seed per region), regeneration jobs (rectangles to
sample again with the rest of the region as context) and which latents are known context.

:class:`RegionState` is a part of :class:`~src_models.store.canvas.Canvas` (mixed in); it uses the
canvas's array access (``_array``, ``_read``), ``flush`` and ``_sync_chunks``."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src_models.durable import fsync_file
from src_models.store.base import (COPIED, LATENT, PENDING, SAMPLED, SKIPPED, STATE, STATE_CHUNK, STATE_COPY,
                                   CanvasDamagedError, CanvasError, _io_error, _reason, crc)


@dataclass(frozen=True)
class Region:
    """A rectangle of the canvas in latent pixels: rows [y0, y1), columns [x0, x1)."""

    index: int
    iy: int
    ix: int
    y0: int
    y1: int
    x0: int
    x1: int

    def px(self, factor: int) -> tuple[int, int, int, int]:
        return self.y0 * factor, self.y1 * factor, self.x0 * factor, self.x1 * factor


class RegionSeq(Sequence):
    """A sequence of regions given by their indices; each Region is made when it is read."""

    def __init__(self, indices: np.ndarray, size: int, nx: int, latent_shape: tuple[int, int]):
        self.indices, self._size, self._nx, self._shape = indices, size, nx, latent_shape

    def __len__(self) -> int:
        return len(self.indices)

    def _make(self, index: int) -> Region:
        size, (lh, lw) = self._size, self._shape
        iy, ix = divmod(index, self._nx)
        return Region(index, iy, ix, iy * size, min(lh, (iy + 1) * size), ix * size, min(lw, (ix + 1) * size))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._make(int(v)) for v in self.indices[i]]
        return self._make(int(self.indices[i]))

    def __iter__(self):
        for v in self.indices.tolist():
            yield self._make(v)

    def __repr__(self) -> str:
        return f"RegionSeq({len(self)} regions)"


class RegionState:
    """The region grid, region state and regeneration jobs of a canvas."""


    # ---------------------------------------------------------------- regions
    @property
    def region_grid(self) -> tuple[int, int, int]:
        """(region side in latent px, regions down, regions across)."""
        size = self.region_size // self.factor
        lh, lw = self.latent_shape
        return size, math.ceil(lh / size), math.ceil(lw / size)


    def region(self, index: int) -> Region:
        size, ny, nx = self.region_grid
        if not 0 <= index < ny * nx:
            raise CanvasError(f"region {index} does not exist (the canvas has {ny * nx})")
        lh, lw = self.latent_shape
        iy, ix = divmod(index, nx)
        return Region(index, iy, ix, iy * size, min(lh, (iy + 1) * size), ix * size, min(lw, (ix + 1) * size))


    def regions(self) -> "RegionSeq":
        """The region grid over the latent, row-major; edge regions may be smaller.  A sequence
        that makes each :class:`Region` when it is asked for (a huge canvas has 10⁵–10⁶)."""
        size, ny, nx = self.region_grid
        return self.region_seq(np.arange(ny * nx))


    def region_seq(self, indices) -> "RegionSeq":
        """The regions of ``indices`` (in that order) as a lazy sequence."""
        size, ny, nx = self.region_grid
        return RegionSeq(np.asarray(indices, dtype=np.int64), size, nx, self.latent_shape)


    def regions_in(self, y0: int, y1: int, x0: int, x1: int) -> list[Region]:
        """Regions that overlap the latent rectangle [y0, y1) x [x0, x1)."""
        size, ny, nx = self.region_grid
        iys = range(max(0, y0 // size), min(ny, -(-y1 // size)))
        ixs = range(max(0, x0 // size), min(nx, -(-x1 // size)))
        return [self.region(iy * nx + ix) for iy in iys for ix in ixs]


    # region state: one row per region in diffinfinite/region_state (legacy canvases opened
    # read-only: one marker file per region, as they were written)
    def state_table(self) -> np.ndarray:
        """(regions down, regions across, 4) uint64: state, CRC of pixels, CRC of latents, seed."""
        if self._state is not None:
            return self._state
        if self.legacy:
            table = self._legacy_table()
        elif self.has_state_copy:
            table = self._reconciled_table()
        else:
            table = self._read(STATE, slice(None))
        if self.writable:
            self._state = table
        return table


    def _read_record(self, name: str):
        """One record of the region state, or (None, why) when it is lost or cannot be read."""
        if not self._exists(name):
            return None, f"{name} is missing"
        try:
            return self._read(name, slice(None)), None
        except CanvasDamagedError:
            return None, f"{name} cannot be read (damaged chunk)"


    def _reconciled_table(self) -> np.ndarray:
        """The region state from its two records.  Where they differ (one lost, zeroed, damaged
        or a write between them interrupted), each differing region takes the row whose checksums
        match its data, else the one that says finished (verify then checks that row against the
        data); ``state_problems`` says what was found, ``state_restored`` which regions."""
        main, why_main = self._read_record(STATE)
        copy, why_copy = self._read_record(STATE_COPY)
        problems = [w for w in (why_main, why_copy) if w]
        if main is None and copy is None:
            raise CanvasDamagedError(f"{self.path} is damaged: {why_main} and so is its second record "
                                     f"({why_copy}); the finished regions cannot be known")
        if main is None or copy is None:
            table = (copy if main is None else main).copy()
            differ = np.flatnonzero(table[..., 0].ravel() != PENDING)
        else:
            table = main.copy()
            differ = np.flatnonzero((main != copy).any(axis=-1).ravel())
        if len(differ):
            if main is not None and copy is not None:
                problems.append(f"{STATE} and its second record disagree on {len(differ)} region(s)")
            size, ny, nx = self.region_grid
            restored = set()
            for index in differ.tolist():
                iy, ix = divmod(index, nx)
                rows = [r[iy, ix] for r in (main, copy) if r is not None]
                done = [r for r in rows if int(r[0]) != PENDING]
                if not done:
                    continue
                pick = done[0]
                if len(done) > 1 or (main is not None and copy is not None):
                    try:
                        sums = self.region_checksums(self.region(index))
                    except CanvasDamagedError:
                        sums = None
                    matching = [r for r in done if sums is not None and (int(r[1]), int(r[2])) == sums]
                    pick = matching[0] if matching else done[0]
                if main is None or not np.array_equal(pick, main[iy, ix]):
                    restored.add(index)
                table[iy, ix] = pick
            self.state_restored = restored
        self.state_problems = problems
        return table


    def rewrite_state(self) -> None:
        """Write the region state whole to both records (after :meth:`state_table` restored it)."""
        self._check_writable()
        table = self.state_table()
        size, ny, nx = self.region_grid
        arrays = [STATE, STATE_COPY] if self.has_state_copy else [STATE]
        try:
            for name in arrays:
                if not self._exists(name):
                    self.group["diffinfinite"].create_array(
                        name.split("/")[-1], shape=(ny, nx, 4), chunks=(min(STATE_CHUNK, ny), min(STATE_CHUNK, nx), 4),
                        dtype="uint64", fill_value=0, config={"write_empty_chunks": True})
                    self._arrays.pop(name, None)
                else:  # an undecodable chunk would be read before it is rewritten
                    self.drop_undecodable(name, [(0, ny), (0, nx), (0, 4)])
                self._array(name)[...] = table
                self._sync_chunks(name, [(0, ny), (0, nx), (0, 4)])
                self.flush()
        except OSError as e:
            raise _io_error(self.path, e) from None
        self.state_problems, self.state_restored = [], set()


    def _row(self, index: int) -> np.ndarray:
        size, ny, nx = self.region_grid
        if not 0 <= index < ny * nx:
            raise CanvasError(f"region {index} does not exist (the canvas has {ny * nx})")
        iy, ix = divmod(index, nx)
        if self._state is not None or self.legacy:
            return self.state_table()[iy, ix]
        if self.has_state_copy:
            try:
                main = self._read(STATE, (iy, ix))
                if int(main[0]) != PENDING or np.array_equal(main, self._read(STATE_COPY, (iy, ix))):
                    return main
            except CanvasDamagedError:
                pass
            return self.state_table()[iy, ix]  # the records disagree, or one is lost: both decide
        return self._read(STATE, (iy, ix))


    def is_done(self, index: int) -> bool:
        return int(self._row(index)[0]) != PENDING


    def done_info(self, index: int) -> dict:
        """What a finished region records: its seed and the run's settings, or that it was copied."""
        if self.legacy:
            try:
                return json.loads(self._marker(index).read_text() or "{}")
            except (FileNotFoundError, json.JSONDecodeError):
                return {}
        state, _, _, seed = (int(v) for v in self._row(index))
        if state == SAMPLED:
            return {**self.settings, "seed": seed}
        if state == SKIPPED:
            return {**self.settings, "seed": None}
        if state == COPIED:
            return {"source": self.settings.get("source", "copied")}
        return {}


    def done_indices(self) -> set[int]:
        table = self.state_table()
        return {int(i) for i in np.flatnonzero(table[..., 0].ravel() != PENDING)}


    def done_map(self) -> np.ndarray:
        """A (latent h, latent w) bool map: true where the latent belongs to a finished region."""
        size, ny, nx = self.region_grid
        done = self.state_table()[..., 0] != PENDING
        lh, lw = self.latent_shape
        return np.repeat(np.repeat(done, size, axis=0), size, axis=1)[:lh, :lw]


    def region_checksums(self, region: Region) -> tuple[int, int]:
        """CRC-32 of a region's level-0 pixels and of its latents, as stored now."""
        py0, py1, px0, px1 = region.px(self.factor)
        rgb = self._read("0", (slice(None), slice(py0, py1), slice(px0, px1)))
        lat = self._read(LATENT, (slice(None), slice(region.y0, region.y1), slice(region.x0, region.x1)))
        return crc(rgb), crc(lat)


    def mark_done(self, index: int, info: dict | None = None) -> None:
        """Record a region as finished, with the checksums of its stored pixels and latents.

        ``info`` with a ``seed`` marks a sampled region (``seed`` None: nothing was sampled),
        without one a copied region (slide import, outpaint source).  Call it only after the
        region's data is written (:meth:`write_region` makes it durable first).
        """
        self._check_writable()
        info = info or {}
        if "seed" in info:
            state, seed = (SAMPLED, int(info["seed"])) if info["seed"] is not None else (SKIPPED, 0)
        else:
            state, seed = COPIED, 0
        self.flush()
        rows = self._stale_rows(skip=index)
        rows[index] = (state, *self.region_checksums(self.region(index)), seed)
        self._set_rows(rows)
        if getattr(self, "_replaces", None) is not None:  # overwrite: the new canvas takes the old one's place
            self._swap_in()


    def _set_rows(self, rows: dict[int, tuple]) -> None:
        table = self.state_table()
        size, ny, nx = self.region_grid
        chunks = set()
        for index, row in rows.items():
            iy, ix = divmod(int(index), nx)
            table[iy, ix] = np.asarray(row, dtype=np.uint64)
            chunks.add((iy // STATE_CHUNK, ix // STATE_CHUNK))
        self.flush()  # the data first, then the state that vouches for it
        names = [STATE, STATE_COPY] if self.has_state_copy else [STATE]
        try:
            for name in names:  # the second record after the first: one of them is whole at any moment
                arr = self._array(name)
                cy_, cx_ = arr.chunks[0], arr.chunks[1]
                for cy, cx in sorted(chunks):
                    ys = slice(cy * cy_, min(ny, (cy + 1) * cy_))
                    xs = slice(cx * cx_, min(nx, (cx + 1) * cx_))
                    arr[ys, xs, :] = table[ys, xs, :]
                    self._sync_chunks(name, [(ys.start, ys.stop), (xs.start, xs.stop), (0, 4)])
                self.flush()
        except OSError as e:
            raise _io_error(self.path, e) from None


    def clear_done(self, indices=None) -> None:
        """Forget finished regions (all, or ``indices``) so they are sampled again whole."""
        self._check_writable()
        indices = self.done_indices() if indices is None else {int(i) for i in indices}
        jobs = self.jobs()
        for i in indices:
            jobs.pop(int(i), None)
        self._save_jobs(jobs)
        if indices:
            self._set_rows({i: (PENDING, 0, 0, 0) for i in indices})


    # ---------------------------------------------------------------- partial regeneration
    # A region that is not done is sampled whole, unless it has a *job*: a list of latent
    # rectangles to regenerate; its other pixels keep their content and serve as context.
    def _jobs_attrs(self) -> dict:
        if self.legacy:
            path = self.path / "diffinfinite" / "jobs.json"
            try:
                raw = json.loads(path.read_text())
            except FileNotFoundError:
                return {}
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CanvasDamagedError(f"{self.path} is damaged: {path.name} is not valid JSON ({_reason(e)})") from None
        else:
            try:
                raw = self.group["diffinfinite"].attrs.asdict().get("jobs", {})
            except Exception as e:
                raise CanvasDamagedError(f"{self.path} is damaged: cannot read diffinfinite/zarr.json ({_reason(e)})") from None
        try:
            return {int(k): [[int(v) for v in r] for r in rects] for k, rects in raw.items()}
        except (AttributeError, TypeError, ValueError):
            raise CanvasDamagedError(f"{self.path} is damaged: its regeneration jobs are not readable") from None


    def jobs(self) -> dict[int, list[list[int]]]:
        return self._jobs_attrs()


    def _save_jobs(self, jobs: dict) -> None:
        self._check_writable()
        try:
            g = self.group["diffinfinite"]
            g.attrs["jobs"] = {str(k): v for k, v in sorted(jobs.items())}
            fsync_file(self.path / "diffinfinite" / "zarr.json")
        except OSError as e:
            raise _io_error(self.path, e) from None


    def regenerate(self, y0: int, y1: int, x0: int, x1: int) -> list[int]:
        """Schedule the latent rectangle [y0, y1) x [x0, x1) to be sampled again, with the
        pixels around it as context.  Returns the indices of the regions it touches."""
        self._check_writable()
        lh, lw = self.latent_shape
        y0, y1, x0, x1 = max(0, y0), min(lh, y1), max(0, x0), min(lw, x1)
        if y1 <= y0 or x1 <= x0:
            raise CanvasError("the rectangle to regenerate is empty or outside the canvas")
        rects = {r.index: [[max(y0, r.y0), min(y1, r.y1), max(x0, r.x0), min(x1, r.x1)]]
                 for r in self.regions_in(y0, y1, x0, x1)}
        return self._schedule(rects)


    def regenerate_map(self, cells: np.ndarray, y0: int = 0, x0: int = 0) -> list[int]:
        """Schedule the latent cells where ``cells`` (a bool map whose corner is latent pixel
        (y0, x0)) is true to be sampled again, with everything else as context.  Each region's
        cells are stored as rectangles (:func:`cells_to_rects`), in the same job format as
        :meth:`regenerate`.  Returns the indices of the regions the cells touch."""
        self._check_writable()
        cells = np.asarray(cells, dtype=bool)
        lh, lw = self.latent_shape
        cy0, cx0 = max(0, -y0), max(0, -x0)  # the part of the map on the canvas
        cy1, cx1 = min(cells.shape[0], lh - y0), min(cells.shape[1], lw - x0)
        if cy1 <= cy0 or cx1 <= cx0 or not cells[cy0:cy1, cx0:cx1].any():
            raise CanvasError("the area to regenerate is empty or outside the canvas")
        cells, y0, x0 = cells[cy0:cy1, cx0:cx1], y0 + cy0, x0 + cx0
        rects = {}
        for r in self.regions_in(y0, y0 + cells.shape[0], x0, x0 + cells.shape[1]):
            ry0, rx0 = max(r.y0, y0), max(r.x0, x0)
            sub = cells[ry0 - y0 : min(r.y1, y0 + cells.shape[0]) - y0, rx0 - x0 : min(r.x1, x0 + cells.shape[1]) - x0]
            if sub.any():
                rects[r.index] = [[a + ry0, b + ry0, c + rx0, d + rx0] for a, b, c, d in cells_to_rects(sub)]
        return self._schedule(rects)


    def _schedule(self, rects: dict[int, list[list[int]]]) -> list[int]:
        """Give regions their rectangles to sample again: a finished region gets them as its job, a
        region with a job adds them, a region never sampled is left to be sampled whole anyway.
        The jobs are saved once, then the region state: a crash in between loses nothing."""
        jobs = self.jobs()
        done = self.done_indices()
        touched = []
        for index, job in rects.items():
            if index in done:
                jobs[index] = [list(map(int, r)) for r in job]
            elif index in jobs:
                jobs[index].extend(list(map(int, r)) for r in job)
            else:
                continue  # not generated yet: it is sampled whole anyway
            touched.append(index)
        self._save_jobs(jobs)  # the job first, then the state: a crash in between loses nothing
        if touched:
            self._set_rows({i: (PENDING, 0, 0, 0) for i in touched})
        return touched


    def set_jobs(self, jobs: dict[int, list[list[int]]]) -> None:
        """Give not-done regions their rectangles to sample (the rest of each is context)."""
        self._check_writable()
        merged = self.jobs()
        merged.update({int(k): [list(map(int, r)) for r in v] for k, v in jobs.items()})
        self._save_jobs(merged)


    def finish_job(self, index: int) -> None:
        jobs = self.jobs()
        if jobs.pop(index, None) is not None:
            self._save_jobs(jobs)


    def target_map(self, region: Region, jobs: dict | None = None) -> np.ndarray:
        """The pixels of a not-done region that sampling writes (region-local bool map)."""
        jobs = self.jobs() if jobs is None else jobs
        h, w = region.y1 - region.y0, region.x1 - region.x0
        if region.index not in jobs:
            return np.ones((h, w), dtype=bool)
        out = np.zeros((h, w), dtype=bool)
        for y0, y1, x0, x1 in jobs[region.index]:
            out[y0 - region.y0 : y1 - region.y0, x0 - region.x0 : x1 - region.x0] = True
        return out


    def known_map(self, y0: int, y1: int, x0: int, x1: int, exclude: int | None = None) -> np.ndarray:
        """Where the latent rectangle holds finished content usable as context.

        A pixel is known when its region is done, or when its region has a job and the pixel
        lies outside the job's rectangles.  Region ``exclude``'s target pixels are unknown.
        """
        out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        jobs = self.jobs()
        for r in self.regions_in(y0, y1, x0, x1):
            sl = (slice(max(r.y0, y0) - y0, min(r.y1, y1) - y0), slice(max(r.x0, x0) - x0, min(r.x1, x1) - x0))
            if r.index != exclude and self.is_done(r.index):
                out[sl] = True
            elif r.index in jobs:
                keep = ~self.target_map(r, jobs)
                out[sl] = keep[max(r.y0, y0) - r.y0 : min(r.y1, y1) - r.y0, max(r.x0, x0) - r.x0 : min(r.x1, x1) - r.x0]
        return out


    def _refresh_checksums(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Note the finished regions whose data a write changed: their checksums are renewed with
        the next region state written (:meth:`mark_done`, :meth:`close`)."""
        self._stale.update(r.index for r in self.regions_in(y0, y1, x0, x1) if int(self._row(r.index)[0]) != PENDING)


    def _stale_rows(self, skip: int | None = None) -> dict[int, tuple]:
        rows = {}
        for index in sorted(self._stale):
            row = self._row(index)
            if index != skip and int(row[0]) != PENDING:
                rows[index] = (int(row[0]), *self.region_checksums(self.region(index)), int(row[3]))
        self._stale.clear()
        return rows


    def settle(self) -> None:
        """fsync what was written and renew the checksums of finished regions it changed."""
        self._check_writable()
        rows = self._stale_rows()
        if rows:
            self._set_rows(rows)
        else:
            self.flush()


def cells_to_rects(cells: np.ndarray) -> list[list[int]]:
    """Rectangles [y0, y1, x0, x1] (map coordinates) that cover the true cells of a bool map
    exactly, without overlap: each row's runs of true cells, a run carried down while the next
    rows have the very same run (so a rectangle is one rectangle, a disc one per distinct row
    span)."""
    cells = np.asarray(cells, dtype=bool)
    out: list[list[int]] = []
    open_runs: dict[tuple[int, int], int] = {}  # (x0, x1) -> first row
    padded = np.zeros((cells.shape[0] + 1, cells.shape[1] + 2), dtype=np.int8)
    padded[:-1, 1:-1] = cells
    steps = np.diff(padded, axis=1)
    for y in range(cells.shape[0] + 1):
        starts, stops = np.flatnonzero(steps[y] == 1), np.flatnonzero(steps[y] == -1)
        runs = set(zip(starts.tolist(), stops.tolist()))
        for run in [r for r in open_runs if r not in runs]:
            out.append([open_runs.pop(run), y, run[0], run[1]])
        for run in runs:
            open_runs.setdefault(run, y)
    return sorted(out)
