"""Running synthesis from the widget: progressive fill with throttled refreshes and the work off the
GUI thread, cancel within one network batch and resume, errors.  (How responsive the GUI stays is
timed in benchmarks/bench_gui_responsiveness.py, not asserted here: it depends on the machine's load.)"""
from __future__ import annotations

import threading
import time

import numpy as np

from gui_helpers import dock, make_canvas, regions_shown, sampled_canvas, setup_synthesis

from napari_diffinfinite._reader import META


def json_steps(path, index: int) -> int:
    """The steps recorded for a finished region (its run's settings)."""
    from src_models.store.canvas import Canvas

    with Canvas.open(path) as canvas:
        return canvas.done_info(index)["steps"]


def _open(viewer, card, tmp_path, mask=True, size=256, region=64):
    path = make_canvas(card, tmp_path / "s.zarr", size=size, region=region, mask=mask)
    image, mask_layer = dock(viewer, "Canvas").open(path)
    return path, image, mask_layer


def test_run_fills_region_by_region_with_throttled_refreshes_off_the_gui_thread(viewer, qtbot, tiny_card, tmp_path):
    from napari_diffinfinite._worker import MODELS, REFRESH_S

    path, image, mask = _open(viewer, tiny_card, tmp_path, mask=False)
    # paint the mask programmatically, as a user would with the brush and fill tools
    mask.brush_size = 40
    for y, x, label in ((40, 40, 1), (40, 200, 2), (200, 120, 3)):
        mask.paint((y, x), label)
    mask.fill((128, 128), 2)
    painted = mask.data.copy()
    assert set(np.unique(painted)) == {1, 2, 3}

    w = dock(viewer, "Synthesis")
    setup_synthesis(w)
    seen = []  # (pixels shown, worker running) at every refresh
    threads = set()  # threads the network ran in
    net = MODELS.get("tiny-test", "cpu").unet
    calls = []

    def network_ran(*a):
        threads.add(threading.get_ident())
        calls.append(1)
        # the tiny model is quick: a floor of 10 ms a network call (64 calls or more over the 16 regions)
        # makes the run last several refresh intervals on any machine, so the partial fills below are
        # seen however fast the machine is (a busy one only lengthens the run)
        time.sleep(0.01)

    hook = net.register_forward_hook(network_ran)

    statuses = []
    dock_bar = []  # (value, maximum) of the widget's own progress bar at every refresh

    def on_refresh():
        seen.append((regions_shown(image), run.worker.is_running))
        statuses.append(w.progress_label.text())
        dock_bar.append((w.progress_bar.value(), w.progress_bar.maximum()))

    try:
        run = w.start()
        run._on_refresh = on_refresh
        assert w.run_button.text() == "Cancel" and not mask.editable
        w.steps_box.setValue(7)  # the run took its values when it started; the worker never reads widgets
        qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    finally:
        hook.remove()

    assert run.state == "done", run.text
    assert w.run_button.text() == "Run" and mask.editable
    while_running = [n for n, running in seen if running]
    # the layer showed the canvas filling in while the worker ran, not only at the end
    partial = {n for n in while_running if 0 < n < 16}
    assert len(partial) >= 2, seen
    assert while_running == sorted(while_running)
    assert regions_shown(image) == 16 and run.regions_done == 16
    # refreshes are throttled: never two within REFRESH_S while the run goes on (the last one, when
    # it ends, shows what is left at once), and never more than one per finished region
    gaps = np.diff(run.refresh_times[:-1])
    assert 2 <= run.refreshes <= 16 and (gaps >= REFRESH_S - 1e-6).all(), gaps
    assert len(calls) >= 64, len(calls)  # the floor above held the run over at least 0.64 s
    # the network ran in the worker thread only, never on the GUI thread
    main = threading.main_thread().ident
    assert threads and main not in threads and run.worker_thread in threads
    # the widget's progress bar counted levels of all regions (16 regions x 4 steps), its line
    # said which region and how long is left; napari's activity dock got no bar (it stalls the GUI)
    from napari.utils import progress

    assert all(m == 64 for _, m in dock_bar) and any(0 < v < 64 for v, _ in dock_bar), dock_bar
    assert not progress._all_instances
    assert any("/16 regions" in t and "left" in t for t in statuses), statuses
    assert w.progress_bar.value() == 64 and w.progress_label.text().startswith("done: 16 regions")
    # the painted mask went into the store before the run, every region is marked done
    from src_models.store.canvas import Canvas

    with Canvas.open(path) as canvas:
        np.testing.assert_array_equal(canvas.mask[:], painted)
        assert canvas.done_indices() == set(range(16))
        assert canvas.settings["steps"] == 4 and run.request.steps == 4
        assert {json_steps(path, i) for i in range(16)} == {4}  # every region was sampled with 4
    # the model is loaded once and kept: a second run loads nothing
    loads = MODELS.loads
    w.steps_box.setValue(4)
    w.redo_box.setChecked(True)
    run2 = w.start()
    qtbot.waitUntil(lambda: not run2.busy, timeout=60_000)
    assert run2.state == "done" and MODELS.loads == loads


