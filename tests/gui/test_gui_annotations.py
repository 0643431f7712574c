"""Load annotations…: the CC0 slide's GeoJSON onto a canvas paints the right classes, through
the class-mapping dialog, and napari's undo takes it back; Export annotations… writes the mask."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gui_helpers import dock, make_canvas

ROOT = Path(__file__).resolve().parents[2]
GEOJSON = ROOT / "data" / "cmu_small_region" / "cmu_small_region.geojson"


def test_load_annotations_paints_the_classes_and_undoes(viewer, qtbot, tiny_card, tmp_path):
    from napari_diffinfinite._annotations import SKIP, AnnotationsWidget
    from src_models.io.annotations import labels_for, rasterise, read_geojson, transformed

    # a canvas of half the slide's resolution: canvas px = slide px x 0.5 (the dialog's downsample)
    path = make_canvas(tiny_card, tmp_path / "a.zarr", size=1120, region=224, mask=False)
    canvas_w = dock(viewer, "Canvas")
    image, mask = canvas_w.open(path)
    w = dock(viewer, "Annotations")
    assert isinstance(w, AnnotationsWidget)
    assert mask.data.shape == (1120, 1120) and not mask.data.any()

    w.load(str(GEOJSON))
    qtbot.waitUntil(lambda: w.dialog is not None, timeout=10_000)
    dialog = w.dialog
    # class names found in the file, mapped to the canvas's classes by name (case aside)
    assert dialog.mapping() == {"Glass": 1, "Epidermis": 2, "Dermis": 3}
    assert dialog.boxes["Glass"].itemText(0) == SKIP
    dialog.downsample_box.setValue(0.5)
    dialog.accept()
    qtbot.waitUntil(lambda: not w.busy, timeout=30_000)
    assert "loaded" in w.status.text(), w.status.text()

    ann = transformed(read_geojson(GEOJSON), (0.0, 0.0), 0.5)
    expect, _ = rasterise(ann, labels_for(ann, {"Glass": 1, "Epidermis": 2, "Dermis": 3}), (1120, 1120))
    np.testing.assert_array_equal(np.asarray(mask.data), expect)
    # spot checks (slide px / 2): glass, the dermis band, epidermis, and the flake inside the glass hole
    assert mask.data[250, 200] == 1 and mask.data[750, 440] == 3 and mask.data[700, 605] == 2
    assert mask.data[305, 1042] == 0 and mask.data[305, 1000] == 1
    assert set(np.unique(mask.data)) == {0, 1, 2, 3}

    mask.undo()
    assert not np.asarray(mask.data).any()
    mask.redo()
    np.testing.assert_array_equal(np.asarray(mask.data), expect)

    # a class mapped to "skip" is left out; painting goes over what the mask holds
    before = np.asarray(mask.data).copy()
    w.load(str(GEOJSON))
    qtbot.waitUntil(lambda: w.dialog is not None, timeout=10_000)
    w.dialog.set_label("Glass", None)
    w.dialog.set_label("Dermis", 1)  # dermis polygons painted as glass this time
    w.dialog.downsample_box.setValue(0.5)
    w.dialog.accept()
    qtbot.waitUntil(lambda: not w.busy, timeout=30_000)
    after = np.asarray(mask.data)
    dermis = expect == 3
    assert (after[dermis] == 1).all() and (after[~dermis] == before[~dermis]).all()
    mask.undo()
    np.testing.assert_array_equal(np.asarray(mask.data), expect)

    # cancel leaves the mask alone; a malformed file is one clear line
    w.load(str(GEOJSON))
    qtbot.waitUntil(lambda: w.dialog is not None, timeout=10_000)
    w.dialog.reject()
    qtbot.waitUntil(lambda: not w.busy, timeout=10_000)
    assert "cancelled" in w.status.text()
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    w.load(str(bad))
    qtbot.waitUntil(lambda: not w.busy, timeout=10_000)
    assert "not valid JSON" in w.status.text() and "\n" not in w.status.text()
    np.testing.assert_array_equal(np.asarray(mask.data), expect)

    # Export annotations…: the mask as GeoJSON, which rasterises back to the same mask
    out = tmp_path / "mask.geojson"
    w.export(str(out))
    qtbot.waitUntil(lambda: not w.busy, timeout=30_000)
    assert "wrote" in w.status.text()
    back_ann = read_geojson(out)
    assert json.loads(out.read_text())["diffinfinite"]["provenance"]["code_version"]
    back, _ = rasterise(back_ann, labels_for(back_ann, {"glass": 1, "epidermis": 2, "dermis": 3}), (1120, 1120))
    np.testing.assert_array_equal(back, expect)
