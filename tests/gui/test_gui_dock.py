"""The one DiffInfinite dock in a real napari window: it fits 1280 x 800, the mask keeps to the
model's classes, an empty mask asks before it runs, warnings reach the user, the release's masks
import through the class-mapping dialog, and large mask edits can be undone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gui_helpers import canvas_pair, dock, make_canvas, setup_synthesis

from napari_diffinfinite._reader import META

RELEASE_MASKS = Path(__file__).resolve().parents[1] / "data" / "release_masks"


def _inside(widget, window) -> bool:
    """Whether ``widget`` is shown and lies wholly inside ``window`` (nothing to scroll to reach it)."""
    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return False
    top_left = widget.mapTo(window, widget.rect().topLeft())
    bottom_right = widget.mapTo(window, widget.rect().bottomRight())
    return window.rect().contains(top_left) and window.rect().contains(bottom_right)


def test_the_dock_fits_1280x800_with_run_and_progress_in_sight(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    w = dock(viewer, "DiffInfinite")
    qtbot.wait(200)
    assert (window.width(), window.height()) == (1280, 800)
    c = w.canvas
    c.model_picker.set_spec("tiny-test")
    qtbot.waitUntil(lambda: c.grid == 8, timeout=30_000)
    c.width_box.setValue(512)
    c.height_box.setValue(512)
    c.path_edit.setText(str(tmp_path / "c.zarr"))
    c.create()
    qtbot.waitUntil(lambda: canvas_pair(viewer) is not None, timeout=30_000)
    qtbot.wait(300)
    assert (window.width(), window.height()) == (1280, 800)  # the dock did not push the window taller
    for widget in (w.run_button, w.progress_bar, w.progress_label):
        assert _inside(widget, window), widget
        assert not w.scroll.isAncestorOf(widget)  # in the footer: no scrolling ever hides them
    assert w.run_button.isEnabled() and w.run_button.text() == "Run"
    assert "paint" in w.progress_label.text()
    # the sections are there and the canvas section folded its creation form away
    assert w.mask_section.expanded and w.synthesis_section.expanded and not c.new_section.expanded
    assert "1 mask px = 1 image px" in w.mask.resolution_label.text()
    # the legend, the display mode and the main synthesis settings are reachable inside the dock
    assert len(w.mask.legend.buttons) == 4 and w.synthesis.steps_box.isVisibleTo(w)


def test_painting_a_label_that_is_not_a_class_is_caught_at_once(viewer, qtbot, tiny_card, tmp_path):
    from napari.utils.notifications import notification_manager

    w = dock(viewer, "DiffInfinite")
    image, mask = w.canvas.open(make_canvas(tiny_card, tmp_path / "c.zarr", mask=False))
    mask.paint((200, 200), 3)
    mask.selected_label = 1
    # napari's "new label" (the largest label + 1, here 4) and typing 7 both land on real classes
    from napari.layers.labels._labels_key_bindings import new_label

    before = len(notification_manager.records)
    new_label(mask)
    assert mask.selected_label == 2  # the class after the previous one
    mask.selected_label = 3
    mask.selected_label = 7
    assert mask.selected_label == 1  # after the last class: the first one again
    assert any("not a class" in str(n.message) for n in notification_manager.records[before:])
    mask.paint((40, 40), mask.selected_label)
    assert set(np.unique(mask.data)) == {0, 1, 3}
    # a stroke that paints a foreign label anyway (from code) is taken back when it ends
    mask.paint((100, 100), 9)
    assert (mask.data == 9).any()
    qtbot.waitUntil(lambda: not (mask.data == 9).any(), timeout=5_000)
    assert set(np.unique(mask.data)) == {0, 1, 3}
    assert any("taken back" in str(n.message) for n in notification_manager.records[before:])
    # the colormap holds the classes only: anything else would show in magenta, not invisibly
    np.testing.assert_allclose(mask.colormap.map(np.array([5]))[0], [1, 0, 1, 1])


def test_an_empty_mask_asks_before_running_and_warnings_are_notifications(viewer, qtbot, tiny_card, tmp_path):
    from napari.utils.notifications import notification_manager

    w = dock(viewer, "DiffInfinite")
    image, mask = w.canvas.open(make_canvas(tiny_card, tmp_path / "c.zarr", size=128, mask=False))
    s = w.synthesis
    setup_synthesis(s, steps=2)
    asked = []
    s.confirm = lambda title, text: asked.append(text) or False
    assert s.start() is None and len(asked) == 1 and "empty" in asked[0]
    assert "not run" in s.status.text() and mask.editable
    # painting one class is enough; a drawn rectangle over unknown pixels only asks again
    mask.paint((10, 10), 1)
    s.device_box.setCurrentText("cuda:0")  # this machine has no CUDA: the run says so and goes on on the CPU
    before = len(notification_manager.records)
    run = s.start()
    assert len(asked) == 1
    assert not mask.editable and w.mask.lock_label.isVisibleTo(w.mask)  # the dock says why painting is off
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    assert run.state == "done", run.text
    assert not w.mask.lock_label.isVisibleTo(w.mask) and mask.editable
    notes = [str(n.message) for n in notification_manager.records[before:]]
    assert any("cuda:0" in m and "CPU" in m for m in notes), notes
    # a canvas size off the grid is refused with a notification, not a status line only
    before = len(notification_manager.records)
    w.canvas.grid = 8
    w.canvas.width_box.setValue(100)
    w.canvas.path_edit.setText(str(tmp_path / "bad.zarr"))
    assert w.canvas.create() is None
    assert any("96" in str(n.message) and "104" in str(n.message) for n in notification_manager.records[before:])


def test_release_masks_load_through_the_class_map_dialog_remembered_per_model(viewer, qtbot, tiny_card, tmp_path):
    from napari_diffinfinite._class_map import config_dir

    w = dock(viewer, "DiffInfinite")
    image, mask = w.canvas.open(make_canvas(tiny_card, tmp_path / "c.zarr", size=256, mask=False))
    tools = w.mask
    grey = RELEASE_MASKS / "squamous_mask_example_grey.png"  # grey values 0, 63, 191, 255
    tools.load(str(grey))
    qtbot.waitUntil(lambda: tools.class_map_dialog is not None, timeout=30_000)
    dialog = tools.class_map_dialog
    assert "grey-coded 5-class" in dialog.about.text()
    assert list(dialog.boxes) == [0, 1, 3, 4]  # Unknown, Carcinoma, Tumor stroma, Others
    assert dialog.mapping() == {0: 0, 1: 0, 3: 0, 4: 0}  # no shared class names: unknown until chosen
    dialog.set_mapping({1: 2, 3: 3, 4: 1})
    dialog.accept()
    qtbot.waitUntil(lambda: not tools.busy and "loaded" in tools.status.text(), timeout=30_000)
    from skimage import io

    from src_models.io.masks import resize_labels

    raw = resize_labels(io.imread(grey), mask.data.shape)
    lut = {0: 0, 63: 2, 191: 3, 255: 1}
    for value, label in lut.items():
        assert (mask.data[raw == value] == label).all(), value
    assert (config_dir() / "class_maps.json").exists()
    # the mapping is remembered for this model: the next release mask in the 5-class scheme starts from it
    mask.undo()
    assert not mask.data.any()
    tools.load(str(RELEASE_MASKS / "synthetic_5class_label_map.png"))  # uint16, labels 0 and 4
    qtbot.waitUntil(lambda: tools.class_map_dialog is not None, timeout=30_000)
    dialog = tools.class_map_dialog
    assert "5-class scheme" in dialog.about.text() and dialog.mapping() == {0: 0, 4: 1}
    dialog.accept()
    qtbot.waitUntil(lambda: not tools.busy and "loaded" in tools.status.text(), timeout=30_000)
    assert set(np.unique(mask.data)) == {0, 1}


def test_a_procedural_mask_on_a_20000_px_canvas_can_be_undone(viewer, qtbot, tmp_path):
    from src_models.models.card import BUILTIN_DIRS, ModelCard

    card = ModelCard.load(BUILTIN_DIRS["default"])  # factor 4: a 5,000 x 5,000 px mask (25 M px)
    path = make_canvas(card, tmp_path / "big.zarr", size=20_000, region=2048, mask=False)
    w = dock(viewer, "DiffInfinite")
    image, mask = w.canvas.open(path)
    assert mask.data.shape == (5000, 5000)
    w.mask.layout_box.setCurrentText("procedural")  # the default model's layout model would take minutes here
    assert w.mask.generate() is not None
    qtbot.waitUntil(lambda: not w.mask.busy, timeout=120_000)
    assert "too large" not in w.mask.status.text()
    assert mask.data.all()
    mask.undo()
    assert not mask.data.any()
    mask.redo()
    assert mask.data.all()


def test_mask_display_modes_and_legend_follow(viewer, tiny_card, tmp_path):
    w = dock(viewer, "DiffInfinite")
    image, mask = w.canvas.open(make_canvas(tiny_card, tmp_path / "c.zarr"))
    assert mask.metadata[META]["mode"] == "distinct colours"
    w.mask.mode_box.setCurrentText("contours")
    assert mask.contour > 0 and mask.metadata[META]["mode"] == "contours"
    w.mask.mode_box.setCurrentText("class colours")
    assert mask.contour == 0
    icon = w.mask.legend.buttons[2].icon().pixmap(8, 8).toImage().pixelColor(4, 4)
    assert icon.name() == tiny_card.colours[2].lower()


def _whole_on_screen(widget, window) -> bool:
    """Shown, not clipped by a scroll area or a dock, and inside the window."""
    if not widget.isVisible():
        return False
    return widget.visibleRegion().boundingRect() == widget.rect() and _inside(widget, window)


def test_every_dock_fits_1280x800_beside_the_main_dock(make_napari_viewer, qtbot, tiny_card, tmp_path):
    from qtpy.QtWidgets import QAbstractButton, QApplication, QComboBox, QDockWidget, QSpinBox

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    main = dock(viewer, "DiffInfinite")
    main.canvas.open(make_canvas(tiny_card, tmp_path / "c.zarr", size=256, region=64))
    annotations = dock(viewer, "Annotations")
    review = dock(viewer, "Blinded review")
    qtbot.wait(300)
    assert (window.width(), window.height()) == (1280, 800)

    def dock_of(widget):
        d = widget.parentWidget()
        while not isinstance(d, QDockWidget):
            d = d.parentWidget()
        return d

    # the two docks are tabs beside the main dock: each has the window's height to itself
    assert set(window.tabifiedDockWidgets(dock_of(main))) >= {dock_of(annotations), dock_of(review)}

    def controls(widget):
        return [w for kind in (QAbstractButton, QComboBox, QSpinBox) for w in widget.findChildren(kind)
                if w.isVisibleTo(widget) and not w.inherits("QScrollBar")]

    def check(widget, scrolls: bool):
        dock_of(widget).raise_()
        QApplication.processEvents()
        qtbot.wait(100)
        assert (window.width(), window.height()) == (1280, 800)
        shown = controls(widget)
        assert shown
        for w in shown:
            if scrolls:  # the main dock scrolls vertically by design: nothing may be clipped sideways
                if w.visibleRegion().isEmpty():
                    continue
                assert w.visibleRegion().boundingRect().width() == w.width(), (w, w.text() if hasattr(w, "text") else "")
            else:
                assert _whole_on_screen(w, window), (w, getattr(w, "text", lambda: "")())

    for section in (main.canvas.more_section, main.mask.more_section, main.annotations_section):
        section.set_expanded(True)
    check(main, scrolls=True)
    for w in (main.run_button, main.progress_bar):
        assert _whole_on_screen(w, window)
    check(annotations, scrolls=False)
    check(review, scrolls=False)  # the sources form and Start
    review._set_reviewing(True)  # a tile on show: the answers, ratings and Next in sight
    check(review, scrolls=False)
    for w in (review.real_button, review.syn_button, review.next_button, *review.rating_buttons):
        assert _whole_on_screen(w, window)
