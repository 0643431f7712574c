"""Whole-canvas sweep: every pending region of a canvas sampled together, level by level over
the whole area (the paper's scheme at any size), with the latent state on disk.

Region by region (the default, :func:`src_models.synthesis.regions.synthesise`) finishes one region at a
time, with finished neighbours re-noised as context: right for interactive work, where the region
under the view appears first.  A sweep instead takes every latent pixel of the area through level
n before any goes to level n + 1, so long-range structure can cross region borders and the result
does not depend on the order of regions.  It costs the same network passes as sampling the area in
one piece, and shows the whole canvas sharpening level by level.

Regions with a regeneration job (an inpainted area) are swept whole too: the windows cover the
bounding box of all pending regions, their finished cells are known context (never stepped) and only
the job's cells are written; region by region (the default) samples such a region in a box sized to
its job instead (:mod:`src_models.synthesis.boxes`).

How one level runs: the plan (``grid`` or ``release``; ``sequential`` is not available here) is
made for the whole area on the CPU; the area is cut into tiles (the canvas's region size), and
for each tile, in row-major order, the windows that write its pixels are denoised in batches of
``max_batch`` (each window once: a window that also writes pixels of a later tile keeps its ε on
the host until that tile is done), each pixel takes the ε of its window, the solver steps the
tile, and the tile's new latents and solver state are written.  Memory on the device and the host
is flat in the canvas size: one tile, its windows, and the ε of windows straddling the row below
(the ``release`` plan also keeps one byte per latent pixel of the area on the host).

On disk, under the canvas's ``diffinfinite/sweep/`` zarr group: the latents ``x0``/``x1`` and the
solver's state ``<key>0``/``<key>1`` over the area, double-buffered (level n reads parity n % 2
and writes the other), and ``progress.json`` (written atomically) with the settings, the area, the
regions and the number of finished levels.  A sweep killed at any moment resumes at its last
finished level.  Random numbers never depend on the order of work or on a resume: window placement
from a generator seeded by (seed, level), noise from generators seeded by (seed, kind, level,
64 x 64 latent chunk).  After the last level the latents are copied to the canvas, each region is
decoded with a halo of final latents around it and marked done; then the sweep group is removed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from src_models.durable import write_text_atomic
from src_models.store.canvas import Canvas, Region
from src_models.models.codec import decode_latent
from src_models.sampling.guidance import PER_CLASS, host_to_device
from src_models.sampling.plan import check_plan, owner_local
from src_models.synthesis.blend import blend_kept_edges
from src_models.synthesis.request import RegionDone, SweepProgress
from src_models.sampling.sampler import Cancelled, LabelCounter, SampleStats, Guided, gather, is_cancelled, pass_labels, scatter, window_index
from src_models.sampling.schedule import q_sample
from src_models.sampling.solvers import make_solver
from src_models.synthesis.run import Run, SynthesisError, check_labels_fit, expand, refresh_borders

NOISE_TILE = 64  # latent px: noise is drawn per chunk of this side, seeded by its position
INITIAL, LEVEL_NOISE, CONTEXT_NOISE = 0, 1, 2  # the kinds of noise
PROGRESS = "progress.json"


# ----------------------------------------------------------------------------- random numbers
def _seed(*parts: int) -> int:
    digest = hashlib.sha256(("diffinfinite-sweep:" + ":".join(str(int(p)) for p in parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def chunk_noise(seed: int, kind: int, level: int, channels: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """Standard-normal noise (C, y1 - y0, x1 - x0) for a canvas rectangle (latent px), the same
    numbers however the canvas is cut: each 64 x 64 chunk has its own generator."""
    out = torch.empty((channels, y1 - y0, x1 - x0), dtype=torch.float32)
    n = NOISE_TILE
    for cy in range(y0 // n, (y1 - 1) // n + 1):
        for cx in range(x0 // n, (x1 - 1) // n + 1):
            g = torch.Generator().manual_seed(_seed(seed, kind, level, cy, cx))
            z = torch.randn((channels, n, n), generator=g)
            ay0, ay1, ax0, ax1 = max(y0, cy * n), min(y1, cy * n + n), max(x0, cx * n), min(x1, cx * n + n)
            out[:, ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = z[:, ay0 - cy * n : ay1 - cy * n, ax0 - cx * n : ax1 - cx * n]
    return out


def level_rng(seed: int, level: int) -> np.random.Generator:
    return np.random.default_rng(_seed(seed, 99, level))


# ----------------------------------------------------------------------------- the store
class SweepStore:
    """The sweep's state inside a canvas: a zarr group ``diffinfinite/sweep`` and its progress file."""

    def __init__(self, canvas: Canvas):
        self.canvas = canvas
        self._arrays: dict = {}  # opened once: a lookup reads the array's metadata from disk

    @property
    def dir(self) -> Path:  # the canvas's path changes when an overwrite swaps it into place
        return Path(self.canvas.path) / "diffinfinite" / "sweep"

    def progress(self) -> dict | None:
        try:
            return json.loads((self.dir / PROGRESS).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def save(self, progress: dict) -> None:
        write_text_atomic(self.dir / PROGRESS, json.dumps(progress))

    def create(self, meta: dict, channels: int, state_channels: dict[str, int], tile: int) -> dict:
        y0, y1, x0, x1 = meta["area"]
        group = self.canvas.group["diffinfinite"].create_group("sweep", overwrite=True)
        shape = (y1 - y0, x1 - x0)
        chunks = (min(tile, shape[0]), min(tile, shape[1]))
        for name, c in {"x": channels, **state_channels}.items():
            for parity in (0, 1):
                # scratch state, rewritten every level: no compression (float noise hardly compresses)
                group.create_array(f"{name}{parity}", shape=(c, *shape), chunks=(c, *chunks), dtype="float32",
                                   fill_value=0.0, compressors=None)
        self._arrays.clear()
        return {**meta, "levels_done": -1, "latents_copied": False}

    def array(self, name: str, parity: int):
        key = f"{name}{parity % 2}"
        if key not in self._arrays:
            self._arrays[key] = self.canvas.group[f"diffinfinite/sweep/{key}"]
        return self._arrays[key]

    def remove(self) -> None:
        self._arrays.clear()
        (self.dir / PROGRESS).unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def discard_sweep(canvas: Canvas) -> bool:
    """Forget an unfinished sweep of ``canvas`` (its finished regions stay); True if there was one."""
    store = SweepStore(canvas)
    had = store.progress() is not None
    store.remove()
    return had


# ----------------------------------------------------------------------------- one sweep
class _Sweep:
    """One sweep of a canvas area: the run's settings, the area's plan builder and its solver."""

    def __init__(self, run: Run, progress: dict):
        self.run, self.canvas, self.p = run, run.canvas, progress
        self.store = SweepStore(run.canvas)
        self.y0, self.y1, self.x0, self.x1 = progress["area"]
        self.H, self.W = self.y1 - self.y0, self.x1 - self.x0
        self.info = check_plan(run.request.plan)
        if not self.info.batched or self.info.fuse != "owner":
            raise SynthesisError(f"a sweep needs a plan in which one window writes each pixel (grid, release or "
                                 f"tiled); {run.request.plan} is not one")
        self.solver = make_solver(run.request.solver, run.alphas, run.pairs, run.request.eta)
        self.seed, self.s, self.tile = int(run.request.seed), run.window, int(progress["tile"])
        self.stats = SampleStats(forwards=int(progress.get("forwards", 0)))
        self.conditioning = getattr(run.denoiser, "conditioning", PER_CLASS)
        self.guided = Guided(run.denoiser, run.omega.to(run.device), self.conditioning, run.max_batch, self.stats,
                             run.device, run.request.guidance_below, run.student)

    def tiles(self) -> list[tuple[int, int, int, int]]:
        """Tiles of the area (area coordinates), row-major."""
        t = self.tile
        return [(y, min(y + t, self.H), x, min(x + t, self.W)) for y in range(0, self.H, t) for x in range(0, self.W, t)]

    def known(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Where the area rectangle holds finished content (context), from the canvas's markers."""
        return self.canvas.known_map(self.y0 + y0, self.y0 + y1, self.x0 + x0, self.x0 + x1)

    def noise(self, kind: int, level: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        z = chunk_noise(self.seed, kind, level, self.run.channels, self.y0 + y0, self.y0 + y1, self.x0 + x0, self.x0 + x1)
        return host_to_device(z, self.run.device)

    def read(self, name: str, parity: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.store.array(name, parity)[:, y0:y1, x0:x1])).to(self.run.device)

    def write(self, name: str, parity: int, rect, value: torch.Tensor) -> None:
        y0, y1, x0, x1 = rect
        self.store.array(name, parity)[:, y0:y1, x0:x1] = value.float().cpu().numpy()


class SweepConflict(SynthesisError):
    """The canvas holds an unfinished sweep made with other settings; ``differences`` names them
    ("seed: 3 vs 4", the stored value first)."""

    def __init__(self, message: str, differences: str):
        super().__init__(message)
        self.differences = differences


def _start(run: Run, todo: list[Region]) -> dict:
    """The sweep's progress record: the stored one when it matches the run, else a new store with
    the initial noise written.  A stored sweep of other settings is refused, never overwritten."""
    store, settings = SweepStore(run.canvas), run.settings()
    progress = store.progress()
    if progress is not None:
        if progress["settings"] != settings:
            diffs = ", ".join(f"{k}: {progress['settings'].get(k)!r} vs {v!r}" for k, v in settings.items()
                              if progress["settings"].get(k) != v)
            raise SweepConflict(f"{run.canvas.path} holds an unfinished sweep with other settings ({diffs}); "
                                "finish it with its settings or discard it (src_models.synthesis.sweep.discard_sweep)",
                                diffs)
        return progress
    lh, lw = run.canvas.latent_shape
    y0, y1 = expand(min(r.y0 for r in todo), max(r.y1 for r in todo), lh, run.halo, run.window)
    x0, x1 = expand(min(r.x0 for r in todo), max(r.x1 for r in todo), lw, run.halo, run.window)
    tile = max(run.window, run.canvas.region_grid[0])
    solver = make_solver(run.request.solver, run.alphas, run.pairs, run.request.eta)
    state = solver.init(torch.zeros(run.channels, 1, 1))
    meta = {"settings": settings, "area": [y0, y1, x0, x1], "regions": [r.index for r in todo], "tile": tile,
            "levels": len(run.pairs), "state": sorted(state), "forwards": 0}
    progress = store.create(meta, run.channels, {k: int(v.shape[0]) for k, v in state.items()}, tile)
    sw = _Sweep(run, progress)
    for rect in sw.tiles():  # the starting noise, tile by tile
        sw.write("x", 0, rect, chunk_noise(sw.seed, INITIAL, 0, run.channels, y0 + rect[0], y0 + rect[1],
                                          x0 + rect[2], x0 + rect[3]))
    progress["levels_done"] = 0
    store.save(progress)
    return progress


def _window_eps(sw: _Sweep, plan, idx: np.ndarray, parity: int, t: int, level: int) -> dict[int, torch.Tensor]:
    """Guided ε (C, s, s) of the plan's windows ``idx``, read from the level's latents on disk
    (finished content re-noised to ``t`` where known)."""
    s, wy_all, wx_all = sw.s, *plan.starts()
    wy, wx = wy_all[idx], wx_all[idx]
    by0, by1, bx0, bx1 = int(wy.min()), int(wy.max()) + s, int(wx.min()), int(wx.max()) + s
    src = sw.read("x", parity, by0, by1, bx0, bx1)
    known = sw.known(by0, by1, bx0, bx1)
    if known.any():
        context = torch.from_numpy(sw.canvas.read_latent(sw.y0 + by0, sw.y0 + by1, sw.x0 + bx0, sw.x0 + bx1))
        noisy = q_sample(context.to(src.device), t, sw.run.alphas, sw.noise(CONTEXT_NOISE, level, by0, by1, bx0, bx1))
        src = torch.where(host_to_device(known, src.device), noisy, src)
    mask_np = np.asarray(sw.canvas.mask[sw.y0 + by0 : sw.y0 + by1, sw.x0 + bx0 : sw.x0 + bx1])
    check_labels_fit(sw.run, mask_np, "the sweep's area")
    local = np.full(len(plan), -1, dtype=np.int64)
    local[idx] = np.arange(len(idx))
    owner = plan.owner_in(by0, by1, bx0, bx1)
    owner = np.where(owner >= 0, local[np.maximum(owner, 0)], -1)
    labels = pass_labels(sw.conditioning, owner, mask_np, LabelCounter(mask_np, 1), wy - by0, wx - bx0, s)
    index = window_index(wy - by0, wx - bx0, s, src.device)
    mask = host_to_device(mask_np.astype(np.int64)[None], src.device)
    eps, _ = sw.guided(gather(src, index), gather(mask, index), labels, t)
    return dict(zip(idx.tolist(), eps))


def _tile_eps(sw: _Sweep, plan, rect, cache: dict, parity: int, t: int, level: int) -> torch.Tensor:
    """ε (C, h, w) of one tile, each pixel from the window that writes it (-1: none, ε 0)."""
    y0, y1, x0, x1 = rect
    owner = plan.owner_in(y0, y1, x0, x1)
    need = np.unique(owner[owner >= 0])
    if not len(need):
        return torch.zeros((sw.run.channels, y1 - y0, x1 - x0), device=sw.run.device)
    missing = np.array([w for w in need.tolist() if w not in cache], dtype=np.int64)
    if len(missing):
        cache.update(sw.run.retry_on_oom(lambda b: _with_batch(sw, b, _window_eps, plan, missing, parity, t, level)))
    own, ly, lx = owner_local(plan, owner, y0, x0)
    table = host_to_device(np.stack([np.searchsorted(need, own).clip(0, len(need) - 1), ly, lx]), sw.run.device)
    return scatter(torch.stack([cache[w] for w in need.tolist()]), table)


def _with_batch(sw: _Sweep, max_batch: int, fn, *args):
    sw.guided.max_batch = max_batch
    return fn(sw, *args)


def _evict(cache: dict, plan, s: int, y1: int, x1: int) -> None:
    """Drop the ε of windows no later tile needs (tiles go row-major; a window reaches a later
    tile only if it extends right of ``x1`` or below ``y1``)."""
    wy, wx = plan.starts()
    for w in [w for w in cache if wy[w] + s <= y1 and wx[w] + s <= x1]:
        del cache[w]


@torch.inference_mode()
def _level(sw: _Sweep, level: int, eligible, cancel, progress) -> bool:
    """Run one level over the whole area; False when cancelled (the level is then not done)."""
    t, t_next = sw.run.pairs[level]
    plan = sw.info.build(sw.H, sw.W, sw.s, level_rng(sw.seed, level), eligible)
    tiles, cache, f = sw.tiles(), {}, sw.canvas.factor
    for i, rect in enumerate(tiles):
        if is_cancelled(cancel):
            return False
        eps = _tile_eps(sw, plan, rect, cache, level, t, level)
        x = sw.read("x", level, *rect)
        state = {k: sw.read(k, level, *rect) for k in sw.p["state"]}
        z = sw.noise(LEVEL_NOISE, level, *rect) if sw.solver.needs_noise(t_next) else None
        x, x0, state = sw.solver.step(x, eps, t, t_next, state, z)
        sw.write("x", level + 1, rect, x)
        for k, v in state.items():
            sw.write(k, level + 1, rect, v)
        _evict(cache, plan, sw.s, rect[1], rect[3])
        if progress is not None:
            y0, y1, x0_, x1 = rect
            box = ((sw.y0 + y0) * f, (sw.y0 + y1) * f, (sw.x0 + x0_) * f, (sw.x0 + x1) * f)
            progress(SweepProgress(level + 1, len(sw.run.pairs), i + 1, len(tiles), sw.stats.forwards, x0, box))
    return True


def _copy_latents(sw: _Sweep, regions: list[Region]) -> None:
    """The final latents of the regions' target pixels into the canvas (not yet marked done)."""
    final = sw.store.array("x", len(sw.run.pairs))
    for r in regions:
        target = sw.canvas.target_map(r)
        z = np.asarray(final[:, r.y0 - sw.y0 : r.y1 - sw.y0, r.x0 - sw.x0 : r.x1 - sw.x0])
        old = sw.canvas.read_latent(r.y0, r.y1, r.x0, r.x1)
        sw.canvas.write_latent(r.y0, r.x0, np.where(target[None], z, old))  # durably, before any marker


@torch.inference_mode()
def _decode_region(sw: _Sweep, r: Region) -> None:
    """Decode one region with a halo of final latents around it; write its pixels; mark it done."""
    canvas, run, f = sw.canvas, sw.run, sw.canvas.factor
    lh, lw = canvas.latent_shape
    y0, y1 = expand(r.y0, r.y1, lh, run.halo, 1)
    x0, x1 = expand(r.x0, r.x1, lw, run.halo, 1)
    z = torch.from_numpy(canvas.read_latent(y0, y1, x0, x1)).to(run.device)
    rgb = decode_latent(run.model.codec, z, run.request.precision)
    target = canvas.target_map(r)
    rgb = blend_kept_edges(canvas, r, (y0, y1, x0, x1), target, rgb)
    block = np.ascontiguousarray(rgb[(r.y0 - y0) * f : (r.y1 - y0) * f, (r.x0 - x0) * f : (r.x1 - x0) * f])
    canvas.write_region(r, block, where=target)
    if target.all():
        refresh_borders(canvas, r, (y0, y1, x0, x1), rgb, run.halo)
    canvas.mark_done(r.index, {"seed": int(run.request.seed), "forwards": sw.stats.forwards, **run.settings()})
    canvas.finish_job(r.index)


def _disk_error(path, e: OSError) -> SynthesisError:
    what = "disk full" if e.errno == errno.ENOSPC else f"cannot write ({e.strerror or e})"
    return SynthesisError(f"{what} while writing the sweep of {path}; finished levels are kept, resume to go on")


def _sample_levels(run: Run, todo: list[Region], cancel, progress) -> _Sweep | None:
    """Start or resume the sweep and run its levels; None when cancelled."""
    store = SweepStore(run.canvas)
    try:
        p = _start(run, todo)
        sw = _Sweep(run, p)
        eligible = None
        if sw.info.name == "release":  # the release plan places windows over the whole area at once
            eligible = ~sw.known(0, sw.H, 0, sw.W)
        for level in range(p["levels_done"], len(run.pairs)):
            try:
                if not _level(sw, level, eligible, cancel, progress):
                    return None
            except Cancelled:  # the network's cancel hook (napari's Cancel) stopped it within the level,
                return None  # whose writes went to the other buffer: a resume runs the level again
            p["levels_done"], p["forwards"] = level + 1, sw.stats.forwards
            store.save(p)
        if not p["latents_copied"]:
            done = run.canvas.done_indices()
            _copy_latents(sw, [run.canvas.region(i) for i in p["regions"] if i not in done])
            p["latents_copied"] = True
            store.save(p)
    except OSError as e:
        raise _disk_error(run.canvas.path, e) from None
    return sw


def sweep_canvas(run: Run, todo: list[Region], cancel=None, progress=None) -> Iterator[RegionDone]:
    """Sample the regions ``todo`` (or finish the canvas's unfinished sweep) level by level over
    their whole area; yields a :class:`RegionDone` as each region is decoded and stored.  A
    cancelled sweep returns at once; the next call resumes at its last finished level."""
    store = SweepStore(run.canvas)
    if store.progress() is None and not todo:
        return
    started = time.perf_counter()
    sw = _sample_levels(run, todo, cancel, progress)
    if sw is None:
        return
    done = run.canvas.done_indices()
    regions = [run.canvas.region(i) for i in sw.p["regions"] if i not in done]
    for n, r in enumerate(regions, 1):
        if is_cancelled(cancel):
            return
        _decode_region(sw, r)
        yield RegionDone(r.index, r.px(run.canvas.factor), n, len(regions), sw.stats.forwards,
                         time.perf_counter() - started)
    store.remove()
