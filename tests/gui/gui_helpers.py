"""Helpers of the GUI tests (plain functions; fixtures are in conftest.py)."""
from __future__ import annotations

import numpy as np

PLUGIN = "napari-diffinfinite"


def dock(viewer, name: str):
    """Open one of the plugin's widgets the way the Plugins menu does (through the manifest)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def make_canvas(card, path, size=256, region=64, mask=True, seed=0):
    """A tiny-test canvas on disk (closed), with a procedural mask unless ``mask`` is False."""
    from src_models.synthesis.canvases import new_canvas, put_mask
    from src_models.io.masks import procedural_mask

    settings = {"model": "tiny-test", "steps": 4, "omega": 1.0}
    with new_canvas(card, path, size, size, region_size=region, settings=settings) as canvas:
        if mask:
            lh, lw = canvas.latent_shape
            put_mask(canvas, procedural_mask(lh, lw, [1, 2, 3], seed=seed))
    return str(path)


def regions_shown(image_layer, region: int = 64) -> int:
    """Regions of the finest level holding pixels, read through the layer's own dask arrays."""
    level0 = np.asarray(image_layer.data[0]).max(axis=-1)
    h, w = level0.shape
    blocks = level0[: h // region * region, : w // region * region].reshape(h // region, region, w // region, region)
    return int((blocks.max(axis=(1, 3)) > 0).sum())


def setup_synthesis(widget, steps=4, region="whole canvas", preview=True):
    widget.model_picker.set_spec("tiny-test")
    widget.device_box.setCurrentText("cpu")
    widget.steps_box.setValue(steps)
    widget.omega_box.setValue(1.0)
    widget.seed_box.setValue(3)
    widget.region_box.setCurrentText(region)
    widget.preview_box.setChecked(preview)


def canvas_pair(viewer):
    """(image, mask) of the last canvas shown, or None."""
    from napari_diffinfinite._reader import canvas_layers

    pairs = canvas_layers(viewer)
    return pairs[-1] if pairs and pairs[-1][1] is not None else None


def sampled_canvas(viewer, qtbot, card, path, size=128, region=64):
    """A tiny canvas opened in the DiffInfinite dock and sampled whole (2 steps): (dock, image, mask)."""
    path = make_canvas(card, path, size=size, region=region)
    w = dock(viewer, "DiffInfinite")
    image, mask = w.canvas.open(path)
    setup_synthesis(w.synthesis, steps=2, preview=False)
    run = w.synthesis.start()
    qtbot.waitUntil(lambda: not run.busy, timeout=60_000)
    assert run.state == "done"
    return w, image, mask
