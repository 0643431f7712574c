"""Canvases and their use cases: the steps every interface takes, written once.

The documented Python API (also importable from :mod:`src_models`)::

    model = load_model("default")
    canvas = new_canvas(model.card, "out.zarr", 1024, 1024)
    put_mask(canvas, load_mask("mask.png"))
    for event in synthesise(model, canvas, SynthesisRequest(seed=1)):
        print(event)
    save_preview(canvas, "out.png")

The use cases behind ``generate``, ``generate-many`` and the napari dock's Run: a
:class:`CanvasSpec` says what a run makes (path, size, regions, mask, settings);
:func:`read_mask_for_model` reads its mask the one way (the release's grey codes decoded, a class
map applied); :func:`check_existing` compares it with a canvas on disk, read-only, before any
model loads; :func:`open_for_run` then makes the canvas anew or opens it to finish, storing a
mask the run that made it did not finish writing and repairing damaged regions
(:func:`repair_finished`).  Region sizes come from :func:`resolve_region_size`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src_models.io.masks import MaskError, check_labels
from src_models.models.card import ModelCard
from src_models.store.canvas import Canvas, CanvasError, CanvasLockedError

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


def check_region_size(card: ModelCard, region_size: int, name: str = "region size") -> None:
    """A region side (px) must be a positive multiple of the model's latent factor."""
    if region_size <= 0 or region_size % card.factor:
        raise CanvasError(f"{name} {region_size} px must be a positive multiple of {card.factor} "
                          f"(the model's latent factor)")


AUTO = "auto"  # a region size picked for the device (the napari dock's default)


def resolve_region_size(card: ModelCard, requested: int | str | None = None, device_type: str = "cpu",
                        batch_rows: int | None = None, name: str = "region size") -> int:
    """The one place a region size is decided: ``requested`` px (checked), ``None`` for the
    card's default (:func:`default_region_size`, eight windows: ``generate``, ``generate-many``,
    the API), or ``"auto"`` for the device (:func:`region_size_for_device`: the napari dock,
    ``generate --region-size auto``).  The same inputs give the same regions, so the same canvas."""
    if requested is None:
        return default_region_size(card)
    if str(requested) == AUTO:
        return region_size_for_device(card, device_type, batch_rows)
    check_region_size(card, int(requested), name)
    return int(requested)


def auto_region_size(card: ModelCard, device, unet=None) -> int:
    """:func:`resolve_region_size` for ``"auto"`` on a torch ``device``: on CUDA from the batch of
    ``unet`` that fits the free memory (``fast.batch_budget``), elsewhere 256 px."""
    rows = None
    if getattr(device, "type", str(device)) == "cuda" and unet is not None:
        from src_models.models.fast import batch_budget

        rows = batch_budget(unet, card.patch_size, device)
    return resolve_region_size(card, AUTO, getattr(device, "type", str(device)), rows)


def new_canvas(card: ModelCard, path, height: int, width: int, region_size: int | None = None,
               overwrite: bool = False, settings: dict | None = None, sources: list[dict] | None = None,
               inputs=(), replace_when_sampled: bool = False) -> Canvas:
    """Create a canvas for ``card``'s model.  Its ``provenance`` attribute records the code version,
    the model card's SHA-256, the settings it was created with and its ``sources`` (see
    :mod:`src_models.store.provenance`); later runs keep their settings in ``settings`` and each
    finished region's seed in the region state.  ``overwrite`` replaces only a canvas this tool
    made, never a folder holding one of ``inputs``; ``replace_when_sampled`` keeps the old canvas
    until the new one has its first region (see :meth:`Canvas.create`)."""
    from src_models.store.provenance import provenance

    check_size(card, height, width)
    region_size = resolve_region_size(card, region_size or None)
    return Canvas.create(
        path, height, width, factor=card.factor, latent_channels=int(card.codec.get("channels", 4)),
        region_size=region_size, classes=card.classes, colours=card.colours, overwrite=overwrite,
        settings=settings, pixel_size_um=card_pixel_size_um(card),
        info={"provenance": provenance(settings=settings, sources=sources, card=card)},
        inputs=inputs, replace_when_sampled=replace_when_sampled,
    )


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
                         sources: list[dict] | None = None, inputs=(), replace_when_sampled: bool = False) -> Canvas:
    """:func:`new_canvas` with ``mask`` stored (:func:`store_mask`); closed again if that fails."""
    canvas = new_canvas(card, path, height, width, region_size, overwrite=overwrite, settings=settings,
                        sources=sources, inputs=inputs, replace_when_sampled=replace_when_sampled)
    try:
        store_mask(canvas, mask)
    except BaseException:
        canvas.close()
        raise
    return canvas


