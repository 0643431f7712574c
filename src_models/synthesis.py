"""Region-by-region synthesis of a canvas: the generator that ties sampler, model and store.

``synthesise`` walks the canvas's regions (nearest the given centre first), samples each one
with random patch diffusion, using the finished latents of neighbouring regions as context so
no seam appears at region borders, decodes it, writes pixels + latents + pyramid, marks it done
and yields a :class:`RegionDone`.  Only the region in flight and its halo are in memory.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from typing import Iterator

import numpy as np
import torch

from .canvas import Canvas, Region
from .codec import decode_latent
from .guidance import omega_vector
from .sampler import Cancelled, LevelInfo, SampleStats, effective_window, sample_area
from .request import RegionDone, RegionProgress, SynthesisRequest
from .schedule import cosine_alphas_cumprod, ddim_time_pairs

__all__ = ["SynthesisRequest", "RegionDone", "RegionProgress", "SynthesisError", "synthesise", "pending_regions",
           "resolve_device", "region_seed", "decode_latent"]


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


def synthesise(
    model,
    canvas: Canvas,
    request: SynthesisRequest,
    cancel=None,
    progress=None,
) -> Iterator[RegionDone]:
    """Sample every unfinished region of ``canvas`` that ``request.area`` touches.

    ``model`` is a loaded :class:`~src_models.models.Model` on the device to use.  ``cancel`` is
    a ``threading.Event``-like token (or a callable); when it is set, the region in flight is
    dropped within one level and the generator returns: every finished region stays on disk.
    ``progress`` receives a :class:`RegionProgress` after each level.
    """
    card = model.card
    if canvas.factor != card.factor:
        raise SynthesisError(f"the canvas was made for a model with factor {canvas.factor}, this model has {card.factor}")
    if canvas.latent.shape[0] != _latent_channels(model):
        raise SynthesisError(f"the canvas holds {canvas.latent.shape[0]}-channel latents, this model makes {_latent_channels(model)}")
    if request.schedule not in ("parallel", "sequential"):
        raise SynthesisError(f"schedule must be parallel or sequential, got {request.schedule!r}")
    try:
        pairs = ddim_time_pairs(request.steps)
        omega = omega_vector(card.num_classes, request.omega, request.omega_per_class)
    except ValueError as e:
        raise SynthesisError(str(e)) from None
    alphas = cosine_alphas_cumprod()
    device = model.device
    lh, lw = canvas.latent_shape
    window = effective_window(card.patch_size, lh, lw, multiple=_multiple(model))
    halo = request.halo if request.halo is not None else window // 2
    denoiser, budget = _denoiser_for(model, device, window, request)

    todo = pending_regions(canvas, request)
    settings = request.settings()
    max_batch = max(1, int(request.max_batch)) if request.max_batch else budget
    oom_reported = False

    for n, region in enumerate(todo, 1):
        started = time.perf_counter()
        y0, y1 = _expand(region.y0, region.y1, lh, halo, window)
        x0, x1 = _expand(region.x0, region.x1, lw, halo, window)
        mask_np = canvas.read_mask(y0, y1, x0, x1)
        top = int(mask_np.max()) if mask_np.size else 0
        if top >= card.num_classes:
            raise SynthesisError(
                f"the mask has label {top} in region {region.index}, but model {card.name!r} knows classes "
                f"0..{card.num_classes - 1} ({', '.join(card.classes)})"
            )
        target = canvas.target_map(region)
        if not target.any():  # a job whose rectangles missed this region: nothing to sample
            canvas.mark_done(region.index, {"seed": None, **settings})
            canvas.finish_job(region.index)
            continue
        known_np = canvas.known_map(y0, y1, x0, x1)
        known = torch.from_numpy(known_np) if known_np.any() else None
        context = torch.from_numpy(canvas.read_latent(y0, y1, x0, x1)) if known is not None else None
        mask = torch.from_numpy(mask_np.astype(np.int64))[None]
        seed = region_seed(request.seed, region.index)
        bbox = region.px(canvas.factor)

        area_px = (y0 * canvas.factor, y1 * canvas.factor, x0 * canvas.factor, x1 * canvas.factor)

        def on_level(info: LevelInfo, _r=region, _b=bbox, _a=area_px):
            if progress is not None:
                progress(RegionProgress(_r.index, _b, info.level, info.levels, info.forwards, info.x0, _a))

        while True:
            gen = torch.Generator().manual_seed(seed)
            rng = np.random.default_rng(seed)
            noise = torch.randn((_latent_channels(model), y1 - y0, x1 - x0), generator=gen).to(device)
            stats = SampleStats()
            try:
                z = sample_area(
                    denoiser, noise, mask, alphas, pairs, omega.to(device),
                    window=window, schedule=request.schedule, eta=request.eta, generator=gen, rng=rng,
                    context=context, known=known, max_batch=max_batch, callback=on_level, cancel=cancel,
                    stats=stats,
                )
                break
            except Cancelled:
                return
            except torch.cuda.OutOfMemoryError:
                if max_batch == 1:
                    raise SynthesisError("out of GPU memory even with batch size 1; use a smaller model or the CPU") from None
                max_batch //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if not oom_reported:
                    warnings.warn(f"out of GPU memory: batch size halved to {max_batch}", RuntimeWarning, stacklevel=2)
                    oom_reported = True
        if _cancelled(cancel):
            return
        rgb = decode_latent(model.codec, z)
        f = canvas.factor
        ry0, ry1, rx0, rx1 = (region.y0 - y0) * f, (region.y1 - y0) * f, (region.x0 - x0) * f, (region.x1 - x0) * f
        latent_np = z[:, region.y0 - y0 : region.y1 - y0, region.x0 - x0 : region.x1 - x0].float().cpu().numpy()
        canvas.write_region(region, rgb[ry0:ry1, rx0:rx1], latent_np, where=target)
        if target.all():
            _refresh_borders(canvas, region, (y0, y1, x0, x1), rgb, halo)
        canvas.mark_done(region.index, {"seed": seed, "forwards": stats.forwards, **settings})
        canvas.finish_job(region.index)
        yield RegionDone(region.index, bbox, n, len(todo), stats.forwards, time.perf_counter() - started)


def _refresh_borders(canvas: Canvas, region: Region, area, rgb: np.ndarray, halo: int) -> None:
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


def _denoiser_for(model, device, window: int, request: SynthesisRequest):
    """The network the sampler calls and its batch size; the fast wrapper is made once per
    model, device, window and compile choice, and kept on the model."""
    if not request.fast:
        return model.unet, 32
    from .fast import fast_setup

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
