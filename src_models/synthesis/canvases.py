"""The headless Python API: the same steps the CLI and the napari widgets take.

    model = load_model("default")
    canvas = new_canvas(model.card, "out.zarr", 1024, 1024)
    put_mask(canvas, load_mask("mask.png"))
    for event in synthesise(model, canvas, SynthesisRequest(seed=1)):
        print(event)
    save_preview(canvas, "out.png")
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from src_models.store.canvas import Canvas, CanvasError
from src_models.models.card import ModelCard
from src_models.io.masks import MaskError, check_labels

LATENT_MULTIPLE = 8  # canvas latent sides are kept a multiple of this


def default_region_size(card: ModelCard) -> int:
    """Regions eight windows wide by default."""
    return card.patch_px * 8


CPU_REGION_PX = 256  # regions on the CPU: small enough that the first one is on screen within seconds


def region_size_for_device(card: ModelCard, device_type: str, batch_rows: int | None = None) -> int:
    """The region side (px, on the model's grid) that suits a device.

    CPU and MPS: 256 px (at least one window), so a run shows its first region soon.  CUDA with a
    known ``batch_rows`` (network rows that fit one call, e.g. ``fast.batch_budget``): as many
    windows a side as one such call holds for a region and its halo (three rows a window: the
    null pass and about two class passes), between 2 and 8 windows.  CUDA without a budget:
    :func:`default_region_size`.
    """
    if device_type == "cuda":
        if not batch_rows:
            side = default_region_size(card)
        else:
            per_side = math.isqrt(max(1, int(batch_rows) // 3)) - 1  # the halo takes about one window a side
            side = card.patch_px * min(8, max(2, per_side))
    else:
        side = max(CPU_REGION_PX, card.patch_px)
    grid = card.factor * LATENT_MULTIPLE
    return -(-side // grid) * grid


def check_size(card: ModelCard, height: int, width: int) -> None:
    """Refuse canvas sizes that do not fit the model's latent grid, naming valid neighbours."""
    step = card.factor * LATENT_MULTIPLE
    for name, v in (("width", width), ("height", height)):
        if v <= 0:
            raise CanvasError(f"canvas {name} must be positive, got {v}")
        if v % step:
            lo, hi = (v // step) * step, (v // step + 1) * step
            raise CanvasError(
                f"canvas {name} {v} px does not fit the model's grid of {step} px "
                f"(latent factor {card.factor} x {LATENT_MULTIPLE}); use {lo or hi} or {hi}"
            )


def card_pixel_size_um(card: ModelCard) -> float | None:
    """µm per image pixel the model works at (the card's ``pixel_size_um``; older cards may keep
    it in ``extra``), or None when the card does not say."""
    value = card.pixel_size_um if card.pixel_size_um is not None else (card.extra or {}).get("pixel_size_um")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def check_region_size(card: ModelCard, region_size: int) -> None:
    if region_size <= 0 or region_size % card.factor:
        raise CanvasError(f"region size {region_size} px must be a positive multiple of {card.factor} "
                          f"(the model's latent factor)")


def new_canvas(card: ModelCard, path, height: int, width: int, region_size: int | None = None,
               overwrite: bool = False, settings: dict | None = None, sources: list[dict] | None = None) -> Canvas:
    """Create a canvas for ``card``'s model.  Its ``provenance`` attribute records the code version,
    the model card's SHA-256, the settings it was created with and its ``sources`` (see
    :mod:`src_models.store.provenance`); later runs keep their settings in ``settings`` and each
    finished region's seed in the region state."""
    from src_models.store.provenance import provenance

    check_size(card, height, width)
    region_size = region_size or default_region_size(card)
    check_region_size(card, region_size)
    canvas = Canvas.create(
        path, height, width, factor=card.factor, latent_channels=int(card.codec.get("channels", 4)),
        region_size=region_size, classes=card.classes, colours=card.colours, overwrite=overwrite,
        settings=settings, pixel_size_um=card_pixel_size_um(card),
    )
    try:
        canvas.set_info(provenance=provenance(settings=settings, sources=sources, card=card))
    except BaseException:
        canvas.close()
        raise
    return canvas


def put_mask(canvas: Canvas, mask: np.ndarray) -> None:
    """Fit a label image to the canvas's mask grid (nearest) and store it.

    A mask of the latent grid's size is written as it is; any other size becomes the canvas's
    mask source, written chunk by chunk as regions are written (so a huge canvas starts at once).
    """
    check_labels(mask, canvas.classes)
    if mask.shape == canvas.latent_shape:
        canvas.write_mask(mask)
    else:
        canvas.set_mask_source(mask)


def mask_signature(mask: np.ndarray) -> str:
    """A digest of a label image (shape + labels), stored with a run to check a resume."""
    import hashlib

    h = hashlib.sha256(repr(mask.shape).encode())
    h.update(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    return h.hexdigest()[:16]


def store_mask(canvas: Canvas, mask: np.ndarray) -> None:
    """:func:`put_mask`, then the mask's signature, which a resume checks the mask against."""
    put_mask(canvas, mask)
    canvas.set_info(mask_signature=mask_signature(mask))


def mask_unwritten(canvas: Canvas) -> bool:
    """True when the run that made ``canvas`` stopped while writing its mask (no signature yet,
    nothing sampled): a resume writes the mask again instead of refusing it."""
    return "mask_signature" not in canvas.info and not canvas.done_indices()


def new_canvas_with_mask(card: ModelCard, path, height: int, width: int, mask: np.ndarray,
                         region_size: int | None = None, overwrite: bool = False, settings: dict | None = None,
                         sources: list[dict] | None = None) -> Canvas:
    """:func:`new_canvas` with ``mask`` stored (:func:`store_mask`); closed again if that fails."""
    canvas = new_canvas(card, path, height, width, region_size, overwrite=overwrite, settings=settings,
                        sources=sources)
    try:
        store_mask(canvas, mask)
    except BaseException:
        canvas.close()
        raise
    return canvas


def preview_level(canvas: Canvas, max_side: int = 2048) -> int:
    for level in range(canvas.levels):
        shape = canvas.image(level).shape
        if max(shape[1:]) <= max_side:
            return level
    return canvas.levels - 1


def save_preview(canvas: Canvas, path, max_side: int = 2048) -> Path:
    """Write the finest pyramid level no larger than ``max_side`` as a PNG."""
    from skimage import io

    level = preview_level(canvas, max_side)
    arr = canvas.read_rgb(0, canvas.image(level).shape[1], 0, canvas.image(level).shape[2], level=level)
    path = Path(path)
    io.imsave(path, arr, check_contrast=False)
    return path


def mask_rgb(mask: np.ndarray, colours: list[str]) -> np.ndarray:
    lut = np.array([[int(c.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)] for c in colours], dtype=np.uint8)
    return lut[mask]


__all__ = ["new_canvas", "put_mask", "save_preview", "check_size", "default_region_size", "mask_rgb", "MaskError"]