def store_mask_grid(canvas: Canvas, mask: np.ndarray, step: int) -> bool:
    """Write a mask painted on a coarser grid (the napari dock's Labels layer) into the canvas, where
    it differs from what is stored.

    ``step`` 1: the layer is the latent grid.  ``step`` > 1: each layer pixel stands for
    ``step`` x ``step`` latent pixels; only blocks of rows whose layer pixels changed are rewritten,
    so a finer stored mask survives where the user did not edit.  Returns whether anything changed.
    """
    lh, lw = canvas.latent_shape
    grid = (-(-lh // step), -(-lw // step))
    if mask.shape != grid:
        raise MaskError(f"the mask layer is {mask.shape[1]}x{mask.shape[0]} px; this canvas needs {grid[1]}x{grid[0]}")
    check_labels(mask, canvas.classes, name="the mask layer")
    if step == 1:
        if np.array_equal(np.asarray(canvas.mask[:]), mask):
            return False
        canvas.write_mask(mask)
        return True
    changed = (np.asarray(canvas.mask[::step, ::step]) != mask).any(axis=1)
    if not changed.any():
        return False
    xs = np.arange(lw) // step
    block = max(1, 512 // step)  # layer rows per write
    for r0 in range(0, grid[0], block):
        if changed[r0 : r0 + block].any():
            ys = np.arange(r0 * step, min(lh, (r0 + block) * step)) // step
            canvas.write_mask(mask[ys[:, None], xs[None, :]], r0 * step, 0)
    return True


# ------------------------------------------------------------------------------------------------
# use cases: every interface makes, resumes and repairs a canvas through these
# ------------------------------------------------------------------------------------------------
def read_mask_for_model(path, card: ModelCard, class_map: dict[int, int] | None = None, warn=None) -> np.ndarray:
    """The one way a mask file becomes a run's labels: PNG/TIFF/NPY (or the card's colours), the
    DiffInfinite release's grey codes decoded, ``class_map`` applied, labels checked against the
    card's classes.  ``warn(text)`` hears what a foreign mask was read as."""
    from src_models.io.foreign_masks import load_for_model

    mask, found = load_for_model(path, card.colours, card.classes, class_map)
    if found.kind == "grey" and warn is not None:
        warn(f"{path} is a {found.describe()}")
    return mask


@dataclass
class CanvasSpec:
    """What a run makes or finishes: the canvas at ``path``, its size, regions and mask, and the
    settings of the run (``SynthesisRequest.settings()`` of a resolved request)."""

    path: Path
    height: int
    width: int
    mask: np.ndarray
    settings: dict
    region_size: int | None = None  # px; None: the card's default (an existing canvas keeps its own)
    sources: list[dict] | None = None  # provenance of the inputs (the mask file)
    mask_name: str = "the mask"  # how messages name the mask (its file)
    inputs: tuple = ()  # the run's input files: an output never replaces a folder that holds one
    signature: str = field(init=False)

    def __post_init__(self):
        self.path = Path(self.path)
        self.signature = mask_signature(self.mask)


class CanvasMismatchError(CanvasError):
    """A canvas on disk that the run's size, regions, settings or mask do not fit."""


@dataclass
class Existing:
    """A canvas on disk that a run may finish (see :func:`check_existing`)."""

    done: int  # finished regions
    total: int  # regions
    complete: bool  # every region done, no inpaint pending, every chunk file present
    mask_unwritten: bool  # the run that made it stopped while writing the mask


def check_spec(card: ModelCard, spec: CanvasSpec) -> None:
    """The size and regions of ``spec`` fit the model's grid."""
    check_size(card, spec.height, spec.width)
    if spec.region_size is not None:
        check_region_size(card, spec.region_size)


def mismatch(canvas: Canvas, spec: CanvasSpec, card: ModelCard | None) -> str | None:
    """Why ``canvas`` cannot be finished with ``spec`` (size, regions, settings, mask), or None."""
    from src_models.synthesis.request import settings_diff

    if (canvas.height, canvas.width) != (spec.height, spec.width):
        return f"{spec.path} is {canvas.width}x{canvas.height} px, not {spec.width}x{spec.height}"
    if spec.region_size and spec.region_size != canvas.region_size:
        return f"{spec.path} uses regions of {canvas.region_size} px, not {spec.region_size}"
    diffs = settings_diff(canvas.settings, spec.settings, card)
    if diffs:
        text = ", ".join(f"{k}: canvas {a!r} vs now {b!r}" for k, (a, b) in diffs.items())
        return f"settings differ from the run that made {spec.path} ({text})"
    # no signature and nothing sampled: the run that made it stopped while writing the mask
    if not mask_unwritten(canvas) and canvas.info.get("mask_signature") != spec.signature:
        return f"{spec.mask_name} is not the mask {spec.path} was made with"
    return None


def made_with(path, card: ModelCard) -> dict:
    """What a resume that leaves them open takes from the canvas at ``path``: ``distilled`` (whether
    its model's distilled student sampled it), ``precision`` (:func:`recorded_precision`: float32
    for canvases made before it was recorded; ``auto`` where no run has recorded one) and
    ``guidance_below`` (1000, every level, for canvases made before it was recorded), so the canvas
    goes on as it was made.  Empty where the canvas cannot be read (the run's own checks then say why)."""
    from src_models.synthesis.request import normalise_settings, recorded_precision

    try:
        with Canvas.open(path, "r") as canvas:
            stored = canvas.settings
    except Exception:  # noqa: BLE001 - check_existing reports what is wrong with it
        return {}
    settings = normalise_settings(stored, card)
    # the levels it guided, once a run has recorded them (None: a new canvas takes the card's)
    guided = settings.get("guidance_below") if "seed" in stored else None
    return {"distilled": bool(settings.get("distilled")), "precision": recorded_precision(stored) or "auto",
            "guidance_below": guided}


def check_existing(spec: CanvasSpec, card: ModelCard) -> Existing:
    """Read-only, before any model loads: can the canvas at ``spec.path`` be finished with
    ``spec``?  Raises :class:`CanvasMismatchError` saying why not."""
    with Canvas.open(spec.path, "r") as canvas:
        problem = mismatch(canvas, spec, card)
        if problem:
            raise CanvasMismatchError(problem)
        done, total = len(canvas.done_indices()), len(canvas.regions())
        complete = done == total and not canvas.jobs()
        if complete:
            from src_models.store.verify import verify_canvas

            complete = verify_canvas(canvas, deep=False).ok
        return Existing(done, total, complete, mask_unwritten(canvas))


def open_for_run(spec: CanvasSpec, card: ModelCard, *, resume: bool, overwrite: bool = False, progress=None,
                 notice=None, repaired: list | None = None) -> Canvas:
    """The canvas a run writes, open for writing: made anew with its mask, or (``resume``) the
    one on disk, checked again against ``spec`` (another process may have changed it since
    :func:`check_existing`), its mask stored if the run that made it stopped while writing it, and
    its finished regions checked and repaired (:func:`repair_finished`, ``progress(n, total)`` and
    ``notice(text)`` as there; the regions it repaired are added to ``repaired``)."""
    if not resume:
        # an overwrite keeps the old canvas until the new one has its first region
        return new_canvas_with_mask(card, spec.path, spec.height, spec.width, spec.mask, spec.region_size,
                                    overwrite=overwrite, settings=spec.settings, sources=spec.sources,
                                    inputs=spec.inputs, replace_when_sampled=overwrite)
    canvas = Canvas.open(spec.path, "r+")
    try:
        problem = mismatch(canvas, spec, card)
        if problem:
            raise CanvasMismatchError(problem)
        if mask_unwritten(canvas):
            store_mask(canvas, spec.mask)
        touched = repair_finished(canvas, progress=progress, notice=notice)
        if repaired is not None:
            repaired.extend(touched)
    except BaseException:
        canvas.close()
        raise
    return canvas


def repair_finished(canvas: Canvas, progress=None, notice=None) -> list[int]:
    """Before a run goes on with a canvas: check every finished region against its checksums,
    rebuild damaged pyramid tiles and forget damaged sampled regions so the run samples them
    again.  ``notice(text)`` hears each kind of repair in one line; returns the regions touched."""
    from src_models.store.verify import repair, verify_canvas

    notes = [f"region state: {t}; restored from the other record" for t in canvas.restored]
    canvas.restored = []
    report = verify_canvas(canvas, deep=True, progress=progress)
    if report.ok:
        for text in notes:
            if notice is not None:
                notice(text)
        return []
    rebuilt, forgotten = repair(canvas, report)
    notes += [f"region state: {t}" for t in report.records]
    notes += [f"mask: {t}" for t in report.mask]
    if rebuilt:
        notes.append(f"pyramid tiles of {len(rebuilt)} region(s) were damaged and are rebuilt from level 0 "
                     f"({', '.join(map(str, rebuilt[:20]))})")
    if forgotten:
        first = report.damaged[forgotten[0]][0]
        notes.append(f"{len(forgotten)} damaged region(s) will be generated again "
                     f"({', '.join(map(str, forgotten[:20]))}; region {forgotten[0]}: {first})")
    if report.copied:
        notes.append(f"{len(report.copied)} damaged region(s) hold copied content that cannot be generated again "
                     f"({', '.join(map(str, sorted(report.copied)[:20]))}); import the source again")
    for text in notes:
        if notice is not None:
            notice(text)
    return sorted(set(rebuilt) | set(forgotten))


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
    """A label mask in its classes' colours (the colour preview beside a mask file)."""
    from src_models.io.colours import labels_rgb

    return labels_rgb(mask, colours)


__all__ = ["new_canvas", "put_mask", "save_preview", "check_size", "default_region_size", "resolve_region_size",
           "mask_rgb", "MaskError", "CanvasSpec", "read_mask_for_model", "check_existing", "open_for_run",
           "repair_finished", "CanvasMismatchError", "CanvasLockedError"]
