"""Canvas widget and mask tools, opened through the manifest."""
from __future__ import annotations

import numpy as np

from gui_helpers import canvas_pair, dock, make_canvas

from napari_diffinfinite._reader import META


def test_all_widgets_open_through_the_manifest(viewer):
    from napari_diffinfinite._canvas_widget import CanvasWidget
    from napari_diffinfinite._dock import DiffInfiniteWidget
    from napari_diffinfinite._mask_tools import MaskToolsWidget
    from napari_diffinfinite._synthesis_widget import SynthesisWidget

    assert isinstance(dock(viewer, "DiffInfinite"), DiffInfiniteWidget)
    assert isinstance(dock(viewer, "Canvas"), CanvasWidget)
    assert isinstance(dock(viewer, "Mask tools"), MaskToolsWidget)
    assert isinstance(dock(viewer, "Synthesis"), SynthesisWidget)


def test_launch_opens_the_demo_canvas_with_the_dock(make_napari_viewer, monkeypatch, qtbot):
    import napari

    from napari_diffinfinite import launch

    monkeypatch.setattr(napari, "Viewer", lambda **kw: make_napari_viewer(**kw))  # the fixture cleans up
    viewer = launch.open_viewer(show=False)
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=10_000)  # the region overlay joins
    assert [layer.name for layer in viewer.layers] == ["demo", "demo regions", "demo mask"]
    docked = list(viewer.window.dock_widgets)
    for name in launch.WIDGETS:
        assert any(name in d for d in docked), docked


def test_model_picker_keeps_chosen_paths_above_the_choosers(qtbot, tmp_path):
    from napari_diffinfinite._common import ModelPicker

    picker = ModelPicker()
    qtbot.addWidget(picker)
    picker.set_spec("tiny-test")
    assert picker.spec() == "tiny-test"
    picker.set_spec(str(tmp_path / "model-5.pt"))
    assert picker.spec() == str(tmp_path / "model-5.pt") and picker.currentText() == "model-5.pt"
    texts = [picker.itemText(i) for i in range(picker.count())]
    assert texts[-2:] == [ModelPicker.CHOOSE_DIR, ModelPicker.CHOOSE_FILE]
    picker.set_spec("tiny-test")
    picker.set_spec(str(tmp_path / "model-5.pt"))  # chosen again: no duplicate entry
    assert [picker.itemText(i) for i in range(picker.count())] == texts


def test_model_picker_lists_every_installed_builtin(qtbot, tmp_path, monkeypatch):
    from src_models.models import card as card_module
    from napari_diffinfinite._common import ModelPicker

    # a stand-in install: "default" has weights, "tumour" has none yet, "extra" has some
    for name in ("default", "extra"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "card.json").write_text("{}")
    monkeypatch.setattr(card_module, "BUILTIN_DIRS", {n: tmp_path / n for n in ("default", "tumour", "extra")})
    picker = ModelPicker()
    qtbot.addWidget(picker)
    texts = [picker.itemText(i) for i in range(picker.count())]
    assert texts == ["default", "extra", "tiny-test", ModelPicker.CHOOSE_DIR, ModelPicker.CHOOSE_FILE]


def test_a_tumour_canvas_has_the_tumour_legend_and_colours(viewer, qtbot, tmp_path):
    from src_models.data.masks_from_nuclei import CLASSES, COLOURS

    w = dock(viewer, "Canvas")
    w.width_box.setValue(256)
    w.height_box.setValue(256)
    w.model_picker.set_spec("tumour")
    w.path_edit.setText(str(tmp_path / "tumour.zarr"))
    w.create()
    qtbot.waitUntil(lambda: canvas_pair(viewer) is not None, timeout=30_000)
    image, mask = canvas_pair(viewer)
    info = image.metadata[META]
    assert info["classes"] == CLASSES and info["settings"]["model"] == "tumour"
    assert [b.text() for b in w.legend.buttons] == ["0 unknown (erases)", "1 background", "2 tumour", "3 stroma",
                                                    "4 infiltrate"]
    from napari_diffinfinite._reader import set_mask_mode

    set_mask_mode(mask, "class colours")  # the mask shown in the card's own colours
    for label, colour in enumerate(COLOURS[1:], start=1):
        rgba = np.asarray(mask.colormap.map(np.array([label])))[0]
        assert np.allclose(rgba[:3], [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)], atol=0.02), label


