"""Blinded review dock widget: real or synthetic?

The reviewer picks a real source and a synthetic source (canvas, folder, image or slide), a
results folder and their name, and presses Start.  Tiles then come one at a time, drawn at
random from both sides (the plan is made in a worker thread).  For each tile: **R** real or
**S** synthetic, **1**–**5** plausibility, an optional note, **Space** to record and go on.  The
answers append to ``review-<name>.csv`` in the results folder, which alone records the truth and
the source of every tile; starting again with the same sources, tile size and seed resumes
after the last answer.  At the end the dock shows the summary (also ``...-summary.json``).
"""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QButtonGroup,
    QFileDialog,
    QFormLayout,
    QFrame,
    QScrollArea,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

VIEW_PX = 320  # tiles are shown this large (nearest-neighbour enlargement); fits a 1280 x 800 screen


def _path_row(parent, placeholder: str, directory: bool):
    edit = QLineEdit(parent)
    edit.setPlaceholderText(placeholder)
    button = QPushButton("…", parent)
    button.setFixedWidth(28)

    def browse():
        if directory:
            path = QFileDialog.getExistingDirectory(parent, placeholder)
        else:
            path, _ = QFileDialog.getOpenFileName(parent, placeholder)
        if path:
            edit.setText(path)

    button.clicked.connect(browse)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(button)
    return edit, row


def plan_job(real: str, synthetic: str, tile: int, per_side: int, seed: int, folder: str, reviewer: str):
    """Worker: the shuffled plan and where this reviewer resumes (no Qt here)."""
    from src_models.evaluation.review import ReviewLog, plan_review

    items, mpp = plan_review(real, synthetic, tile=tile, per_side=per_side, seed=seed)
    log = ReviewLog(folder, reviewer)
    return items, mpp, log, log.answered(items)


