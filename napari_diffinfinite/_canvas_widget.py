"""Canvas dock widget: create a canvas (any size the model's grid allows, up to 1,000,000 px a side;
nothing is allocated until regions are sampled) or open one, show it, and show its class legend.

A canvas is shown as a multiscale dask image over its store pyramid plus a Labels layer on the
mask grid (see ``_reader``).  Creating runs in a worker thread (the model card may need torch).
"""
from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import CanvasPicker, Legend, ModelPicker, layer_info, show_canvas, status_label
from ._reader import is_canvas

MAX_SIDE = 1_000_000


def _unique_default_path() -> Path:
    base = Path.home() / "diffinfinite"
    path = base / "canvas.zarr"
    n = 2
    while path.exists():
        path = base / f"canvas-{n}.zarr"
        n += 1
    return path


class CanvasWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._worker = None
        layout = QVBoxLayout(self)

        # ------------------------------------------------------------ new canvas
        new = QGroupBox("New canvas")
        form = QFormLayout(new)
        self.width_box = QSpinBox()
        self.height_box = QSpinBox()
        for box in (self.width_box, self.height_box):
            box.setRange(8, MAX_SIDE)
            box.setSingleStep(256)
            box.setValue(2048)
            box.setSuffix(" px")
            box.setGroupSeparatorShown(True)
        self.model_picker = ModelPicker()
        self.region_box = QSpinBox()
        self.region_box.setRange(0, 65536)
        self.region_box.setSingleStep(64)
        self.region_box.setSpecialValueText("model default")
        self.region_box.setSuffix(" px")
        self.region_box.setToolTip("side of the regions the canvas is sampled and stored in (0: eight model windows)")
        self.path_edit = QLineEdit(str(_unique_default_path()))
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_new)
        row = QHBoxLayout()
        row.addWidget(self.path_edit)
        row.addWidget(browse)
        self.overwrite_box = QCheckBox("replace an existing store")
        self.create_button = QPushButton("Create")
        self.create_button.clicked.connect(self.create)
        form.addRow("width", self.width_box)
        form.addRow("height", self.height_box)
        form.addRow("model", self.model_picker)
        form.addRow("regions", self.region_box)
        form.addRow("store", row)
        form.addRow("", self.overwrite_box)
        form.addRow(self.create_button)
        layout.addWidget(new)

        # ------------------------------------------------------------ open
        opened = QGroupBox("Open canvas")
        orow = QHBoxLayout(opened)
        self.open_edit = QLineEdit()
        self.open_edit.setPlaceholderText("canvas .zarr folder")
        obrowse = QPushButton("…")
        obrowse.setMaximumWidth(30)
        obrowse.clicked.connect(self._browse_open)
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(lambda: self.open(self.open_edit.text()))
        orow.addWidget(self.open_edit)
        orow.addWidget(obrowse)
        orow.addWidget(self.open_button)
        layout.addWidget(opened)

        # ------------------------------------------------------------ from a slide, or grown
        more = QGroupBox("From a slide, or extend a canvas")
        mform = QFormLayout(more)
        self.slide_edit = QLineEdit()
        self.slide_edit.setPlaceholderText("slide: .svs, .tif, OME-Zarr folder")
        self.import_button = QPushButton("Import slide as a new canvas")
        self.import_button.setToolTip("copy the slide into the store above (model and regions as set above); every "
                                      "region counts as finished, so drawn rectangles can be regenerated in it")
        self.import_button.clicked.connect(self.import_slide)
        self.pad_boxes = []
        prow = QHBoxLayout()
        for side in ("top", "right", "bottom", "left"):
            box = QSpinBox()
            box.setRange(0, MAX_SIDE)
            box.setSingleStep(256)
            box.setToolTip(f"px to add at the {side}")
            self.pad_boxes.append(box)
            prow.addWidget(box)
        self.pad_label_box = QSpinBox()
        self.pad_label_box.setRange(0, 255)
        self.pad_label_box.setToolTip("mask label of the new border (0: unknown)")
        self.outpaint_button = QPushButton("Extend the chosen canvas into the store above")
        self.outpaint_button.setToolTip("the new border is left to sample: press Run in Synthesis")
        self.outpaint_button.clicked.connect(self.outpaint)
        mform.addRow("slide", self.slide_edit)
        mform.addRow(self.import_button)
        mform.addRow("pad (t, r, b, l)", prow)
        mform.addRow("border label", self.pad_label_box)
        mform.addRow(self.outpaint_button)
        layout.addWidget(more)

        # ------------------------------------------------------------ current canvas
        current = QGroupBox("Canvas")
        clay = QVBoxLayout(current)
        self.picker = CanvasPicker(self.viewer)
        self.info_label = QLabel()
        self.info_label.setWordWrap(True)
        self.legend = Legend()
        clay.addWidget(self.picker)
        clay.addWidget(self.info_label)
        clay.addWidget(QLabel("Classes (click one to paint it):"))
        clay.addWidget(self.legend)
        layout.addWidget(current)
        self.status = status_label()
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._info_timer = QTimer(self)
        self._info_timer.setSingleShot(True)
        self._info_timer.setInterval(1500)  # a glob of the done markers: not too often
        self._info_timer.timeout.connect(self.update_info)
        self._watched = None
        self.picker.changed.connect(self._on_canvas_changed)
        self._on_canvas_changed(self.picker.image_layer())

    # ------------------------------------------------------------------ actions
    def create(self):
        """Make the canvas in a worker thread, then show it."""
        from napari.qt.threading import create_worker

        path = self.path_edit.text().strip()
        if not path:
            self._fail("choose where to store the canvas")
            return
        self.create_button.setEnabled(False)
        self.status.setText("creating…")
        from ._worker import create_canvas_job

        region = self.region_box.value() or None
        self._worker = create_worker(create_canvas_job, self.model_picker.spec(), path, self.height_box.value(),
                                     self.width_box.value(), region, self.overwrite_box.isChecked(),
                                     _start_thread=False, _ignore_errors=True)
        self._worker.returned.connect(self._on_created)
        self._worker.errored.connect(lambda e: self.status.setText(f"not created: {e}"))
        self._worker.finished.connect(lambda: self.create_button.setEnabled(True))
        self._worker.start()

    def _start_store_job(self, job, source, options: tuple, *, button, doing: str):
        """Run ``job(model, source, store, *options)`` (it writes a new store) in a worker, then
        show the canvas it returns."""
        from napari.qt.threading import create_worker

        path = self.path_edit.text().strip()
        if not path:
            self._fail("choose where to store the canvas")
            return None
        button.setEnabled(False)
        self.status.setText(doing)
        self._worker = create_worker(job, self.model_picker.spec(), source, path, *options,
                                     _start_thread=False, _ignore_errors=True)
        self._worker.returned.connect(self._on_created)
        self._worker.errored.connect(lambda e: self._fail(f"not done: {e}"))
        self._worker.finished.connect(lambda: button.setEnabled(True))
        self._worker.start()
        return self._worker

    def import_slide(self):
        from ._worker import import_slide_job

        slide = self.slide_edit.text().strip()
        if not slide:
            self._fail("give the slide to import")
            return None
        options = (self.region_box.value() or None, self.overwrite_box.isChecked())
        return self._start_store_job(import_slide_job, slide, options, button=self.import_button,
                                     doing="importing the slide…")

    def outpaint(self):
        from ._worker import outpaint_job

        image = self.picker.image_layer()
        info = layer_info(image) if image is not None else None
        if not info:
            self._fail("open or create the canvas to extend first")
            return None
        pads = tuple(b.value() for b in self.pad_boxes)
        label = self.pad_label_box.value()
        options = (pads, label, self.overwrite_box.isChecked())
        return self._start_store_job(outpaint_job, info["path"], options, button=self.outpaint_button,
                                     doing="extending…")

    def _on_created(self, path: str):
        show_canvas(self.viewer, path)
        self.status.setText(f"created {path}")
        self.path_edit.setText(str(_unique_default_path()))

    def open(self, path: str):
        path = str(path).strip()
        if not path or not is_canvas(path):
            self._fail(f"{path or 'nothing'} is not a DiffInfinite canvas "
                       "(a .zarr folder made by this plugin or the CLI)")
            return None
        try:
            layers = show_canvas(self.viewer, path)
        except Exception as e:  # a damaged store
            self._fail(f"cannot open {path}: {e}")
            return None
        self.status.setText(f"opened {path}")
        return layers

    def _fail(self, text: str):
        from napari.utils.notifications import show_error

        self.status.setText(text)
        show_error(text)

    def _browse_new(self):
        path, _ = QFileDialog.getSaveFileName(self, "New canvas", self.path_edit.text(), "Zarr store (*.zarr)")
        if path:
            self.path_edit.setText(path if path.endswith(".zarr") else path + ".zarr")

    def _browse_open(self):
        path = QFileDialog.getExistingDirectory(self, "Open a canvas (.zarr folder)")
        if path:
            self.open_edit.setText(path)
            self.open(path)

    # ------------------------------------------------------------------ display
    def _on_canvas_changed(self, image_layer):
        if self._watched is not None:
            try:
                self._watched.events.data.disconnect(self._info_soon)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._watched = image_layer
        if image_layer is not None:
            image_layer.events.data.connect(self._info_soon)
        image, mask = self.picker.current()
        self.legend.set_canvas(self.viewer, layer_info(image) if image is not None else None, mask)
        self.update_info()

    def _info_soon(self, event=None):
        if not self._info_timer.isActive():
            self._info_timer.start()

    def update_info(self):
        image, mask = self.picker.current()
        if image is None:
            self.info_label.setText("No canvas yet: create one, open one, "
                                    "or File > Open Sample > DiffInfinite demo canvas.")
            return
        info = layer_info(image)
        from ._reader import open_readonly

        try:
            canvas = open_readonly(info["path"])
            _, ny, nx = canvas.region_grid
            done, total = len(canvas.done_indices()), ny * nx
            model = canvas.settings.get("model", "?")
        except Exception:  # the store went away
            done, total, model = 0, 0, "?"
        lh, lw = info["latent_shape"]
        step = info["mask_step"]
        grid = f"{-(-lw // step)}×{-(-lh // step)}"
        mask_text = (f"mask {grid} px, 1 mask px = {info['factor'] * step} image px"
                     + (f" (every {step}th latent px: the latent grid is too large to paint)" if step > 1 else ""))
        self.info_label.setText(
            f"{info['width']:,}×{info['height']:,} px · model {model} · "
            f"{done}/{total} regions of {info['region_size']} px done\n{mask_text}\n{info['path']}"
        )
