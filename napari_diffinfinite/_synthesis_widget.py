"""Synthesis dock widget: pick model, device and sampling settings, pick the region (whole canvas,
current view or a drawn rectangle) and Run; Run turns into Cancel, then "Cancelling…".

Every value is read here, on the GUI thread, into one ``SynthesisRequest`` (plus a copy of the
mask layer) before the worker starts; the worker never reads a widget.  The run itself lives in
``_worker.SynthesisRun``.  Regions nearest the centre of the view are sampled first.
"""
from __future__ import annotations

import threading

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
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
    ModelPicker,
    area_layer,
    drawn_rect,
    layer_info,
    status_label,
    to_image_px,
    view_centre,
    view_rect,
)

REGIONS = ("whole canvas", "current view", "drawn rectangle")
DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps")


def _warm_up():
    """Import the core (and torch) in the background so the first Run does not wait for it."""
    try:
        import src_models.synthesis  # noqa: F401
    except Exception:  # the error shows up, with its message, when a run starts
        pass


class SynthesisWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.run = None
        self._mask_layer = None
        layout = QVBoxLayout(self)
        self.picker = CanvasPicker(self.viewer)
        layout.addWidget(self.picker)

        box = QGroupBox("Model and sampling")
        form = QFormLayout(box)
        self.model_picker = ModelPicker()
        self.device_box = QComboBox()
        self.device_box.setEditable(True)
        self.device_box.addItems(DEVICES)
        self.device_box.setToolTip("auto: CUDA, then MPS, then the CPU; or type cuda:N")
        self.steps_box = QSpinBox()
        self.steps_box.setRange(1, 1000)
        self.steps_box.setValue(50)
        self.omega_box = QDoubleSpinBox()
        self.omega_box.setRange(0.0, 50.0)
        self.omega_box.setSingleStep(0.5)
        self.omega_box.setValue(3.0)
        self.omega_box.setToolTip("classifier-free guidance ω for every class (scale ω + 1)")
        self.seed_box = QSpinBox()
        self.seed_box.setRange(0, 2**31 - 1)
        from src_models.request import PLANS, SOLVERS  # numpy only, no torch

        self.plan_box = QComboBox()  # patch order; "auto": the model's default (release for published models)
        self.plan_box.addItems(["auto", *PLANS])
        self.plan_box.setToolTip("\n".join(["auto: the model's default"] + [f"{k}: {v.description}" for k, v in PLANS.items()]))
        self.solver_box = QComboBox()
        self.solver_box.addItems(list(SOLVERS))
        self.solver_box.setToolTip("\n".join(f"{k}: {v.description}" for k, v in SOLVERS.items()))
        form.addRow("model", self.model_picker)
        form.addRow("device", self.device_box)
        form.addRow("steps", self.steps_box)
        form.addRow("ω", self.omega_box)
        form.addRow("seed", self.seed_box)
        form.addRow("plan", self.plan_box)
        form.addRow("solver", self.solver_box)
        layout.addWidget(box)

        self.class_group = QGroupBox("ω per class")
        self.class_form = QFormLayout(self.class_group)
        self.class_boxes: dict[int, QDoubleSpinBox] = {}
        layout.addWidget(self.class_group)

        rbox = QGroupBox("Region")
        rform = QFormLayout(rbox)
        self.region_box = QComboBox()
        self.region_box.addItems(REGIONS)
        draw = QPushButton("Draw rectangle")
        draw.clicked.connect(self.draw_rectangle)
        row = QHBoxLayout()
        row.addWidget(self.region_box)
        row.addWidget(draw)
        rform.addRow("sample", row)
        self.redo_box = QCheckBox("sample finished parts again")
        self.redo_box.setToolTip("whole canvas: forget every finished region; view or rectangle: regenerate that "
                                 "area with its surroundings as context")
        self.preview_box = QCheckBox("live preview of the region in flight")
        self.preview_box.setChecked(True)
        rform.addRow(self.redo_box)
        rform.addRow(self.preview_box)
        layout.addWidget(rbox)

        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run_or_cancel)
        layout.addWidget(self.run_button)
        self.status = status_label()
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.picker.changed.connect(self._on_canvas_changed)
        self._on_canvas_changed(self.picker.image_layer())
        threading.Thread(target=_warm_up, name="diffinfinite-warm-up", daemon=True).start()

    # ------------------------------------------------------------------ canvas
    def _on_canvas_changed(self, _layer=None):
        if self.run is not None and self.run.busy:
            return
        image, mask = self.picker.current()
        info = layer_info(image) if image is not None else None
        for box in self.class_boxes.values():
            box.deleteLater()
        while self.class_form.rowCount():
            self.class_form.removeRow(0)
        self.class_boxes = {}
        if not info:
            self.class_group.setVisible(False)
            return
        settings = info.get("settings", {})
        if settings.get("model"):
            self.model_picker.set_spec(settings["model"])
        if settings.get("steps"):
            self.steps_box.setValue(int(settings["steps"]))
        if settings.get("omega") is not None:
            self.omega_box.setValue(float(settings["omega"]))
        per_class = {int(k): float(v) for k, v in settings.get("omega_per_class", {}).items()}
        for i, (name, colour) in enumerate(zip(info["classes"], info["colours"])):
            if i == 0:
                continue  # class 0 is the null condition: never guided
            b = QDoubleSpinBox()
            b.setRange(-0.5, 50.0)
            b.setSingleStep(0.5)
            b.setSpecialValueText("= ω")
            b.setValue(per_class.get(i, -0.5))
            b.setToolTip(f"ω for {name}; '= ω' uses the global value")
            label = QLabel(f'<span style="background-color:{colour}">&nbsp;&nbsp;&nbsp;&nbsp;</span> {i} {name}')
            self.class_form.addRow(label, b)
            self.class_boxes[i] = b
        self.class_group.setVisible(True)

    def draw_rectangle(self):
        image, _ = self.picker.current()
        area_layer(self.viewer, image)
        self.region_box.setCurrentText("drawn rectangle")

    # ------------------------------------------------------------------ request
    def build_request(self, image_layer):
        """Every widget value, read now on the GUI thread, as one SynthesisRequest."""
        from src_models.request import SynthesisRequest

        region = self.region_box.currentText()
        area = None
        if region == "current view":
            area = to_image_px(image_layer, view_rect(self.viewer))
            if area is None:
                raise ValueError("the view does not show the canvas; pan to it or pick 'whole canvas'")
        elif region == "drawn rectangle":
            rect = drawn_rect(self.viewer)
            area = to_image_px(image_layer, rect) if rect is not None else None
            if area is None:
                raise ValueError("draw a rectangle over the canvas first (Draw rectangle)")
        cy, cx = view_centre(self.viewer)
        centre = tuple(float(v) for v in np.asarray(image_layer.world_to_data((cy, cx)))[:2])
        device = self.device_box.currentText().strip() or "auto"
        return SynthesisRequest(
            model=self.model_picker.spec(),
            steps=self.steps_box.value(),
            omega=self.omega_box.value(),
            omega_per_class={i: b.value() for i, b in self.class_boxes.items() if b.value() >= 0},
            seed=self.seed_box.value(),
            plan=None if self.plan_box.currentText() == "auto" else self.plan_box.currentText(),
            solver=self.solver_box.currentText(),
            device=device,
            area=area,
            centre=centre,
        )

    # ------------------------------------------------------------------ run
    def run_or_cancel(self):
        if self.run is not None and self.run.busy:
            self.run.cancel()
            return None
        return self.start()

    def start(self):
        from napari.utils.notifications import show_error

        from ._worker import BUSY, SynthesisRun

        image, mask = self.picker.current()
        if image is None:
            show_error("no canvas: create or open one in the Canvas widget first")
            return None
        info = layer_info(image)
        if info["path"] in BUSY:
            show_error("another run is writing this canvas; wait for it or cancel it")
            return None
        try:
            request = self.build_request(image)
        except ValueError as e:
            self.status.setText(str(e))
            show_error(str(e))
            return None
        snapshot = np.array(mask.data, copy=True) if mask is not None else None
        self._mask_layer = mask
        if mask is not None:
            mask.editable = False  # the run samples under this mask: no edits until it ends
        self.run = SynthesisRun(self.viewer, image, request, mask=snapshot, mask_step=info["mask_step"],
                                redo=self.redo_box.isChecked(), preview=self.preview_box.isChecked(),
                                on_state=self._on_state)
        self.run.start()
        return self.run

    def _on_state(self, state: str, text: str):
        try:
            self.status.setText(text)
        except RuntimeError:  # the dock widget was closed while its run went on: the run finishes alone
            return
        if state in ("starting", "running"):
            self.run_button.setText("Cancel")
            self.run_button.setEnabled(True)
        elif state == "cancelling":
            self.run_button.setText("Cancelling…")
            self.run_button.setEnabled(False)
        else:
            self.run_button.setText("Run")
            self.run_button.setEnabled(True)
            if self._mask_layer is not None and self._mask_layer in self.viewer.layers:
                self._mask_layer.editable = True
            self._mask_layer = None
            if state == "done":
                self.redo_box.setChecked(False)
