"""Canvas dock widget: create a canvas (any size on the model's grid, up to 1,000,000 px a side;
nothing is allocated until regions are sampled) or open one, show it, and show its class legend.
Rarely used: import a slide as a canvas, extend a canvas beyond its border (under "More").

A canvas is shown as a multiscale dask image over its store pyramid plus a Labels layer on the
mask grid (see ``_reader``), placed right of the canvases already shown, with a region overlay.
Creating runs in a worker thread (the model card may need torch).  The same widget is the
"Canvas" section of the one DiffInfinite dock (``compact=True``: no picker or legend of its own,
creation and opening folded away once a canvas is shown).
"""
from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    CanvasPicker,
    Legend,
    ModelPicker,
    Section,
    grid_of,
    layer_info,
    notify,
    show_canvas,
    status_label,
)
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


def resolution_text(info: dict) -> str:
    """What one pixel of the mask layer is, in image pixels, and what the brush size means."""
    s = info["factor"] * info["mask_step"]
    if s == 1:
        return "1 mask px = 1 image px; brush size in px"
    note = f" (every {info['mask_step']}th latent px: the latent grid is too large to paint)" if info["mask_step"] > 1 else ""
    return f"1 mask px = {s} image px; brush size in mask px{note}"


class CanvasWidget(QWidget):
    def __init__(self, napari_viewer, parent=None, *, compact: bool = False, picker: CanvasPicker | None = None,
                 device=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.compact = compact
        self._device = device or (lambda: "auto")  # where regions are sized for (the dock's device choice)
        self._worker = None
        self._card_worker = None
        self.grid = None  # px; the model's latent factor x 8, once its card is read
        layout = QVBoxLayout(self)
        if compact:
            layout.setContentsMargins(0, 0, 0, 0)
        from ._reader import prefer_this_reader

        prefer_this_reader()

        self.picker = picker or CanvasPicker(self.viewer)
        current = self._build_current(layout, compact)
        new, form = self._build_new(compact)
        self._build_open(form, compact)
        more = self._build_more(compact)
        self._arrange(layout, new, more, current, compact)

        self._info_timer = QTimer(self)
        self._info_timer.setSingleShot(True)
        self._info_timer.setInterval(1500)  # a glob of the done markers: not too often
        self._info_timer.timeout.connect(self.update_info)
        self._watched = None
        self.picker.changed.connect(self._on_canvas_changed)
        self._on_canvas_changed(self.picker.image_layer())
        self._load_grid()

    # ------------------------------------------------------------------ building the widget

        from ._common import guard_wheel

        guard_wheel(self)  # the wheel changes a value only in the widget with keyboard focus
    def _build_current(self, layout, compact: bool):
        """The canvas in use: picker, its description and the class legend (a group unless compact)."""
        self.info_label = QLabel()
        self.info_label.setWordWrap(True)
        self.legend = Legend()
        if not compact:
            current = QGroupBox("Canvas")
            clay = QVBoxLayout(current)
            clay.addWidget(self.picker)
            clay.addWidget(self.info_label)
            clay.addWidget(QLabel("Classes (click one to paint it):"))
            clay.addWidget(self.legend)
        else:
            layout.addWidget(self.info_label)
            return None
        return current

    def _build_new(self, compact: bool):
        """The new-canvas form: size, model, store, regions; returns (its widget, its form)."""
        new = QWidget() if compact else QGroupBox("New canvas")
        form = QFormLayout(new)
        if compact:
            form.setContentsMargins(0, 0, 0, 0)
        self.width_box = QSpinBox()
        self.height_box = QSpinBox()
        for box in (self.width_box, self.height_box):
            box.setRange(8, MAX_SIDE)
            box.setValue(2048 if not compact else 1024)
            box.setSuffix(" px")
            box.setGroupSeparatorShown(True)
            box.setKeyboardTracking(False)
            box.editingFinished.connect(lambda b=box: self._snap(b))
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_box)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_box)
        self.model_picker = ModelPicker()
        self.model_picker.currentIndexChanged.connect(lambda _: self._load_grid())
        self.region_box = QSpinBox()
        self.region_box.setRange(0, 65536)
        self.region_box.setSingleStep(64)
        self.region_box.setSpecialValueText("auto for the device")
        self.region_box.setSuffix(" px")
        self.region_box.setToolTip("side of the regions the canvas is sampled and stored in; auto: 256 px on the "
                                   "CPU (the first region shows within seconds), from the free memory on a GPU")
        self.path_edit = QLineEdit(str(_unique_default_path()))
        self.path_edit.setToolTip("where the canvas is stored (an OME-Zarr folder)")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_new)
        row = QHBoxLayout()
        row.addWidget(self.path_edit)
        row.addWidget(browse)
        self.overwrite_box = QCheckBox("replace an existing store")
        self.create_button = QPushButton("Create")
        self.create_button.setToolTip("make the canvas (nothing is allocated until regions are sampled)")
        self.create_button.clicked.connect(self.create)
        form.addRow("size", size_row)
        form.addRow("model", self.model_picker)
        form.addRow("store", row)
        return new, form

    def _build_open(self, form, compact: bool) -> None:
        """The open row (compact: buttons under the new-canvas form)."""
        self.open_edit = QLineEdit()
        self.open_edit.setPlaceholderText("canvas .zarr folder")
        self.open_button = QPushButton("Open…" if compact else "Open")
        if compact:
            self.open_button.setToolTip("open a canvas (.zarr folder); File > Open works too")
            self.open_button.clicked.connect(self._browse_open)
            buttons = QHBoxLayout()
            buttons.addWidget(self.create_button)
            buttons.addWidget(self.open_button)
            form.addRow(buttons)
        else:
            form.addRow("regions", self.region_box)
            form.addRow("", self.overwrite_box)
            form.addRow(self.create_button)
            self.open_button.clicked.connect(lambda: self.open(self.open_edit.text()))

    def _build_more(self, compact: bool):
        """Import a slide as a new canvas, or extend (outpaint) the chosen one."""
        more = QWidget() if compact else QGroupBox("From a slide, or extend a canvas")
        mform = QFormLayout(more)
        if compact:
            mform.setContentsMargins(0, 0, 0, 0)
            mform.addRow("regions", self.region_box)
            mform.addRow("", self.overwrite_box)
        self.slide_edit = QLineEdit()
        self.slide_edit.setPlaceholderText("slide: .svs, .tif, OME-Zarr folder")
        self.import_button = QPushButton("Import slide as a new canvas")
        self.import_button.setToolTip("copy the slide into the store above (model and regions as set above); every "
                                      "region counts as finished, so drawn rectangles can be regenerated in it")
        self.import_button.clicked.connect(self.import_slide)
        self.pad_boxes = []
        prow = QGridLayout()  # two by two: four boxes in a row made the dock wider than a laptop allows
        for i, side in enumerate(("top", "right", "bottom", "left")):
            box = QSpinBox()
            box.setRange(0, MAX_SIDE)
            box.setSingleStep(256)
            box.setPrefix(f"{side[0]} ")
            box.setToolTip(f"px to add at the {side}")
            self.pad_boxes.append(box)
            prow.addWidget(box, i // 2, i % 2)
        self.pad_label_box = QSpinBox()
        self.pad_label_box.setRange(0, 255)
        self.pad_label_box.setToolTip("mask label of the new border (0: unknown)")
        self.outpaint_button = QPushButton("Extend the chosen canvas into the store above")
        self.outpaint_button.setToolTip("the new border is left to sample: press Run")
        self.outpaint_button.clicked.connect(self.outpaint)
        mform.addRow("slide", self.slide_edit)
        mform.addRow(self.import_button)
        mform.addRow("pad (t, r, b, l)", prow)
        mform.addRow("border label", self.pad_label_box)
        mform.addRow(self.outpaint_button)
        return more

    def _arrange(self, layout, new, more, current, compact: bool) -> None:
        """Sections in the compact dock, group boxes in the full widget."""
        self.status = status_label()
        if compact:
            self.new_section = Section("New or open", expanded=True)
            self.new_section.add(new)
            self.more_section = Section("More: regions, slides, extend", expanded=False)
            self.more_section.add(more)
            layout.addWidget(self.new_section)
            layout.addWidget(self.more_section)
            layout.addWidget(self.status)
        else:
            layout.addWidget(new)
            opened = QGroupBox("Open canvas")
            orow = QHBoxLayout(opened)
            obrowse = QPushButton("…")
            obrowse.setMaximumWidth(30)
            obrowse.clicked.connect(self._browse_open)
            orow.addWidget(self.open_edit)
            orow.addWidget(obrowse)
            orow.addWidget(self.open_button)
            layout.addWidget(opened)
            layout.addWidget(more)
            layout.addWidget(current)
            layout.addWidget(self.status)
            layout.addStretch(1)

    # ------------------------------------------------------------------ model grid
    def _load_grid(self):
        """Read the chosen model's card (in a worker: tiny-test needs torch) and step the size boxes by its grid."""
        from napari.qt.threading import create_worker

        from ._worker import model_card

        spec = self.model_picker.spec()
        worker = create_worker(model_card, spec, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda card, s=spec: self._set_grid(card) if s == self.model_picker.spec() else None)
        self._card_worker = worker
        worker.start()

    def _set_grid(self, card) -> None:
        self.grid = grid_of(card)
        for box in (self.width_box, self.height_box):
            box.setSingleStep(self.grid)
            box.setMinimum(self.grid)
            box.setToolTip(f"canvas side in px: a multiple of {self.grid} px, the grid of model {card.name!r} "
                           f"(latent factor {card.factor} x 8)")

    def _snap(self, box) -> None:
        """A typed size off the model's grid goes to the nearest multiple (and says so)."""
        v = box.value()
        if self.grid and v % self.grid:
            lo = max(self.grid, v // self.grid * self.grid)
            near = lo if v - lo <= self.grid / 2 else lo + self.grid
            box.setValue(near)
            notify(f"{v} px is off the model's grid of {self.grid} px; using {near} px", "info")

    # ------------------------------------------------------------------ actions
    def create(self):
        """Make the canvas in a worker thread, then show it."""
        from napari.qt.threading import create_worker

        path = self.path_edit.text().strip()
        if not path:
            self._fail("choose where to store the canvas")
            return None
        w, h = self.width_box.value(), self.height_box.value()
        for name, v in (("width", w), ("height", h)):
            if self.grid and v % self.grid:  # (before the card is read, the worker's check says it)
                lo = v // self.grid * self.grid
                self._fail(f"not created: canvas {name} {v} px does not fit the model's grid of {self.grid} px; "
                           f"use {lo or self.grid} or {lo + self.grid}")
                return None
        self.create_button.setEnabled(False)
        self.status.setText("creating…")
        from ._worker import create_canvas_job

        region = self.region_box.value() or None
        self._worker = create_worker(create_canvas_job, self.model_picker.spec(), path, h, w, region,
                                     self.overwrite_box.isChecked(), self._device(),
                                     _start_thread=False, _ignore_errors=True)
        self._worker.returned.connect(self._on_created)
        self._worker.errored.connect(lambda e: self._fail(f"not created: {e}"))
        self._worker.finished.connect(lambda: self.create_button.setEnabled(True))
        self._worker.start()
        return self._worker

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
        """Copy a slide into a new canvas in a worker: progress and time left in the dock's footer,
        the button cancels meanwhile."""
        from ._jobs import start_job
        from ._worker import import_slide_job

        job = getattr(self, "_import_job", None)
        if job is not None and job.busy:
            job.cancel()
            return job
        slide = self.slide_edit.text().strip()
        if not slide:
            self._fail("give the slide to import")
            return None
        path = self.path_edit.text().strip()
        if not path:
            self._fail("choose where to store the canvas")
            return None
        self.status.setText("importing the slide…")

        def failed(e):
            if "cancelled" in str(e):
                self.status.setText(str(e))
            else:
                self._fail(f"not done: {e}")

        self._import_job = start_job(
            self.viewer, "importing the slide", import_slide_job, self.model_picker.spec(), slide, path,
            self.region_box.value() or None, self.overwrite_box.isChecked(), button=self.import_button,
            unit="regions", on_result=self._on_created, on_error=failed,
            on_end=lambda job: self.status.setText(
                f"import cancelled: {path} holds only the regions copied so far (import again with 'replace')")
            if job.state == "cancelled" else None)
        return self._import_job

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
        show_canvas(self.viewer, path, replace=True)
        self.status.setText(f"created {path}")
        self.path_edit.setText(str(_unique_default_path()))
        if self.compact:
            self.new_section.set_expanded(False)

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
        if self.compact:
            self.new_section.set_expanded(False)
        return layers

    def _fail(self, text: str):
        self.status.setText(text)
        notify(text)

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
        if self._watched is not None:  # a refresh of the image (a region finished) updates the count
            try:
                self._watched.events.set_data.disconnect(self._info_soon)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._watched = image_layer
        if image_layer is not None:
            image_layer.events.set_data.connect(self._info_soon)
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
            if self.compact:
                self.new_section.set_expanded(True)
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
        self.info_label.setText(
            f"{info['width']:,}×{info['height']:,} px · model {Path(str(model)).name} · "
            f"{done}/{total} regions of {info['region_size']} px done\n"
            f"mask {grid} px: {resolution_text(info)}"
            + ("" if self.compact else f"\n{info['path']}")
        )
        self.info_label.setToolTip(info["path"])
