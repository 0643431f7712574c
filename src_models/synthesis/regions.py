"""Synthesis of a canvas: the generator that ties sampler, model and store.

``synthesise`` walks the canvas's regions (nearest the given centre first), samples each one
with random patch diffusion, using the finished latents of neighbouring regions as context so
no seam appears at region borders, decodes it, writes pixels + latents + pyramid, marks it done
and yields a :class:`RegionDone`.  Only the region in flight and its halo are in memory.  With
``request.sweep`` it hands over to :func:`src_models.synthesis.sweep.sweep_canvas`, which samples all the
regions together, level by level, with the latent state on disk.
"""
from __future__ import annotations

import hashlib
import time
from typing import Iterator

import numpy as np
import torch

from src_models.models.codec import decode_latent
from src_models.sampling.sampler import Cancelled, LevelInfo, SampleStats, sample_area
from src_models.store.canvas import Canvas, Region
from src_models.synthesis.blend import blend_kept_edges
from src_models.synthesis.boxes import sample_box, target_bbox, work_px
from src_models.synthesis.request import RegionDone, RegionProgress, SynthesisRequest
from src_models.synthesis.run import Run, check_labels_fit, prepare_run, refresh_borders

__all__ = ["synthesise", "pending_regions", "region_seed"]


def region_seed(seed: int, index: int) -> int:
    """A per-region seed derived from the run seed and the region index (order independent)."""
    digest = hashlib.sha256(f"diffinfinite:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def order_regions(regions: list[Region], factor: int, centre: tuple[float, float] | None) -> list[Region]:
    if centre is None:
        return list(regions)
    cy, cx = centre

    def dist(r: Region):
        y0, y1, x0, x1 = r.px(factor)
        return ((y0 + y1) / 2 - cy) ** 2 + ((x0 + x1) / 2 - cx) ** 2, r.index

    return sorted(regions, key=dist)


def pending_regions(canvas: Canvas, request: SynthesisRequest):
    """The unfinished regions a request will sample, in the order it samples them (nearest
    ``request.centre`` first, ties by index): a sequence of Regions, worked out on the region
    state table with numpy, so a canvas of 10⁶ regions starts at once."""
    size, ny, nx = canvas.region_grid
    f = canvas.factor
    if request.area is not None:
        ay0, ay1, ax0, ax1 = request.area
        iys = np.arange(max(0, (ay0 // f) // size), min(ny, -(-(-(-ay1 // f)) // size)))
        ixs = np.arange(max(0, (ax0 // f) // size), min(nx, -(-(-(-ax1 // f)) // size)))
        idx = (iys[:, None] * nx + ixs[None, :]).ravel()
    else:
        idx = np.arange(ny * nx)
    done = canvas.state_table()[..., 0].ravel() != 0
    idx = idx[~done[idx]]
    if request.centre is not None and len(idx):
        lh, lw = canvas.latent_shape
        iy, ix = idx // nx, idx % nx
        y0, y1 = iy * size * f, np.minimum(lh, (iy + 1) * size) * f
        x0, x1 = ix * size * f, np.minimum(lw, (ix + 1) * size) * f
        cy, cx = request.centre
        dist = ((y0 + y1) / 2 - cy) ** 2 + ((x0 + x1) / 2 - cx) ** 2
        idx = idx[np.lexsort((idx, dist))]
    return canvas.region_seq(idx)


def synthesise(
    model,
    canvas: Canvas,
    request: SynthesisRequest,
    cancel=None,
    progress=None,
) -> Iterator[RegionDone]:
    """Sample every unfinished region of ``canvas`` that ``request.area`` touches.

    ``model`` is a loaded :class:`~src_models.models.loading.Model` on the device to use.  ``cancel`` is
    a ``threading.Event``-like token (or a callable); when it is set, the region in flight is
    dropped within one level and the generator returns: every finished region stays on disk.
    ``progress`` receives a :class:`RegionProgress` after each level.  With ``request.sweep`` the
    regions are sampled together, level by level over the whole area (:mod:`src_models.synthesis.sweep`);
    ``progress`` then receives :class:`SweepProgress` events and a cancelled or killed sweep
    resumes at its last finished level.
    """
    run = prepare_run(model, canvas, request)
    if canvas.writable and not canvas.settings:  # made through the API without settings: record this run's
        canvas.set_settings(run.settings())
    todo = pending_regions(canvas, run.request)
    if run.request.sweep:
        from src_models.synthesis.sweep import sweep_canvas

        yield from sweep_canvas(run, todo, cancel=cancel, progress=progress)
        return
    for n, region in enumerate(todo, 1):
        started = time.perf_counter()
        done = _synthesise_region(run, region, cancel, progress)
        if done is None:  # cancelled
            return
        forwards, work = done
        yield RegionDone(region.index, region.px(canvas.factor), n, len(todo), forwards, time.perf_counter() - started,
                         work)


def _synthesise_region(run: Run, region: Region, cancel, progress) -> tuple[int, int] | None:
    """Sample, decode and store one region with its finished neighbours as context; returns its
    network passes and the px it counts for in the speed records (:func:`boxes.work_px`), or None
    when cancelled.

    A region without a job samples its whole area plus the halo.  A region with a job (a part of
    it to sample again) samples only the job's bounding box plus the halo (:func:`boxes.sample_box`)
    and writes only the job's cells: the rest of the region, and everything around, is context."""
    canvas, settings = run.canvas, run.settings()
    target = canvas.target_map(region)
    if not target.any():  # a job whose rectangles missed this region: nothing to sample
        canvas.mark_done(region.index, {"seed": None, **settings})
        canvas.finish_job(region.index)
        return 0, 0
    whole = bool(target.all())
    ty0, ty1, tx0, tx1 = target_bbox(region, target)
    box = sample_box(region, target, canvas.latent_shape, run.halo, run.window)
    y0, y1, x0, x1 = box
    mask_np = canvas.read_mask(y0, y1, x0, x1)
    check_labels_fit(run, mask_np, f"region {region.index}")
    known_np = canvas.known_map(y0, y1, x0, x1)
    known = torch.from_numpy(known_np) if known_np.any() else None
    context = torch.from_numpy(canvas.read_latent(y0, y1, x0, x1)) if known is not None else None
    mask = torch.from_numpy(mask_np.astype(np.int64))[None]
    seed = region_seed(run.request.seed, region.index)
    f = canvas.factor
    bbox = (ty0 * f, ty1 * f, tx0 * f, tx1 * f)  # what is written: the region, or its job's bounding box
    area_px = (y0 * f, y1 * f, x0 * f, x1 * f)  # what is sampled

    def on_level(info: LevelInfo):
        if progress is not None:
            progress(RegionProgress(region.index, bbox, info.level, info.levels, info.forwards, info.x0, area_px))

    stats = SampleStats()

    def sample(max_batch):
        stats.__init__()  # a retry after running out of memory starts over
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((run.channels, y1 - y0, x1 - x0), generator=gen).to(run.device)
        r = run.request
        return sample_area(run.denoiser, noise, mask, run.alphas, run.pairs, run.omega.to(run.device),
                           window=run.window, plan=r.plan, solver=r.solver, eta=r.eta, generator=gen,
                           rng=np.random.default_rng(seed), context=context, known=known, max_batch=max_batch,
                           callback=on_level, cancel=cancel, stats=stats, resample=r.resample,
                           guidance_below=r.guidance_below, student=run.student)

    try:
        z = run.retry_on_oom(sample)
    except Cancelled:
        return None
    if _cancelled(cancel):
        return None
    rgb = decode_latent(run.model.codec, z, run.request.precision)
    if known is not None:
        rgb = blend_kept_edges(canvas, region, box, target, rgb, known_np)
    latent_np = z[:, ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0].float().cpu().numpy()
    block = rgb[(ty0 - y0) * f : (ty1 - y0) * f, (tx0 - x0) * f : (tx1 - x0) * f]
    if whole:
        canvas.write_region(region, block, latent_np, where=target)
        refresh_borders(canvas, region, box, rgb, run.halo)
    else:  # only the job's cells, inside their bounding box
        where = target[ty0 - region.y0 : ty1 - region.y0, tx0 - region.x0 : tx1 - region.x0]
        canvas.write_block(ty0, ty1, tx0, tx1, np.ascontiguousarray(block), latent_np, where=where)
    canvas.mark_done(region.index, {"seed": seed, "forwards": stats.forwards, **settings})
    canvas.finish_job(region.index)
    return stats.forwards, work_px(region, box, canvas.latent_shape, run.halo, run.window, f)


def _cancelled(cancel) -> bool:
    return cancel is not None and (cancel() if callable(cancel) else cancel.is_set())


def region_preview(model, x0: torch.Tensor, progress: RegionProgress, factor: int, max_px: int = 256) -> np.ndarray:
    """A quick look at the region in flight: its part of the predicted clean latent ``x0`` (of
    ``progress.area``), area-downscaled to at most ``max_px`` image px a side and decoded, as
    (h, w, 3) uint8.  The napari dock shows it over the region while the region samples."""
    oy, ox = (progress.bbox[0] - progress.area[0]) // factor, (progress.bbox[2] - progress.area[2]) // factor
    y0, y1, x0_, x1 = (v // factor for v in progress.bbox)
    return latent_preview(model, x0[:, oy : oy + (y1 - y0), ox : ox + (x1 - x0_)], factor, max_px)


def latent_preview(model, z: torch.Tensor, factor: int, max_px: int = 256) -> np.ndarray:
    """A predicted clean latent ``z`` (C, h, w), area-downscaled to at most ``max_px`` image px a side
    and decoded, as (h', w', 3) uint8: the dock's preview of a region in flight, or of a sweep's tile
    (:class:`SweepProgress` ``x0`` over its ``area``)."""
    import torch.nn.functional as F

    z = z.float()
    side = max(z.shape[-2:])
    limit = max(8, max_px // factor)
    if side > limit:
        size = (max(1, round(z.shape[-2] * limit / side)), max(1, round(z.shape[-1] * limit / side)))
        z = F.interpolate(z[None], size=size, mode="area")[0]
    with torch.inference_mode():
        img = model.codec.decode(z[None].to(model.device))[0]
    return np.rint(img.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
