"""Mask tools dock widget: everything about the class mask besides napari's own brush, fill and
polygon tools (which paint the mask Labels layer directly, with napari's undo).

* Load a mask from PNG, TIFF or NPY (label images, or RGB in the model's class colours), fitted
  to the mask grid with nearest-neighbour sampling.
* Generate mask (procedural): smoothed random fields of the tissue classes, arg-max per pixel
  (``src_models.maskio.procedural_mask``), for the whole canvas or the drawn rectangle.  No mask
  diffusion model is shipped yet; this is a layout generator, not a learned one, and says so.
* Clear the whole mask or the drawn rectangle.
* Save the mask into the canvas store now (a run also saves it before it starts).

Loading and generating run in a worker thread; the result is applied on the GUI thread through
``Labels.data_setitem``, so napari's undo (Ctrl+Z) takes it back, except for edits larger than
``UNDO_MAX_PX`` changed pixels, which are written directly (the status line says so).
"""
from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import CanvasPicker, Legend, area_layer, drawn_rect, layer_info, px_to_mask, status_label, to_image_px

UNDO_MAX_PX = 16_000_000  # larger edits skip napari's undo history (it stores coordinates)
GENERATE_MAX_SIDE = 2048  # procedural layouts are drawn at most this large, then fitted


def load_mask_job(path: str, colours: list[str], classes: list[str], shape: tuple[int, int]) -> np.ndarray:
    from src_models.maskio import check_labels, load_mask, resize_labels

    mask = load_mask(path, colours)
    check_labels(mask, classes, name=str(path))
    return resize_labels(mask, shape) if mask.shape != tuple(shape) else mask


def procedural_job(shape: tuple[int, int], labels: list[int], seed: int) -> np.ndarray:
    """A procedural layout of ``labels`` over ``shape`` (drawn at most GENERATE_MAX_SIDE, then fitted)."""
    from src_models.maskio import procedural_mask, resize_labels

    h, w = shape
    scale = min(1.0, GENERATE_MAX_SIDE / max(h, w))
    small = procedural_mask(max(1, round(h * scale)), max(1, round(w * scale)), labels, seed=seed)
    return resize_labels(small, (h, w)) if small.shape != (h, w) else small


def apply_to_mask(layer, values: np.ndarray, rect: tuple[int, int, int, int]) -> tuple[int, bool]:
    """Put ``values`` into ``layer.data[r0:r1, c0:c1]``; returns (changed pixels, undoable)."""
    r0, r1, c0, c1 = rect
    old = np.asarray(layer.data[r0:r1, c0:c1])
    changed = old != values
    n = int(changed.sum())
    if n == 0:
        return 0, True
    if n <= UNDO_MAX_PX:
        ys, xs = np.nonzero(changed)
        layer.data_setitem((ys + r0, xs + c0), values[changed].astype(layer.data.dtype))
        return n, True
    layer.data[r0:r1, c0:c1] = values
    layer.refresh()
    return n, False


class MaskToolsWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._worker = None
        layout = QVBoxLayout(self)
        self.picker = CanvasPicker(self.viewer)
        layout.addWidget(self.picker)
        hint = QLabel("Paint, fill or draw polygons on the mask layer with napari's layer controls "
                      "(Ctrl+Z undoes). Pick the class here:")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        self.legend = Legend()
        layout.addWidget(self.legend)

        box = QGroupBox("Whole-mask actions")
        form = QFormLayout(box)
        self.target_box = QComboBox()
        self.target_box.addItems(["whole canvas", "drawn rectangle"])
        draw = QPushButton("Draw rectangle")
        draw.setToolTip("draw a rectangle in the 'area' Shapes layer (also used by the Synthesis widget)")
        draw.clicked.connect(self.draw_rectangle)
        row = QHBoxLayout()
        row.addWidget(self.target_box)
        row.addWidget(draw)
        form.addRow("apply to", row)
        self.seed_box = QSpinBox()
        self.seed_box.setRange(0, 2**31 - 1)
        form.addRow("layout seed", self.seed_box)
        self.generate_button = QPushButton("Generate mask (procedural)")
        self.generate_button.setToolTip(
            "fill the target with a procedural layout of the tissue classes (smoothed random fields, "
            "not a learned mask model)")
        self.generate_button.clicked.connect(self.generate)
        self.load_button = QPushButton("Load mask…")
        self.load_button.setToolTip("PNG, TIFF or NPY label image (or RGB in the class colours), fitted to the target")
        self.load_button.clicked.connect(lambda: self.load())
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear)
        self.save_button = QPushButton("Save mask to canvas")
        self.save_button.setToolTip("write the mask layer into the canvas store now (Run does it too)")
        self.save_button.clicked.connect(self.save)
        form.addRow(self.generate_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.clear_button)
        form.addRow(buttons)
        form.addRow(self.save_button)
        layout.addWidget(box)
        self.status = status_label()
        layout.addWidget(self.status)
        layout.addStretch(1)
        self._actions = [self.generate_button, self.load_button, self.clear_button, self.save_button]
        self.picker.changed.connect(self._on_canvas_changed)
        self._on_canvas_changed(self.picker.image_layer())

    # ------------------------------------------------------------------ helpers
    def _on_canvas_changed(self, _layer=None):
        image, mask = self.picker.current()
        self.legend.set_canvas(self.viewer, layer_info(image) if image is not None else None, mask)

    def _fail(self, text: str):
        from napari.utils.notifications import show_error

        self.status.setText(text)
        show_error(text)

    def _target(self):
        """(mask layer, info, mask-layer rect) for the chosen target, or None after telling the user why."""
        image, mask = self.picker.current()
        if image is None or mask is None:
            self._fail("no canvas with a mask layer: create or open one first")
            return None
        if not mask.editable:
            self._fail("the mask is locked while a synthesis run uses it; wait or cancel the run")
            return None
        info = layer_info(mask)
        h, w = mask.data.shape
        if self.target_box.currentText() == "whole canvas":
            return mask, info, (0, h, 0, w)
        rect = drawn_rect(self.viewer)
        px = to_image_px(image, rect) if rect is not None else None
        if px is None:
            self._fail("draw a rectangle over the canvas first (Draw rectangle)")
            return None
        r0, r1, c0, c1 = px_to_mask(info, px)
        return mask, info, (r0, min(h, r1), c0, min(w, c1))

    @property
    def busy(self) -> bool:
        """Whether a load, generate or save is in flight (its buttons are disabled meanwhile)."""
        return not self.generate_button.isEnabled()

    def _run(self, func, *args, on_result):
        from napari.qt.threading import create_worker

        for b in self._actions:
            b.setEnabled(False)
        self._worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        self._worker.returned.connect(on_result)
        self._worker.errored.connect(lambda e: self.status.setText(f"failed: {e}"))
        self._worker.finished.connect(lambda: [b.setEnabled(True) for b in self._actions])
        self._worker.start()
        return self._worker

    def _apply(self, mask, rect, values, what: str):
        if mask not in self.viewer.layers:
            return
        n, undoable = apply_to_mask(mask, values, rect)
        note = "" if undoable else " (too large for napari's undo history)"
        self.status.setText(f"{what}: {n:,} mask pixels changed{note}")

    # ------------------------------------------------------------------ actions
    def draw_rectangle(self):
        image, _ = self.picker.current()
        area_layer(self.viewer, image)
        self.target_box.setCurrentText("drawn rectangle")

    def generate(self):
        target = self._target()
        if target is None:
            return None
        mask, info, rect = target
        labels = list(range(1, len(info["classes"])))
        shape = (rect[1] - rect[0], rect[3] - rect[2])
        self.status.setText("generating a procedural layout…")
        return self._run(procedural_job, shape, labels, self.seed_box.value(),
                         on_result=lambda v: self._apply(mask, rect, v, "generated (procedural)"))

    def load(self, path: str | None = None):
        target = self._target()
        if target is None:
            return None
        mask, info, rect = target
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load mask", "", "Masks (*.png *.tif *.tiff *.npy)")
            if not path:
                return None
        shape = (rect[1] - rect[0], rect[3] - rect[2])
        self.status.setText(f"loading {path}…")
        return self._run(load_mask_job, str(path), info["colours"], info["classes"], shape,
                         on_result=lambda v: self._apply(mask, rect, v, f"loaded {path}"))

    def clear(self):
        target = self._target()
        if target is None:
            return
        mask, _, rect = target
        self._apply(mask, rect, np.zeros((rect[1] - rect[0], rect[3] - rect[2]), np.uint8), "cleared")

    def save(self):
        from ._worker import BUSY, save_mask_job

        image, mask = self.picker.current()
        if mask is None:
            self._fail("no canvas with a mask layer: create or open one first")
            return None
        info = layer_info(mask)
        if info["path"] in BUSY:
            self._fail("a synthesis run is writing this canvas; it saves the mask itself")
            return None
        self.status.setText("saving the mask…")
        return self._run(save_mask_job, info["path"], np.array(mask.data, copy=True), info["mask_step"],
                         on_result=lambda changed: self.status.setText(
                             "mask saved to the canvas" if changed else "the canvas already holds this mask"))
