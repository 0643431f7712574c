"""Pieces the three dock widgets share: the canvas picker, the model picker, the class legend,
and the geometry of "current view" and "drawn rectangle".  Widgets find canvases through the
layers' ``metadata["diffinfinite"]``, so any widget works with canvases opened by any other (or by
File > Open).  Qt only through qtpy.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGridLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from ._reader import META, canvas_layers

AREA_NAME = "area"


# ----------------------------------------------------------------------------- layers
def layer_info(layer) -> dict | None:
    meta = getattr(layer, "metadata", None)
    return meta.get(META) if isinstance(meta, dict) else None


def show_canvas(viewer, path) -> tuple:
    """Add a canvas's image and mask layers (or select them when already shown)."""
    from ._reader import canvas_layer_data

    shown = canvas_layers(viewer, path)
    if shown:
        image, mask = shown[0]
        viewer.layers.selection.active = mask or image
        return image, mask
    added = []
    for data, meta, kind in canvas_layer_data(path):
        added.append(getattr(viewer, f"add_{kind}")(data, **meta))
    image, mask = added
    mask.selected_label = 1
    viewer.reset_view()
    viewer.layers.selection.active = mask
    return image, mask


def find_area_layer(viewer):
    for layer in reversed(list(viewer.layers)):
        info = layer_info(layer)
        if info and info.get("role") == "area":
            return layer
    return None


def area_layer(viewer, image_layer=None):
    """The Shapes layer rectangles are drawn in (made on first use), ready to draw."""
    layer = find_area_layer(viewer)
    if layer is None:
        width = 2.0
        if image_layer is not None:
            info = layer_info(image_layer) or {}
            width = max(2.0, max(info.get("height", 0), info.get("width", 0)) / 400)
        layer = viewer.add_shapes(name=AREA_NAME, edge_color="yellow", face_color=[0, 0, 0, 0], edge_width=width,
                                  metadata={META: {"role": "area"}})
    viewer.layers.selection.active = layer
    layer.mode = "add_rectangle"
    return layer


def drawn_rect(viewer) -> tuple[float, float, float, float] | None:
    """World (y0, y1, x0, x1) of the selected rectangle in the area layer, else its last shape."""
    layer = find_area_layer(viewer)
    if layer is None or len(layer.data) == 0:
        return None
    picked = sorted(layer.selected_data)
    verts = np.asarray(layer.data[picked[-1] if picked else len(layer.data) - 1])[:, -2:]
    world = np.array([layer.data_to_world(v)[-2:] for v in verts])
    return world[:, 0].min(), world[:, 0].max(), world[:, 1].min(), world[:, 1].max()


def view_rect(viewer) -> tuple[float, float, float, float]:
    """World (y0, y1, x0, x1) of what the canvas shows now."""
    cy, cx = viewer.camera.center[-2:]
    h, w = viewer.canvas.size
    zoom = viewer.camera.zoom
    return cy - h / zoom / 2, cy + h / zoom / 2, cx - w / zoom / 2, cx + w / zoom / 2


def view_centre(viewer) -> tuple[float, float]:
    cy, cx = viewer.camera.center[-2:]
    return float(cy), float(cx)


