"""What every region of one run (or a whole-canvas sweep) shares, and the helpers both ways of
sampling a canvas use: a :class:`Run` is a request checked against its model and canvas, with its
defaults resolved, its schedule, ω vector, window, halo, denoiser and batch size (halved on OOM).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from src_models.errors import DiffInfiniteError
from src_models.sampling.setup import effective_window, sampling_setup
from src_models.store.canvas import Canvas, Region
from src_models.synthesis.boxes import expand  # noqa: F401 - the sweep takes it from here
from src_models.synthesis.request import GUIDE_ALL, SynthesisRequest


class SynthesisError(DiffInfiniteError, RuntimeError):
    """A request that cannot run as asked (message says why)."""


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
    # the distilled student where it runs the guided levels only (``denoiser``, the teacher, the others at ω 0);
    # None where it runs every level (it is then the ``denoiser``) or not at all
    student: object = None

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
    lh, lw = canvas.latent_shape
    try:
        request = request.resolved(card)
        if request.distilled:  # the student gives the guided ε in one pass, and the teacher's levels are unguided
            setup = sampling_setup(request.steps, card.num_classes, 0.0)
        else:
            setup = sampling_setup(request.steps, card.num_classes, request.omega, request.omega_per_class)
        window = effective_window(card.patch_size, lh, lw, multiple=_multiple(model))
    except ValueError as e:
        raise SynthesisError(str(e)) from None
    halo = request.halo if request.halo is not None else window // 2
    student, budget = None, None
    if request.distilled and request.guidance_below < GUIDE_ALL:  # the student guides, the teacher does the rest
        student, budget = _denoiser_for(model, model.device, window, request)
        request_teacher = dataclasses.replace(request, distilled=False)
        denoiser, teacher_budget = _denoiser_for(model, model.device, window, request_teacher)
        budget = min(budget, teacher_budget)
    else:
        denoiser, budget = _denoiser_for(model, model.device, window, request)
    max_batch = max(1, int(request.max_batch)) if request.max_batch else budget
    return Run(model, canvas, request, setup.pairs, setup.omega, setup.alphas, window, halo, denoiser, max_batch,
               student=student)


def check_labels_fit(run: Run, mask_np: np.ndarray, where: str) -> None:
    card = run.model.card
    top = int(mask_np.max()) if mask_np.size else 0
    if top >= card.num_classes:
        raise SynthesisError(
            f"the mask has label {top} in {where}, but model {card.name!r} knows classes "
            f"0..{card.num_classes - 1} ({', '.join(card.classes)})"
        )


def refreshed_neighbours(canvas: Canvas, region: Region, y0: int, y1: int, x0: int, x1: int) -> list[Region]:
    """The finished neighbours of ``region`` in the latent rectangle whose pixels :func:`refresh_borders`
    rewrites: regions the sampler made (imported or copied content is never rewritten) with no job
    waiting.  Edge blending (:func:`src_models.synthesis.blend.blend_kept_edges`) leaves exactly these
    to it."""
    done, jobs = canvas.done_indices(), canvas.jobs()
    return [r for r in canvas.regions_in(y0, y1, x0, x1)
            if r.index != region.index and r.index in done and r.index not in jobs
            and "seed" in canvas.done_info(r.index)]


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
    for r in refreshed_neighbours(canvas, region, by0, by1, bx0, bx1):
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
    net = model.unet
    if request.distilled:
        from src_models.models.loading import guided_network

        net = guided_network(model)  # a copy of the UNet: its cancel hook, if set, comes with it
    if not request.fast:
        return net, 32
    from src_models.models.fast import fast_setup

    cache = model.__dict__.setdefault("_denoisers", {})
    key = (str(device), int(window), bool(request.compile), request.precision, bool(request.distilled))
    if key not in cache:
        cache[key] = fast_setup(net, device, window, compile=request.compile, precision=request.precision)
    return cache[key]


def _latent_channels(model) -> int:
    return int(model.card.codec.get("channels", getattr(model.codec, "channels", 4)))


def _multiple(model) -> int:
    return int(getattr(model.unet, "size_multiple", 8))
