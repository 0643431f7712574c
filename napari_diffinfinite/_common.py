"""Pieces the dock widgets share: the canvas picker, the model picker, the class legend, the
collapsible section, the guard that keeps the mask to the model's classes, and the geometry of
"current view", "drawn rectangle" and "painted area" (the redo-area layer).  Widgets find canvases through the layers'
``metadata["diffinfinite"]``, so any widget works with canvases opened by any other (or by
File > Open).  Qt only through qtpy.
"""
from __future__ import annotations

import math
import weakref
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractScrollArea,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QLabel,
    QPushButton,
    QScrollBar,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ._reader import META, canvas_layers, display_colours, pixel_centre_offset

AREA_NAME = "area"


# ----------------------------------------------------------------------------- layers
def layer_info(layer) -> dict | None:
    meta = getattr(layer, "metadata", None)
    return meta.get(META) if isinstance(meta, dict) else None


def notify(text: str, severity: str = "error") -> None:
    """A napari notification (error, warning or info)."""
    from napari.utils.notifications import show_error, show_info, show_warning

    {"error": show_error, "warning": show_warning, "info": show_info}[severity](text)


CANVAS_GAP = 0.05  # space between canvases placed side by side, as a share of the wider one


def free_spot(viewer, width: int) -> tuple[float, float]:
    """World (y, x) where a canvas of ``width`` px goes: right of every canvas shown, else the origin."""
    spots = []
    widest = width
    for image, _ in canvas_layers(viewer):
        info = layer_info(image)
        ty, tx = (float(v) for v in image.translate[-2:])
        spots.append((tx + info["width"] * float(image.scale[-1]), ty))
        widest = max(widest, info["width"])
    if not spots:
        return 0.0, 0.0
    right, top = max(spots)
    return top, right + max(32.0, CANVAS_GAP * widest)


def remove_canvas_layers(viewer, path) -> None:
    """Take every layer of canvas ``path`` (image, mask, region overlay) out of the viewer."""
    target = str(Path(path).resolve())
    for layer in list(viewer.layers):
        info = layer_info(layer)
        if info and info.get("path") == target:
            viewer.layers.remove(layer)


def show_canvas(viewer, path, replace: bool = False) -> tuple:
    """Add a canvas's image and mask layers right of the canvases already shown (or select them
    when already shown; ``replace``: show them anew, the store was rewritten), with the region
    overlay, the canvas outline and the mask kept to the model's classes."""
    from ._overlay import show_overlay
    from ._reader import canvas_layer_data

    if replace:
        remove_canvas_layers(viewer, path)
    shown = canvas_layers(viewer, path)
    if shown:
        image, mask = shown[0]
        viewer.layers.selection.active = mask or image
        return image, mask
    layer_data = canvas_layer_data(path)
    y, x = free_spot(viewer, layer_data[0][1]["metadata"][META]["width"])
    added = []
    for data, meta, kind in layer_data:
        if kind == "labels":
            offset = pixel_centre_offset(meta["scale"][0])
            meta = {**meta, "translate": (y + offset, x + offset)}
        else:
            meta = {**meta, "translate": (y, x)}
        added.append(getattr(viewer, f"add_{kind}")(data, **meta))
    image, mask = added
    guard_mask(mask)
    outline_if_sampled(mask)
    mask.selected_label = 1
    show_overlay(viewer, image)
    viewer.reset_view()
    if x or y:  # look at the new canvas, not at all of them
        info = layer_info(image)
        camera(viewer).center = (y + info["height"] / 2, x + info["width"] / 2)
    viewer.layers.selection.active = mask
    return image, mask


def outline_if_sampled(mask) -> None:
    """A canvas that holds tissue shows its mask as outlines (finished regions show tissue, not the mask)."""
    from ._reader import set_mask_mode

    info = layer_info(mask) or {}
    if info.pop("sampled", False) and info.get("mode") == "distinct colours":
        set_mask_mode(mask, "contours")