def to_image_px(image_layer, rect) -> tuple[int, int, int, int] | None:
    """World rectangle -> integer image-pixel rectangle clipped to the canvas (None if empty)."""
    info = layer_info(image_layer)
    a = np.asarray(image_layer.world_to_data((rect[0], rect[2])))[:2]
    b = np.asarray(image_layer.world_to_data((rect[1], rect[3])))[:2]
    y0, x0 = np.minimum(a, b)
    y1, x1 = np.maximum(a, b)
    # the pixels whose centres lie inside the rectangle (edges included)
    y0, x0 = max(0, math.ceil(y0)), max(0, math.ceil(x0))
    y1, x1 = min(info["height"], math.floor(y1) + 1), min(info["width"], math.floor(x1) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, y1, x0, x1


def px_to_mask(info: dict, rect) -> tuple[int, int, int, int]:
    """Image-pixel rectangle -> mask-layer pixel rectangle (grown to whole mask pixels)."""
    s = info["factor"] * info["mask_step"]
    y0, y1, x0, x1 = rect
    return y0 // s, -(-y1 // s), x0 // s, -(-x1 // s)


# ----------------------------------------------------------------------------- widgets
class CanvasPicker(QComboBox):
    """The canvases shown in the viewer; follows layers being added, removed and renamed.

    A newly shown canvas becomes the current one.  ``changed`` fires with the new image layer (or None).
    """

    changed = Signal(object)

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self._layers: list = []
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.currentIndexChanged.connect(lambda _: self.changed.emit(self.image_layer()))
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        self.update_items()

    def _on_inserted(self, event) -> None:
        layer = event.value
        info = layer_info(layer)
        if not info:
            return
        if info.get("role") == "image":
            layer.events.name.connect(lambda e: self.update_items())
            self.update_items(select=layer)
        if info.get("role") in ("image", "mask"):
            self.changed.emit(self.image_layer())  # a canvas's mask arrives after its image

    def _on_removed(self, event) -> None:
        if layer_info(event.value):
            self.update_items()
            self.changed.emit(self.image_layer())

    def update_items(self, select=None) -> None:
        before = self.image_layer()
        target = select if select is not None else before
        layers = [img for img, _ in canvas_layers(self.viewer)]
        self.blockSignals(True)
        self.clear()
        for layer in layers:
            self.addItem(layer.name)
        self._layers = layers
        self.setCurrentIndex(layers.index(target) if target in layers else len(layers) - 1)
        self.blockSignals(False)
        if self.image_layer() is not before:
            self.changed.emit(self.image_layer())

    def image_layer(self):
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def current(self) -> tuple:
        """(image layer, mask layer) of the chosen canvas, or (None, None)."""
        image = self.image_layer()
        if image is None or image not in self.viewer.layers:
            return None, None
        pairs = canvas_layers(self.viewer, layer_info(image)["path"])
        return pairs[0] if pairs else (image, None)


class ModelPicker(QComboBox):
    """Built-in models (``default`` when installed, ``tiny-test``), a model directory, or a
    published checkpoint file (``model-N.pt``)."""

    CHOOSE_DIR = "Choose a model directory…"
    CHOOSE_FILE = "Choose a checkpoint file (.pt)…"

    def __init__(self, parent=None):
        super().__init__(parent)
        from ._worker import default_model_spec

        if default_model_spec() == "default":
            self.addItem("default")
        self.addItem("tiny-test")
        self.addItem(self.CHOOSE_DIR)
        self.addItem(self.CHOOSE_FILE)
        self._previous = 0
        self.activated.connect(self._on_activated)
        self.setToolTip("the model that samples the canvas: the shipped default, the tiny test model, a model "
                        "directory (card.json + safetensors weights) or a published checkpoint (.pt)")

    def _on_activated(self, index: int) -> None:
        text = self.itemText(index)
        if text == self.CHOOSE_DIR:
            path = QFileDialog.getExistingDirectory(self, "Model directory (card.json + weights)")
        elif text == self.CHOOSE_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Published checkpoint", "", "Checkpoints (*.pt)")
        else:
            self._previous = index
            return
        if path:
            self.set_spec(path)
        else:
            self.setCurrentIndex(self._previous)

    def spec(self) -> str:
        return self.currentData() or self.currentText()

    def set_spec(self, spec: str) -> None:
        spec = str(spec)
        for i in range(self.count()):
            if (self.itemData(i) or self.itemText(i)) == spec:
                self.setCurrentIndex(i)
                self._previous = i
                return
        at = self.count() - 2  # chosen paths go above the two "Choose…" entries
        self.insertItem(at, spec if spec in ("default", "tiny-test") else Path(spec).name, spec)
        self.setItemData(at, spec, Qt.ItemDataRole.ToolTipRole)
        self.setCurrentIndex(at)
        self._previous = at


def swatch(colour: str, size: int = 14, transparent: bool = False) -> QIcon:
    pix = QPixmap(size, size)
    pix.fill(QColor(0, 0, 0, 0) if transparent else QColor(colour))
    return QIcon(pix)


class Legend(QWidget):
    """Class colours and names; clicking a class picks it as the label to paint."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.buttons: list[QPushButton] = []
        self.mask_layer = None
        self.viewer = None

    def set_canvas(self, viewer, info: dict | None, mask_layer) -> None:
        self.viewer, self.mask_layer = viewer, mask_layer
        for b in self.buttons:
            b.deleteLater()
        self.buttons = []
        if not info:
            return
        for i, (name, colour) in enumerate(zip(info["classes"], info["colours"])):
            text = f"{i} {name}" + (" (unpainted, erases)" if i == 0 else "")
            b = QPushButton(swatch(colour, transparent=(i == 0)), text)
            b.setToolTip(f"paint class {i} ({name}) on the mask" if i else "erase: class 0, unknown")
            b.setStyleSheet("text-align: left; padding: 2px 6px;")
            b.clicked.connect(lambda _=False, label=i: self.pick(label))
            self.grid.addWidget(b, i // 2, i % 2)
            self.buttons.append(b)

    def pick(self, label: int) -> None:
        layer = self.mask_layer
        if layer is None or self.viewer is None or layer not in self.viewer.layers:
            return
        self.viewer.layers.selection.active = layer
        layer.selected_label = label
        if layer.editable and layer.mode not in ("paint", "fill", "polygon"):
            layer.mode = "paint"


def status_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label
