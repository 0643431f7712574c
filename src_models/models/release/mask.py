"""The release's mask model conventions: mask ↔ grey image ↔ VAE latent, and the clean-up of a
generated mask.

Masks of ``n`` labels are grey images: label l becomes the value 2l/(n-1) - 1 in [-1, 1] on all
three channels.  The grey image goes through the SD-2 VAE *as is* (no [0, 1] shift) and the
latent is divided by fixed per-channel scales (:data:`MASK_LATENT_SCALES`).  Decoding multiplies
by the same scales ("training-consistent" decoding; the release's large-mask path used another
scaling, which we do not reproduce).

A generated mask is cleaned up before use:

1. grey -> continuous label value v = (g + 1)(n - 1)/2, clipped to [0, n-1];
2. pixels on a *thick* label boundary of round(v) (4-connectivity, both sides) are set to 0;
3. a 6×6 minimum filter (window offsets -3..+2, clamped at the border) widens those zero bands
   and removes isolated spikes;
4. rounding to the nearest label.

The large-mask path runs at a quarter of the image size; :func:`upsample_mask` brings the labels
to full size with nearest neighbour.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# per-channel latent scales of the published mask models, by number of mask labels
MASK_LATENT_SCALES: dict[int, tuple[float, float, float, float]] = {
    5: (40.0, 36.0, 48.0, 32.0),
    10: (46.0, 36.0, 55.0, 36.0),
}
SUBTYPES = ["adenocarcinoma", "squamous cell carcinoma"]  # the mask model's conditions 0 and 1
MASK_SCALE_FACTOR = 4  # masks are generated at a quarter of the image size
MIN_FILTER_SIZE = 6


def latent_scales(n_labels: int, scales=None) -> torch.Tensor:
    if scales is None:
        if n_labels not in MASK_LATENT_SCALES:
            raise ValueError(
                f"no published mask latent scales for {n_labels} labels "
                f"(known: {sorted(MASK_LATENT_SCALES)}); pass scales"
            )
        scales = MASK_LATENT_SCALES[n_labels]
    return torch.as_tensor(scales, dtype=torch.float32).reshape(1, -1, 1, 1)


def labels_to_grey(labels, n_labels: int) -> torch.Tensor:
    """(B, 1, H, W) or (H, W) labels -> (B, 3, H, W) grey image in [-1, 1]."""
    lab = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if lab.dim() == 2:
        lab = lab[None, None]
    if lab.dim() != 4 or lab.shape[1] != 1:
        raise ValueError(f"labels must be (H, W) or (B, 1, H, W), got {tuple(lab.shape)}")
    grey = lab.to(torch.float32) * (2.0 / (n_labels - 1)) - 1.0
    return grey.expand(-1, 3, -1, -1).contiguous()


def grey_to_values(grey: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Inverse of :func:`labels_to_grey` without rounding, clipped to [0, n-1]."""
    return ((grey + 1.0) * ((n_labels - 1) / 2.0)).clamp(0.0, n_labels - 1)


def encode_mask(encode_raw, labels, n_labels: int, scales=None) -> torch.Tensor:
    """Labels -> mask latent. ``encode_raw`` maps a (B, 3, H, W) image to the raw VAE latent
    (e.g. :meth:`SD2Codec.encode_raw`)."""
    grey = labels_to_grey(labels, n_labels)
    z = encode_raw(grey)
    return z / latent_scales(n_labels, scales).to(z.device, z.dtype)


def decode_mask_grey(decode_raw, z: torch.Tensor, n_labels: int, scales=None) -> torch.Tensor:
    """Mask latent -> (B, 3, H, W) grey image, by the training-consistent scaling."""
    return decode_raw(z * latent_scales(n_labels, scales).to(z.device, z.dtype))