_GUARDED: "weakref.WeakSet" = weakref.WeakSet()  # mask layers guard_mask watches already


def guard_mask(layer) -> None:
    """Keep a mask layer to the model's classes.

    napari lets a user pick any label ("new label" gives the largest label + 1), and labels that
    are not classes would paint in an error colour and fail only at Run.  Picking one moves to the
    next real class instead (after the last class: class 1), with a notification; a stroke that
    still paints one (from code) is taken back as soon as it ends."""
    info = layer_info(layer)
    if not info or layer in _GUARDED:
        return
    n = len(info["classes"])
    state = {"last": 1 if layer.selected_label >= n else layer.selected_label}

    def on_selected(event=None):
        label = int(layer.selected_label)
        if 0 <= label < n:
            state["last"] = label
            return
        nxt = state["last"] + 1 if state["last"] + 1 < n else 1
        notify(f"label {label} is not a class of this model (classes 0..{n - 1}: "
               f"{', '.join(f'{i} {c}' for i, c in enumerate(info['classes']))}); painting {nxt} "
               f"({info['classes'][nxt]}) instead", "info")
        state["last"] = nxt
        layer.selected_label = nxt

    def largest_painted(item) -> int:
        top = 0
        for atom in item:
            value = getattr(atom, "new_value", None)
            if value is None and isinstance(atom, tuple) and len(atom) == 3:
                value = atom[2]
            if value is not None and np.size(value):
                top = max(top, int(np.max(value)))
        return top

    def take_back():
        layer.undo()
        if hasattr(layer, "_redo_history"):
            layer._redo_history.clear()

    def on_paint(event):
        top = largest_painted(event.value)
        if top >= n:
            notify(f"label {top} is not a class of this model (classes 0..{n - 1}); the stroke was taken back")
            QTimer.singleShot(0, take_back)  # after napari has finished writing the stroke

    layer.events.selected_label.connect(on_selected)
    layer.events.paint.connect(on_paint)
    _GUARDED.add(layer)


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


REDO_SUFFIX = " redo area"
REDO_COLOUR = np.array([0.0, 0.85, 1.0, 1.0], np.float32)  # cyan: far from H&E and from the mask's colours


def find_redo_layer(viewer, path):
    """The redo-area layer of the canvas at ``path`` (None when it has none)."""
    for layer in reversed(list(viewer.layers)):
        info = layer_info(layer)
        if info and info.get("role") == "redo" and info.get("path") == path:
            return layer
    return None


