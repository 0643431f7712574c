"""The project's own mask model: tissue layouts drawn by a small diffusion model, on canvases of
any size, with the same random patch sampler that paints the images (the hierarchical half of
DiffInfinite).

A layout lives on a coarse grid, ``scale_px`` image pixels per layout pixel (16 for the default
model: 8 µm per layout pixel at 0.5 µm/px).  Each layout pixel is a *one-hot code*: one channel
per tissue class (the card's ``mask_model["classes"]``), +1 for its class and -1 elsewhere, so the
model works in pixel space (no codec).  It is a :class:`~src_models.models.native.unet.NativeUNet`, trained
unconditionally (every training crop is class 0, the null condition) with ``diffinfinite train
--codec identity`` on one-hot-coloured label images.

To draw a layout, :func:`generate_layout` samples the coarse grid, then upsamples the model's
continuous output with bilinear interpolation to the size asked for and takes the arg-max class
per pixel: class borders come out smooth at any scale instead of in blocks of ``scale_px``.

The card's ``mask_model`` entry::

    {"arch": "native", "config": {...NativeUNet kwargs...}, "kind": "onehot-layout",
     "classes": [1, 2, 3], "scale_px": 16, "patch_size": 32, "steps": 50}

Optional ``"solver"`` and ``"eta"`` choose how layouts are sampled (default DDIM with η = 1; the
shipped cards' choice is measured by ``benchmarks/layout_steps.py``).

An optional ``"off_class"`` names a class that has no channel of its own: it is the all-off code
(every channel -1), and a layout pixel whose channels all stay below zero takes it.  The tumour
model's layouts use it for background (channels tumour, stroma, infiltrate), since an RGB training
image holds three channels.
"""
from __future__ import annotations

import numpy as np
import torch

KIND = "onehot-layout"


def is_layout_model(card) -> bool:
    return bool(card.mask_model) and card.mask_model.get("kind") == KIND


