"""Synthesis dock widget: pick device, steps, ω and the region (whole canvas, current view, a
drawn rectangle or a painted area to redo) and Run; Run turns into Cancel, then "Cancelling…".  A
progress bar and a line with the region, the denoising step and the time left sit right under Run.

"painted area": *Paint area to redo* adds (or selects) the canvas's "<canvas> redo area" Labels
layer over its mask grid, in paint mode; Run samples again exactly the latent cells painted there
(the redo is implied), only in the regions they touch and each in a box sized to them, with the
tissue around as context, and the overlay veils and previews only inside the painted shape.  After
a finished run the painted cells are cleared from that layer (one undo step in napari brings them
back), so the next Run does not sample the same area again by accident; after Cancel or a failure
they stay, and the next Run resumes them unless they were repainted meanwhile.

Every value is read here, on the GUI thread, into one ``SynthesisRequest`` (plus a copy of the
mask layer) before the worker starts; the worker never reads a widget.  The run itself lives in
``_worker.SynthesisRun``.  Regions nearest the centre of the view are sampled first.  An empty
(all-unknown) mask asks before it runs.  In the one DiffInfinite dock (``compact=True``) the
rarely changed settings (model, seed, sampling order, ω per class, preview) fold under "More",
and the dock shows Run and the progress line in its footer.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from src_models.models.card import DEFAULT_OMEGA, DEFAULT_STEPS  # plain values, no torch

from ._common import (
    CanvasPicker,
    ModelPicker,
    Section,
    area_layer,
    camera as view_camera,
    drawn_rect,
    find_redo_layer,
    layer_info,
    notify,
    painted_area,
    painted_rect,
    px_to_mask,
    redo_layer,
    status_label,
    to_image_px,
    view_centre,
    view_rect,
)

REGIONS = ("whole canvas", "current view", "drawn rectangle", "painted area")
PAINTED = REGIONS[3]
DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps")


def _sampling_choices() -> dict:
    """Sampling choices passed to SynthesisRequest: request field -> (choices, tooltip), read from
    the plan and solver registries (numpy only, no torch).  "auto" is the model's default plan."""
    from src_models.synthesis.request import PLANS, SOLVERS

    return {
        "plan": (("auto", *PLANS), "\n".join(["auto: the model's default"] + [f"{k}: {v.description}" for k, v in PLANS.items()])),
        "solver": (tuple(SOLVERS), "\n".join(f"{k}: {v.description}" for k, v in SOLVERS.items())),
    }


def _warm_up():
    """Import the core (and torch) in the background so the first Run does not wait for it."""
    try:
        import src_models.synthesis.regions  # noqa: F401
    except Exception:  # the error shows up, with its message, when a run starts
        pass


def _bf16_label() -> str:
    """The bfloat16 box's text, saying whether this CPU has bfloat16 instructions (read without torch)."""
    from src_models.models.cpu import native_bf16_flags

    native = native_bf16_flags()
    if native is None:
        return "bfloat16 where the CPU has it"
    return ("bfloat16 where the CPU has it (this one has: faster)" if native
            else "bfloat16 where the CPU has it (this one has not: float32)")


