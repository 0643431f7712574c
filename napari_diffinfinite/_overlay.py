"""The region overlay: one small RGBA image layer over a canvas that shows where a run stands.

Pending regions are veiled in grey (an empty canvas is then visible against napari's black
background), the region in flight is outlined in yellow and shows the run's live preview (the
predicted clean image, refreshed about once a second), finished regions are clear, with no outline
(the tissue is what the user watches).  Drawing the preview here rather than in a layer of its own means a run
adds and removes no layer.  Each region is ``k`` x ``k`` overlay pixels (``k`` up to 128, the
overlay at most :data:`MAX_SIDE` pixels a side), so updating a region re-uploads a small texture.
The canvas itself gets napari's bounding-box outline.  GUI thread only.
"""
from __future__ import annotations

import math

import numpy as np

from ._reader import META, pixel_centre_offset

MAX_SIDE = 1024
MAX_K = 128  # overlay pixels per region side at most
PENDING, IN_FLIGHT, DONE = 0, 1, 2
VEIL = (128, 132, 140, 90)
PENDING_EDGE = (150, 150, 160, 130)
DONE_EDGE = (235, 235, 235, 110)
FLIGHT_EDGE = (255, 214, 0, 255)
FLIGHT_VEIL = (255, 214, 0, 40)


def region_grid(info: dict) -> tuple[int, int, int]:
    """(region side in px, regions down, regions across) of a canvas, from its layer metadata."""
    size = int(info["region_size"]) // int(info["factor"])
    lh, lw = info["latent_shape"]
    return int(info["region_size"]), math.ceil(lh / size), math.ceil(lw / size)


def find_overlay(viewer, path: str):
    for layer in viewer.layers:
        meta = layer.metadata.get(META) if isinstance(layer.metadata, dict) else None
        if meta and meta.get("role") == "regions" and meta.get("path") == path:
            return layer
    return None