def layout_codes(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """(C, H, W) float32 one-hot codes (+1 / -1) of a label image; labels not in ``classes`` are -1 everywhere."""
    return np.stack([np.where(labels == c, 1.0, -1.0) for c in classes]).astype(np.float32)


def codes_to_rgb(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """The training image of a label map for ``train --codec identity``: channel k is 255 where the
    label is ``classes[k]`` (the identity codec maps 0..255 to -1..+1)."""
    if len(classes) != 3:
        raise ValueError("one-hot training images as RGB need exactly three classes")
    return ((layout_codes(labels, classes) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)


class _Unconditional:
    """The layout network as a sampler denoiser: every window gets the null condition."""

    conditioning = "per_class"

    def __init__(self, unet):
        self.unet = unet

    def __call__(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, torch.zeros_like(mask))


def layout_grid(card, height: int, width: int, multiple: int = 8) -> tuple[int, int]:
    """The coarse grid that covers ``height`` x ``width`` image px, rounded up to ``multiple``."""
    s = int(card.mask_model["scale_px"])

    def side(n):
        cells = -(-n // s)
        return max(multiple, -(-cells // multiple) * multiple)

    return side(height), side(width)


@torch.inference_mode()
def sample_layout_codes(model, grid: tuple[int, int], seed: int = 0, steps: int | None = None,
                        eta: float | None = None, solver: str | None = None, callback=None,
                        cancel=None, precision: str | None = None) -> torch.Tensor:
    """The model's continuous one-hot output (C, h, w) on a coarse grid of ``grid`` layout pixels.
    ``steps``, ``solver`` and ``eta`` default to the card's ``mask_model`` entry (50 steps of DDIM
    with η = 1 where it names none).  ``precision="bf16"`` runs the network under bfloat16 autocast;
    None or ``"auto"``: the device's default, as for images (bf16 on a CPU with native bfloat16,
    :func:`src_models.models.fast.default_precision`; docs/cpu_speed.md)."""
    from src_models.models.fast import resolve_precision
    from src_models.sampling.sampler import sample_area
    from src_models.sampling.setup import effective_window, sampling_setup

    spec = model.card.mask_model
    unet = model.mask_unet
    device = next(unet.parameters()).device
    precision = resolve_precision(precision, device)
    h, w = grid
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((len(spec["classes"]), h, w), generator=gen).to(device)
    window = effective_window(int(spec.get("patch_size", 32)), h, w, int(getattr(unet, "size_multiple", 8)))
    setup = sampling_setup(int(steps or spec.get("steps", 50)), int(getattr(unet, "num_classes", 2)))  # unguided
    solver = solver or spec.get("solver", "ddim")
    if eta is None:  # the card's η; without one, DDIM samples layouts with η = 1, other solvers as they are
        eta = spec.get("eta", 1.0 if solver == "ddim" else None)
    net = unet
    if precision == "bf16":  # the fast path's wrapper, in bfloat16 and left in the network's own layout
        from src_models.models.fast import FastDenoiser, warn_if_bf16_emulated

        warn_if_bf16_emulated(device)
        net = FastDenoiser(unet, dtype=torch.bfloat16, channels_last=False, autocast_cpu=True)
    return sample_area(
        _Unconditional(net), noise, torch.zeros((1, h, w), dtype=torch.long, device=device),
        setup.alphas, setup.pairs, setup.omega, window=window, solver=solver, eta=eta, generator=gen,
        rng=np.random.default_rng(int(seed)), callback=callback, cancel=cancel,
    ).float().cpu()


def codes_to_labels(codes: torch.Tensor, classes: list[int], shape: tuple[int, int], band: int = 1024,
                    off_class: int | None = None) -> np.ndarray:
    """Labels (uint8, ``shape``) from coarse codes: bilinear upsampling, then arg-max, in row bands;
    with ``off_class``, pixels whose every channel is below zero take that class instead."""
    import torch.nn.functional as F

    H, W = shape
    c, h, w = codes.shape
    lut = np.asarray(classes, np.uint8)
    out = np.empty((H, W), np.uint8)
    sy, sx = h / H, w / W
    for y0 in range(0, H, band):
        y1 = min(H, y0 + band)
        # the coarse rows this band needs (with one row of margin for interpolation)
        a = max(0, int(np.floor((y0 + 0.5) * sy - 0.5)) - 1)
        b = min(h, int(np.ceil((y1 - 0.5) * sy - 0.5)) + 2)
        # sample positions in coarse coordinates (align_corners=False convention)
        ys = (np.arange(y0, y1) + 0.5) * sy - 0.5 - a
        xs = (np.arange(W) + 0.5) * sx - 0.5
        gy = torch.from_numpy(2 * (ys + 0.5) / (b - a) - 1).float()
        gx = torch.from_numpy(2 * (xs + 0.5) / w - 1).float()
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None]
        up = F.grid_sample(codes[None, :, a:b], grid, mode="bilinear", padding_mode="border", align_corners=False)
        best, arg = up[0].max(0)
        labels = lut[arg.numpy()]
        if off_class is not None:
            labels[best.numpy() < 0] = off_class
        out[y0:y1] = labels
    return out


def generate_layout(model, shape: tuple[int, int], seed: int = 0, steps: int | None = None, callback=None,
                    cancel=None, image_px: tuple[int, int] | None = None, solver: str | None = None,
                    eta: float | None = None, precision: str | None = None) -> np.ndarray:
    """A label layout of ``shape`` (rows, cols) drawn by the model's mask model.

    ``image_px`` is the image size the layout is for (default ``shape``): it sets how many layout
    pixels are sampled (``image_px / scale_px``); ``shape`` is the grid the labels are returned on
    (for example a canvas's mask grid, coarser than its image)."""
    if not is_layout_model(model.card) or model.mask_unet is None:
        raise ValueError(f"model {model.card.name!r} has no layout mask model")
    H, W = image_px or shape
    grid = layout_grid(model.card, H, W)
    codes = sample_layout_codes(model, grid, seed, steps, eta=eta, solver=solver, callback=callback, cancel=cancel,
                                precision=precision)
    # the grid may overhang the image: keep the part that covers it
    s = int(model.card.mask_model["scale_px"])
    codes = codes[:, : max(1, -(-H // s)), : max(1, -(-W // s))]
    spec = model.card.mask_model
    return codes_to_labels(codes, list(spec["classes"]), shape, off_class=spec.get("off_class"))