class ReviewWidget(QWidget):
    def __init__(self, napari_viewer=None, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.items, self.pos, self.log, self.mpp = [], 0, None, 0.5
        self._worker = None
        from ._common import Section

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        body = QWidget(self)
        layout = QVBoxLayout(body)
        self.scroll = QScrollArea(self)  # never taller than the screen, whatever the fonts
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(body)
        self.scroll.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # R, S, 1-5 and Space stay the dock's keys
        outer.addWidget(self.scroll)
        self.setup_section = Section("Sources and reviewer", expanded=True)
        setup = QWidget(body)
        form = QFormLayout(setup)
        form.setContentsMargins(0, 0, 0, 0)
        self.real_edit, row = _path_row(self, "real source (folder, image, slide or canvas)", directory=False)
        form.addRow("Real", row)
        self.syn_edit, row = _path_row(self, "synthetic source (canvas .zarr or folder)", directory=False)
        form.addRow("Synthetic", row)
        self.folder_edit, row = _path_row(self, "folder for the answers", directory=True)
        form.addRow("Results", row)
        self.name_edit = QLineEdit(self)
        self.name_edit.setPlaceholderText("reviewer name")
        form.addRow("Reviewer", self.name_edit)
        self.per_side_box = QSpinBox(self)
        self.per_side_box.setRange(1, 500)
        self.per_side_box.setValue(25)
        form.addRow("Tiles per side", self.per_side_box)
        self.tile_box = QSpinBox(self)
        self.tile_box.setRange(32, 1024)
        self.tile_box.setSingleStep(32)
        self.tile_box.setValue(256)
        form.addRow("Tile px", self.tile_box)
        self.seed_box = QSpinBox(self)
        self.seed_box.setRange(0, 2**31 - 1)
        form.addRow("Seed", self.seed_box)
        self.setup_section.add(setup)
        layout.addWidget(self.setup_section)
        self.start_button = QPushButton("Start / resume", self)
        self.start_button.clicked.connect(self.start)
        layout.addWidget(self.start_button)

        self.review_area = QWidget(body)  # shown while tiles are reviewed (the sources fold away then)
        area = QVBoxLayout(self.review_area)
        area.setContentsMargins(0, 0, 0, 0)
        self.image_label = QLabel(self)
        self.image_label.setFixedSize(VIEW_PX, VIEW_PX)
        self.image_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image_label.setStyleSheet("background: #202020;")
        area.addWidget(self.image_label)
        answers = QHBoxLayout()
        self.answer_group = QButtonGroup(self)
        self.real_button = QPushButton("Real (R)", self)
        self.syn_button = QPushButton("Synthetic (S)", self)
        for b in (self.real_button, self.syn_button):
            b.setCheckable(True)
            self.answer_group.addButton(b)
            answers.addWidget(b)
        area.addLayout(answers)
        ratings = QHBoxLayout()
        ratings.addWidget(QLabel("Plausibility", self))
        self.rating_group = QButtonGroup(self)
        self.rating_buttons = []
        for k in range(1, 6):
            b = QPushButton(str(k), self)
            b.setCheckable(True)
            b.setFixedWidth(32)
            self.rating_group.addButton(b, k)
            self.rating_buttons.append(b)
            ratings.addWidget(b)
        area.addLayout(ratings)
        self.note_edit = QLineEdit(self)
        self.note_edit.setPlaceholderText("note (optional)")
        area.addWidget(self.note_edit)
        self.next_button = QPushButton("Record and next (Space)", self)
        self.next_button.clicked.connect(self.record)
        area.addWidget(self.next_button)
        layout.addWidget(self.review_area)
        self.status = QLabel("Pick the sources, a results folder and your name, then Start.", self)
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.note_edit.returnPressed.connect(self.record)
        # keys reach the dock while it (or the tile, or a button) has focus; the note field keeps
        # its own letters and spaces, and Return there records
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.image_label.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self._reviewing = False
        self._set_reviewing(False)

        from ._common import guard_wheel

        guard_wheel(self)  # the wheel changes a value only in the widget with keyboard focus

    def showEvent(self, event) -> None:
        super().showEvent(event)
        from ._common import tab_beside_main_dock

        tab_beside_main_dock(self)

    def keyPressEvent(self, event) -> None:
        key = event.key()
        if self._reviewing and key == Qt.Key.Key_R:
            self.real_button.setChecked(True)
        elif self._reviewing and key == Qt.Key.Key_S:
            self.syn_button.setChecked(True)
        elif self._reviewing and Qt.Key.Key_1 <= key <= Qt.Key.Key_5:
            self.rating_buttons[key - Qt.Key.Key_1].setChecked(True)
        elif self._reviewing and key == Qt.Key.Key_Space:
            self.record()
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def _set_reviewing(self, on: bool) -> None:
        self._reviewing = on
        self.review_area.setVisible(on)
        self.setup_section.set_expanded(not on)
        for w in (self.real_button, self.syn_button, self.next_button, self.note_edit, *self.rating_buttons):
            w.setEnabled(on)

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        values = [e.text().strip() for e in (self.real_edit, self.syn_edit, self.folder_edit, self.name_edit)]
        if not all(values):
            self._notify("Fill in the real and synthetic sources, the results folder and your name.")
            return
        real, syn, folder, name = values
        from napari.qt.threading import create_worker

        self._set_reviewing(False)
        self.items, self.pos, self.log = [], 0, None
        self.image_label.clear()
        self.start_button.setEnabled(False)
        self.status.setText("Cutting tiles…")
        self._worker = create_worker(plan_job, real, syn, self.tile_box.value(), self.per_side_box.value(),
                                     self.seed_box.value(), folder, name, _start_thread=False, _ignore_errors=True)
        self._worker.returned.connect(self._planned)
        self._worker.errored.connect(self._failed)
        self._worker.finished.connect(lambda: self.start_button.setEnabled(True))
        self._worker.start()

    def _planned(self, result) -> None:
        self.items, self.mpp, self.log, self.pos = result
        if self.pos >= len(self.items):
            self._finish()
            return
        self._set_reviewing(True)
        self._show()
        self.setFocus()

    def _failed(self, exc: Exception) -> None:
        self._notify(f"Review could not start: {exc}")
        self.status.setText(str(exc))

    def _notify(self, message: str) -> None:
        try:
            from napari.utils.notifications import show_warning

            show_warning(message)
        except Exception:  # no napari notification manager (standalone use)
            pass
        self.status.setText(message)

    # ------------------------------------------------------------------ review
    def _show(self) -> None:
        it = self.items[self.pos]
        rgb = np.ascontiguousarray(it.rgb)
        h, w = rgb.shape[:2]
        qimg = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        pix = QPixmap.fromImage(qimg).scaled(VIEW_PX, VIEW_PX, Qt.AspectRatioMode.KeepAspectRatio,
                                             Qt.TransformationMode.FastTransformation)
        self.image_label.setPixmap(pix)
        for group in (self.answer_group, self.rating_group):
            group.setExclusive(False)
            for b in group.buttons():
                b.setChecked(False)
            group.setExclusive(True)
        self.note_edit.clear()
        side_um = self.tile_box.value() * self.mpp
        self.status.setText(f"Tile {self.pos + 1} of {len(self.items)} ({side_um:.0f} µm across). "
                            "R / S, then 1–5, then Space.")

    def answer(self) -> str | None:
        if self.real_button.isChecked():
            return "real"
        if self.syn_button.isChecked():
            return "synthetic"
        return None

    def record(self) -> None:
        if self.log is None or self.pos >= len(self.items):
            return
        answer, rating = self.answer(), self.rating_group.checkedId()
        if answer is None or rating < 1:
            self.status.setText("Choose real or synthetic (R / S) and a plausibility 1–5 first.")
            return
        self.log.append(self.items[self.pos], answer, rating, self.note_edit.text(), self.tile_box.value(),
                        self.mpp, self.seed_box.value())
        self.pos += 1
        if self.pos >= len(self.items):
            self._finish()
        else:
            self._show()

    def _finish(self) -> None:
        from src_models.evaluation.review import summarise, write_summary

        self._set_reviewing(False)
        self.image_label.clear()
        s = summarise(self.log.rows())
        path = write_summary(self.log)
        per_class = ", ".join(f"{c} {v['accuracy']}" for c, v in s.get("per_class", {}).items())
        self.status.setText(
            f"Done: {s['answers']} answers. Accuracy {s['accuracy']} (real called real {s['real_called_real']}, "
            f"synthetic called synthetic {s['synthetic_called_synthetic']}); mean plausibility real "
            f"{s['rating_real']}, synthetic {s['rating_synthetic']}."
            + (f" Per class: {per_class}." if per_class else "") + f" Summary: {path}"
        )
        self.summary = s
