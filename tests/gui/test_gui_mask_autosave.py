"""Mask edits are durable: strokes, fills, undo and loaded masks reach the canvas store on their
own (off the GUI thread), and closing napari writes what is still unsaved."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from gui_helpers import PLUGIN, canvas_pair, dock, make_canvas

pytestmark = pytest.mark.gui


def _stored(path, step=1):
    from src_models.store.canvas import Canvas

    return Canvas.open(path, "r").mask_grid(step)


def _open(viewer, qtbot, path):
    dock(viewer, "DiffInfinite")
    viewer.open(path, plugin=PLUGIN)
    qtbot.waitUntil(lambda: canvas_pair(viewer) is not None, timeout=10_000)
    return canvas_pair(viewer)


def test_strokes_fills_and_undo_reach_the_store_off_the_gui_thread(viewer, qtbot, tiny_card, tmp_path, monkeypatch):
    from napari_diffinfinite import _autosave, _worker

    monkeypatch.setattr(_autosave, "SAVE_DELAY_S", 0.2)
    threads = []
    original = _worker.save_mask_job

    def spy(*args):
        threads.append(threading.get_ident())
        return original(*args)

    monkeypatch.setattr(_worker, "save_mask_job", spy)
    path = make_canvas(tiny_card, tmp_path / "a.zarr", size=256, region=64, mask=False)
    _, mask = _open(viewer, qtbot, path)
    saver = _autosave.autosave(mask)
    assert saver is not None and not saver.dirty

    mask.brush_size = 5
    mask.selected_label = 2
    mask.paint((20, 20), 2)  # one finished stroke
    assert saver.dirty
    qtbot.waitUntil(lambda: _stored(path)[20, 20] == 2 and not saver.dirty and not saver.saving, timeout=10_000)
    np.testing.assert_array_equal(_stored(path), mask.data)
    assert threads and threading.get_ident() not in threads  # written by a worker thread

    mask.fill((50, 50), 3)  # the unpainted background becomes class 3
    qtbot.waitUntil(lambda: _stored(path)[50, 50] == 3 and not saver.saving, timeout=10_000)
    mask.undo()  # napari sends no paint event for undo
    qtbot.waitUntil(lambda: _stored(path)[50, 50] == 0 and not saver.saving, timeout=10_000)
    np.testing.assert_array_equal(_stored(path), mask.data)
    assert _stored(path)[20, 20] == 2


def test_paint_close_reopen_shows_the_painted_mask(make_napari_viewer, qtbot, tiny_card, tmp_path, monkeypatch):
    from napari_diffinfinite import _autosave

    monkeypatch.setattr(_autosave, "SAVE_DELAY_S", 60.0)  # nothing saved before the window closes
    path = make_canvas(tiny_card, tmp_path / "b.zarr", size=256, region=64, mask=True)
    viewer = make_napari_viewer()
    _, mask = _open(viewer, qtbot, path)
    mask.brush_size = 9
    mask.paint((30, 40), 1)
    mask.paint((5, 5), 3)
    painted = np.array(mask.data, copy=True)
    assert not np.array_equal(_stored(path), painted)  # not saved yet
    viewer.close()
    np.testing.assert_array_equal(_stored(path), painted)

    again = make_napari_viewer()
    _, reopened = _open(again, qtbot, path)
    np.testing.assert_array_equal(np.asarray(reopened.data), painted)