def test_a_cancelled_redo_is_resumed_by_the_next_run_not_started_over(viewer, qtbot, tiny_card, tmp_path):
    from src_models.store.canvas import Canvas

    path, image, mask = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    setup_synthesis(w, preview=False)
    first = w.start()
    qtbot.waitUntil(lambda: not first.busy, timeout=120_000)
    assert first.state == "done"
    w.redo_box.setChecked(True)  # the whole canvas again
    run = w.start()
    qtbot.waitUntil(lambda: run.regions_done >= 2, timeout=60_000)
    w.run_button.click()  # Cancel
    qtbot.waitUntil(lambda: not run.busy, timeout=30_000)
    assert run.state == "cancelled"
    assert not w.redo_box.isChecked()  # the redo is scheduled in the canvas: nothing to ask for again
    with Canvas.open(path) as canvas:
        left = 16 - len(canvas.done_indices())
    assert 0 < left <= 14
    resumed = w.start()
    qtbot.waitUntil(lambda: not resumed.busy, timeout=120_000)
    assert resumed.state == "done" and resumed.regions_total == left  # the rest, not all 16 again


def test_cancel_keeps_finished_regions_and_run_resumes(viewer, qtbot, tiny_card, tmp_path):
    path, image, mask = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    setup_synthesis(w, preview=True)
    viewer.camera.center = (224, 224)  # regions nearest the centre of the view go first
    run = w.start()
    qtbot.waitUntil(lambda: run.regions_done >= 2, timeout=60_000)
    w.run_button.click()  # Cancel
    assert w.run_button.text() == "Cancelling…" and not w.run_button.isEnabled()
    w.run_button.click()  # a disabled button does nothing: the run is not restarted
    qtbot.waitUntil(lambda: not run.busy, timeout=30_000)
    assert run.state == "cancelled" and w.run_button.text() == "Run" and w.run_button.isEnabled()
    from src_models.store.canvas import Canvas

    with Canvas.open(path) as canvas:
        done = canvas.done_indices()
        regions = {r.index: r for r in canvas.regions()}
        assert 2 <= len(done) < 16
        assert 15 in done  # the bottom-right region, under the view centre, came first
        for i in regions:  # finished regions hold pixels, the others none
            y0, y1, x0, x1 = regions[i].px(canvas.factor)
            block = canvas.read_rgb(y0, y1, x0, x1)
            assert (block.max() > 0) == (i in done), i
    assert regions_shown(image) == len(done)  # the layer shows what was kept
    roles = [layer.metadata.get(META, {}).get("role") for layer in viewer.layers]
    assert "preview" not in roles  # the preview layer goes when the run ends
    # the region overlay: finished regions clear, none in flight, the rest pending
    from napari_diffinfinite._overlay import DONE, PENDING, find_overlay

    overlay_layer = find_overlay(viewer, image.metadata[META]["path"])
    assert overlay_layer is not None and run.overlay.layer is overlay_layer
    states = run.overlay.states.ravel()
    assert {i for i in range(16) if states[i] == DONE} == done
    assert all(states[i] == PENDING for i in range(16) if i not in done)

    resumed = w.start()
    qtbot.waitUntil(lambda: resumed.regions_done >= 1, timeout=60_000)
    assert resumed.regions_total == 16 - len(done)  # only what was missing
    from napari_diffinfinite._worker import cancel_all

    cancel_all()  # what napari quitting does (QApplication.aboutToQuit)
    qtbot.waitUntil(lambda: not resumed.busy, timeout=30_000)
    assert resumed.state == "cancelled"
    final = w.start()
    qtbot.waitUntil(lambda: not final.busy, timeout=60_000)
    assert final.state == "done"
    with Canvas.open(path) as canvas:
        assert canvas.done_indices() == set(range(16))


