"""The one DiffInfinite dock: Canvas, Mask, Synthesis and Annotations as collapsible sections in a scroll area,
with the canvas chooser on top and Run, the progress bar and the progress line in a footer that
never scrolls away.  It fits a 1280 x 800 napari window.

The Blinded review and a separate Annotations dock open as tabs beside this dock (each then has
the window's full height).  The sections are the widgets of this package in their compact form, sharing one canvas
picker; the rarely used parts (region size, slide import, outpaint; layout seed; model, seed,
sampling order, ω per class, preview) sit under "More" in each.  The three widgets stay in the
manifest for those who want them as separate docks.
"""
from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFrame, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from ._canvas_widget import CanvasWidget
from ._common import CanvasPicker, Section, layer_info
from ._mask_tools import MaskToolsWidget
from ._synthesis_widget import SynthesisWidget


class DiffInfiniteWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        from ._common import MAIN_DOCK

        self.setObjectName(MAIN_DOCK)  # the Review and Annotations docks open as tabs beside this one
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.setSpacing(4)

        self.picker = CanvasPicker(self.viewer)
        self.picker.setToolTip("the canvas the sections below work on")
        self.picker.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        top = QVBoxLayout()
        top.addWidget(QLabel("Canvas shown:"))
        top.addWidget(self.picker)
        outer.addLayout(top)

        self.synthesis = SynthesisWidget(self.viewer, compact=True, picker=self.picker)
        self.canvas = CanvasWidget(self.viewer, compact=True, picker=self.picker,
                                   device=lambda: self.synthesis.device_box.currentText().strip() or "auto")
        self.mask = MaskToolsWidget(self.viewer, compact=True, picker=self.picker)
        self.canvas_section = Section("Canvas")
        self.canvas_section.add(self.canvas)
        self.mask_section = Section("Mask")
        self.mask_section.add(self.mask)
        self.synthesis_section = Section("Synthesis")
        self.synthesis_section.add(self.synthesis)
        from ._annotations import AnnotationsWidget

        self.annotations = AnnotationsWidget(self.viewer, compact=True, picker=self.picker)
        self.annotations_section = Section("Annotations: QuPath GeoJSON in and out", expanded=False)
        self.annotations_section.add(self.annotations)

        body = QWidget()
        blay = QVBoxLayout(body)
        blay.setContentsMargins(0, 0, 0, 0)
        blay.setSpacing(6)
        for section in (self.canvas_section, self.mask_section, self.synthesis_section, self.annotations_section):
            blay.addWidget(section)
        blay.addStretch(1)
        for combo in body.findChildren(QComboBox):  # long entries must not widen the dock past the screen
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(body)
        self.scroll.setMinimumHeight(120)
        self.scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        outer.addWidget(self.scroll, 1)

        footer = QFrame()
        footer.setFrameShape(QFrame.Shape.StyledPanel)
        flay = QVBoxLayout(footer)
        flay.setContentsMargins(6, 6, 6, 6)
        flay.setSpacing(3)
        s = self.synthesis
        for w in (s.estimate_label, s.run_button, s.progress_bar, s.progress_label, s.status):
            flay.addWidget(w)
        outer.addWidget(footer, 0)
        self.footer = footer

        # shortcuts for the tests and the screenshot script
        self.run_button = s.run_button
        self.progress_bar = s.progress_bar
        self.progress_label = s.progress_label
        self.estimate_label = s.estimate_label
        self.picker.changed.connect(self._on_canvas_changed)
        self._on_canvas_changed(self.picker.image_layer())
        from ._jobs import activity_of

        self.activity = activity_of(self.viewer)  # long actions of the sections (Generate, Load, Import…)
        self.activity.started.connect(self._on_action_started)
        self.activity.progress.connect(self._on_action_progress)
        self.activity.ended.connect(self._on_action_ended)
        self._body = body
        self._fit_width()
        from qtpy.QtCore import QTimer

        for section in body.findChildren(Section):  # an unfolded section may hold a wider row
            section.header.toggled.connect(lambda _=False: QTimer.singleShot(0, self._fit_width))

        from ._common import guard_wheel

        guard_wheel(self)  # the wheel changes a value only in the widget with keyboard focus

    def _fit_width(self) -> None:
        """Wide enough for the sections' widest row beside a vertical scroll bar (measured again once
        napari's style sheet applies, which changes fonts and padding)."""
        bar = self.scroll.verticalScrollBar().sizeHint().width()
        margins = self.layout().contentsMargins()
        self.setMinimumWidth(max(300, self._body.minimumSizeHint().width() + bar + margins.left() + margins.right() + 4))

    def showEvent(self, event) -> None:
        super().showEvent(event)
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self._fit_width)

    # ------------------------------------------------------------------ long actions in the footer
    def _on_action_started(self, what: str) -> None:
        """Run waits while another long action works on the canvas; the footer says what runs."""
        try:
            self.run_button.setEnabled(False)
            self.synthesis.estimate_label.setText("")
            self.progress_bar.setRange(0, 0)  # busy until the first count arrives
            self.progress_label.setText(f"{what}…")
        except RuntimeError:  # the dock was closed
            pass

    def _on_action_progress(self, done: int, total: int, text: str) -> None:
        try:
            self.progress_bar.setRange(0, max(0, total))
            self.progress_bar.setValue(min(done, total) if total else 0)
            self.progress_label.setText(text)
        except RuntimeError:
            pass

    def _on_action_ended(self, text: str) -> None:
        try:
            if self.activity.busy:
                return
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self._on_canvas_changed(self.picker.image_layer())
            self.progress_label.setText(text)
            self.synthesis.schedule_estimate()
        except RuntimeError:
            pass

    def _on_canvas_changed(self, image_layer) -> None:
        """Unfold what the next step needs: creating when there is no canvas, painting and running when there is."""
        has = image_layer is not None and layer_info(image_layer) is not None
        if has:
            self.mask_section.set_expanded(True)
            self.synthesis_section.set_expanded(True)
        acting = getattr(self, "activity", None) is not None and self.activity.busy
        self.synthesis.run_button.setEnabled(
            (has and not acting) or (self.synthesis.run is not None and self.synthesis.run.busy))
        if not has:
            self.synthesis.progress_label.setText("create or open a canvas, paint the mask, then Run")
        elif acting:
            pass  # the long action in flight keeps the line
        elif self.synthesis.run is None or not self.synthesis.run.busy:
            self.synthesis.progress_label.setText("ready: paint the mask, then Run")
