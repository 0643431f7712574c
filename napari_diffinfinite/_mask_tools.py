"""Mask tools dock widget: everything about the class mask besides napari's own brush, fill and
polygon tools (which paint the mask Labels layer directly, with napari's undo).

* The class legend (click a class to paint it), what a mask pixel is in image pixels, and why the
  mask is locked while a run uses it.
* How the mask is shown: filled in distinct colours (far from H&E's), as contours, or in the
  model card's colours.
* Load a mask from PNG, TIFF or NPY (label images, or RGB in the model's class colours), fitted
  to the mask grid with nearest-neighbour sampling.  Masks made for other models (the
  DiffInfinite release's grey-coded PNGs and 5/10-class label maps) go through the class-mapping
  dialog first (``_class_map``; remembered per model).
* Generate mask: a layout drawn from the canvas model's anatomy recipe (``src_models.synthesis.anatomy``:
  a section in glass, nests in stroma, sizes measured on its training masks), by its layout (mask)
  diffusion model (``src_models.models.native.mask_model``), where the model has them, or procedural:
  smoothed random fields of the tissue classes, arg-max per pixel
  (``src_models.io.masks.procedural_mask``); for the whole canvas or the drawn rectangle.  The
  status line says which made the layout.
* Clear the whole mask or the drawn rectangle; save the mask into the canvas store now (a run
  also saves it before it starts).

Loading and generating run in a worker thread; the result is applied on the GUI thread as one
entry of napari's undo history holding the old and new values of the changed rectangle (two
bytes a pixel), so Ctrl+Z takes back even a procedural mask on a 20,000 px canvas.
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

from ._common import (
    CanvasPicker,
    Legend,
    Section,
    area_layer,
    drawn_rect,
    layer_info,
    notify,
    px_to_mask,
    status_label,
    to_image_px,
)
from ._reader import MASK_MODES, set_mask_mode

LAYOUTS = ("anatomy", "learned", "procedural")
UNDO_MAX_PX = 128_000_000  # larger edits skip napari's undo history (it keeps 2 bytes a pixel of the rectangle)
GENERATE_MAX_SIDE = 2048  # procedural layouts are drawn at most this large, then fitted


def read_mask_job(path: str, colours: list[str], classes: list[str]):
    """A mask file read for a model: (labels in the source's scheme, what it is)."""
    from src_models.io.foreign_masks import interpret
    from src_models.io.masks import load_mask

    raw = load_mask(path, colours)
    return raw, interpret(raw, len(classes))


def fit_mask_job(labels: np.ndarray, mapping: dict | None, classes: list[str], shape: tuple[int, int],
                 name: str) -> np.ndarray:
    """Map (when asked), check and fit labels to ``shape``."""
    from src_models.io.foreign_masks import apply_class_map
    from src_models.io.masks import check_labels, resize_labels

    if mapping:
        labels = apply_class_map(labels, mapping)
    check_labels(labels, classes, name=name)
    return resize_labels(labels, shape) if labels.shape != tuple(shape) else labels


def layout_job(spec: str | None, shape: tuple[int, int], image_px: tuple[int, int], labels: list[int],
               seed: int, kind: str, progress=None, cancel=None) -> tuple[np.ndarray, str]:
    """A layout for ``shape`` mask px covering ``image_px`` image px: ``kind`` "anatomy" draws the
    canvas model's anatomy recipe, "learned" runs its layout diffusion model (``progress`` per
    denoising level, stopped by ``cancel``), where the model has them, else (and for "procedural")
    smoothed random fields (:mod:`src_models.synthesis.layouts` decides).  Returns (labels, how)."""
    from src_models.synthesis.layouts import ANATOMY, LEARNED, draw_layout, layout_source, recipe_layout

    card = None
    if kind != "procedural" and spec:
        from ._worker import MODELS, model_card

        try:
            card = model_card(spec)
        except Exception:  # the canvas's model is not on this machine: a procedural layout
            card = None
    if card is not None:
        try:
            source = layout_source(card, kind)
        except ValueError:  # this model has no such generator
            source = None
        if source == ANATOMY:
            return recipe_layout(card, shape, image_px, seed), "anatomy recipe"
        if source == LEARNED:
            if progress is not None:
                progress(0, 0, "loading the model")
            model = MODELS.get(spec, "cpu")

            def on_level(info):
                if progress is not None:
                    progress(info.level, info.levels, "denoising level")

            mask, _ = draw_layout(model, shape, seed=seed, image_px=image_px, kind="learned", callback=on_level,
                                  cancel=cancel)
            return mask, "learned layout model"
    why = {"anatomy": "procedural; the model has no anatomy recipe",
           "learned": "procedural; the model has no layout model"}.get(kind, "procedural")
    return procedural_job(shape, labels, seed), why


def procedural_job(shape: tuple[int, int], labels: list[int], seed: int) -> np.ndarray:
    """A procedural layout of ``labels`` over ``shape`` (drawn at most GENERATE_MAX_SIDE, then fitted)."""
    from src_models.synthesis.layouts import procedural_layout

    return procedural_layout(shape, labels, seed, max_side=GENERATE_MAX_SIDE)


def apply_to_mask(layer, values: np.ndarray, rect: tuple[int, int, int, int]) -> tuple[int, bool]:
    """Put ``values`` into ``layer.data[r0:r1, c0:c1]`` as one undoable step; returns (changed
    pixels, undoable).  The history entry is the rectangle with its old and new values."""
    r0, r1, c0, c1 = rect
    old = np.array(layer.data[r0:r1, c0:c1], copy=True)
    new = np.asarray(values, dtype=layer.data.dtype)
    n = int(np.count_nonzero(old != new))
    if n == 0:
        return 0, True
    undoable = old.size <= UNDO_MAX_PX and hasattr(layer, "_save_history")
    if undoable:
        layer._save_history(((slice(r0, r1), slice(c0, c1)), old, new))
    layer.data[r0:r1, c0:c1] = new
    layer.refresh()
    if not undoable:  # no paint event without a history entry: tell the autosave
        from ._autosave import autosave

        saver = autosave(layer)
        if saver is not None:
            saver.mark_edited()
    return n, undoable


class MaskToolsWidget(QWidget):
    def __init__(self, napari_viewer, parent=None, *, compact: bool = False, picker: CanvasPicker | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.compact = compact
        self._worker = None
        self._jobs = 0
        self._watched_mask = None
        self.class_map_dialog = None
        layout = QVBoxLayout(self)
        if compact:
            layout.setContentsMargins(0, 0, 0, 0)
        self.picker = picker or CanvasPicker(self.viewer)
        if not compact:
            layout.addWidget(self.picker)
        hint = QLabel("Paint, fill or draw polygons on the mask layer with napari's layer controls "
                      "(Ctrl+Z undoes). Pick the class here:")
        hint.setWordWrap(True)
        if not compact:
            layout.addWidget(hint)
        self.legend = Legend()
        layout.addWidget(self.legend)
        self.resolution_label = QLabel()
        self.resolution_label.setWordWrap(True)
        layout.addWidget(self.resolution_label)
        self.lock_label = QLabel("The mask is locked while a run samples under it: Cancel the run to paint.")
        self.lock_label.setWordWrap(True)
        self.lock_label.setStyleSheet("color: #ffb74d;")
        self.lock_label.setVisible(False)
        layout.addWidget(self.lock_label)

        self.mode_box = QComboBox()
        self.mode_box.addItems(MASK_MODES)
        self.mode_box.setToolTip("how the mask is drawn over the image: filled in colours far from H&E's, only "
                                 "its outlines, or in the model card's own (H&E-like) colours")
        self.mode_box.currentTextChanged.connect(self.set_mode)

        self.target_box = QComboBox()
        self.target_box.addItems(["whole canvas", "drawn rectangle"])
        draw = QPushButton("Draw rectangle")
        draw.setToolTip("draw a rectangle in the 'area' Shapes layer (also used by Synthesis)")
        draw.clicked.connect(self.draw_rectangle)
        target_row = QHBoxLayout()
        target_row.addWidget(self.target_box)
        target_row.addWidget(draw)
        self.seed_box = QSpinBox()
        self.seed_box.setRange(0, 2**31 - 1)
        self.seed_box.setToolTip("seed of the generated layout")
        self.layout_box = QComboBox()
        self.layout_box.addItems(LAYOUTS)
        self.layout_box.setToolTip("anatomy: the model card's recipe (a section in glass, nests in stroma), measured on "
                                   "its training masks; learned: drawn by the model's layout (mask) diffusion model, "
                                   "where it has one; procedural: smoothed random fields of the tissue classes")
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip(
            "fill the target with a layout of the tissue classes: anatomy (the card's recipe), learned (the model's mask "
            "model) or procedural")
        self.generate_button.clicked.connect(self.generate)
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip("PNG, TIFF or NPY label image (or RGB in the class colours), fitted to the target; "
                                    "masks of other models (the DiffInfinite release's grey PNGs and 5/10-class label "
                                    "maps) are mapped to the model's classes first")
        self.load_button.clicked.connect(lambda: self.load())
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("set the target to 0 (unknown)")
        self.clear_button.clicked.connect(self.clear)
        self.save_button = QPushButton("Save mask to canvas")
        self.save_button.setToolTip("write the mask layer into the canvas store now (every edit is saved on its own "
                                    "a second later, and when napari closes)")
        self.save_button.clicked.connect(self.save)
        buttons = QHBoxLayout()
        buttons.addWidget(self.generate_button)
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.clear_button)

        self._arrange(layout, target_row, buttons, compact)
        self.status = status_label()
        layout.addWidget(self.status)
        if not compact:
            layout.addStretch(1)
        self._actions = [self.generate_button, self.load_button, self.clear_button, self.save_button]
        self.picker.changed.connect(self._on_canvas_changed)
        self._on_canvas_changed(self.picker.image_layer())

        from ._common import guard_wheel

        guard_wheel(self)  # the wheel changes a value only in the widget with keyboard focus

    def _arrange(self, layout, target_row, buttons, compact: bool) -> None:
        """The controls in sections (the compact dock) or a group box (the full widget)."""
        if compact:
            form = QFormLayout()
            form.setContentsMargins(0, 0, 0, 0)
            form.addRow("show as", self.mode_box)
            form.addRow("apply to", target_row)
            layout.addLayout(form)
            layout.addLayout(buttons)
            self.more_section = Section("More: layout kind and seed, save", expanded=False)
            more = QWidget()
            mform = QFormLayout(more)
            mform.setContentsMargins(0, 0, 0, 0)
            mform.addRow("layout", self.layout_box)
            mform.addRow("layout seed", self.seed_box)
            mform.addRow(self.save_button)
            self.more_section.add(more)
            layout.addWidget(self.more_section)
        else:
            box = QGroupBox("Whole-mask actions")
            form = QFormLayout(box)
            form.addRow("show as", self.mode_box)
            form.addRow("apply to", target_row)
            form.addRow("layout", self.layout_box)
            form.addRow("layout seed", self.seed_box)
            form.addRow(buttons)
            form.addRow(self.save_button)
            layout.addWidget(box)

    # ------------------------------------------------------------------ helpers
    def _on_canvas_changed(self, _layer=None):
        image, mask = self.picker.current()
        info = layer_info(image) if image is not None else None
        self.legend.set_canvas(self.viewer, info, mask)
        if self._watched_mask is not None:
            try:
                self._watched_mask.events.editable.disconnect(self._on_editable)
                self._watched_mask.events.contour.disconnect(self._sync_mode)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._watched_mask = mask
        if mask is not None:
            from ._canvas_widget import resolution_text

            mask.events.editable.connect(self._on_editable)
            mask.events.contour.connect(self._sync_mode)  # a run switches to contours
            self.resolution_label.setText(resolution_text(layer_info(mask)))
            mode = layer_info(mask).get("mode", MASK_MODES[0])
            self.mode_box.blockSignals(True)
            self.mode_box.setCurrentText(mode)
            self.mode_box.blockSignals(False)
        else:
            self.resolution_label.setText("")
        self._on_editable()

    def _sync_mode(self, event=None) -> None:
        mask = self._watched_mask
        if mask is None:
            return
        mode = (layer_info(mask) or {}).get("mode", MASK_MODES[0])
        if self.mode_box.currentText() != mode:
            self.mode_box.blockSignals(True)
            self.mode_box.setCurrentText(mode)
            self.mode_box.blockSignals(False)
            image, _ = self.picker.current()
            self.legend.set_canvas(self.viewer, layer_info(image), mask)

    def _on_editable(self, event=None):
        mask = self._watched_mask
        locked = mask is not None and mask in self.viewer.layers and not mask.editable
        self.lock_label.setVisible(locked)

    def set_mode(self, mode: str) -> None:
        """Show the chosen canvas's mask filled in distinct colours, as contours, or in the card's colours."""
        image, mask = self.picker.current()
        if mask is None:
            return
        set_mask_mode(mask, mode)
        self.legend.set_canvas(self.viewer, layer_info(image), mask)

    def _fail(self, text: str):
        self.status.setText(text)
        notify(text)

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
        return self._jobs > 0

    def _run(self, func, *args, on_result):
        from napari.qt.threading import create_worker

        self._jobs += 1
        for b in self._actions:
            b.setEnabled(False)
        self._worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        self._worker.returned.connect(on_result)  # may start the next job (a load: read, then fit)
        self._worker.errored.connect(lambda e: self._fail(f"failed: {e}"))
        self._worker.finished.connect(self._job_done)
        self._worker.start()
        return self._worker

    def _job_done(self) -> None:
        self._jobs -= 1
        if self._jobs == 0:
            for b in self._actions:
                b.setEnabled(True)

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
        """Fill the target with a layout in a worker (progress and time left in the dock's footer);
        while it runs the button reads Cancel."""
        job = getattr(self, "_generate_job", None)
        if job is not None and job.busy:
            job.cancel()
            return job
        target = self._target()
        if target is None:
            return None
        mask, info, rect = target
        labels = list(range(1, len(info["classes"])))
        shape = (rect[1] - rect[0], rect[3] - rect[2])
        per_px = int(info["factor"]) * int(info.get("mask_step", 1))
        image_px = (shape[0] * per_px, shape[1] * per_px)
        kind = self.layout_box.currentText()
        spec = (info.get("settings") or {}).get("model")
        self.status.setText("generating a layout…")
        from ._jobs import start_job

        self._jobs += 1
        for b in self._actions:
            if b is not self.generate_button:
                b.setEnabled(False)
        job = start_job(self.viewer, "generating a learned layout" if kind == "learned" else "generating a layout",
                        layout_job, spec, shape, image_px, labels, self.seed_box.value(), kind,
                        button=self.generate_button, unit="levels",
                        on_result=lambda v: self._apply(mask, rect, v[0], f"generated ({v[1]})"),
                        on_error=lambda e: self._fail(f"failed: {e}"), on_end=self._generate_ended)
        self._generate_job = job
        return job

    def _generate_ended(self, job) -> None:
        if job.state == "cancelled":
            self.status.setText("generating cancelled: the mask is unchanged")
        self._job_done()

    def load(self, path: str | None = None):
        """Read a mask file; one in the model's classes is applied at once, one made for another
        model goes through the class-mapping dialog first."""
        target = self._target()
        if target is None:
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load mask", "", "Masks (*.png *.tif *.tiff *.npy)")
            if not path:
                return None
        self.status.setText(f"reading {path}…")
        return self._run(read_mask_job, str(path), target[1]["colours"], target[1]["classes"],
                         on_result=lambda found, p=str(path): self._on_read(p, found, target))

    def _on_read(self, path: str, found, target):
        raw, foreign = found
        mask, info, rect = target
        if foreign.kind == "model":
            return self._fit(path, foreign.labels, None, target)
        from ._class_map import ClassMapDialog

        model = str(info.get("settings", {}).get("model", "?"))
        dialog = ClassMapDialog(foreign, raw, info["classes"], info["colours"], model, path, parent=self)
        self.class_map_dialog = dialog
        self.status.setText(f"{path}: {foreign.describe()}; choose the model's classes for it")
        dialog.accepted.connect(lambda: self._fit(path, dialog.mask.labels, dialog.mapping(), target))
        dialog.rejected.connect(lambda: self.status.setText(f"{path}: not loaded"))
        dialog.finished.connect(lambda _: setattr(self, "class_map_dialog", None))
        dialog.open()
        return dialog

    def _fit(self, path, labels, mapping, target):
        mask, info, rect = target
        shape = (rect[1] - rect[0], rect[3] - rect[2])
        return self._run(fit_mask_job, labels, mapping, info["classes"], shape, path,
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
