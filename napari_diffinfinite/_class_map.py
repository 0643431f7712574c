"""The class-mapping dialog: which of the model's classes each label of a foreign mask becomes
(the DiffInfinite release's grey-coded PNGs and 5/10-class label maps, or any label map whose
labels the model does not know).  The choice is remembered per model and source scheme in
``class_maps.json`` in the plugin's configuration folder.  Qt only through qtpy; the decoding and
remapping themselves live in ``src_models.io.foreign_masks``.
"""
from __future__ import annotations

import json
from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QVBoxLayout,
)

from src_models.durable import write_text_atomic
from src_models.io.foreign_masks import RELEASE_CLASSES, ForeignMask, default_class_map, interpret


def config_dir() -> Path:
    """``$NAPARI_DIFFINFINITE_CONFIG``, else ``$XDG_CONFIG_HOME/napari-diffinfinite`` (``~/.config/…``)."""
    from ._paths import user_dir

    return user_dir("config")


def scheme_key(mask: ForeignMask) -> str:
    return f"release-{mask.scheme}" if mask.scheme else "labels"


def remembered(model: str, mask: ForeignMask) -> dict[int, int] | None:
    try:
        data = json.loads((config_dir() / "class_maps.json").read_text())
        entry = data[str(model)][scheme_key(mask)]
        return {int(k): int(v) for k, v in entry.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def remember(model: str, mask: ForeignMask, mapping: dict[int, int]) -> None:
    path = config_dir() / "class_maps.json"
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    entry = data.setdefault(str(model), {})
    entry[scheme_key(mask)] = {**entry.get(scheme_key(mask), {}), **{str(k): int(v) for k, v in mapping.items()}}
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def initial_map(model: str, mask: ForeignMask, classes: list[str]) -> dict[int, int]:
    """The remembered map for labels it covers, the name-based guess for the rest."""
    guess = default_class_map(mask, classes)
    kept = remembered(model, mask) or {}
    return {k: (kept[k] if k in kept and kept[k] < len(classes) else v) for k, v in guess.items()}


class ClassMapDialog(QDialog):
    """One row per label found in the mask: its source class -> a class of the model."""

    def __init__(self, mask: ForeignMask, raw, classes: list[str], colours: list[str], model: str, source: str,
                 parent=None):
        super().__init__(parent)
        self.setWindowTitle("Map the mask's classes to the model's")
        self.mask, self.raw, self.classes, self.colours, self.model = mask, raw, classes, colours, model
        lay = QVBoxLayout(self)
        self.about = QLabel()
        self.about.setWordWrap(True)
        lay.addWidget(self.about)
        self.scheme_box = QComboBox()
        for n in mask.schemes:
            self.scheme_box.addItem(f"the release's {n}-class scheme ({', '.join(RELEASE_CLASSES[n][1:])})", n)
        self.scheme_box.currentIndexChanged.connect(self._on_scheme)
        if len(mask.schemes) > 1:
            lay.addWidget(QLabel("Read the mask in:"))
            lay.addWidget(self.scheme_box)
        self.form = QFormLayout()
        lay.addLayout(self.form)
        self.remember_box = QCheckBox(f"remember this mapping for model {Path(str(model)).name}")
        self.remember_box.setChecked(True)
        lay.addWidget(self.remember_box)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.boxes: dict[int, QComboBox] = {}
        self._source = source
        self._fill()

        from ._common import guard_wheel

        guard_wheel(self)  # the wheel changes a value only in the widget with keyboard focus

    def _on_scheme(self, _index=None) -> None:
        n = self.scheme_box.currentData()
        if n and n != self.mask.scheme:
            self.mask = interpret(self.raw, len(self.classes), scheme=n)
            self._fill()

    def _fill(self) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self.about.setText(f"{self._source} is a {self.mask.describe()}. Choose the model's class for each of its "
                           "classes (0 unknown: the model fills it unguided).")
        start = initial_map(self.model, self.mask, self.classes)
        self.boxes = {}
        for label in self.mask.present:
            box = QComboBox()
            for i, name in enumerate(self.classes):
                box.addItem(f"{i} {name}", i)
            box.setCurrentIndex(start.get(label, 0))
            self.form.addRow(f"{label} {self.mask.source_name(label)} →", box)
            self.boxes[label] = box

    def mapping(self) -> dict[int, int]:
        return {label: int(box.currentData()) for label, box in self.boxes.items()}

    def set_mapping(self, mapping: dict[int, int]) -> None:
        for label, target in mapping.items():
            if label in self.boxes:
                self.boxes[label].setCurrentIndex(int(target))

    def accept(self) -> None:
        if self.remember_box.isChecked():
            try:
                remember(self.model, self.mask, self.mapping())
            except OSError:  # a read-only home: the mapping still applies now
                pass
        super().accept()
