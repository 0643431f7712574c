"""Tissue layouts (label masks) drawn for a canvas: from the model card's anatomy recipe
(:mod:`src_models.synthesis.anatomy`), by the model's own layout diffusion model, by the published
release's mask model, or procedurally.  The choice of generator is made here once, for
``diffinfinite make-mask`` and the napari dock's Generate alike."""
from __future__ import annotations

import numpy as np

from src_models.io.masks import MaskError, procedural_mask, resize_labels

LEARNED, RELEASE, PROCEDURAL, ANATOMY = "layout model", "release mask model", "procedural", "anatomy recipe"
#: what a user may ask for: ``auto`` takes the first the model has of anatomy, learned, procedural
LAYOUT_KINDS = ("auto", "anatomy", "learned", "procedural")
RECIPE_KEY = "layout_recipe"  # in ModelCard.extra
RECIPE_MAX_SIDE = 2048  # recipes are drawn at most this large (in mask px), then fitted


class LayoutError(MaskError):
    """A layout kind the model cannot draw."""


def layout_recipe(card) -> dict | None:
    """The card's anatomy recipe, checked, or None."""
    from src_models.synthesis.anatomy import RecipeError, check_recipe

    recipe = (card.extra or {}).get(RECIPE_KEY)
    if recipe is None:
        return None
    try:
        return check_recipe(recipe, card.num_classes)
    except RecipeError as e:
        raise LayoutError(f"model {card.name}: {e}") from None


def layout_source(card, kind: str = "auto") -> str:
    """Which generator draws a layout of ``kind`` for a model: ``auto`` takes its anatomy recipe,
    else its layout model (or the release's mask model, a card with another kind of mask model),
    else procedural.  Asking for a kind the model lacks is a :class:`LayoutError`."""
    from src_models.models.native.mask_model import is_layout_model

    if kind not in LAYOUT_KINDS:
        raise LayoutError(f"layout must be one of {', '.join(LAYOUT_KINDS)}, got {kind!r}")
    if kind == "procedural":
        return PROCEDURAL
    if kind in ("auto", "anatomy") and layout_recipe(card) is not None:
        return ANATOMY
    if kind == "anatomy":
        raise LayoutError(f"model {card.name} has no anatomy recipe (use --layout learned or procedural)")
    if card.mask_model:
        return LEARNED if is_layout_model(card) else RELEASE
    if kind == "learned":
        raise LayoutError(f"model {card.name} has no layout model (use --layout procedural)")
    return PROCEDURAL


def recipe_layout(card, shape: tuple[int, int], image_px: tuple[int, int] | None = None, seed: int = 0,
                  max_side: int | None = RECIPE_MAX_SIDE) -> np.ndarray:
    """A layout of ``shape`` (rows, cols) covering ``image_px`` image px (default ``shape``) drawn
    from the card's anatomy recipe at the card's pixel size; drawn at most ``max_side`` large and
    fitted (nearest)."""
    from src_models.synthesis.anatomy import draw_recipe

    recipe = layout_recipe(card)
    if recipe is None:
        raise LayoutError(f"model {card.name} has no anatomy recipe")
    h, w = shape
    scale = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
    dh, dw = max(1, round(h * scale)), max(1, round(w * scale))
    image_h = (image_px or shape)[0]
    px_um = float(card.pixel_size_um or 0.5) * image_h / dh
    small = draw_recipe(recipe, (dh, dw), px_um, seed=seed)
    return resize_labels(small, (h, w)) if small.shape != (h, w) else small


def procedural_layout(shape: tuple[int, int], labels: list[int], seed: int = 0, max_side: int | None = None) -> np.ndarray:
    """A procedural layout of ``labels`` over ``shape``; with ``max_side`` drawn at most that
    large and stretched (nearest) to ``shape``."""
    h, w = shape
    scale = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
    small = procedural_mask(max(1, round(h * scale)), max(1, round(w * scale)), labels, seed=seed)
    return resize_labels(small, (h, w)) if small.shape != (h, w) else small


def draw_layout(model, shape: tuple[int, int], *, seed: int = 0, steps: int | None = None,
                image_px: tuple[int, int] | None = None, subtype=0, cond_drop: float | None = None,
                max_side: int | None = None, kind: str = "auto", callback=None,
                cancel=None, card=None, precision: str | None = None) -> tuple[np.ndarray, str]:
    """A layout of ``shape`` (rows, cols) labels from the generator :func:`layout_source` picks for
    ``model`` and ``kind``; ``image_px`` is the image size it covers (default ``shape``).  Returns the
    labels and which generator drew them (``ANATOMY``, ``LEARNED``, ``RELEASE`` or ``PROCEDURAL``).
    The diffusion layouts call ``callback(LevelInfo)`` after each denoising level and stop
    (``Cancelled``) when ``cancel`` is set.  ``model`` may be None, with ``card`` given, where the
    layout needs no network (an anatomy recipe, procedural).  ``precision`` ("float32", "bf16" for
    bfloat16 autocast, None or "auto" for the device's default) applies to the learned layout's network."""
    card = card if card is not None else model.card
    source = layout_source(card, kind)
    if source in (LEARNED, RELEASE) and (model is None or model.mask_unet is None):
        if kind == "learned":
            raise LayoutError(f"model {card.name}: its layout model's weights are not loaded")
        source = PROCEDURAL
    if source == ANATOMY:
        return recipe_layout(card, shape, image_px, seed), source
    if source == LEARNED:
        from src_models.models.native.mask_model import generate_layout

        return generate_layout(model, shape, seed=seed, steps=steps, image_px=image_px, callback=callback,
                               cancel=cancel, precision=precision), source
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