def test_create_a_canvas_in_the_widget(viewer, qtbot, tmp_path):
    w = dock(viewer, "Canvas")
    syn = dock(viewer, "Synthesis")
    w.width_box.setValue(384)
    w.height_box.setValue(256)
    w.model_picker.set_spec("tiny-test")
    w.region_box.setValue(64)
    w.path_edit.setText(str(tmp_path / "new.zarr"))
    qtbot.waitUntil(lambda: w.grid == 8, timeout=30_000)  # the size boxes step by tiny-test's grid
    assert w.width_box.singleStep() == 8
    w.create()
    qtbot.waitUntil(lambda: canvas_pair(viewer) is not None, timeout=30_000)
    image, mask = canvas_pair(viewer)
    assert image.multiscale and image.data[0].shape == (256, 384, 3)
    assert mask.data.shape == (256, 384) and mask.data.dtype == np.uint8
    info = image.metadata[META]
    assert info["region_size"] == 64 and info["settings"]["model"] == "tiny-test"
    assert len(w.legend.buttons) == len(info["classes"])
    assert "0/24 regions" in w.info_label.text()
    # the synthesis widget followed: defaults from the canvas, one ω box per tissue class
    assert syn.picker.image_layer() is image
    assert syn.steps_box.value() == info["settings"]["steps"]
    assert sorted(syn.class_boxes) == list(range(1, len(info["classes"])))
    # clicking a class in the legend picks it for painting
    w.legend.buttons[2].click()
    assert mask.selected_label == 2 and mask.mode == "paint"
    # a size off the model's grid is refused with the neighbours named, and the button comes back
    from napari.utils.notifications import notification_manager

    # the first create's worker gives the button back when it finishes, which may come after the canvas shows
    qtbot.waitUntil(w.create_button.isEnabled, timeout=30_000)
    before = len(notification_manager.records)
    w.width_box.setValue(390)
    w.path_edit.setText(str(tmp_path / "bad.zarr"))
    assert w.create() is None  # refused before any work starts, as a notification
    assert w.create_button.isEnabled() and "not created" in w.status.text()
    assert "384" in w.status.text() and "392" in w.status.text()
    assert any("392" in str(n.message) for n in notification_manager.records[before:])
    assert not (tmp_path / "bad.zarr").exists()
    # typing a size off the grid snaps it to the nearest multiple (and says so)
    w.width_box.setValue(391)
    w.width_box.editingFinished.emit()
    assert w.width_box.value() == 392


def test_a_100k_canvas_opens_as_a_pyramid_with_a_paintable_mask(viewer, qtbot, tmp_path):
    w = dock(viewer, "Canvas")
    w.width_box.setValue(100_000)
    w.height_box.setValue(100_000)
    w.model_picker.set_spec("tiny-test")
    w.region_box.setValue(4096)
    w.path_edit.setText(str(tmp_path / "huge.zarr"))
    w.create()
    qtbot.waitUntil(lambda: canvas_pair(viewer) is not None, timeout=60_000)
    image, mask = canvas_pair(viewer)
    assert image.data[0].shape == (100_000, 100_000, 3) and max(image.data[-1].shape[:2]) <= 256
    info = mask.metadata[META]
    assert info["mask_step"] > 1 and max(mask.data.shape) <= 8192
    assert tuple(mask.scale) == (info["mask_step"],) * 2
    mask.paint((100, 100), 3)  # painting works on the reduced grid
    assert (mask.data == 3).any()


def _canvas_with_tools(viewer, qtbot, card, tmp_path, mask=False):
    path = make_canvas(card, tmp_path / "m.zarr", size=256, region=64, mask=mask)
    canvas_w = dock(viewer, "Canvas")
    tools = dock(viewer, "Mask tools")
    image, mask_layer = canvas_w.open(path)
    return path, image, mask_layer, tools


