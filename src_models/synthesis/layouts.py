"""Tissue layouts (label masks) drawn for a canvas: by the model's own layout diffusion model, by
the published release's mask model, or procedurally.  The choice of generator is made here once,
for ``diffinfinite make-mask`` and the napari dock's Generate alike."""
from __future__ import annotations

import numpy as np

from src_models.io.masks import MaskError, procedural_mask, resize_labels

LEARNED, RELEASE, PROCEDURAL = "layout model", "release mask model", "procedural"


def layout_source(card) -> str:
    """Which generator a model's layouts come from: its layout model, the release's mask model
    (a card with another kind of mask model), or procedural (no mask model)."""
    from src_models.models.native.mask_model import is_layout_model

    if not card.mask_model:
        return PROCEDURAL
    return LEARNED if is_layout_model(card) else RELEASE


def procedural_layout(shape: tuple[int, int], labels: list[int], seed: int = 0, max_side: int | None = None) -> np.ndarray:
    """A procedural layout of ``labels`` over ``shape``; with ``max_side`` drawn at most that
    large and stretched (nearest) to ``shape``."""
    h, w = shape
    scale = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
    small = procedural_mask(max(1, round(h * scale)), max(1, round(w * scale)), labels, seed=seed)
    return resize_labels(small, (h, w)) if small.shape != (h, w) else small


def draw_layout(model, shape: tuple[int, int], *, seed: int = 0, steps: int | None = None,
                image_px: tuple[int, int] | None = None, subtype=0, cond_drop: float | None = None,
                max_side: int | None = None, callback=None, cancel=None) -> tuple[np.ndarray, str]:
    """A layout of ``shape`` (rows, cols) labels from the generator :func:`layout_source` picks for
    ``model``; ``image_px`` is the image size it covers (default ``shape``).  Returns the labels and
    which generator drew them (``LEARNED``, ``RELEASE`` or ``PROCEDURAL``).  The diffusion layouts
    call ``callback(LevelInfo)`` after each denoising level and stop (``Cancelled``) when ``cancel``
    is set."""
    card = model.card
    source = layout_source(card) if model.mask_unet is not None else PROCEDURAL
    if source == LEARNED:
        from src_models.models.native.mask_model import generate_layout

        return generate_layout(model, shape, seed=seed, steps=steps, image_px=image_px, callback=callback,
                               cancel=cancel), source
    if source == RELEASE:
        from src_models.models.release.mask import generate_release_mask

        height, width = shape
        if height % 32 or width % 32:
            raise MaskError(f"the mask model needs sides that are multiples of 32 px, got {width}x{height}")
        kw = {"callback": callback, "cancel": cancel}
        if cond_drop is not None:
            kw["cond_drop"] = cond_drop
        try:
            return generate_release_mask(model, (height, width), subtype, seed, steps=steps or 50, **kw), source
        except ValueError as e:
            raise MaskError(str(e)) from None
    return procedural_layout(shape, list(range(1, card.num_classes)), seed, max_side), source