def redo_layer(viewer, image_layer, mask_layer=None):
    """The Labels layer the area to redo is painted in ("<canvas> redo area", made on first use over
    the canvas's mask grid: same shape, scale and translate as its mask layer), selected and in
    paint mode with label 1.  Nothing in it is the canvas's data: Run reads it."""
    info = layer_info(image_layer)
    layer = find_redo_layer(viewer, info["path"])
    if layer is None:
        step = int(info["mask_step"])
        s = float(info["factor"] * step)
        lh, lw = info["latent_shape"]
        shape = tuple(mask_layer.data.shape) if mask_layer is not None else (-(-lh // step), -(-lw // step))
        scale = tuple(mask_layer.scale) if mask_layer is not None else (s, s)
        translate = tuple(mask_layer.translate) if mask_layer is not None else (pixel_centre_offset(s),) * 2
        layer = viewer.add_labels(np.zeros(shape, np.uint8), name=f"{image_layer.name}{REDO_SUFFIX}", scale=scale,
                                  translate=translate, opacity=0.45,
                                  colormap={None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32), 1: REDO_COLOUR},
                                  metadata={META: {"role": "redo", "path": info["path"], "scale_px": s}})
    viewer.layers.selection.active = layer
    layer.visible = True
    layer.selected_label = 1
    layer.mode = "paint"
    return layer


def painted_area(viewer, image_layer):
    """What the redo-area layer of ``image_layer``'s canvas marks, read now (on the GUI thread):
    (map, image px per map px, (y, x) image px of the map's corner) cropped to what is painted,
    or None when nothing is."""
    info = layer_info(image_layer)
    layer = find_redo_layer(viewer, info["path"]) if info else None
    if layer is None:
        return None
    data = np.asarray(layer.data)
    rows, cols = np.flatnonzero(data.any(axis=1)), np.flatnonzero(data.any(axis=0))
    if not len(rows):
        return None
    s = int(round(layer_info(layer).get("scale_px", info["factor"] * info["mask_step"])))
    crop = data[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] != 0
    return crop, s, (int(rows[0]) * s, int(cols[0]) * s)


def painted_rect(info: dict, painted) -> tuple[int, int, int, int]:
    """Image-px bounding box (y0, y1, x0, x1) of a :func:`painted_area`, clipped to the canvas."""
    crop, s, (oy, ox) = painted
    return oy, min(info["height"], oy + crop.shape[0] * s), ox, min(info["width"], ox + crop.shape[1] * s)


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return getattr(scene, "camera", None) or viewer.camera


def view_rect(viewer) -> tuple[float, float, float, float]:
    """World (y0, y1, x0, x1) of what the canvas shows now."""
    cy, cx = camera(viewer).center[-2:]
    h, w = viewer.canvas.size
    zoom = camera(viewer).zoom
    return cy - h / zoom / 2, cy + h / zoom / 2, cx - w / zoom / 2, cx + w / zoom / 2


def view_centre(viewer) -> tuple[float, float]:
    cy, cx = camera(viewer).center[-2:]
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
        from ._autosave import watch_viewer

        watch_viewer(viewer)  # every mask edit reaches the store
        self.update_items()

    def _on_inserted(self, event) -> None:
        layer = event.value
        info = layer_info(layer)
        if not info:
            return
        if info.get("role") == "image":
            layer.events.name.connect(lambda e: self.update_items())
            self.update_items(select=layer)
            QTimer.singleShot(0, lambda: self._add_overlay(layer))  # not from inside napari's insert event
        if info.get("role") == "mask":
            guard_mask(layer)
            outline_if_sampled(layer)
        if info.get("role") in ("image", "mask"):
            self.changed.emit(self.image_layer())  # a canvas's mask arrives after its image

    def _add_overlay(self, image) -> None:
        """The region overlay of a canvas shown by any means (File > Open, sample data)."""
        from ._overlay import find_overlay, show_overlay

        if image in self.viewer.layers and find_overlay(self.viewer, layer_info(image)["path"]) is None:
            show_overlay(self.viewer, image)
            if len(canvas_layers(self.viewer)) == 1:  # opened by File > Open or the shell: frame it
                self.viewer.reset_view()

    def _on_removed(self, event) -> None:
        info = layer_info(event.value)
        if info:
            if info.get("role") == "image":  # its region overlay goes with it
                from ._overlay import find_overlay

                overlay = find_overlay(self.viewer, info.get("path"))
                if overlay is not None and not any(
                        (layer_info(x) or {}).get("role") == "image" and layer_info(x).get("path") == info.get("path")
                        for x in self.viewer.layers):
                    self.viewer.layers.remove(overlay)
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
    """Built-in models (``default`` and ``tumour`` when installed, ``tiny-test``), a model directory, or a
    published checkpoint file (``model-N.pt``)."""

    CHOOSE_DIR = "Choose a model directory…"
    CHOOSE_FILE = "Choose a checkpoint file (.pt)…"

    def __init__(self, parent=None):
        super().__init__(parent)
        from src_models.models.card import installed_builtins

        for name in installed_builtins():
            self.addItem(name)
        self.addItem("tiny-test")
        self.addItem(self.CHOOSE_DIR)
        self.addItem(self.CHOOSE_FILE)
        self._previous = 0
        self.activated.connect(self._on_activated)
        self.setToolTip("the model that samples the canvas: a shipped model (default: skin; tumour), the tiny test "
                        "model, a model directory (card.json + safetensors weights) or a published checkpoint (.pt)")

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
        self.insertItem(at, spec if spec in ("default", "tumour", "tiny-test") else Path(spec).name, spec)
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
        mode = (layer_info(mask_layer) or {}).get("mode", "distinct colours") if mask_layer is not None else None
        colours = display_colours(info["colours"], mode or "distinct colours")
        for i, (name, colour) in enumerate(zip(info["classes"], colours)):
            text = f"{i} {name}" + (" (erases)" if i == 0 else "")
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


class Section(QWidget):
    """A collapsible part of a dock: a header that folds and unfolds its body."""

    def __init__(self, title: str, expanded: bool = True, parent=None):
        super().__init__(parent)
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setChecked(expanded)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.header.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self.body_layout.setContentsMargins(8, 0, 0, 4)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.header)
        lay.addWidget(self.body)
        self.header.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    def add(self, widget) -> None:
        self.body_layout.addWidget(widget)

    def set_expanded(self, expanded: bool) -> None:
        if self.header.isChecked() != expanded:
            self.header.setChecked(expanded)
            return
        self.header.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.body.setVisible(expanded)

    @property
    def expanded(self) -> bool:
        return self.header.isChecked()


