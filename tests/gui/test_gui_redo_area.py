"""Redoing a painted area from the dock (issue 21, item 7): the redo-area layer lies over the mask
grid, Run samples only the regions the painted cells touch and only those cells, the overlay veils
and previews only inside the painted shape, and the tissue around it stays as it was."""
from __future__ import annotations

import numpy as np

from gui_helpers import sampled_canvas, setup_synthesis

from napari_diffinfinite._reader import META


def test_paint_an_area_and_run_redoes_only_it(viewer, qtbot, tiny_card, tmp_path, monkeypatch):
    from src_models.store.canvas import Canvas

    monkeypatch.setenv("DIFFINFINITE_TIMINGS", str(tmp_path / "timings.json"))
    path = tmp_path / "p.zarr"
    w, image, mask = sampled_canvas(viewer, qtbot, tiny_card, path)
    s = w.synthesis
    with Canvas.open(path) as c:
        before = np.asarray(c.image(0)[:]).copy()
    mask_before = np.array(mask.data, copy=True)

    layer = s.paint_area()
    # (the dock sees napari's public proxies of layers: compared by value, not identity)
    assert layer.name == f"{image.name} redo area" and viewer.layers.selection.active == layer
    assert layer.mode == "paint" and layer.selected_label == 1 and s.region_box.currentText() == "painted area"
    assert layer.data.shape == mask.data.shape
    assert np.allclose(layer.scale, mask.scale) and np.allclose(layer.translate, mask.translate)
    assert s.paint_area() == layer and [x.name for x in viewer.layers].count(layer.name) == 1  # not a second one
    yy, xx = np.mgrid[: layer.data.shape[0], : layer.data.shape[1]]
    shape = (yy - 40) ** 2 + (xx - 64) ** 2 < 10 ** 2  # a disc across the border of regions 0 and 1
    layer.data_setitem(np.nonzero(shape), 1)  # as a brush stroke: one undo step, a paint event
    qtbot.waitUntil(lambda: "2 regions" in w.estimate_label.text(), timeout=10_000)
    assert "to redo, sampled in boxes of" in w.estimate_label.text()

    # enough levels that the run spans several GUI ticks: the sized boxes sample fast, and a preview
    # that arrives in the tick that sees its region finish is dropped (as it should be)
    setup_synthesis(s, steps=100, region="painted area", preview=True)
    run = s.start()
    assert run.where is not None and not layer.editable  # what Run samples is what was painted at Run
    seen = []

    def look():
        ov = run.overlay
        if ov is not None and run.state == "running":
            px = ov.region_px / ov.k
            ys = ((np.arange(ov.rgba.shape[0]) + 0.5) * px).astype(int)
            xs = ((np.arange(ov.rgba.shape[1]) + 0.5) * px).astype(int)
            inside = shape[np.clip(ys, 0, 127)[:, None], np.clip(xs, 0, 127)[None, :]]
            seen.append((int(ov.rgba[..., 3][~inside].max()), int(ov.rgba[..., 3][inside].max())))
        return ov is not None and ov.previews >= 1

    qtbot.waitUntil(look, timeout=60_000)
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    assert run.state == "done" and run.regions_total == 2 and sorted(run._order) == [0, 1]
    assert seen and all(out == 0 for out, _ in seen)  # the tissue around the shape stays in sight
    assert any(inside > 0 for _, inside in seen)  # veiled, then previewed, inside it
    with Canvas.open(path) as c:
        after = np.asarray(c.image(0)[:])
        assert c.jobs() == {} and c.done_indices() == {0, 1, 2, 3}
    assert np.array_equal(after[:, ~shape], before[:, ~shape])  # outside the painted cells: byte for byte
    assert (after[:, shape] != before[:, shape]).any(axis=0).mean() > 0.5
    assert np.array_equal(np.asarray(mask.data), mask_before)  # the mask is the user's: untouched
    # the painted cells were used up: cleared, editable again, and one undo brings them back
    assert layer.editable and not np.asarray(layer.data).any()
    layer.undo()
    assert np.array_equal(np.asarray(layer.data) != 0, shape)
    assert (layer.metadata[META]["role"], layer.metadata[META]["path"]) == ("redo", image.metadata[META]["path"])