def test_view_and_rectangle_regions(viewer, qtbot, tiny_card, tmp_path):
    path, image, mask = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    setup_synthesis(w, region="drawn rectangle")
    w.draw_rectangle()
    area = next(layer for layer in viewer.layers if layer.metadata.get(META, {}).get("role") == "area")
    area.add_rectangles(np.array([[50, 70], [120, 180]]))
    request = w.build_request(image)
    assert request.area == (50, 121, 70, 181)
    run = w.start()
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    assert run.state == "done" and run.regions_total == 4  # the 2 x 2 regions under the rectangle

    # quitting napari cancels every run in flight (Qt's thread pool would otherwise wait for it)
    from napari_diffinfinite._worker import cancel_all

    w.region_box.setCurrentText("whole canvas")
    run = w.start()
    qtbot.waitUntil(lambda: run.state == "running" and run.regions_done >= 1, timeout=60_000)
    cancel_all()
    assert w.run_button.text() == "Cancelling…"
    qtbot.waitUntil(lambda: not run.busy, timeout=30_000)
    assert run.state == "cancelled" and run.regions_done < 12

    w.region_box.setCurrentText("current view")
    viewer.camera.center = (32, 32)
    viewer.camera.zoom = viewer.canvas.size[0] / 40
    request = w.build_request(image)
    y0, y1, x0, x1 = request.area
    assert 0 <= y0 <= 12 and 52 <= y1 <= 64 and request.centre == (32.0, 32.0)


def test_a_failing_run_notifies_and_the_widget_recovers(viewer, qtbot, tiny_card, tmp_path):
    from napari.utils.notifications import notification_manager

    path, image, mask = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    setup_synthesis(w)
    w.model_picker.set_spec(str(tmp_path / "no-such-model"))
    before = len(notification_manager.records)
    run = w.start()
    qtbot.waitUntil(lambda: not run.busy, timeout=30_000)
    assert run.state == "failed"
    assert "not found" in w.status.text()
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("no-such-model" in m and "not found" in m for m in messages), messages
    assert w.run_button.text() == "Run" and w.run_button.isEnabled() and mask.editable
    # the canvas lock was released: a good run works right after
    w.model_picker.set_spec("tiny-test")
    run = w.start()
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    assert run.state == "done"


def test_bad_mask_and_unexpected_errors_become_clear_notifications(viewer, qtbot, tiny_card, tmp_path, monkeypatch):
    from napari.utils.notifications import ErrorNotification, notification_manager

    from napari_diffinfinite import _worker

    path, image, mask = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    setup_synthesis(w)
    # a label the model does not know (napari lets a user paint any label)
    mask.paint((30, 30), 7)
    before = len(notification_manager.records)
    run = w.start()
    qtbot.waitUntil(lambda: not run.busy, timeout=30_000)
    assert run.state == "failed" and "0..3" in run.text and mask.editable
    assert any("0..3" in str(n.message) for n in notification_manager.records[before:])
    mask.paint((30, 30), 1)

    # an error the core does not phrase (here: CUDA running out of memory while loading)
    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(_worker.MODELS, "get", oom)
    before = len(notification_manager.records)
    run = w.start()
    qtbot.waitUntil(lambda: not run.busy, timeout=30_000)
    assert run.state == "failed" and run.text.startswith("out of memory")
    assert "finished regions are kept" in run.text
    notes = notification_manager.records[before:]
    assert any(isinstance(n, ErrorNotification) and str(n.message).startswith("out of memory") for n in notes)
    assert w.run_button.text() == "Run" and w.run_button.isEnabled()
    from src_models.store.canvas import Canvas

    with Canvas.open(path, "r+"):  # the lock was released both times
        pass


