"""Editing canvases: bring in a real slide, regenerate an area of any shape or a rectangle
(inpaint), grow a canvas beyond its border (outpaint).  Each prepares the canvas;
``synthesis.synthesise`` then samples what is pending, with everything finished around it as
context, each region in part in a box sized to what it redoes (:mod:`src_models.synthesis.boxes`).
"""
from __future__ import annotations

import numpy as np

from src_models.synthesis.boxes import area_cells
from src_models.synthesis.canvases import LATENT_MULTIPLE, check_size, new_canvas
from src_models.store.canvas import Canvas, CanvasError
from src_models.models.codec import encode_rgb
from src_models.models.card import ModelCard
from src_models.io.masks import check_labels, resize_labels
from src_models.io.slides import open_slide


def import_slide(slide_path, model, out, region_size: int | None = None, overwrite: bool = False,
                 progress=None, model_spec: str | None = None, precision: str | None = None) -> tuple[Canvas, dict]:
    """Copy a slide's base level into a new canvas, encode its latents and mark every region
    done, so that rectangles of it can be regenerated with the real tissue as context.
    ``model_spec`` (how the model was named: a built-in name or a path) is recorded in the canvas's
    settings, so that later runs on it find the model (default: the card's name).  ``precision`` is
    the encoder's (None or "auto": the device's default, :func:`~src_models.models.fast.default_precision`).

    The slide is cropped (bottom/right) to the model's grid; returns the canvas and a report.
    """
    card: ModelCard = model.card
    from src_models.models.fast import resolve_precision

    precision = resolve_precision(precision, model.device)  # a bad value: refused before anything is written
    step = card.factor * LATENT_MULTIPLE
    with open_slide(slide_path) as slide:
        height, width = (slide.height // step) * step, (slide.width // step) * step
        if height == 0 or width == 0:
            raise CanvasError(f"slide {slide_path} ({slide.width}x{slide.height}) is smaller than the model's grid of {step} px")
        from src_models.store.provenance import source_entry

        canvas = new_canvas(card, out, height, width, region_size, overwrite=overwrite,
                            settings={"source": str(slide_path), "model": str(model_spec or card.name)}, sources=[source_entry(slide_path, "slide")],
                            inputs=(slide_path,), replace_when_sampled=True)  # the old canvas stays until a region is in
        try:
            if slide.mpp:
                canvas.set_pixel_size(slide.mpp)
            regions = canvas.regions()
            device = model.device
            for n, r in enumerate(regions, 1):
                y0, y1, x0, x1 = r.px(canvas.factor)
                rgb = slide.read(y0, y1, x0, x1)
                canvas.write_region(r, rgb, encode_rgb(model.codec, rgb, device, precision))
                canvas.mark_done(r.index, {"source": "slide"})
                if progress is not None:
                    progress(n, len(regions))
        except BaseException:
            canvas.close()  # its finished regions stay (or, replacing a canvas before any, the old one)
            raise
    report = {"slide": str(slide_path), "slide_size": [slide.width, slide.height], "canvas_size": [width, height],
              "cropped_px": [slide.width - width, slide.height - height], "regions": len(regions)}
    return canvas, report


def align_rect(canvas: Canvas, rect_px) -> tuple[int, int, int, int]:
    """Grow a pixel rectangle (y0, y1, x0, x1) to the latent grid and clip it to the canvas."""
    f = canvas.factor
    y0, y1, x0, x1 = (int(v) for v in rect_px)
    y0, x0 = max(0, (y0 // f) * f), max(0, (x0 // f) * f)
    y1, x1 = min(canvas.height, -(-y1 // f) * f), min(canvas.width, -(-x1 // f) * f)
    if y1 <= y0 or x1 <= x0:
        raise CanvasError(f"rectangle {rect_px} is empty or outside the {canvas.width}x{canvas.height} canvas")
    return y0, y1, x0, x1


def check_rect(canvas: Canvas, rect_px, option: str = "--rect") -> tuple[int, int, int, int]:
    """A pixel rectangle (y0, y1, x0, x1) that must lie on the canvas's latent grid and inside it:
    otherwise refused, naming the nearest rectangles that do (as ``generate`` names sizes)."""
    f = canvas.factor
    y0, y1, x0, x1 = (int(v) for v in rect_px)
    fmt = lambda r: f"{r[2]},{r[0]},{r[3] - r[2]},{r[1] - r[0]}"  # noqa: E731 - as X,Y,W,H
    given = fmt((y0, y1, x0, x1))
    cy0, cy1, cx0, cx1 = max(0, y0), min(canvas.height, y1), max(0, x0), min(canvas.width, x1)
    if cy1 <= cy0 or cx1 <= cx0:
        raise CanvasError(f"{option} {given} lies outside the {canvas.width}x{canvas.height} px canvas")
    outer = (cy0 // f * f, min(canvas.height, -(-cy1 // f) * f), cx0 // f * f, min(canvas.width, -(-cx1 // f) * f))
    inner = (-(-cy0 // f) * f, cy1 // f * f, -(-cx0 // f) * f, cx1 // f * f)
    if (y0, y1, x0, x1) == outer:
        return outer
    where = ([] if (cy0, cy1, cx0, cx1) == (y0, y1, x0, x1) else
             [f"reaches past the {canvas.width}x{canvas.height} px canvas"])
    if (cy0, cy1, cx0, cx1) != outer:
        where.append(f"is not on the model's grid of {f} px")
    options = [fmt(outer)]
    if inner[1] > inner[0] and inner[3] > inner[2] and inner != outer:
        options.append(fmt(inner))
    raise CanvasError(f"{option} {given} {' and '.join(where)}; use {' or '.join(options)}")


def prepare_redo(canvas: Canvas, where: np.ndarray, origin=(0, 0), scale: int = 1, mask: np.ndarray | None = None,
                 label: int | None = None) -> tuple[int, int, int, int]:
    """Schedule an area of any shape for regeneration, with everything around it as context.

    ``where`` is a map of the area (nonzero = redo) whose element (i, j) covers image px
    [oy + i·scale, oy + (i+1)·scale) x [ox + j·scale, ...) for ``origin`` = (oy, ox): a pixel map of
    the canvas (the defaults), of a rectangle placed at ``origin``, or a coarser map (the dock's
    redo layer: ``scale`` = image px per layer px).  Every latent cell it touches is redone; its
    cells are stored per region as rectangles (the store's job format, one save).  ``mask``
    (labels for the same extent as ``where``, resized to it) or ``label`` is written into those
    cells only: the labels elsewhere keep describing the tissue that stays.

    Returns the bounding box of the cells in px, to pass as ``SynthesisRequest.area``; raises
    :class:`CanvasError` when the map marks nothing on the canvas.
    """
    f = canvas.factor
    cells, ly0, lx0 = area_cells(where, f, canvas.latent_shape, origin, scale)
    if cells is None:
        raise CanvasError(f"the area to redo marks nothing on the {canvas.width}x{canvas.height} px canvas")
    h, w = cells.shape
    if mask is not None or label is not None:
        if mask is not None:
            check_labels(mask, canvas.classes)
            oy, ox = int(origin[0]), int(origin[1])
            fy0, fx0 = oy // f, ox // f  # the map's extent on the latent grid
            fy1, fx1 = -(-(oy + where.shape[0] * scale) // f), -(-(ox + where.shape[1] * scale) // f)
            labels = resize_labels(mask, (fy1 - fy0, fx1 - fx0))[ly0 - fy0 : ly0 - fy0 + h, lx0 - fx0 : lx0 - fx0 + w]
        else:
            check_labels(np.array([[label]]), canvas.classes, name=f"label {label}")
            labels = np.full((h, w), label, np.uint8)
        old = canvas.read_mask(ly0, ly0 + h, lx0, lx0 + w)
        canvas.write_mask(np.where(cells, labels, old).astype(np.uint8), ly0, lx0)
    canvas.regenerate_map(cells, ly0, lx0)
    return ly0 * f, (ly0 + h) * f, lx0 * f, (lx0 + w) * f


def prepare_inpaint(canvas: Canvas, rect_px, mask: np.ndarray | None = None, label: int | None = None):
    """Put a new mask (or one label) into a rectangle and schedule it for regeneration: the
    rectangle case of :func:`prepare_redo` (the same jobs, one rectangle per region, without a map).

    Returns the aligned rectangle in px, to pass as ``SynthesisRequest.area``.
    """
    y0, y1, x0, x1 = align_rect(canvas, rect_px)
    f = canvas.factor
    shape = ((y1 - y0) // f, (x1 - x0) // f)
    if mask is not None:
        check_labels(mask, canvas.classes)
        canvas.write_mask(resize_labels(mask, shape), y0 // f, x0 // f)
    elif label is not None:
        check_labels(np.array([[label]]), canvas.classes, name=f"label {label}")
        canvas.write_mask(np.full(shape, label, np.uint8), y0 // f, x0 // f)
    canvas.regenerate(y0 // f, y1 // f, x0 // f, x1 // f)
    return y0, y1, x0, x1


def scheduled_area(canvas: Canvas) -> tuple[int, int, int, int] | None:
    """The px bounding box of every regeneration job on the canvas (what an interrupted inpaint
    left to do), or None when there is none."""
    rects = [r for job in canvas.jobs().values() for r in job]
    if not rects:
        return None
    f = canvas.factor
    y0, y1 = min(r[0] for r in rects), max(r[1] for r in rects)
    x0, x1 = min(r[2] for r in rects), max(r[3] for r in rects)
    return y0 * f, y1 * f, x0 * f, x1 * f


def _minus(r, o):
    """Rectangles covering r minus o (both (y0, y1, x0, x1))."""
    ry0, ry1, rx0, rx1 = r
    oy0, oy1, ox0, ox1 = max(o[0], ry0), min(o[1], ry1), max(o[2], rx0), min(o[3], rx1)
    if oy0 >= oy1 or ox0 >= ox1:
        return [list(r)]
    out = []
    if ry0 < oy0:
        out.append([ry0, oy0, rx0, rx1])
    if oy1 < ry1:
        out.append([oy1, ry1, rx0, rx1])
    if rx0 < ox0:
        out.append([oy0, oy1, rx0, ox0])
    if ox1 < rx1:
        out.append([oy0, oy1, ox1, rx1])
    return out


def outpaint(src_path, model, out, pads, label: int = 0, overwrite: bool = False, progress=None) -> Canvas:
    """A new canvas that holds ``src_path`` padded by ``pads`` = (top, right, bottom, left) px;
    the old area is kept (as context) and the border is pending, under mask ``label``."""
    card: ModelCard = model.card
    top, right, bottom, left = (int(v) for v in pads)
    step = card.factor * LATENT_MULTIPLE
    if min(pads) < 0 or not any(pads):
        raise CanvasError("outpaint needs non-negative pads with at least one above zero")
    bad = [v for v in pads if v % step]
    if bad:
        raise CanvasError(f"pads must be multiples of {step} px (the model's grid); got {list(pads)}")
    check_labels(np.array([[label]]), card.classes, name=f"label {label}")
    with Canvas.open(src_path) as src:
        if src.factor != card.factor or src.latent.shape[0] != int(card.codec.get("channels", 4)):
            raise CanvasError(f"{src_path} was made for another kind of model (factor {src.factor}, "
                              f"{src.latent.shape[0]} latent channels)")
        H, W = src.height + top + bottom, src.width + left + right
        check_size(card, H, W)
        dst = new_canvas(card, out, H, W, src.region_size, overwrite=overwrite, settings=src.settings,
                         inputs=(src_path,))
        f = src.factor
        ly, lx = top // f, left // f
        old = (ly, ly + src.latent_shape[0], lx, lx + src.latent_shape[1])
        if label:
            for r in dst.regions():
                dst.write_mask(np.full((r.y1 - r.y0, r.x1 - r.x0), label, np.uint8), r.y0, r.x0)
        block = 2048
        blocks = [(y, x) for y in range(0, src.height, block) for x in range(0, src.width, block)]
        for n, (y, x) in enumerate(blocks, 1):
            y1, x1 = min(src.height, y + block), min(src.width, x + block)
            dst.write_pixels(top + y, left + x, src.read_rgb(y, y1, x, x1))
            sl = (slice(y // f, y1 // f), slice(x // f, x1 // f))
            dst.write_latent(ly + y // f, lx + x // f, src.read_latent(y // f, y1 // f, x // f, x1 // f))
            dst.write_mask(src.read_mask(y // f, y1 // f, x // f, x1 // f), ly + y // f, lx + x // f)
            if progress is not None:
                progress(n, len(blocks))
        jobs = {}
        for r in dst.regions():
            rect = (r.y0, r.y1, r.x0, r.x1)
            rest = _minus(rect, old)
            if not rest:
                dst.mark_done(r.index, {"source": str(src_path)})
            elif rest != [list(rect)]:
                jobs[r.index] = rest
        dst.set_jobs(jobs)
    return dst