def test_mask_tools_generate_load_clear_undo_save(viewer, qtbot, tiny_card, tmp_path):
    path, image, mask, tools = _canvas_with_tools(viewer, qtbot, tiny_card, tmp_path)
    assert not mask.data.any()

    # generate (procedural) over the whole canvas; napari's undo takes it back
    assert tools.generate() is not None and tools.busy
    qtbot.waitUntil(lambda: not tools.busy, timeout=30_000)
    assert set(np.unique(mask.data)) == {1, 2, 3}
    assert "procedural" in tools.status.text()
    mask.undo()
    assert not mask.data.any()
    mask.redo()
    generated = mask.data.copy()

    # clear a drawn rectangle only
    tools.draw_rectangle()
    area = next(layer for layer in viewer.layers if layer.metadata.get(META, {}).get("role") == "area")
    area.add_rectangles(np.array([[10, 20], [60, 100]]))
    tools.clear()
    assert not mask.data[10:61, 20:101].any()  # the pixels whose centres the rectangle holds
    np.testing.assert_array_equal(mask.data[100:], generated[100:])
    # generate into the drawn rectangle only
    before = mask.data.copy()
    tools.generate()
    qtbot.waitUntil(lambda: not tools.busy, timeout=30_000)
    changed = mask.data != before
    assert mask.data[10:61, 20:101].all() and changed[10:61, 20:101].all()
    changed[10:61, 20:101] = False
    assert not changed.any()

    # load a mask (NPY and a colour PNG in the class colours) into the whole canvas
    tools.target_box.setCurrentText("whole canvas")
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 32:] = 2
    np.save(tmp_path / "m.npy", labels)
    tools.load(str(tmp_path / "m.npy"))
    qtbot.waitUntil(lambda: not tools.busy, timeout=10_000)
    assert (mask.data[:, :128] == 0).all() and (mask.data[:, 128:] == 2).all()  # fitted 64 -> 256
    from skimage import io

    from src_models.synthesis.canvases import mask_rgb

    rgb = mask_rgb(np.where(labels == 2, 3, 1).astype(np.uint8), tiny_card.colours)
    io.imsave(tmp_path / "m.png", rgb, check_contrast=False)
    tools.load(str(tmp_path / "m.png"))
    qtbot.waitUntil(lambda: not tools.busy, timeout=10_000)
    assert (mask.data[:, :128] == 1).all() and (mask.data[:, 128:] == 3).all()

    import tifffile

    tifffile.imwrite(tmp_path / "m.tif", np.where(labels == 2, 1, 2).astype(np.uint8))
    tools.load(str(tmp_path / "m.tif"))
    qtbot.waitUntil(lambda: not tools.busy, timeout=10_000)
    assert (mask.data[:, :128] == 2).all() and (mask.data[:, 128:] == 1).all()

    # a mask with labels the model does not know asks how to map them; cancelling leaves the layer alone
    np.save(tmp_path / "other.npy", np.full((8, 8), 40, np.uint8))
    before = mask.data.copy()
    tools.load(str(tmp_path / "other.npy"))
    qtbot.waitUntil(lambda: tools.class_map_dialog is not None, timeout=10_000)
    assert list(tools.class_map_dialog.boxes) == [40]
    tools.class_map_dialog.reject()
    qtbot.waitUntil(lambda: not tools.busy, timeout=10_000)
    assert "not loaded" in tools.status.text()
    np.testing.assert_array_equal(mask.data, before)
    # a file that is not a mask: a notification with the reader's reason, the layer untouched
    from napari.utils.notifications import notification_manager

    (tmp_path / "junk.png").write_bytes(b"not a png")
    count = len(notification_manager.records)
    tools.load(str(tmp_path / "junk.png"))
    qtbot.waitUntil(lambda: not tools.busy and "failed" in tools.status.text(), timeout=10_000)
    assert any("junk.png" in str(n.message) for n in notification_manager.records[count:])
    np.testing.assert_array_equal(mask.data, before)

    # save writes the layer into the store
    tools.save()
    qtbot.waitUntil(lambda: not tools.busy, timeout=10_000)
    from src_models.store.canvas import Canvas

    with Canvas.open(path) as canvas:
        np.testing.assert_array_equal(canvas.mask[:], mask.data)
    assert "saved" in tools.status.text()