def _sample_preview(rgb: np.ndarray, bbox, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` (a preview covering the image-pixel box ``bbox``) at the image px ``rows`` x ``cols``
    (nearest pixel), and which of those points the box covers."""
    y0, y1, x0, x1 = bbox
    ry = np.clip(((rows - y0) / max(1, y1 - y0) * rgb.shape[0]).astype(int), 0, rgb.shape[0] - 1)
    rx = np.clip(((cols - x0) / max(1, x1 - x0) * rgb.shape[1]).astype(int), 0, rgb.shape[1] - 1)
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    return rgb[ry[:, None], rx[None, :]], inside


class RegionOverlay:
    """The overlay of one canvas; ``set(index, state)`` changes one region."""

    def __init__(self, viewer, image_layer, done: set[int] | None = None, running: bool = False, area=None,
                 area_map=None):
        info = image_layer.metadata[META]
        self.running = running
        # an area being redone (inpainting): veils and previews stay inside it, so the real tissue
        # around it stays in sight.  ``area``: (y0, y1, x0, x1) px, a rectangle; ``area_map``: a shape,
        # as (bool map, image px per map px, (y, x) px of its corner): the painted redo area
        self.area = tuple(area) if area is not None else None
        self.area_map = None
        if area_map is not None:
            shape, scale, (oy, ox) = area_map
            self.area_map = (np.asarray(shape, bool), float(scale), (float(oy), float(ox)))
        self.viewer, self.info = viewer, info
        self.region_px, self.ny, self.nx = region_grid(info)
        self.k = max(1, min(MAX_K, MAX_SIDE // max(self.ny, self.nx)))
        self.states = np.zeros((self.ny, self.nx), np.uint8)
        self.previews = 0  # previews drawn so far
        for i in done or ():
            if 0 <= i < self.ny * self.nx:
                self.states.flat[i] = DONE
        # overlay pixels covering the canvas (edge regions may be cut)
        px = self.region_px / self.k
        self.shape = (math.ceil(info["height"] / px), math.ceil(info["width"] / px))
        self.rgba = np.zeros(self.shape + (4,), np.uint8)
        for i in range(self.ny * self.nx):
            self._paint(i)
        layer = find_overlay(viewer, info["path"])
        translate = np.asarray(image_layer.translate[-2:], float) + pixel_centre_offset(px)
        if layer is None or layer.data.shape != self.rgba.shape:
            if layer is not None:
                viewer.layers.remove(layer)
            active = viewer.layers.selection.active
            layer = viewer.add_image(self.rgba, rgb=True, name=f"{image_layer.name} regions", scale=(px, px),
                                     translate=tuple(translate), blending="translucent",
                                     metadata={META: {"role": "regions", "path": info["path"]}})
            layer.editable = False
            self._place(image_layer, layer)
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active
        else:
            layer.data = self.rgba
        self.layer = layer
        try:
            image_layer.bounding_box.visible = True  # the canvas outline
            image_layer.bounding_box.points = False
            image_layer.bounding_box.line_color = "#9aa0a6"
        except AttributeError:  # an older napari without layer overlays
            pass

    def _place(self, image_layer, layer) -> None:
        """Right above the canvas image (under its mask, so painting stays in full colour)."""
        layers = self.viewer.layers
        if image_layer in layers:
            target = layers.index(image_layer) + 1
            here = layers.index(layer)
            if here != target:
                layers.move(here, target if target < here else target - 1)

    def _block(self, index: int) -> np.ndarray:
        iy, ix = divmod(index, self.nx)
        k = self.k
        return self.rgba[iy * k : (iy + 1) * k, ix * k : (ix + 1) * k]

    def _edge(self, block: np.ndarray, state: int) -> None:
        k = self.k
        if state == DONE:  # finished tissue is shown bare: outlines only around pending and running regions
            return
        if k >= 4 and block.size:
            edge = {PENDING: PENDING_EDGE, IN_FLIGHT: FLIGHT_EDGE, DONE: DONE_EDGE}[state]
            w = max(1, k // 64) if state != IN_FLIGHT else max(2, k // 32)
            block[:w] = edge
            block[-w:] = edge
            block[:, :w] = edge
            block[:, -w:] = edge

    def _outside_area(self, index: int, shape) -> np.ndarray | None:
        """Which pixels of a region's block lie outside the area being redone (None: no area)."""
        if self.area is None and self.area_map is None:
            return None
        px = self.region_px / self.k
        iy, ix = divmod(index, self.nx)
        rows = (iy * self.k + np.arange(shape[0]) + 0.5) * px  # image px at the block's pixel centres
        cols = (ix * self.k + np.arange(shape[1]) + 0.5) * px
        if self.area_map is not None:
            cells, scale, (oy, ox) = self.area_map
            my, mx = np.floor((rows - oy) / scale).astype(np.int64), np.floor((cols - ox) / scale).astype(np.int64)
            oky, okx = (my >= 0) & (my < cells.shape[0]), (mx >= 0) & (mx < cells.shape[1])
            inside = cells[np.clip(my, 0, cells.shape[0] - 1)[:, None], np.clip(mx, 0, cells.shape[1] - 1)[None, :]]
            return ~(inside & oky[:, None] & okx[None, :])
        y0, y1, x0, x1 = self.area
        inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
        return ~inside

    def _clip(self, index: int, block: np.ndarray) -> None:
        outside = self._outside_area(index, block.shape[:2])
        if outside is not None:
            block[outside] = 0
            k = self.k
            if self.states.flat[index] == IN_FLIGHT and k >= 4:  # the area's own outline, in yellow
                inside = ~outside
                edge = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1)
                                  & np.roll(inside, -1, 1))
                block[edge] = FLIGHT_EDGE

    def _paint(self, index: int) -> None:
        block = self._block(index)
        if block.size == 0:
            return
        state = self.states.flat[index]
        block[:] = {PENDING: VEIL, IN_FLIGHT: FLIGHT_VEIL, DONE: (0, 0, 0, 0)}[state]
        self._edge(block, state)
        self._clip(index, block)

    def show_preview(self, index: int, bbox: tuple[int, int, int, int], rgb: np.ndarray) -> None:
        """Draw ``rgb`` (the preview of the region in flight, covering the pixel box ``bbox``) into
        that region's block, sampled at the overlay's resolution, under its yellow outline."""
        if not 0 <= index < self.ny * self.nx or self.states.flat[index] != IN_FLIGHT:
            return
        block = self._block(index)
        if block.size == 0 or rgb.size == 0:
            return
        px = self.region_px / self.k
        iy, ix = divmod(index, self.nx)
        rows = (iy * self.k + np.arange(block.shape[0]) + 0.5) * px  # image px at the block's pixel centres
        cols = (ix * self.k + np.arange(block.shape[1]) + 0.5) * px
        # only over the box the preview covers (a region redone in part: its part's box); the rest of
        # the region keeps its veil, or its tissue in sight where an area is being redone
        values, inside = _sample_preview(rgb, bbox, rows, cols)
        block[inside, :3] = values[inside]
        block[inside, 3] = 255
        self._edge(block, IN_FLIGHT)
        self._clip(index, block)  # redoing an area: the preview only inside it
        self._drew_preview()

    def _drew_preview(self) -> None:
        self.previews += 1
        if self.layer in self.viewer.layers:
            self.layer.refresh()

    def show_area_preview(self, bbox: tuple[int, int, int, int], rgb: np.ndarray) -> None:
        """Draw ``rgb`` (a sweep's preview of the pixel box ``bbox``, which may span several regions) over
        the regions under it that are not finished, keeping their outlines (a sweep has no region in flight)."""
        if rgb.size == 0:
            return
        y0, y1, x0, x1 = bbox
        px = self.region_px / self.k
        r0, r1 = max(0, int(y0 // px)), min(self.shape[0], math.ceil(y1 / px))
        c0, c1 = max(0, int(x0 // px)), min(self.shape[1], math.ceil(x1 / px))
        if r0 >= r1 or c0 >= c1:
            return
        rows = (np.arange(r0, r1) + 0.5) * px  # image px at the overlay pixels' centres
        cols = (np.arange(c0, c1) + 0.5) * px
        values, inside = _sample_preview(rgb, bbox, rows, cols)
        pending = self.states[np.arange(r0, r1)[:, None] // self.k, np.arange(c0, c1)[None, :] // self.k] != DONE
        pending &= inside
        window = self.rgba[r0:r1, c0:c1]
        window[pending, :3] = values[pending]
        window[pending, 3] = 255
        touched = {int(iy * self.nx + ix) for iy in range(r0 // self.k, (r1 - 1) // self.k + 1)
                   for ix in range(c0 // self.k, (c1 - 1) // self.k + 1)}
        for index in touched:
            if self.states.flat[index] != DONE:
                block = self._block(index)
                self._edge(block, int(self.states.flat[index]))
                self._clip(index, block)
        self._drew_preview()

    def set(self, index: int, state: int, refresh: bool = True) -> None:
        if not 0 <= index < self.ny * self.nx or self.states.flat[index] == state:
            return
        self.states.flat[index] = state
        self._paint(index)
        if refresh and self.layer in self.viewer.layers:
            self.layer.refresh()

    def in_flight(self, index: int) -> None:
        """Mark ``index`` as the region in flight (a previous one in flight goes back to pending;
        a finished region stays finished)."""
        if self.states.flat[index] == DONE:
            return
        for i in np.flatnonzero(self.states == IN_FLIGHT):
            if i != index:
                self.set(int(i), PENDING, refresh=False)
        self.set(index, IN_FLIGHT, refresh=False)
        if self.layer in self.viewer.layers:
            self.layer.refresh()

    def finish(self) -> None:
        """The run ended: nothing is in flight any more, finished regions lose their outline, and
        pending ones their veil comes back (a sweep's previews go)."""
        self.running = False
        for i in np.flatnonzero(self.states == IN_FLIGHT):
            self.set(int(i), PENDING, refresh=False)
        for i in np.flatnonzero((self.states == DONE) | (self.states == PENDING)):
            self._paint(int(i))
        if self.layer in self.viewer.layers:
            self.layer.refresh()


def show_overlay(viewer, image_layer, running: bool = False, area=None, area_map=None) -> RegionOverlay | None:
    """Make (or rebuild) the region overlay of a shown canvas from the store's finished regions
    (``running``: for a run that starts now; ``area`` / ``area_map``: the rectangle or shape it redoes)."""
    from ._reader import open_readonly

    if image_layer not in viewer.layers:
        return None
    try:
        done = open_readonly(image_layer.metadata[META]["path"]).done_indices()
    except Exception:  # the store went away
        done = set()
    return RegionOverlay(viewer, image_layer, done, running, area, area_map)
