"""QuPath annotations on a canvas's mask: "Load annotations…" (GeoJSON, with a class-mapping
dialog, undoable) and "Export annotations…" (the mask as GeoJSON, for review in QuPath).

The pieces, for any dock that shows a Mask section:

* :class:`AnnotationLoader` (a QObject): ``start(mask_layer, path)`` reads the file in a worker,
  opens a :class:`ClassMapDialog` (non-blocking) that maps each class name found to one of the
  canvas's classes or to "skip", rasterises in a worker, and applies the result on the GUI
  thread through ``Labels.data_setitem`` (``_mask_tools.apply_to_mask``), so Ctrl+Z takes it
  back.  ``finished(str)`` / ``failed(str)`` report.  Polygons are painted over the mask where
  they lie (later features win where they overlap; holes and unannotated pixels keep what the
  mask held).
* :func:`export_mask_job`: the mask layer to a GeoJSON file (coordinates in canvas px).
* :class:`AnnotationsWidget`: a small dock (Plugins > DiffInfinite > Annotations) with both.

Coordinates are taken as canvas pixels (a canvas imported from a slide at level 0 has the
slide's pixels); the dialog takes a downsample and an offset for anything else.  Qt through
qtpy only; the work runs in ``napari.qt.threading`` workers that never read widgets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._common import CanvasPicker, layer_info, status_label, swatch

SKIP = "(skip)"
GEOJSON_FILTER = "GeoJSON (*.geojson *.json)"


# ----------------------------------------------------------------------------- worker jobs
def read_job(path: str):
    """The annotations of a GeoJSON file (refuses empty and malformed files with one line)."""
    from src_models.io.annotations import read_geojson

    return read_geojson(path)


def rasterise_job(ann, mapping: dict, shape: tuple[int, int], pixel_size: float, offset=(0.0, 0.0),
                  downsample: float = 1.0, current: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The mask with the mapped features painted over ``current`` (later features win), and the
    number of mask pixels the features cover.  ``mapping``: class name -> label, or None to skip."""
    from src_models.io.annotations import rasterise, transformed

    ann = transformed(ann, offset, downsample)
    folded = {k.casefold(): v for k, v in mapping.items()}
    labels = [folded.get(f.name.casefold()) for f in ann.features]
    order = [i for i, v in enumerate(labels) if v is not None]
    labels = [0 if v is None else int(v) for v in labels]
    out, covered = rasterise(ann, labels, shape, (0.0, 0.0), pixel_size, order=order)
    if current is not None:
        out = np.where(covered, out, current).astype(current.dtype)
    return out, int(covered.sum())


def export_mask_job(path: str, mask: np.ndarray, classes: list[str], colours: list[str], pixel_size: float,
                    source: str = "") -> dict:
    """Write a mask (layer grid, ``pixel_size`` canvas px per pixel) as QuPath GeoJSON."""
    from src_models.io.annotations import mask_to_geojson, write_geojson
    from src_models.store.provenance import provenance

    fc = mask_to_geojson(mask, classes, colours, pixel_size=pixel_size)
    fc["diffinfinite"] = {"canvas": source, "mask_pixel_size": pixel_size,
                          "provenance": provenance(settings={"canvas": source, "mask_pixel_size": pixel_size})}
    write_geojson(path, fc)
    return {"path": path, "features": len(fc["features"]),
            "polygons": sum(len(f["geometry"]["coordinates"]) for f in fc["features"])}


# ----------------------------------------------------------------------------- dialog
def guess_label(name: str, classes: list[str]) -> int | None:
    """The class whose name matches ``name`` without regard to case (None: no match)."""
    folded = [c.casefold() for c in classes]
    return folded.index(name.casefold()) if name.casefold() in folded else None