def test_import_a_slide_then_extend_it_in_the_widget(viewer, qtbot, tmp_path):
    from pathlib import Path

    from src_models.store.canvas import Canvas

    root = Path(__file__).resolve().parents[2]
    slide = root / "data" / "cmu_small_region" / "cmu_small_region.svs"
    w = dock(viewer, "Canvas")
    w.model_picker.set_spec("tiny-test")
    w.region_box.setValue(512)
    w.path_edit.setText(str(tmp_path / "slide.zarr"))
    w.slide_edit.setText(str(slide))
    w.import_slide()
    qtbot.waitUntil(lambda: canvas_pair(viewer) is not None, timeout=60_000)
    image, _ = canvas_pair(viewer)
    assert image.multiscale and image.data[0].shape[:2] == (2960, 2216)
    assert np.asarray(image.data[-1]).mean() > 100  # real tissue and glass, not an empty store
    with Canvas.open(tmp_path / "slide.zarr") as c:
        assert c.done_indices() == {r.index for r in c.regions()}
        assert c.settings["model"] == "tiny-test"  # the dock names the model ("model ?" before)
    assert "model tiny-test" in w.info_label.text()
    # extend the imported canvas by 64 px at the top and the right: the border is left to sample
    w.pad_boxes[0].setValue(64)
    w.pad_boxes[1].setValue(64)
    w.path_edit.setText(str(tmp_path / "grown.zarr"))
    w.outpaint()
    from napari_diffinfinite._reader import canvas_layers

    qtbot.waitUntil(lambda: len(canvas_layers(viewer)) == 2 and canvas_pair(viewer)[0] is not image, timeout=60_000)
    grown, _ = canvas_pair(viewer)
    # the new canvas lies right of the first one, not on top of it
    assert grown.translate[-1] >= image.translate[-1] + 2216 and grown.translate[-2] == image.translate[-2]
    with Canvas.open(tmp_path / "grown.zarr") as g:
        assert (g.height, g.width) == (3024, 2280)
        assert len(g.done_indices()) < len(g.regions()) and g.jobs()
        assert np.array_equal(g.read_rgb(64, 164, 0, 100), Canvas.open(tmp_path / "slide.zarr").read_rgb(0, 100, 0, 100))