MAIN_DOCK = "diffinfinite-main-dock"  # objectName of the DiffInfinite dock's widget


def tab_beside_main_dock(widget) -> bool:
    """Put the napari dock holding ``widget`` into a tab beside the main DiffInfinite dock (when
    that is open in the same window), so each gets the window's full height instead of half of it
    (at 1280 x 800 a second dock stacked under the main one left either too little room).  Only
    the first time the dock is shown; whether it was tabbed."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    if getattr(widget, "_tabbed_once", False):
        return False
    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return False
    widget._tabbed_once = True
    for other in window.findChildren(QDockWidget):
        if other is dock or other.isFloating() or not other.isVisible() or other.widget() is None:
            continue
        inner = other.widget()
        if inner.objectName() == MAIN_DOCK or inner.findChild(QWidget, MAIN_DOCK) is not None:
            window.tabifyDockWidget(other, dock)
            dock.show()
            dock.raise_()
            return True
    return False


class _WheelGuard(QObject):
    """Eats wheel events of value widgets (combo boxes, spin boxes, sliders) that lack keyboard
    focus, and scrolls the scroll area around them instead: scrolling a dock never changes a
    setting on the way (it switched "apply to" from "whole canvas" to "drawn rectangle")."""

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() != QEvent.Type.Wheel or obj.hasFocus():
            return False
        area = obj.parentWidget()
        while area is not None and not isinstance(area, QAbstractScrollArea):
            area = area.parentWidget()
        if area is not None:
            QApplication.sendEvent(area.verticalScrollBar(), event)
        return True


_WHEEL_GUARD = None


def guard_wheel(root) -> None:
    """Let the wheel change no value widget inside ``root`` unless that widget has keyboard focus
    (a click or Tab gives it; then the wheel works as usual)."""
    global _WHEEL_GUARD
    if _WHEEL_GUARD is None:
        _WHEEL_GUARD = _WheelGuard()
    for kind in (QComboBox, QAbstractSpinBox, QAbstractSlider):
        for w in root.findChildren(kind):
            if isinstance(w, QScrollBar):
                continue
            if w.focusPolicy() == Qt.FocusPolicy.WheelFocus:
                w.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
            w.installEventFilter(_WHEEL_GUARD)


def grid_of(card_or_info) -> int:
    """Canvas sides must be multiples of this (px): the latent factor times 8."""
    from src_models.synthesis.canvases import LATENT_MULTIPLE

    factor = card_or_info["factor"] if isinstance(card_or_info, dict) else card_or_info.factor
    return int(factor) * LATENT_MULTIPLE