def _as_bchw(x) -> tuple[torch.Tensor, str, tuple]:
    kind = "numpy" if isinstance(x, np.ndarray) else "torch"
    t = torch.from_numpy(np.ascontiguousarray(x)) if kind == "numpy" else x
    shape = tuple(t.shape)
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"expected (H, W), (C, H, W) or (B, C, H, W), got {shape}")
    return t, kind, shape


def thick_boundaries(labels: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) labels -> bool, true where a 4-neighbour has another label (both sides)."""
    lab = labels.to(torch.float32)
    pad = F.pad(lab, (1, 1, 1, 1), mode="replicate")
    centre = pad[..., 1:-1, 1:-1]
    out = torch.zeros_like(centre, dtype=torch.bool)
    for sl in ((slice(None, -2), slice(1, -1)), (slice(2, None), slice(1, -1)),
               (slice(1, -1), slice(None, -2)), (slice(1, -1), slice(2, None))):
        out |= pad[..., sl[0], sl[1]] != centre
    return out


def minimum_filter(x: torch.Tensor, size: int = MIN_FILTER_SIZE) -> torch.Tensor:
    """``size``×``size`` minimum over (B, C, H, W), window offsets -size//2 .. size - size//2 - 1,
    clamped at the border (as scipy.ndimage.minimum_filter with its default mode)."""
    lo = size // 2
    hi = size - lo - 1
    padded = F.pad(-x, (lo, hi, lo, hi), mode="replicate")
    return -F.max_pool2d(padded, size, stride=1)


def mask_from_decoded(rgb_or_grey, n_labels: int, min_filter: int = MIN_FILTER_SIZE):
    """Decoded mask image (grey in [-1, 1]; 3 channels are averaged) -> cleaned labels.

    Accepts (H, W), (C, H, W) or (B, C, H, W), numpy or torch; returns int64 labels of shape
    (H, W) or (B, 1, H, W) (matching a 2-D/3-D or 4-D input) of the same array kind.
    """
    x, kind, shape = _as_bchw(rgb_or_grey)
    grey = x.to(torch.float32).mean(dim=1, keepdim=True)
    values = grey_to_values(grey, n_labels)
    edges = thick_boundaries(values.round())
    values = torch.where(edges, torch.zeros_like(values), values)
    if min_filter > 1:
        values = minimum_filter(values, min_filter)
    labels = values.round().clamp(0, n_labels - 1).to(torch.int64)
    if len(shape) < 4:
        labels = labels[0, 0]
    return labels.numpy() if kind == "numpy" else labels


def upsample_mask(mask, factor: int = MASK_SCALE_FACTOR):
    """Nearest-neighbour upsampling of labels by an integer factor over the last two axes."""
    if factor < 1:
        raise ValueError("factor must be a positive integer")
    if isinstance(mask, np.ndarray):
        return np.repeat(np.repeat(mask, factor, axis=-2), factor, axis=-1)
    return mask.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


# ----------------------------------------------------------------------------- mask generation


RELEASE_COND_DROP = 0.5  # the release samples its mask model with the training's condition dropout


class SubtypeDenoiser:
    """The mask UNet as a sampler denoiser ``(x, t, mask) -> ε``: the class mask is ignored and
    every window is conditioned on one tissue subtype (ω = 0: the plain conditional ε).

    ``cond_drop`` is the probability that a window's pass uses the null condition instead, drawn
    per window and level from ``generator``.  The release samples with its training dropout, 0.5,
    so about half of its windows ignore the subtype; 0 always conditions.
    """

    conditioning = "per_class"

    def __init__(self, mask_unet, subtype: int, cond_drop: float = RELEASE_COND_DROP,
                 generator: torch.Generator | None = None):
        if not 0.0 <= float(cond_drop) <= 1.0:
            raise ValueError(f"condition dropout must be between 0 and 1, got {cond_drop}")
        self.mask_unet = mask_unet
        self.subtype = int(subtype)
        self.cond_drop = float(cond_drop)
        self.generator = generator

    def __call__(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        classes = torch.full((x.shape[0],), self.subtype, dtype=torch.long, device=x.device)
        return self.mask_unet(x, t, classes, cond_drop_prob=self.cond_drop, generator=self.generator)


def _subtype_index(subtype, names: list[str], n: int) -> int:
    if isinstance(subtype, str):
        low = [s.lower() for s in names]
        key = subtype.lower()
        hits = [i for i, s in enumerate(low) if s == key or s.startswith(key)]
        if len(hits) != 1:
            raise ValueError(f"unknown subtype {subtype!r}; known: {', '.join(names)}")
        return hits[0]
    if not 0 <= int(subtype) < n:
        raise ValueError(f"subtype must be 0..{n - 1} ({', '.join(names)}), got {subtype}")
    return int(subtype)


def generate_release_mask(model, size, subtype=0, seed: int = 0, *, steps: int = 50, eta: float | None = None,
                          window: int = 16, plan: str = "release", solver: str = "ddim",
                          cond_drop: float = RELEASE_COND_DROP, max_batch: int = 32, return_low_res: bool = False,
                          callback=None, cancel=None):
    """A label mask of ``size`` = (H, W) image pixels (or one int) drawn by the release's mask model.

    The mask latent is sampled at a quarter of the image size (so H and W must be multiples of
    32) with the random patch sampler (``window`` latent pixels per window: 16, the 128-px masks
    the model was trained on; ω = 0; ``plan`` (the release's by default), ``solver`` and ``eta`` as
    for images; ``cond_drop``
    the sampling-time condition dropout, 0.5 as the release, drawn from its own generator seeded
    ``seed + 1``), decoded with the training-consistent per-channel scales, cleaned up
    (:func:`mask_from_decoded`) and upsampled ×4 with nearest neighbour.

    ``model`` is a :class:`~src_models.models.loading.Model` with ``mask_unet`` and an SD-2 codec; its card's
    ``mask_model`` gives the number of labels and the latent scales.  All DDIM steps run (the release
    skips the last one).  Returns uint8 labels (H, W); with ``return_low_res`` also the cleaned
    quarter-size mask.  ``callback`` and ``cancel`` are handed to the sampler.
    """
    from src_models.sampling.sampler import sample_area
    from src_models.sampling.setup import effective_window, sampling_setup

    if model.mask_unet is None or not model.card.mask_model:
        raise ValueError(f"model {model.card.name!r} has no mask model")
    spec = model.card.mask_model
    n_labels = int(spec.get("labels", model.card.num_classes))
    scales = spec.get("latent_scales")
    names = list(spec.get("subtypes") or SUBTYPES)
    sub = _subtype_index(subtype, names, model.mask_unet.num_classes)
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    step = MASK_SCALE_FACTOR * model.codec.factor
    if height % step or width % step or height <= 0 or width <= 0:
        raise ValueError(f"mask size {height}x{width} must be a positive multiple of {step} pixels")
    h, w = height // step, width // step
    device = next(model.mask_unet.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((model.mask_unet.channels, h, w), generator=gen).to(device)
    denoiser = SubtypeDenoiser(model.mask_unet, sub, cond_drop, torch.Generator().manual_seed(int(seed) + 1))
    setup = sampling_setup(steps, model.mask_unet.num_classes)  # unguided: ω 0 for every class
    z = sample_area(denoiser, noise, torch.zeros((1, h, w), dtype=torch.long, device=device), setup.alphas,
                    setup.pairs, setup.omega,
                    window=effective_window(window, h, w, 8), plan=plan, solver=solver, eta=eta, generator=gen,
                    rng=np.random.default_rng(int(seed)), max_batch=max_batch, callback=callback, cancel=cancel)
    with torch.inference_mode():
        grey = decode_mask_grey(model.codec.decode_raw, z[None], n_labels, scales)
    small = mask_from_decoded(grey.float().cpu(), n_labels)[0, 0].numpy().astype(np.uint8)
    full = upsample_mask(small, MASK_SCALE_FACTOR)
    return (full, small) if return_low_res else full