class ClassMapDialog(QDialog):
    """Map each class name of an annotation file to a canvas class (or skip it), and say how its
    coordinates relate to the canvas's pixels."""

    def __init__(self, names: dict[str, int], classes: list[str], colours: list[str], source: str = "", parent=None):
        super().__init__(parent)
        self.setWindowTitle("Load annotations: classes")
        layout = QVBoxLayout(self)
        intro = QLabel(f"{Path(source).name}: {sum(names.values())} annotations. Map each class to a canvas class; "
                       "'(skip)' leaves its annotations out. Names matching a canvas class are mapped already.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.boxes: dict[str, QComboBox] = {}
        for name, count in names.items():
            box = QComboBox()
            box.addItem(SKIP, None)
            for i, (cls, colour) in enumerate(zip(classes, colours)):
                box.addItem(swatch(colour, transparent=(i == 0)), f"{i} {cls}", i)
            guess = guess_label(name, classes)
            box.setCurrentIndex(0 if guess is None else guess + 1)
            self.boxes[name] = box
            form.addRow(f"{name} ({count})", box)
        layout.addLayout(form)
        geo = QGroupBox("Coordinates (canvas px = coordinate × downsample + offset)")
        gform = QFormLayout(geo)
        self.downsample_box = QDoubleSpinBox()
        self.downsample_box.setRange(1e-3, 1e4)
        self.downsample_box.setDecimals(4)
        self.downsample_box.setValue(1.0)
        gform.addRow("downsample", self.downsample_box)
        row = QHBoxLayout()
        self.offset_x, self.offset_y = QDoubleSpinBox(), QDoubleSpinBox()
        for b in (self.offset_x, self.offset_y):
            b.setRange(-1e7, 1e7)
            b.setDecimals(1)
            row.addWidget(b)
        gform.addRow("offset x, y", row)
        layout.addWidget(geo)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def mapping(self) -> dict[str, int | None]:
        return {name: box.currentData() for name, box in self.boxes.items()}

    def set_label(self, name: str, label: int | None) -> None:
        box = self.boxes[name]
        box.setCurrentIndex(0 if label is None else int(label) + 1)

    def transform(self) -> tuple[tuple[float, float], float]:
        return (self.offset_x.value(), self.offset_y.value()), self.downsample_box.value()


# ----------------------------------------------------------------------------- loader
class AnnotationLoader(QObject):
    """Read -> map classes (dialog) -> rasterise -> apply with undo.  One load at a time."""

    finished = Signal(str)
    failed = Signal(str)

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.dialog: ClassMapDialog | None = None
        self._worker = None
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def _fail(self, text: str) -> None:
        self._busy = False
        self.dialog = None
        self.failed.emit(text)

    def _run(self, func, *args, on_result, what: str):
        """``func(*args)`` in a worker, shown in the dock's footer (what runs; Run waits meanwhile)."""
        from ._jobs import start_job

        def job(*a, progress=None, cancel=None):
            return func(*a)

        self._job = start_job(self.viewer, what, job, *args, on_result=on_result,
                              on_error=lambda e: self._fail(f"failed: {e}"))
        self._worker = self._job.worker
        return self._worker

    def start(self, mask_layer, path: str, mapping: dict | None = None, offset=(0.0, 0.0), downsample: float = 1.0):
        """Load ``path`` onto ``mask_layer``.  Without ``mapping`` the class-mapping dialog opens
        (``self.dialog``) once the file is read; with it, the dialog is skipped."""
        if self._busy:
            self.failed.emit("an annotation load is already in progress")
            return None
        info = layer_info(mask_layer)
        if info is None or info.get("role") != "mask":
            self.failed.emit("choose a canvas's mask layer first")
            return None
        if not mask_layer.editable:
            self.failed.emit("the mask is locked while a synthesis run uses it; wait or cancel the run")
            return None
        self._busy = True
        return self._run(read_job, str(path), what=f"reading {Path(path).name}",
                         on_result=lambda ann: self._on_read(mask_layer, info, ann, mapping, offset, downsample))

    def _on_read(self, mask_layer, info, ann, mapping, offset, downsample) -> None:
        if mapping is not None:
            self._rasterise(mask_layer, info, ann, mapping, offset, downsample)
            return
        parent = self.parent() if isinstance(self.parent(), QWidget) else None
        self.dialog = ClassMapDialog(ann.names(), info["classes"], info["colours"], ann.source, parent)
        dialog = self.dialog

        def accepted():
            off, ds = dialog.transform()
            self._rasterise(mask_layer, info, ann, dialog.mapping(), off, ds)

        dialog.accepted.connect(accepted)
        dialog.rejected.connect(lambda: self._fail("loading annotations cancelled"))
        dialog.open()

    def _rasterise(self, mask_layer, info, ann, mapping, offset, downsample) -> None:
        self.dialog = None
        if mask_layer not in self.viewer.layers:
            self._fail("the mask layer was removed")
            return
        unknown = [n for n in ann.names() if n not in mapping and n.casefold() not in {k.casefold() for k in mapping}]
        if unknown:
            self._fail(f"class name(s) not mapped: {', '.join(unknown)}")
            return
        bad = [v for v in mapping.values() if v is not None and not 0 <= int(v) < len(info["classes"])]
        if bad:
            self._fail(f"label {bad[0]} is not a class of this canvas (0..{len(info['classes']) - 1})")
            return
        if all(v is None for v in mapping.values()):
            self._fail("every class is skipped: nothing to load")
            return
        pixel_size = float(info["factor"] * info["mask_step"])
        current = np.array(mask_layer.data, copy=True)
        used = {k: v for k, v in mapping.items() if v is not None}
        self._run(rasterise_job, ann, mapping, current.shape, pixel_size, tuple(offset), float(downsample), current,
                  what=f"painting the annotations of {Path(ann.source).name}",
                  on_result=lambda res: self._apply(mask_layer, res, ann, used))

    def _apply(self, mask_layer, result, ann, used) -> None:
        from ._mask_tools import apply_to_mask

        self._busy = False
        values, n_cov = result
        if mask_layer not in self.viewer.layers:
            self.failed.emit("the mask layer was removed")
            return
        if n_cov == 0:
            self.failed.emit(f"the annotations of {Path(ann.source).name} do not cover the canvas "
                             "(check the downsample and offset)")
            return
        h, w = values.shape
        n, undoable = apply_to_mask(mask_layer, values, (0, h, 0, w))
        classes = ", ".join(f"{k}→{v}" for k, v in used.items())
        note = "" if undoable else " (too large for napari's undo history)"
        self.finished.emit(f"loaded {Path(ann.source).name} ({classes}): {n:,} mask pixels changed{note}")


# ----------------------------------------------------------------------------- dock
class AnnotationsWidget(QWidget):
    """Load QuPath annotations onto the chosen canvas's mask, or export its mask as GeoJSON."""

    def __init__(self, napari_viewer, parent=None, *, compact: bool = False, picker: CanvasPicker | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.compact = compact
        layout = QVBoxLayout(self)
        if compact:  # a section of the main dock, sharing its canvas picker
            layout.setContentsMargins(0, 0, 0, 0)
        self.picker = picker or CanvasPicker(self.viewer)
        if not compact:
            layout.addWidget(self.picker)
        hint = QLabel("QuPath GeoJSON (Polygon/MultiPolygon, holes). Polygons paint over the mask; later "
                      "features win where they overlap; Ctrl+Z on the mask layer takes a load back.")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        self.load_button = QPushButton("Load annotations…")
        self.load_button.clicked.connect(lambda: self.load())
        self.export_button = QPushButton("Export annotations…")
        self.export_button.setToolTip("write the mask layer as QuPath GeoJSON (one annotation per class)")
        self.export_button.clicked.connect(lambda: self.export())
        row = QHBoxLayout()
        row.addWidget(self.load_button)
        row.addWidget(self.export_button)
        layout.addLayout(row)
        self.status = status_label()
        layout.addWidget(self.status)
        if not compact:
            layout.addStretch(1)
        self.loader = AnnotationLoader(self.viewer, self)
        self.loader.finished.connect(self._done)
        self.loader.failed.connect(self._failed)
        self._export_worker = None

        from ._common import guard_wheel

        guard_wheel(self)  # the wheel changes a value only in the widget with keyboard focus

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self.compact:
            from ._common import tab_beside_main_dock

            tab_beside_main_dock(self)

    @property
    def dialog(self) -> ClassMapDialog | None:
        return self.loader.dialog

    @property
    def busy(self) -> bool:
        return self.loader.busy or self._export_worker is not None

    def _set_enabled(self, on: bool) -> None:
        self.load_button.setEnabled(on)
        self.export_button.setEnabled(on)

    def _done(self, text: str) -> None:
        self._set_enabled(True)
        self.status.setText(text)

    def _failed(self, text: str) -> None:
        from napari.utils.notifications import show_error

        self._set_enabled(True)
        self.status.setText(text)
        if "cancelled" not in text:
            show_error(text)

    def _mask(self):
        _, mask = self.picker.current()
        if mask is None:
            self._failed("no canvas with a mask layer: create or open one first")
        return mask

    def load(self, path: str | None = None, mapping: dict | None = None, offset=(0.0, 0.0), downsample: float = 1.0):
        mask = self._mask()
        if mask is None:
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load annotations", "", GEOJSON_FILTER)
            if not path:
                return None
        self.status.setText(f"reading {path}…")
        worker = self.loader.start(mask, str(path), mapping, offset, downsample)
        if worker is not None:
            self._set_enabled(False)
        return worker

    def export(self, path: str | None = None):
        from napari.qt.threading import create_worker

        mask = self._mask()
        if mask is None:
            return None
        info = layer_info(mask)
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export annotations", "", GEOJSON_FILTER)
            if not path:
                return None
        self._set_enabled(False)
        self.status.setText(f"writing {path}…")
        worker = create_worker(export_mask_job, str(path), np.array(mask.data, copy=True), info["classes"],
                               info["colours"], float(info["factor"] * info["mask_step"]), info["path"],
                               _start_thread=False, _ignore_errors=True)

        def done(result):
            self._export_worker = None
            self._done(f"wrote {result['path']}: {result['features']} classes, {result['polygons']} polygons")

        def failed(e):
            self._export_worker = None
            self._failed(f"failed: {e}")

        worker.returned.connect(done)
        worker.errored.connect(failed)
        self._export_worker = worker
        worker.start()
        return worker
