"""Regenerate the plugin screenshots in docs/screenshots/ (the real napari window, under Xvfb),
each at 1280 x 800 and at 1920 x 1080.

    xvfb-run -a -s "-screen 0 1920x1200x24" env QT_QPA_PLATFORM=xcb .venv/bin/python scripts/screenshots.py

Uses the shipped ``default`` model when src_models/weights/default exists, else ``tiny-test``
(untrained: its "tissue" is noise-like), and records which in docs/screenshots/screenshots.json.
Everything happens in the one DiffInfinite dock, as a first-time user would do it:

1. a new, empty canvas (regions veiled until sampled, the canvas outlined);
2. a mask painted with the brush (strokes) and the fill tool;
3. a run about half done: the mask shown as contours, finished regions clear, the region in
   flight outlined in yellow with its live preview, progress and time left under Run;
4. the finished canvas;
6. the Annotations dock and 7. the Blinded review dock (a tile on show), each a tab beside the
   DiffInfinite dock, at 1280 x 800.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
SIZES = ((1280, 800), (1920, 1080))


def wait(app, until, timeout: float = 3600.0, step: float = 0.02) -> None:
    end = time.monotonic() + timeout
    while not until():
        if time.monotonic() > end:
            raise TimeoutError("screenshot step timed out")
        app.processEvents()
        time.sleep(step)


def settle(app, seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def shoot(viewer, app, name: str, wait_s: float = 0.7) -> list[Path]:
    """The whole window at each size in SIZES: ``<name>_<w>x<h>.png``."""
    from skimage import io

    written = []
    window = viewer.window._qt_window
    for w, h in SIZES:
        window.resize(w, h)
        settle(app, wait_s)
        img = viewer.screenshot(canvas_only=False, flash=False)
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{name}_{w}x{h}.png"
        io.imsave(path, np.asarray(img)[..., :3], check_contrast=False)
        print(f"wrote {path.relative_to(ROOT)}  {img.shape[1]}x{img.shape[0]}")
        written.append(path)
    window.resize(*SIZES[0])
    return written


def stroke(layer, points, label: int) -> None:
    """Paint a brush stroke through ``points`` (y, x), one dab per third of the brush."""
    layer.selected_label = label
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        n = max(1, int(np.hypot(y1 - y0, x1 - x0) / max(1, layer.brush_size / 3)))
        for t in np.linspace(0, 1, n + 1):
            layer.paint((y0 + t * (y1 - y0), x0 + t * (x1 - x0)), label, refresh=False)
    layer.refresh()


def paint_mask(mask, info: dict) -> None:
    """A hand-drawn-looking layout: wavy bands of the tissue classes, the rest filled."""
    h, w = mask.data.shape
    n = len(info["classes"])
    mask.brush_size = max(4, h // 9)
    xs = np.linspace(0, w - 1, 12)
    for k, label in enumerate(range(1, n)):
        base = (k + 0.7) * h / n
        ys = base + 0.12 * h * np.sin(xs / w * 2 * np.pi + k)
        stroke(mask, list(zip(ys, xs)), label)
    mask.fill((h - 2, w // 2), n - 1)  # fill the bottom with the last class
    mask.fill((1, w // 2), 1)  # and the top with the first
    mask.refresh()


def dock_shots(viewer, app, image, folder: Path) -> list[Path]:
    """The other docks as a pathologist opens them beside the main one, at 1280 x 800 only: the
    Annotations dock (a tab beside it) and the Blinded review dock with a tile on show (the
    finished canvas against the CC0 slide; answers go to a temporary folder)."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    window = viewer.window._qt_window
    window.resize(*SIZES[0])
    shots = []
    viewer.layers.selection.active = image
    _, notes = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "Annotations")
    settle(app, 1.0)
    path = OUT / "06_annotations_dock_1280x800.png"
    from skimage import io

    io.imsave(path, np.asarray(viewer.screenshot(canvas_only=False, flash=False))[..., :3], check_contrast=False)
    print(f"wrote {path.relative_to(ROOT)}")
    shots.append(path)
    _, review = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "Blinded review")
    review.real_edit.setText(str(ROOT / "data" / "cmu_small_region" / "cmu_small_region.svs"))
    review.syn_edit.setText(image.metadata["diffinfinite"]["path"])
    review.folder_edit.setText(str(folder / "answers"))
    review.name_edit.setText("reviewer")
    review.per_side_box.setValue(4)
    review.tile_box.setValue(128)
    review.start_button.click()
    wait(app, lambda: review.start_button.isEnabled(), timeout=300)
    review.setFocus()
    for key in (Qt.Key.Key_S, Qt.Key.Key_3):
        QTest.keyClick(review, key)
    settle(app, 1.0)
    path = OUT / "07_review_dock_1280x800.png"
    io.imsave(path, np.asarray(viewer.screenshot(canvas_only=False, flash=False))[..., :3], check_contrast=False)
    print(f"wrote {path.relative_to(ROOT)}; review: {review.status.text()}")
    shots.append(path)
    return shots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None,
                        help="canvas side in px (default: 512 for tiny-test, 768 otherwise)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model card's)")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_diffinfinite._worker import default_model_spec, model_card

    spec = default_model_spec()
    card = model_card(spec)
    side = args.size or (512 if spec == "tiny-test" else 768)
    side -= side % (card.factor * 8)
    viewer = napari.Viewer(title="DiffInfinite", show=True)
    viewer.window._qt_window.resize(*SIZES[0])
    app = QApplication.instance()
    _, dock = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "DiffInfinite")

    folder = Path(tempfile.mkdtemp(prefix="diffinfinite-shots-"))
    c = dock.canvas
    c.model_picker.set_spec(spec)
    wait(app, lambda: c.grid is not None)
    c.width_box.setValue(side)
    c.height_box.setValue(side)
    c.path_edit.setText(str(folder / "canvas.zarr"))
    dock.synthesis.device_box.setCurrentText("auto")  # regions sized for this machine's device
    c.create()
    wait(app, lambda: dock.picker.image_layer() is not None and dock.picker.current()[1] is not None)
    image, mask = dock.picker.current()
    settle(app, 1.0)
    shots = shoot(viewer, app, "01_empty_canvas")

    info = mask.metadata["diffinfinite"]
    paint_mask(mask, info)
    viewer.layers.selection.active = mask
    mask.mode = "paint"
    mask.selected_label = 2
    shots += shoot(viewer, app, "02_painted_mask")

    mask.mode = "pan_zoom"
    dock.mask.mode_box.setCurrentText("contours")
    if args.steps:
        dock.synthesis.steps_box.setValue(args.steps)
    dock.synthesis.region_box.setCurrentText("whole canvas")
    started = time.monotonic()
    run = dock.synthesis.start()
    if run is None:
        print("the run did not start", file=sys.stderr)
        return 1
    wait(app, lambda: run.regions_total and run.regions_done >= run.regions_total // 2 or not run.busy)
    seen = run.overlay.previews if run.overlay is not None else 0
    wait(app, lambda: (run.overlay is not None and run.overlay.previews > seen + 1
                       and run.regions_done < run.regions_total) or not run.busy, timeout=600)  # this region's preview
    shots += shoot(viewer, app, "03_run_half_done", wait_s=0.2)
    wait(app, lambda: not run.busy)
    took = time.monotonic() - started
    if run.state != "done":
        print(f"run ended {run.state}: {run.text}", file=sys.stderr)
        return 1
    mask.visible = False
    viewer.layers.selection.active = image
    shots += shoot(viewer, app, "04_finished_canvas", wait_s=2.0)
    shots += dock_shots(viewer, app, image, folder)
    record = {"model": spec, "card": card.name, "canvas_px": side, "region_px": info["region_size"],
              "regions": run.regions_total, "steps": run.request.steps, "device": run.request.device,
              "run_seconds": round(took, 1), "window_sizes": [f"{w}x{h}" for w, h in SIZES]}
    (OUT / "screenshots.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
