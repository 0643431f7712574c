"""Synthesis of a canvas: the generator that ties sampler, model and store.

``synthesise`` walks the canvas's regions (nearest the given centre first), samples each one
with random patch diffusion, using the finished latents of neighbouring regions as context so
no seam appears at region borders, decodes it, writes pixels + latents + pyramid, marks it done
and yields a :class:`RegionDone`.  Only the region in flight and its halo are in memory.  With
``request.sweep`` it hands over to :func:`src_models.sweep.sweep_canvas`, which samples all the
regions together, level by level, with the latent state on disk.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from src_models.store.canvas import Canvas, Region
from src_models.models.codec import decode_latent
from src_models.sampling.guidance import omega_vector
from src_models.sampling.sampler import Cancelled, LevelInfo, SampleStats, effective_window, sample_area
from src_models.request import RegionDone, RegionProgress, SweepProgress, SynthesisRequest
from src_models.sampling.schedule import cosine_alphas_cumprod, ddim_time_pairs

__all__ = ["SynthesisRequest", "RegionDone", "RegionProgress", "SweepProgress", "SynthesisError", "synthesise",
           "pending_regions", "resolve_device", "region_seed", "decode_latent"]


class SynthesisError(RuntimeError):
    """A request that cannot run as asked (message says why)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable GPU falls back with a warning."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            warnings.warn(f"{name} requested but CUDA is not available; running on the CPU", RuntimeWarning, stacklevel=2)
            return torch.device("cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise SynthesisError(f"{name} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            warnings.warn("mps requested but not available; running on the CPU", RuntimeWarning, stacklevel=2)
            return torch.device("cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise SynthesisError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")


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


def _expand(a: int, b: int, n: int, halo: int, minimum: int) -> tuple[int, int]:
    a, b = max(0, a - halo), min(n, b + halo)
    short = minimum - (b - a)
    if short > 0:  # grow to the window size, inside the canvas
        a = max(0, a - (short + 1) // 2)
        b = min(n, a + minimum)
        a = max(0, b - minimum)
    return a, b


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


@dataclass
class Run:
    """What every region (or a sweep) of one ``synthesise`` call shares: the checked request with
    its defaults filled in, the schedule, the network to call and the batch size (halved on OOM)."""

    model: object
    canvas: Canvas
    request: SynthesisRequest
    pairs: list
    omega: torch.Tensor
    alphas: torch.Tensor
    window: int
    halo: int
    denoiser: object
    max_batch: int
    oom_reported: bool = False

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def channels(self) -> int:
        return _latent_channels(self.model)

    def settings(self) -> dict:
        return self.request.settings()

    def retry_on_oom(self, fn):
        """``fn(max_batch)``, again with half the batch while the GPU runs out of memory."""
        while True:
            try:
                return fn(self.max_batch)
            except torch.cuda.OutOfMemoryError:
                if self.max_batch == 1:
                    raise SynthesisError("out of GPU memory even with batch size 1; use a smaller model or the CPU") from None
                self.max_batch //= 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if not self.oom_reported:
                    warnings.warn(f"out of GPU memory: batch size halved to {self.max_batch}", RuntimeWarning, stacklevel=2)
                    self.oom_reported = True


def prepare_run(model, canvas: Canvas, request: SynthesisRequest) -> Run:
    """Check that model, canvas and request go together; fill in the request's defaults."""
    card = model.card
    if canvas.factor != card.factor:
        raise SynthesisError(f"the canvas was made for a model with factor {canvas.factor}, this model has {card.factor}")
    if canvas.latent.shape[0] != _latent_channels(model):
        raise SynthesisError(f"the canvas holds {canvas.latent.shape[0]}-channel latents, this model makes {_latent_channels(model)}")
    try:
        request = request.resolved(card)
        pairs = ddim_time_pairs(request.steps)
        omega = omega_vector(card.num_classes, request.omega, request.omega_per_class)
    except ValueError as e:
        raise SynthesisError(str(e)) from None
    lh, lw = canvas.latent_shape
    window = effective_window(card.patch_size, lh, lw, multiple=_multiple(model))
    halo = request.halo if request.halo is not None else window // 2
    denoiser, budget = _denoiser_for(model, model.device, window, request)
    max_batch = max(1, int(request.max_batch)) if request.max_batch else budget
    return Run(model, canvas, request, pairs, omega, cosine_alphas_cumprod(), window, halo, denoiser, max_batch)


def check_labels_fit(run: Run, mask_np: np.ndarray, where: str) -> None:
    card = run.model.card
    top = int(mask_np.max()) if mask_np.size else 0
    if top >= card.num_classes:
        raise SynthesisError(
            f"the mask has label {top} in {where}, but model {card.name!r} knows classes "
            f"0..{card.num_classes - 1} ({', '.join(card.classes)})"
        )


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
    regions are sampled together, level by level over the whole area (:mod:`src_models.sweep`);
    ``progress`` then receives :class:`SweepProgress` events and a cancelled or killed sweep
    resumes at its last finished level.
    """
    run = prepare_run(model, canvas, request)
    if canvas.writable and not canvas.settings:  # made through the API without settings: record this run's
        canvas.set_settings(run.settings())
    todo = pending_regions(canvas, run.request)
    if run.request.sweep:
        from src_models.sweep import sweep_canvas

        yield from sweep_canvas(run, todo, cancel=cancel, progress=progress)
        return
    for n, region in enumerate(todo, 1):
        started = time.perf_counter()
        forwards = _synthesise_region(run, region, cancel, progress)
        if forwards is None:  # cancelled
            return
        yield RegionDone(region.index, region.px(canvas.factor), n, len(todo), forwards, time.perf_counter() - started)


def _synthesise_region(run: Run, region: Region, cancel, progress) -> int | None:
    """Sample, decode and store one region with its finished neighbours as context; returns its
    network passes, or None when cancelled."""
    canvas, settings = run.canvas, run.settings()
    lh, lw = canvas.latent_shape
    y0, y1 = _expand(region.y0, region.y1, lh, run.halo, run.window)
    x0, x1 = _expand(region.x0, region.x1, lw, run.halo, run.window)
    mask_np = canvas.read_mask(y0, y1, x0, x1)
    check_labels_fit(run, mask_np, f"region {region.index}")
    target = canvas.target_map(region)
    if not target.any():  # a job whose rectangles missed this region: nothing to sample
        canvas.mark_done(region.index, {"seed": None, **settings})
        canvas.finish_job(region.index)
        return 0
    known_np = canvas.known_map(y0, y1, x0, x1)
    known = torch.from_numpy(known_np) if known_np.any() else None
    context = torch.from_numpy(canvas.read_latent(y0, y1, x0, x1)) if known is not None else None
    mask = torch.from_numpy(mask_np.astype(np.int64))[None]
    seed = region_seed(run.request.seed, region.index)
    bbox, f = region.px(canvas.factor), canvas.factor
    area_px = (y0 * f, y1 * f, x0 * f, x1 * f)

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
                           callback=on_level, cancel=cancel, stats=stats, resample=r.resample)

    try:
        z = run.retry_on_oom(sample)
    except Cancelled:
        return None
    if _cancelled(cancel):
        return None
    rgb = decode_latent(run.model.codec, z)
    ry0, ry1, rx0, rx1 = (region.y0 - y0) * f, (region.y1 - y0) * f, (region.x0 - x0) * f, (region.x1 - x0) * f
    latent_np = z[:, region.y0 - y0 : region.y1 - y0, region.x0 - x0 : region.x1 - x0].float().cpu().numpy()
    canvas.write_region(region, rgb[ry0:ry1, rx0:rx1], latent_np, where=target)
    if target.all():
        refresh_borders(canvas, region, (y0, y1, x0, x1), rgb, run.halo)
    canvas.mark_done(region.index, {"seed": seed, "forwards": stats.forwards, **settings})
    canvas.finish_job(region.index)
    return stats.forwards


def refresh_borders(canvas: Canvas, region: Region, area, rgb: np.ndarray, halo: int) -> None:
    """Rewrite the pixels of finished neighbours along the region's border from this decode.

    A neighbour finished earlier was decoded while this region's latents were still unknown, so
    its pixels next to the border (within the decoder's reach) do not match the latents that
    are final now.  This decode saw final latents on both sides: its band of ``halo // 2``
    latent px around the region replaces theirs (away from the decode's own outer edge, and
    only in regions the sampler generated: imported or kept content is never touched).
    """
    y0, y1, x0, x1 = area
    band = halo // 2
    if band <= 0:
        return
    lh, lw = canvas.latent_shape
    margin = halo - band
    # the part of the area whose decode is trustworthy: away from cut edges, inside the band
    ay0 = y0 if y0 == 0 else y0 + margin
    ax0 = x0 if x0 == 0 else x0 + margin
    ay1 = y1 if y1 == lh else y1 - margin
    ax1 = x1 if x1 == lw else x1 - margin
    by0, by1 = max(ay0, region.y0 - band), min(ay1, region.y1 + band)
    bx0, bx1 = max(ax0, region.x0 - band), min(ax1, region.x1 + band)
    f = canvas.factor
    done, jobs = canvas.done_indices(), canvas.jobs()
    for r in canvas.regions_in(by0, by1, bx0, bx1):
        if r.index == region.index or r.index not in done or r.index in jobs:
            continue
        if "seed" not in canvas.done_info(r.index):  # imported or kept content: never rewritten
            continue
        cy0, cy1 = max(by0, r.y0), min(by1, r.y1)
        cx0, cx1 = max(bx0, r.x0), min(bx1, r.x1)
        if cy0 >= cy1 or cx0 >= cx1:
            continue
        block = rgb[(cy0 - y0) * f : (cy1 - y0) * f, (cx0 - x0) * f : (cx1 - x0) * f]
        canvas.write_block(cy0, cy1, cx0, cx1, np.ascontiguousarray(block))
    # the neighbours' checksums follow their new pixels at once, before this region is marked done:
    # a kill after this point resumes by sampling this region again (same seed, same context, same
    # latents), which writes the same bands again; only a kill during the writes above leaves a
    # neighbour whose pixels no longer match its checksum (it is then sampled again)
    canvas.settle()


def _denoiser_for(model, device, window: int, request: SynthesisRequest):
    """The network the sampler calls and its batch size; the fast wrapper is made once per
    model, device, window and compile choice, and kept on the model."""
    if not request.fast:
        return model.unet, 32
    from src_models.models.fast import fast_setup

    cache = model.__dict__.setdefault("_denoisers", {})
    key = (str(device), int(window), bool(request.compile))
    if key not in cache:
        cache[key] = fast_setup(model.unet, device, window, compile=request.compile)
    return cache[key]


def _cancelled(cancel) -> bool:
    return cancel is not None and (cancel() if callable(cancel) else cancel.is_set())


def _latent_channels(model) -> int:
    return int(model.card.codec.get("channels", getattr(model.codec, "channels", 4)))


def _multiple(model) -> int:
    return int(getattr(model.unet, "size_multiple", 8))