class SynthesisWidget(QWidget):
    def __init__(self, napari_viewer, parent=None, *, compact: bool = False, picker: CanvasPicker | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.compact = compact
        self.run = None
        self._mask_layer = None
        layout = QVBoxLayout(self)
        if compact:
            layout.setContentsMargins(0, 0, 0, 0)
        self.picker = picker or CanvasPicker(self.viewer)
        if not compact:
            layout.addWidget(self.picker)

        self.model_picker = ModelPicker()
        self.device_box = QComboBox()
        self.device_box.setEditable(True)
        self.device_box.addItems(DEVICES)
        self.device_box.setToolTip("auto: CUDA, then MPS, then the CPU; or type cuda:N")
        self.steps_box = QSpinBox()
        self.steps_box.setRange(1, 1000)
        self.steps_box.setValue(DEFAULT_STEPS)
        self.steps_box.setToolTip("denoising steps (levels) per region")
        self.omega_box = QDoubleSpinBox()
        self.omega_box.setRange(0.0, 50.0)
        self.omega_box.setSingleStep(0.5)
        self.omega_box.setValue(DEFAULT_OMEGA)  # until a canvas gives its model's (settings recorded at creation)
        self.omega_box.setToolTip("classifier-free guidance ω for every class (scale ω + 1)")
        self.guidance_box = QSpinBox()
        self.guidance_box.setRange(0, 1000)
        self.guidance_box.setSingleStep(50)
        self.guidance_box.setValue(1000)  # until a model's card or a canvas gives its own
        self._card_guidance_below = 1000  # the chosen model's (its card's default_guidance_below)
        self.guidance_box.setToolTip(
            "guide only the denoising levels with timestep below this (1000: every level; 0: none). The noisier "
            "levels run one network pass per window instead of two; the shipped models' values were chosen on "
            "held-out tissue (docs/sampling_defaults.md). The canvas records it")
        self.seed_box = QSpinBox()
        self.seed_box.setRange(0, 2**31 - 1)
        self.choice_boxes: dict[str, QComboBox] = {}
        for name, (choices, tip) in _sampling_choices().items():
            box = QComboBox()
            box.addItems(choices)
            box.setToolTip(tip)
            self.choice_boxes[name] = box
        self.plan_box = self.choice_boxes["plan"]
        self.solver_box = self.choice_boxes["solver"]
        self.region_box = QComboBox()
        self.region_box.addItems(REGIONS)
        self.region_box.setToolTip("what to sample: the whole canvas, what the view shows, the drawn rectangle, "
                                   "or the painted area to redo (its finished tissue sampled again, in place)")
        draw = QPushButton("Draw rectangle")
        draw.clicked.connect(self.draw_rectangle)
        self.paint_button = QPushButton("Paint area to redo")
        self.paint_button.setToolTip("paint, in the canvas's 'redo area' layer, the tissue to sample again: only "
                                     "the regions under it run, each sized to it; the tissue around stays")
        self.paint_button.clicked.connect(self.paint_area)
        region_row = QVBoxLayout()
        region_row.setContentsMargins(0, 0, 0, 0)
        region_row.addWidget(self.region_box)
        buttons = QHBoxLayout()
        buttons.addWidget(draw)
        buttons.addWidget(self.paint_button)
        region_row.addLayout(buttons)
        self._scheduled = None  # (path, painted area) a cancelled or failed run left scheduled: Run resumes it
        self._to_schedule = None  # the painted area of the run starting now
        self._painted_layer = None  # the redo-area layer locked while a run uses it
        self.redo_box = QCheckBox("sample finished parts again")
        self.redo_box.setToolTip("whole canvas: forget every finished region; view or rectangle: regenerate that "
                                 "area with its surroundings as context")
        self.sweep_box = QCheckBox("whole area at once, level by level (no region borders)")
        self.sweep_box.setToolTip(
            "sample every pending region together, one denoising level at a time over the whole area, instead of "
            "region by region: no border between separately finished regions shows (measured seam ratio 1.01 "
            "against 1.20; docs/sampling_defaults.md), and no region's surroundings are sampled twice. Regions "
            "appear together at the end; meanwhile the live preview draws the sweep's tiles over them. Cancel keeps "
            "the finished levels and Run resumes. The canvas records the choice")
        self.preview_box = QCheckBox("live preview of the region in flight")
        self.preview_box.setChecked(True)
        self.bf16_box = QCheckBox(_bf16_label())
        self.bf16_box.setChecked(True)
        self.bf16_box.setToolTip(
            "ticked (the default): the network runs in bfloat16 (autocast) on a CPU with AVX512_BF16 or AMX, about "
            "1.6 x faster with the same held-out quality (docs/cpu_speed.md), and in float32 elsewhere "
            "(the environment variable DIFFINFINITE_PRECISION can name one for every run); cleared: float32 always, "
            "the same pixels on every run. The canvas records what ran")
        self.distilled_box = QCheckBox("one network pass per window (distilled guidance)")
        self.distilled_box.setChecked(True)
        self._student_default = True  # the chosen model's student runs unless asked not to (its card's by_default)
        self.distilled_box.setToolTip(
            "where the model ships a guidance-distilled student, run it at the guided levels (those below 'guided "
            "below t'): one network pass per window there instead of two (docs/cpu_speed.md). It gives the guided "
            "result only at the ω it was distilled at (the card's); the shipped skin model's student is opt-in. "
            "Off: the model's own two passes. The canvas records the choice")
        self.class_group = QWidget() if compact else QGroupBox("ω per class")
        self.class_form = QFormLayout(self.class_group)
        if compact:
            self.class_form.setContentsMargins(0, 0, 0, 0)
        self.class_boxes: dict[int, QDoubleSpinBox] = {}
        self._card_omega_per_class: dict[int, float] = {}  # the chosen model's per-class ω

        # Run, progress bar and progress line (the dock moves them to its footer)
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("sample the pending regions (nearest the view centre first); Cancel keeps "
                                   "every finished region and the next Run resumes")
        self.run_button.clicked.connect(self.run_or_cancel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumHeight(10)
        self.progress_label = QLabel("ready")
        self.progress_label.setWordWrap(True)
        self.estimate_label = QLabel("")  # what Run will do: regions, area, expected time
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setToolTip("the regions Run samples (whole regions: a rectangle rounds out to them), "
                                       "their area, and the time the last runs on this device suggest")
        self.status = status_label()
        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(400)
        self._estimate_timer.timeout.connect(self.update_estimate)
        self._estimate_worker = None
        self._watched_area = None

        self._arrange(layout, region_row, compact)

        self.model_picker.currentIndexChanged.connect(lambda *_: self._show_model_defaults())
        self._show_model_defaults()
        self.picker.changed.connect(self._on_canvas_changed)  # a canvas's recorded settings then win
        self._on_canvas_changed(self.picker.image_layer())
        for signal in (self.region_box.currentTextChanged, self.device_box.currentTextChanged,
                       self.model_picker.currentIndexChanged, self.steps_box.valueChanged, self.redo_box.toggled,
                       self.picker.changed):
            signal.connect(lambda *_: self.schedule_estimate())
        camera = view_camera(self.viewer)
        camera.events.center.connect(self._on_view_moved)
        camera.events.zoom.connect(self._on_view_moved)
        self.viewer.layers.events.inserted.connect(lambda e: self._watch_area())
        self._watch_area()
        self.schedule_estimate()
        threading.Thread(target=_warm_up, name="diffinfinite-warm-up", daemon=True).start()

        from ._common import guard_wheel

        guard_wheel(self)  # the wheel changes a value only in the widget with keyboard focus

    def _arrange(self, layout, region_row, compact: bool) -> None:
        """The controls in sections (the compact dock) or group boxes (the full widget)."""
        if compact:
            main = QFormLayout()
            main.setContentsMargins(0, 0, 0, 0)
            main.addRow("device", self.device_box)
            main.addRow("steps", self.steps_box)
            main.addRow("ω", self.omega_box)
            main.addRow("sample", region_row)
            layout.addLayout(main)
            layout.addWidget(self.redo_box)
            self.more_section = Section("More: model, seed, order, ω per class", expanded=False)
            more = QWidget()
            mform = QFormLayout(more)
            mform.setContentsMargins(0, 0, 0, 0)
            mform.addRow("model", self.model_picker)
            mform.addRow("seed", self.seed_box)
            mform.addRow("guided below t", self.guidance_box)
            for name, box in self.choice_boxes.items():
                mform.addRow(name, box)
            mform.addRow(self.preview_box)
            mform.addRow(self.sweep_box)
            mform.addRow(self.bf16_box)
            mform.addRow(self.distilled_box)
            mform.addRow(QLabel("ω per class ('= ω': the value above)"))
            mform.addRow(self.class_group)
            self.more_section.add(more)
            layout.addWidget(self.more_section)
        else:
            box = QGroupBox("Model and sampling")
            form = QFormLayout(box)
            form.addRow("model", self.model_picker)
            form.addRow("device", self.device_box)
            form.addRow("steps", self.steps_box)
            form.addRow("ω", self.omega_box)
            form.addRow("guided below t", self.guidance_box)
            form.addRow("seed", self.seed_box)
            for name, cbox in self.choice_boxes.items():
                form.addRow(name, cbox)
            form.addRow(self.bf16_box)
            form.addRow(self.distilled_box)
            layout.addWidget(box)
            layout.addWidget(self.class_group)
            rbox = QGroupBox("Region")
            rform = QFormLayout(rbox)
            rform.addRow("sample", region_row)
            rform.addRow(self.redo_box)
            rform.addRow(self.preview_box)
            rform.addRow(self.sweep_box)
            layout.addWidget(rbox)
            layout.addWidget(self.estimate_label)
            layout.addWidget(self.run_button)
            layout.addWidget(self.progress_bar)
            layout.addWidget(self.progress_label)
            layout.addWidget(self.status)
            layout.addStretch(1)

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
        from src_models.synthesis.request import recorded_guidance_below, recorded_precision

        # a canvas goes on as it was made (float32 where a run recorded it); one no run has recorded: the default
        self.bf16_box.setChecked(recorded_precision(settings) in ("bf16", None))
        self.distilled_box.setChecked(bool(settings.get("distilled")))
        self.sweep_box.setChecked(bool(settings.get("sweep")))
        self.guidance_box.setValue(recorded_guidance_below(settings, self._card_guidance_below))
        if settings.get("omega") is not None:
            self.omega_box.setValue(float(settings["omega"]))
            per_class = {int(k): float(v) for k, v in settings.get("omega_per_class", {}).items()}
        else:  # ω left to the model: its card's, per class too (from set_spec's _show_model_defaults)
            per_class = dict(self._card_omega_per_class)
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

    def _show_model_defaults(self) -> None:
        """Steps, ω and the distilled-student box as the chosen model's card gives them (read from its
        card.json, no torch); a model without a readable card (the built-in test model, a checkpoint) leaves
        steps and ω as they are and has no student."""
        from src_models.models.card import BUILTIN_DIRS, ModelCard

        spec = self.model_picker.spec()
        folder = BUILTIN_DIRS.get(spec) or Path(spec)
        try:
            card = ModelCard.load(folder) if (folder / "card.json").is_file() else None
        except Exception:  # noqa: BLE001 - a broken card is reported when the run loads the model
            card = None
        if card is None:  # the built-in test model, a published checkpoint: no student, every level guided
            self._card_guidance_below = 1000
            self.guidance_box.setValue(1000)
            self._student_default = True
            self.distilled_box.setEnabled(False)
            self.distilled_box.setChecked(False)
        else:
            from src_models.synthesis.request import sampling_defaults, student_by_default  # numpy only

            d = sampling_defaults(card)
            self.steps_box.setValue(int(d["steps"]))
            self.omega_box.setValue(float(d["omega"]))
            self._card_omega_per_class = dict(d["omega_per_class"])
            self._card_guidance_below = int(d["guidance_below"])
            self.guidance_box.setValue(self._card_guidance_below)
            has_student = card.guided_unet is not None
            self._student_default = student_by_default(card) or not has_student
            self.distilled_box.setEnabled(has_student)
            self.distilled_box.setChecked(has_student and self._student_default)
            for i, box in self.class_boxes.items():
                box.setValue(self._card_omega_per_class.get(i, -0.5))  # -0.5 shows "= ω"

    def draw_rectangle(self):
        image, _ = self.picker.current()
        area_layer(self.viewer, image)
        self._watch_area()
        self.region_box.setCurrentText("drawn rectangle")

    def paint_area(self):
        """Add (or select) the canvas's redo-area layer, ready to paint in, and pick "painted area"."""
        image, mask = self.picker.current()
        if image is None:
            notify("no canvas: create or open one first")
            return None
        layer = redo_layer(self.viewer, image, mask)
        self._watch_area()
        self.region_box.setCurrentText(PAINTED)
        return layer

    # ------------------------------------------------------------------ estimate
    def _watch_area(self) -> None:
        from ._common import find_area_layer

        layer = find_area_layer(self.viewer)
        if layer is not None and layer is not self._watched_area:
            layer.events.data.connect(lambda e: self.schedule_estimate())
            layer.events.highlight.connect(lambda e: self.schedule_estimate())  # another rectangle selected
            self._watched_area = layer
        for layer in self.viewer.layers:  # redo-area layers: every stroke changes the estimate
            if (layer_info(layer) or {}).get("role") == "redo":
                layer.events.paint.connect(self._on_painted)  # connecting twice is ignored
                layer.events.data.connect(self._on_painted)

    def _on_painted(self, event=None) -> None:
        try:
            if self.region_box.currentText() == PAINTED:
                self.schedule_estimate()
        except RuntimeError:  # the dock was closed; the layer stays
            pass

    def _on_view_moved(self, event=None) -> None:
        if self.region_box.currentText() == "current view":
            self.schedule_estimate()

    def schedule_estimate(self) -> None:
        """Work the estimate out again shortly (settings, canvas, view or rectangle changed)."""
        if self.run is not None and self.run.busy:
            return
        self._estimate_timer.start()

    def update_estimate(self):
        """Regions, area and expected time of the next Run, worked out in a worker thread."""
        from napari.qt.threading import create_worker

        from ._worker import estimate_job

        image, _ = self.picker.current()
        info = layer_info(image) if image is not None else None
        if not info or (self.run is not None and self.run.busy):
            self.estimate_label.setText("")
            return None
        try:
            request = self.build_request(image)
        except ValueError as e:
            self.estimate_label.setText(f"Run: {e}")
            return None
        token = object()
        self._estimate_token = token
        redo, where = self.redo_box.isChecked(), None
        if self.region_box.currentText() == PAINTED:
            where = painted_area(self.viewer, image)
            redo = not self._resumes(info, where)
        worker = create_worker(estimate_job, info["path"], request, redo, where,
                               _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda got, t=token: self._show_estimate(got, t))
        self._estimate_worker = worker
        worker.start()
        return worker

    def _show_estimate(self, got, token) -> None:
        text, self.expected_s = got
        if token is getattr(self, "_estimate_token", None) and not (self.run is not None and self.run.busy):
            try:
                self.estimate_label.setText(f"Run: {text}")
            except RuntimeError:  # the dock was closed meanwhile
                pass

    # ------------------------------------------------------------------ request
    def build_request(self, image_layer):
        """Every widget value, read now on the GUI thread, as one SynthesisRequest."""
        from src_models.synthesis.request import SynthesisRequest

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
        elif region == PAINTED:
            painted = painted_area(self.viewer, image_layer)
            if painted is None:
                raise ValueError("paint the area to redo first (Paint area to redo)")
            area = painted_rect(layer_info(image_layer), painted)
        cy, cx = view_centre(self.viewer)
        centre = tuple(float(v) for v in np.asarray(image_layer.world_to_data((cy, cx)))[:2])
        device = self.device_box.currentText().strip() or "auto"
        return SynthesisRequest(
            model=self.model_picker.spec(),
            steps=self.steps_box.value(),
            omega=self.omega_box.value(),
            omega_per_class={i: b.value() for i, b in self.class_boxes.items() if b.value() >= 0},
            seed=self.seed_box.value(),
            guidance_below=self.guidance_box.value(),
            sweep=self.sweep_box.isChecked(),
            device=device,
            area=area,
            centre=centre,
            precision="auto" if self.bf16_box.isChecked() else "float32",  # auto: bf16 where the CPU has it
            # ticked: the student where the model ships one (asked for outright where it is opt-in)
            distilled=(None if self._student_default else True) if self.distilled_box.isChecked() else False,
            **{name: (None if box.currentText() == "auto" else box.currentText())
               for name, box in self.choice_boxes.items()},
        )

    # ------------------------------------------------------------------ run
    def run_or_cancel(self):
        if self.run is not None and self.run.busy:
            self.run.cancel()
            return None
        return self.start()

    def confirm(self, title: str, text: str) -> bool:
        """Ask the user (Yes/No); a test replaces this."""
        answer = QMessageBox.question(self, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def _mask_is_empty(self, mask, info, area) -> bool:
        """Whether the mask holds no class (all 0, unknown) where the run samples."""
        if mask is None:
            return True
        data = mask.data
        if area is not None:
            r0, r1, c0, c1 = px_to_mask(info, area)
            data = data[r0:r1, c0:c1]
        return not np.asarray(data).any()

    def start(self, discard_sweep: bool = False):
        """Start a run of the request the widgets make (None where it cannot start; the reason is
        shown).  ``discard_sweep``: forget the canvas's unfinished sweep first (the user agreed)."""
        from ._worker import BUSY, SynthesisRun

        image, mask = self.picker.current()
        if image is None:
            notify("no canvas: create or open one first")
            return None
        from ._jobs import activity_of

        if activity_of(self.viewer).busy:
            notify("wait for the action in progress (or cancel it) before Run", "info")
            return None
        info = layer_info(image)
        if info["path"] in BUSY:
            notify("another run is writing this canvas; wait for it or cancel it")
            return None
        try:
            request = self.build_request(image)
        except ValueError as e:
            self.status.setText(str(e))
            notify(str(e))
            return None
        if self._mask_is_empty(mask, info, request.area) and not self.confirm(
                "Empty mask",
                "The mask is empty here (every pixel is 0, unknown): the model fills it without any class "
                "guidance. Paint or load a mask first, or run anyway?"):
            self.status.setText("not run: the mask is empty (paint a class first)")
            return None
        redo, where = self.redo_box.isChecked(), None
        if self.region_box.currentText() == PAINTED:
            where = painted_area(self.viewer, image)  # the cells as painted now, a copy
            redo = not self._resumes(info, where)  # the area a cancelled run left: finish it, do not redo it
            self._to_schedule = (info["path"], where)  # scheduled once the run starts sampling
            self._lock_painted(find_redo_layer(self.viewer, info["path"]))
        snapshot = np.array(mask.data, copy=True) if mask is not None else None
        self._mask_layer = mask
        if mask is not None:
            mask.editable = False  # the run samples under this mask: no edits until it ends
            if layer_info(mask).get("mode") == "distinct colours":  # watch tissue appear, not the filled mask
                from ._reader import set_mask_mode

                set_mask_mode(mask, "contours")
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.run = SynthesisRun(self.viewer, image, request, mask=snapshot, mask_step=info["mask_step"],
                                redo=redo, preview=self.preview_box.isChecked(),
                                on_state=self._on_state, on_progress=self._on_progress,
                                expected_s=getattr(self, "expected_s", None), where=where,
                                discard_sweep=discard_sweep)
        self.run.start()
        return self.run

    def _on_progress(self, value: int, maximum: int, text: str):
        self.progress_bar.setRange(0, maximum)
        self.progress_bar.setValue(value)
        self.progress_label.setText(text)

    def _on_state(self, state: str, text: str):
        """The progress line under Run says how the run goes; the status line below it only why it failed."""
        try:
            self.status.setText(text if state == "failed" else "")
        except RuntimeError:  # the dock widget was closed while its run went on: the run finishes alone
            return
        if state == "running" and self._to_schedule is not None:  # the worker has scheduled the painted cells
            self._scheduled, self._to_schedule = self._to_schedule, None
        if state == "running" and self.redo_box.isChecked():
            # the worker has scheduled the redo (running follows its plan): the canvas holds what is left,
            # so a cancelled or failed run is resumed by a plain Run, never redone from the start
            self._redo_scheduled = True
        if state in ("starting", "running"):
            if state == "starting":
                self.estimate_label.setText("")  # the progress line says how it goes now
            self.run_button.setText("Cancel")
            self.run_button.setEnabled(True)
            if state == "starting":
                self.progress_label.setText(text)
        elif state == "cancelling":
            self.run_button.setText("Cancelling…")
            self.run_button.setEnabled(False)
        else:
            self.run_button.setText("Run")
            self.run_button.setEnabled(True)
            if self._mask_layer is not None and self._mask_layer in self.viewer.layers:
                self._mask_layer.editable = True
            self._mask_layer = None
            self._unlock_painted(clear=state == "done")
            if state == "done" or getattr(self, "_redo_scheduled", False):
                self.redo_box.setChecked(False)
            self._redo_scheduled = False
            self.schedule_estimate()  # this run's speed counts now
            differences = self.run.sweep_conflict() if state == "failed" and self.run is not None else None
            if differences:
                self._offer_sweep_discard(differences)

    def _offer_sweep_discard(self, differences: str) -> None:
        """A sweep was refused because the canvas holds an unfinished one of other settings: ask whether
        to discard that one (its finished levels; finished regions stay) and run with today's settings."""
        if self.confirm("Unfinished sweep", "This canvas holds an unfinished sweep made with other settings "
                        f"({differences}). Discard it (its finished levels are lost; finished regions stay) and run "
                        "with the settings shown now? No keeps it: run again with its settings to finish it."):
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: self.start(discard_sweep=True))  # after this run has wound up

    # ------------------------------------------------------------------ painted area
    def _resumes(self, info, where) -> bool:
        """Whether ``where`` is the painted area a cancelled or failed run left scheduled (Run then
        finishes it instead of sampling its finished regions again)."""
        if self._scheduled is None or where is None or self._scheduled[0] != info["path"]:
            return False
        (a, sa, oa), (b, sb, ob) = self._scheduled[1], where
        return sa == sb and oa == ob and a.shape == b.shape and bool(np.array_equal(a, b))

    def _lock_painted(self, layer) -> None:
        """During a run the redo-area layer takes no strokes (the run samples what it held at Run) and
        shows as an outline, so the live preview inside it is seen."""
        self._painted_layer = layer
        if layer is not None:
            layer.editable = False
            layer.contour = 1

    def _unlock_painted(self, clear: bool) -> None:
        """After a run: the layer editable again; after a finished run the cells it redid are cleared,
        as one step of the layer's undo history (nothing else of it is touched)."""
        layer, self._painted_layer = self._painted_layer, None
        self._to_schedule = None  # a run that ended before sampling scheduled nothing
        scheduled = self._scheduled
        if clear:
            self._scheduled = None
        if layer is None or layer not in self.viewer.layers:
            return
        layer.editable = True
        layer.contour = 0
        if clear and scheduled is not None:
            shape, scale, (oy, ox) = scheduled[1]  # as painted_area read it: layer px of ``scale`` image px
            ys, xs = np.nonzero(shape)
            layer.data_setitem((ys + oy // scale, xs + ox // scale), 0)