def test_a_failing_preview_warns_once_and_the_run_goes_on(viewer, qtbot, tiny_card, tmp_path, monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_diffinfinite import _worker

    calls = []

    def broken(*args):
        calls.append(1)
        raise ValueError("decoder wants multiples of 8")

    monkeypatch.setattr(_worker, "_preview_rgb", broken)
    path, image, mask = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    setup_synthesis(w, preview=True)
    before = len(notification_manager.records)
    run = w.start()
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    assert run.state == "done" and run.regions_done == 16
    assert len(calls) == 1
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("live preview unavailable" in m and "multiples of 8" in m for m in messages), messages


def test_cancel_takes_effect_within_one_network_batch(viewer, qtbot, tiny_card, tmp_path):
    """A level of a 256 px region is dozens of network calls (batches of windows); Cancel lets the
    call in flight finish and starts no other."""
    from napari_diffinfinite._worker import MODELS

    path, image, mask = _open(viewer, tiny_card, tmp_path, size=512, region=256)
    w = dock(viewer, "Synthesis")
    setup_synthesis(w, steps=20, preview=True)
    net = MODELS.get("tiny-test", "cpu").unet
    calls = {"n": 0}
    hook = net.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        run = w.start()
        # the live preview is drawn into the region overlay, over the region in flight (outlined)
        from napari_diffinfinite._overlay import IN_FLIGHT

        qtbot.waitUntil(lambda: run.state == "running" and run.overlay is not None
                        and (run.overlay.states == IN_FLIGHT).sum() == 1, timeout=60_000)
        first = int(np.flatnonzero(run.overlay.states.ravel() == IN_FLIGHT)[0])
        block = run.overlay._block(first)
        qtbot.waitUntil(lambda: (block[..., 3] == 255).mean() > 0.8, timeout=60_000)  # opaque: the preview
        assert block[8:-8, 8:-8, :3].std() > 0  # an image, not the flat veil
        qtbot.waitUntil(lambda: calls["n"] >= 40, timeout=60_000)
        run.cancel()
        at_cancel = calls["n"]
        qtbot.waitUntil(lambda: not run.busy, timeout=30_000)
    finally:
        hook.remove()
    assert run.state == "cancelled"
    assert calls["n"] - at_cancel <= 1, (at_cancel, calls["n"])
    assert run.units()[0] < run.units()[1]  # it stopped inside the run, not at its end
    # the canvas lock was released and the worker is gone: a new run starts at once
    run2 = w.start()
    qtbot.waitUntil(lambda: run2.regions_done >= 1 or not run2.busy, timeout=60_000)
    run2.cancel()
    qtbot.waitUntil(lambda: not run2.busy, timeout=30_000)


def test_the_dock_says_regions_area_and_time_before_run(viewer, qtbot, tiny_card, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFINFINITE_TIMINGS", str(tmp_path / "timings.json"))
    path = make_canvas(tiny_card, tmp_path / "e.zarr", size=256, region=64)
    w = dock(viewer, "DiffInfinite")
    w.canvas.open(path)
    s = w.synthesis
    setup_synthesis(s, region="whole canvas")
    qtbot.waitUntil(lambda: "16 regions" in w.estimate_label.text(), timeout=10_000)
    assert "no run of about 4 steps measured on cpu" in w.estimate_label.text()
    # a rectangle one pixel row into the next regions rounds out, and the line says so
    s.draw_rectangle()
    area = next(layer for layer in viewer.layers if layer.metadata.get(META, {}).get("role") == "area")
    area.add_rectangles(np.array([[0, 0], [64, 63]]))  # pixel centres 0..64: rows of two regions
    qtbot.waitUntil(lambda: "2 regions" in w.estimate_label.text(), timeout=10_000)
    assert "rounds out to whole regions" in w.estimate_label.text()
    # after a run on this device the line has a time
    from src_models.synthesis.estimate import record_run

    record_run("tiny-test", "cpu", pixels=256 * 256, steps=4, seconds=24.0)
    s.schedule_estimate()
    qtbot.waitUntil(lambda: "on cpu (from 1 earlier run)" in w.estimate_label.text(), timeout=10_000)
    assert "about 3 s" in w.estimate_label.text()  # 2 of 16 regions of a 24 s whole-canvas run
    assert "8,192 px" in w.estimate_label.text()
    # the run says its time left from the start (the estimate), before any level has finished
    run = s.start()
    seen = []
    qtbot.waitUntil(lambda: run.state != "starting" and (seen.append((run.units()[0], run.eta())) or True),
                    timeout=30_000)
    assert seen[0][1] is not None and seen[0][1] <= 3.0
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)


def test_finished_regions_show_tissue_not_the_mask(viewer, qtbot, tiny_card, tmp_path):
    from napari_diffinfinite._overlay import find_overlay

    path = make_canvas(tiny_card, tmp_path / "t.zarr", size=128, region=64)
    w = dock(viewer, "DiffInfinite")
    image, mask = w.canvas.open(path)
    assert mask.metadata[META]["mode"] == "distinct colours" and mask.contour == 0  # an empty canvas: to paint
    setup_synthesis(w.synthesis, steps=2, preview=False)
    run = w.synthesis.start()
    assert mask.contour > 0 and w.mask.mode_box.currentText() == "contours"  # the tissue shows as it comes
    qtbot.waitUntil(lambda: run.regions_done >= 1, timeout=60_000)
    overlay = find_overlay(viewer, image.metadata[META]["path"])
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    assert run.state == "done"
    assert not np.asarray(overlay.data)[..., 3].any()  # no veil and no grid over finished tissue
    # a canvas with tissue opens with the mask as outlines
    viewer.layers.clear()
    image, mask = w.canvas.open(path)
    assert mask.metadata[META]["mode"] == "contours" and mask.contour > 0 and mask.opacity == 1.0
    assert w.mask.mode_box.currentText() == "contours"


def test_redoing_a_rectangle_veils_and_previews_only_inside_it(viewer, qtbot, tiny_card, tmp_path):
    path = tmp_path / "r.zarr"
    w, image, mask = sampled_canvas(viewer, qtbot, tiny_card, path)
    s = w.synthesis
    # redo a 32 x 32 px rectangle inside the first region, with a live preview
    # enough levels that the run spans several GUI ticks (a preview drawn in the tick that sees the region
    # finish is dropped, as it should be): the sized box of a 32 px rectangle samples fast
    setup_synthesis(s, steps=100, region="drawn rectangle", preview=True)
    s.draw_rectangle()
    area = next(layer for layer in viewer.layers if layer.metadata.get(META, {}).get("role") == "area")
    area.add_rectangles(np.array([[16, 16], [47, 47]]))
    s.redo_box.setChecked(True)
    run = s.start()
    seen = []

    def outside_alpha():
        ov = run.overlay
        if ov is None:
            return None
        px = ov.region_px / ov.k
        ys = (np.arange(ov.rgba.shape[0]) + 0.5) * px
        xs = (np.arange(ov.rgba.shape[1]) + 0.5) * px
        inside = ((ys >= 16) & (ys < 48))[:, None] & ((xs >= 16) & (xs < 48))[None, :]
        return int(ov.rgba[..., 3][~inside].max()), int(ov.rgba[..., 3][inside].max())

    def look():
        got = outside_alpha()
        if got is not None and run.state == "running":
            seen.append(got)
        return run.overlay is not None and run.overlay.previews >= 1

    qtbot.waitUntil(look, timeout=60_000)
    seen.append(outside_alpha())
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    assert run.state == "done" and run.regions_total == 1
    assert seen and all(out == 0 for out, _ in seen)  # the tissue around the rectangle stays in sight
    assert any(inside > 0 for _, inside in seen)  # the veil and then the preview inside it


def test_steps_and_omega_boxes_follow_the_chosen_models_card(viewer, tiny_card, tmp_path):
    import json
    import shutil

    from src_models.models.card import BUILTIN_DIRS
    from src_models.synthesis.request import sampling_defaults
    from src_models.models.card import ModelCard

    w = dock(viewer, "Synthesis")
    own = tmp_path / "own"
    shutil.copytree(BUILTIN_DIRS["default"], own)
    card = json.loads((own / "card.json").read_text())
    card.update(default_steps=37, default_omega=0.75, default_omega_per_class={"3": 0.0})
    (own / "card.json").write_text(json.dumps(card))
    _, image, _ = _open(viewer, tiny_card, tmp_path)  # a canvas: one ω box per tissue class (3 of them)
    w.model_picker.set_spec(str(own))
    assert (w.steps_box.value(), w.omega_box.value()) == (37, 0.75)
    assert {i: b.value() for i, b in w.class_boxes.items()} == {1: -0.5, 2: -0.5, 3: 0.0}  # -0.5 reads "= ω"
    assert w.build_request(image).omega_per_class == {3: 0.0}
    w.model_picker.set_spec("default")  # back to the shipped model: its card's values, not a constant of the dock
    d = sampling_defaults(ModelCard.load(BUILTIN_DIRS["default"]))
    assert (w.steps_box.value(), w.omega_box.value()) == (d["steps"], d["omega"])
    assert {i: b.value() for i, b in w.class_boxes.items() if b.value() >= 0} == d["omega_per_class"]


def test_the_bfloat16_box_reaches_the_request_and_follows_the_canvas(viewer, qtbot, tiny_card, tmp_path):
    """Ticked by default: the request leaves the precision to the device (bf16 on a CPU with native
    bfloat16); cleared, float32.  A canvas a run recorded in bf16 ticks it when opened, one a run
    recorded in float32 clears it (a canvas goes on as it was made), a canvas no run has recorded
    yet (the dock's new canvas) ticks it."""
    from src_models.synthesis.canvases import new_canvas
    from src_models.synthesis.request import card_settings

    from napari_diffinfinite._synthesis_widget import _bf16_label

    path, image, _ = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    assert w.bf16_box.isChecked() and w.bf16_box.text() == _bf16_label()
    assert w.build_request(image).precision == "auto"
    assert w.build_request(image).resolved(tiny_card).precision == "float32"  # the suite pins float32
    w.bf16_box.setChecked(False)
    assert w.build_request(image).precision == "float32"
    assert "precision" not in w.build_request(image).settings()

    def made(name, settings):
        with new_canvas(tiny_card, tmp_path / name, 128, 128, region_size=64, settings=settings):
            pass
        return str(tmp_path / name)

    run = {"model": "tiny-test", "steps": 4, "omega": 1.0, "seed": 0}  # a run's settings name its seed
    dock(viewer, "Canvas").open(made("b.zarr", {**run, "precision": "bf16"}))
    qtbot.waitUntil(lambda: w.bf16_box.isChecked(), timeout=10_000)
    dock(viewer, "Canvas").open(made("f.zarr", run))  # recorded by a float32 run
    qtbot.waitUntil(lambda: not w.bf16_box.isChecked(), timeout=10_000)
    dock(viewer, "Canvas").open(made("n.zarr", card_settings(tiny_card, "tiny-test")))  # no run yet
    qtbot.waitUntil(lambda: w.bf16_box.isChecked(), timeout=10_000)


def test_the_distilled_box_follows_the_canvas_and_reaches_the_request(viewer, qtbot, tiny_card, tmp_path):
    """Ticked, the request leaves the student to the model (used where it has one at this ω); cleared,
    it asks for two passes.  A canvas made with the student ticks it when opened, one made without
    clears it (a canvas goes on as it was made)."""
    from src_models.synthesis.canvases import new_canvas

    path, image, _ = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    w.distilled_box.setChecked(True)
    assert w.build_request(image).distilled is None
    w.distilled_box.setChecked(False)
    assert w.build_request(image).distilled is False
    assert "distilled" not in w.build_request(image).resolved(tiny_card).settings()

    made = tmp_path / "d.zarr"
    settings = {"model": "tiny-test", "steps": 4, "omega": 1.0, "distilled": True}
    with new_canvas(tiny_card, made, 128, 128, region_size=64, settings=settings):
        pass
    dock(viewer, "Canvas").open(str(made))
    qtbot.waitUntil(lambda: w.distilled_box.isChecked(), timeout=10_000)
    dock(viewer, "Canvas").open(make_canvas(tiny_card, tmp_path / "f.zarr", size=128))  # made without
    qtbot.waitUntil(lambda: not w.distilled_box.isChecked(), timeout=10_000)


def test_the_guidance_limit_box_follows_the_model_and_the_canvas(viewer, qtbot, tiny_card, tmp_path):
    """'guided below t' shows the chosen model's card value and reaches the request; a canvas a run
    recorded with a limit sets it, one a run recorded without sets 1000 (every level, as it was made)."""
    from src_models.models.card import BUILTIN_DIRS, ModelCard
    from src_models.synthesis.canvases import new_canvas
    from src_models.synthesis.request import sampling_defaults

    path, image, _ = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    assert w.guidance_box.value() == 1000  # the tiny model's card guides every level
    w.model_picker.set_spec("default")
    card_value = sampling_defaults(ModelCard.load(BUILTIN_DIRS["default"]))["guidance_below"]
    assert card_value < 1000 and w.guidance_box.value() == card_value
    w.model_picker.set_spec("tiny-test")
    w.guidance_box.setValue(300)
    assert w.build_request(image).resolved(tiny_card).settings()["guidance_below"] == 300

    def made(name, settings):
        with new_canvas(tiny_card, tmp_path / name, 128, 128, region_size=64, settings=settings):
            pass
        return str(tmp_path / name)

    run = {"model": "tiny-test", "steps": 4, "omega": 1.0, "seed": 0}
    dock(viewer, "Canvas").open(made("l.zarr", {**run, "guidance_below": 400}))
    qtbot.waitUntil(lambda: w.guidance_box.value() == 400, timeout=10_000)
    dock(viewer, "Canvas").open(made("e.zarr", run))  # a run recorded no limit
    qtbot.waitUntil(lambda: w.guidance_box.value() == 1000, timeout=10_000)


def test_the_sweep_box_samples_the_whole_area_level_by_level_and_a_cancelled_sweep_resumes(
        viewer, qtbot, tiny_card, tmp_path):
    """Ticked, Run samples every region together (the core's sweep): progress counts the sweep's
    tiles and levels, no region is outlined as in flight, previews of the tiles are drawn over the
    unfinished regions, every region is done at the end and the canvas records the choice.  Cancelled,
    the finished levels stay on disk, the veils come back over the previews, and the next Run goes on
    from them, to the same pixels as a sweep never stopped."""
    from napari_diffinfinite._overlay import IN_FLIGHT, PENDING, VEIL
    from napari_diffinfinite._worker import SweepLevel
    from src_models.store.canvas import Canvas

    path, image, _ = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    setup_synthesis(w, steps=20)
    w.sweep_box.setChecked(True)
    assert w.build_request(image).sweep
    levels, outlined, texts = [], [], []
    run = w.start()
    run._on_refresh = lambda: None
    # Cancel once a tile's preview is drawn over the regions
    qtbot.waitUntil(lambda: run._sweep is not None and run.overlay is not None and run.overlay.previews >= 1,
                    timeout=60_000)
    seen = run._sweep
    assert isinstance(seen, SweepLevel) and seen.levels == 20
    w.run_button.click()  # Cancel mid-sweep
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    assert run.state == "cancelled", run.text
    states = run.overlay.states.ravel()
    k = run.overlay.k
    for i in np.flatnonzero(states == PENDING):  # a pending region shows its veil again, not a preview
        iy, ix = divmod(int(i), run.overlay.nx)
        assert tuple(run.overlay.rgba[iy * k + k // 2, ix * k + k // 2]) == tuple(VEIL)
    with Canvas.open(path) as canvas:
        assert canvas.settings["sweep"] is True
        assert len(canvas.done_indices()) < 16

    resumed = w.start()

    previews = []

    def watch():
        outlined.append(int((resumed.overlay.states == IN_FLIGHT).sum()) if resumed.overlay is not None else 0)
        previews.append(resumed.overlay.previews if resumed.overlay is not None else 0)
        texts.append(w.progress_label.text())
        levels.append(resumed.units())
        return not resumed.busy

    qtbot.waitUntil(watch, timeout=90_000)
    assert resumed.state == "done", resumed.text
    assert max(outlined) == 0  # a sweep outlines no region
    assert max(previews) >= 1  # the tiles' previews were drawn while it ran
    assert any("of the whole area" in t for t in texts), texts
    done_units = [d for d, _ in levels]
    assert done_units == sorted(done_units) and levels[-1][0] == levels[-1][1] == 16 * 20
    assert regions_shown(image) == 16
    with Canvas.open(path) as canvas:
        assert canvas.done_indices() == set(range(16))
        resumed_rgb = np.asarray(canvas.image(0)[:])

    # the same sweep never stopped gives the same pixels
    other = make_canvas(tiny_card, tmp_path / "o.zarr", size=256, region=64, mask=True)
    dock(viewer, "Canvas").open(other)
    qtbot.waitUntil(lambda: w.sweep_box.isChecked() is False, timeout=10_000)  # a new canvas: region by region
    setup_synthesis(w, steps=20)
    w.sweep_box.setChecked(True)
    whole = w.start()
    qtbot.waitUntil(lambda: not whole.busy, timeout=90_000)
    assert whole.state == "done", whole.text
    with Canvas.open(other) as canvas:
        np.testing.assert_array_equal(np.asarray(canvas.image(0)[:]), resumed_rgb)
    dock(viewer, "Canvas").open(path)  # a canvas a sweep made ticks the box
    qtbot.waitUntil(lambda: w.sweep_box.isChecked(), timeout=10_000)


def test_a_sweep_of_other_settings_is_discarded_only_when_the_user_agrees(viewer, qtbot, tiny_card, tmp_path):
    """The canvas holds a cancelled sweep; Run with another seed is refused by the core.  The dock asks:
    No keeps the unfinished sweep (and runs nothing), Yes discards it and runs with the settings shown."""
    from src_models.store.canvas import Canvas
    from src_models.synthesis.sweep import SweepStore

    path, image, _ = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    setup_synthesis(w, steps=20)
    w.sweep_box.setChecked(True)
    run = w.start()
    qtbot.waitUntil(lambda: run._sweep is not None, timeout=60_000)
    w.run_button.click()  # Cancel: the sweep's finished levels stay in the canvas
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    assert run.state == "cancelled", run.text

    def stored_seed():
        with Canvas.open(path) as canvas:
            p = SweepStore(canvas).progress()
            return None if p is None else p["settings"]["seed"]

    assert stored_seed() == 3
    asked = []
    w.confirm = lambda title, text: asked.append(text) or False
    w.seed_box.setValue(4)
    refused = w.start()
    qtbot.waitUntil(lambda: not refused.busy, timeout=60_000)
    assert refused.state == "failed" and refused.sweep_conflict()
    assert len(asked) == 1 and "seed: 3 vs 4" in asked[0]
    qtbot.wait(200)
    assert w.run is refused and stored_seed() == 3  # No: nothing discarded, nothing run

    w.confirm = lambda title, text: asked.append(text) or True
    again = w.start()
    qtbot.waitUntil(lambda: w.run is not again, timeout=60_000)  # Yes: a new run starts by itself
    qtbot.waitUntil(lambda: not w.run.busy, timeout=90_000)
    assert again.state == "failed" and w.run.state == "done", w.run.text
    assert len(asked) == 2 and stored_seed() is None  # the sweep of seed 4 finished and removed its state
    with Canvas.open(path) as canvas:
        assert canvas.done_indices() == set(range(16)) and canvas.settings["seed"] == 4


def test_the_distilled_box_follows_the_chosen_models_student(viewer, qtbot, tiny_card, tmp_path):
    """The default model ships an opt-in student: its box is enabled but clear, and ticked it asks for the
    student outright; a model without a student greys the box out."""
    path, image, _ = _open(viewer, tiny_card, tmp_path)
    w = dock(viewer, "Synthesis")
    w.model_picker.set_spec("default")
    assert w.distilled_box.isEnabled() and not w.distilled_box.isChecked()
    w.distilled_box.setChecked(True)
    assert w.build_request(image).distilled is True
    w.model_picker.set_spec("tumour")  # no student shipped with it
    assert not w.distilled_box.isEnabled() and not w.distilled_box.isChecked()