def test_the_wheel_changes_no_setting_without_keyboard_focus(viewer, qtbot, tiny_card, tmp_path):
    from qtpy.QtCore import QPoint, QPointF, Qt
    from qtpy.QtGui import QWheelEvent
    from qtpy.QtWidgets import QApplication

    w = dock(viewer, "DiffInfinite")
    w.canvas.open(make_canvas(tiny_card, tmp_path / "c.zarr", size=256, region=64))
    viewer.window._qt_window.show()

    def wheel(widget, notches=-1):
        centre = QPointF(widget.rect().center())
        event = QWheelEvent(centre, QPointF(widget.mapToGlobal(widget.rect().center())), QPoint(0, 0),
                            QPoint(0, 120 * notches), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                            Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(widget, event)

    target, steps = w.mask.target_box, w.synthesis.steps_box
    before = (target.currentIndex(), steps.value(), w.synthesis.omega_box.value())
    for box in (target, steps, w.synthesis.omega_box):
        assert not box.hasFocus()
        wheel(box)
    assert (target.currentIndex(), steps.value(), w.synthesis.omega_box.value()) == before
    # with keyboard focus the wheel works as usual (Xvfb has no window manager to give real focus)
    steps.hasFocus = lambda: True
    wheel(steps, 1)
    assert steps.value() != before[1]


def test_generate_shows_progress_and_time_left_in_the_footer_and_cancels(viewer, qtbot, tiny_card, tmp_path,
                                                                         monkeypatch):
    """A long Generate (the learned layout of a big canvas ran 12 minutes with nothing shown): the footer
    says what runs with its count and time left, Run waits, the button cancels and the mask stays."""
    import threading
    import time

    from napari_diffinfinite import _mask_tools

    release = threading.Event()

    def slow_layout(spec, shape, image_px, labels, seed, kind, progress=None, cancel=None):
        for level in range(1, 51):
            if cancel.is_set():
                from src_models.sampling.sampler import Cancelled

                raise Cancelled()
            progress(level, 50, "denoising level")
            if level == 5:
                release.wait(10)  # hold here until the test has looked
            time.sleep(0.02)
        return np.full(shape, 2, np.uint8), "learned layout model"

    monkeypatch.setattr(_mask_tools, "layout_job", slow_layout)
    w = dock(viewer, "DiffInfinite")
    _, mask = w.canvas.open(make_canvas(tiny_card, tmp_path / "g.zarr", size=256, region=64, mask=False))
    tools = w.mask
    tools.layout_box.setCurrentText("learned")
    job = tools.generate()
    qtbot.waitUntil(lambda: "5 of 50 levels" in w.progress_label.text(), timeout=10_000)
    line = w.progress_label.text()
    assert line.startswith("generating a learned layout: denoising level") and "left" in line
    assert not w.run_button.isEnabled() and tools.generate_button.text() == "Cancel"
    assert w.progress_bar.maximum() == 50 and w.progress_bar.value() == 5
    tools.generate()  # the same button cancels
    assert tools.generate_button.text() == "Cancelling…"
    release.set()
    qtbot.waitUntil(lambda: not job.busy and not tools.busy, timeout=10_000)
    assert job.state == "cancelled" and not mask.data.any()
    assert "cancelled" in w.progress_label.text() and w.run_button.isEnabled()
    assert tools.generate_button.text() == "Generate"
    # and to the end: the layout lands, the footer says so
    release.set()
    job = tools.generate()
    qtbot.waitUntil(lambda: not tools.busy, timeout=20_000)
    assert job.state == "done" and (mask.data == 2).all()
    assert "done in" in w.progress_label.text() and w.run_button.isEnabled()


def test_the_learned_layout_reports_levels_and_stops_on_cancel():
    import threading

    import pytest

    from napari_diffinfinite._mask_tools import layout_job
    from src_models.sampling.sampler import Cancelled

    seen = []
    labels, how = layout_job("default", (32, 32), (256, 256), [1, 2, 3], 0, "learned",
                             progress=lambda d, t, text="": seen.append((d, t)))
    if how != "learned layout model":
        pytest.skip("the shipped default model (with its layout model) is not installed")
    from src_models.models.loading import find_card

    levels = find_card("default")[0].mask_model["steps"]  # one report a level, as many levels as the card's steps
    assert seen[-1] == (levels, levels) and labels.shape == (32, 32)
    cancel = threading.Event()

    def stop_at_3(d, t, text=""):
        if d >= 3:
            cancel.set()

    with pytest.raises(Cancelled):
        layout_job("default", (32, 32), (256, 256), [1, 2, 3], 0, "learned", progress=stop_at_3, cancel=cancel)


def test_importing_a_slide_shows_regions_and_time_left_and_cancels(viewer, qtbot, tmp_path, monkeypatch):
    from pathlib import Path

    from napari_diffinfinite import _worker

    root = Path(__file__).resolve().parents[2]
    slide = root / "data" / "cmu_small_region" / "cmu_small_region.svs"
    seen = []
    original = _worker.import_slide_job

    def watched(*args, progress=None, cancel=None):
        def spy(done, total, text=""):
            seen.append((done, total))
            if done >= 3:  # the user presses Cancel after three regions
                cancel.set()
            progress(done, total, text)

        return original(*args, progress=spy, cancel=cancel)

    monkeypatch.setattr(_worker, "import_slide_job", watched)
    main = dock(viewer, "DiffInfinite")
    w = main.canvas
    w.model_picker.set_spec("tiny-test")
    w.region_box.setValue(256)
    w.path_edit.setText(str(tmp_path / "slide.zarr"))
    w.slide_edit.setText(str(slide))
    job = w.import_slide()
    assert w.import_button.text() == "Cancel" and not main.run_button.isEnabled()
    qtbot.waitUntil(lambda: not job.busy, timeout=60_000)
    assert job.state == "cancelled" and canvas_pair(viewer) is None
    assert any(total > 3 for _, total in seen)  # a count of regions came through
    assert "import cancelled" in w.status.text() and "cancelled" in main.progress_label.text()
    assert w.import_button.text() == "Import slide as a new canvas"
