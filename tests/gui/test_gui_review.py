"""The blinded review dock: keyboard-driven answers go to the CSV (and only there), a second start
resumes after the last answer, and the summary appears at the end."""
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from qtpy.QtCore import Qt

from gui_helpers import dock
from napari_diffinfinite._review_widget import ReviewWidget

SLIDE = Path(__file__).resolve().parents[2] / "data" / "cmu_small_region" / "cmu_small_region.png"


def _sources(tmp_path):
    img = np.asarray(Image.open(SLIDE).convert("RGB"))
    real = tmp_path / "real.png"
    Image.fromarray(img[2048:2560, 512:1536]).save(real, dpi=(50902, 50902))
    fake = tmp_path / "fake"
    fake.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # "synthetic": the same tissue with its colours shuffled and noise added
        tile = img[600:856, 700 + 256 * i : 956 + 256 * i][..., ::-1].astype(int) + rng.integers(-20, 20, (256, 256, 3))
        Image.fromarray(np.clip(tile, 0, 255).astype(np.uint8)).save(fake / f"{i}.png", dpi=(50902, 50902))
    return real, fake


def _start(widget, qtbot, real, fake, folder, per_side=3):
    widget.real_edit.setText(str(real))
    widget.syn_edit.setText(str(fake))
    widget.folder_edit.setText(str(folder))
    widget.name_edit.setText("Dr Test")
    widget.per_side_box.setValue(per_side)
    widget.tile_box.setValue(128)
    widget.start_button.click()
    assert not widget.start_button.isEnabled()  # the plan is made in a worker
    qtbot.waitUntil(widget.start_button.isEnabled, timeout=60000)


def _answer(widget, qtbot, key):
    widget.setFocus()
    qtbot.keyClick(widget, key)
    qtbot.keyClick(widget, Qt.Key.Key_4)
    qtbot.keyClick(widget, Qt.Key.Key_Space)


def test_review_records_answers_resumes_and_summarises(viewer, qtbot, tmp_path):
    real, fake = _sources(tmp_path)
    folder = tmp_path / "answers"
    widget = dock(viewer, "Blinded review")
    _start(widget, qtbot, real, fake, folder)
    assert len(widget.items) == 6 and widget.pos == 0
    assert widget.image_label.pixmap() is not None and not widget.image_label.pixmap().isNull()
    # nothing on screen tells which side a tile came from
    shown = widget.status.text() + " ".join(layer.name for layer in viewer.layers)
    assert "real.png" not in shown and "fake" not in shown

    # Space without an answer records nothing
    qtbot.keyClick(widget, Qt.Key.Key_Space)
    assert widget.pos == 0 and not (folder / "review-Dr_Test.csv").exists()
    _answer(widget, qtbot, Qt.Key.Key_R)
    _answer(widget, qtbot, Qt.Key.Key_S)
    assert widget.pos == 2
    rows = list(csv.DictReader((folder / "review-Dr_Test.csv").open()))
    assert [r["answer"] for r in rows] == ["real", "synthetic"] and {r["rating"] for r in rows} == {"4"}
    assert {r["reviewer"] for r in rows} == {"Dr Test"}
    truth = [it.truth for it in widget.items[:2]]
    assert [r["truth"] for r in rows] == truth
    assert [int(r["correct"]) for r in rows] == [int(a == t) for a, t in zip(("real", "synthetic"), truth)]

    # a new review widget with the same settings resumes after the last answer
    widget2 = ReviewWidget(viewer)
    qtbot.addWidget(widget2)
    _start(widget2, qtbot, real, fake, folder)
    assert widget2.pos == 2
    for _ in range(4):
        _answer(widget2, qtbot, Qt.Key.Key_S)
    assert "Done: 6 answers" in widget2.status.text()
    assert widget2.summary["answers"] == 6 and (folder / "review-Dr_Test-summary.json").is_file()
    rows = list(csv.DictReader((folder / "review-Dr_Test.csv").open()))
    assert len(rows) == 6 and [int(r["index"]) for r in rows] == list(range(6))
    assert sorted(r["truth"] for r in rows) == ["real"] * 3 + ["synthetic"] * 3


def test_review_refuses_answers_for_other_tiles(viewer, qtbot, tmp_path):
    real, fake = _sources(tmp_path)
    folder = tmp_path / "answers"
    widget = dock(viewer, "Blinded review")
    _start(widget, qtbot, real, fake, folder)
    _answer(widget, qtbot, Qt.Key.Key_R)
    widget2 = ReviewWidget(viewer)
    qtbot.addWidget(widget2)
    widget2.seed_box.setValue(7)  # another seed draws other tiles: the file must not be mixed
    _start(widget2, qtbot, real, fake, folder)
    qtbot.waitUntil(lambda: "other tiles" in widget2.status.text(), timeout=30000)
    assert not widget2.real_button.isEnabled()
