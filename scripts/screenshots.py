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
5. a redo of a painted area in flight: a blob of about 220 px painted with *Paint area to redo* on the
   canvas's redo-area layer over finished tissue, "painted area" picked and Run; shot once the run
   has drawn a live preview half-way through its first region, so the picture holds the progress
   line (step, time left), the yellow outline and the preview only inside the painted shape and the
   finished tissue all around it;
6. the Annotations dock and 7. the Blinded review dock (a tile on show), each a tab beside the
   DiffInfinite dock, at 1280 x 800.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
SIZES = ((1280, 800), (1920, 1080))


def shown(path: Path) -> str:
    """``path`` as printed: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


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
        print(f"wrote {shown(path)}  {img.shape[1]}x{img.shape[0]}")
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


def paint_blob(layer, image, centre: tuple[float, float], radius: float) -> None:
    """A blob on the redo-area ``layer``: a wavy closed outline of about ``radius`` image px around
    ``centre`` (y, x image px) drawn with the brush, then its inside filled, as a user paints it."""
    s = float(layer.scale[-1])  # image px per layer px
    cy, cx = np.asarray(layer.world_to_data(image.data_to_world(centre)), float)[-2:]
    layer.brush_size = max(2, int(round(radius / s / 5)))
    t = np.linspace(0, 2 * np.pi, 49)
    r = radius / s * (1 + 0.08 * np.sin(3 * t + 0.6) + 0.04 * np.sin(5 * t + 2.0))
    stroke(layer, list(zip(cy + r * np.sin(t), cx + r * np.cos(t))), 1)
    layer.fill((cy, cx), 1)
    layer.refresh()


def redo_shot(viewer, app, dock, image, side: int, region_px: int) -> tuple[list[Path], dict]:
    """Paint an area over finished tissue, pick "painted area", Run, and shoot while that run shows a
    live preview half-way through its first region; then let it finish.  (shots, record)"""
    from napari_diffinfinite._common import painted_area

    s = dock.synthesis
    layer = s.paint_area()  # what "Paint area to redo" does: the redo-area layer, selected, in paint mode
    # over the tissue bands of the mask, across the border of two regions of the middle row and
    # inside that row (about 220 px across with the brush: 768 px canvas, 256 px regions)
    radius = 100.0
    border = round(side / 2 / region_px + 0.5) * region_px
    centre = ((side / 2 // region_px + 0.5) * region_px if side > region_px else side / 2,
              float(np.clip(border, radius + 20, side - radius - 20)))
    paint_blob(layer, image, centre, radius)
    settle(app, 1.0)
    crop, px, (oy, ox) = painted_area(viewer, image)
    s.region_box.setCurrentText("painted area")
    dock.scroll.ensureWidgetVisible(s.redo_box)  # the "sample" row and its buttons in sight
    dock.scroll.ensureWidgetVisible(s.paint_button)
    wait(app, lambda: "to redo" in dock.estimate_label.text(), timeout=120)
    estimate = dock.estimate_label.text()
    load = os.getloadavg()[0]
    started = time.monotonic()
    run = s.start()
    if run is None:
        raise RuntimeError("the redo run did not start")

    def step() -> tuple[int, int]:
        m = re.search(r"step (\d+)/(\d+)", dock.progress_label.text())
        return (int(m.group(1)), int(m.group(2))) if m else (0, 1)

    # half-way through the first region (the preview looks like tissue by then), time left shown ...
    wait(app, lambda: (run.regions_done == 0 and step()[0] >= max(1, step()[1] // 2)
                       and "left" in dock.progress_label.text()) or run.regions_done > 0 or not run.busy)
    seen = run.overlay.previews if run.overlay is not None else 0
    # ... and a preview drawn since
    wait(app, lambda: (run.overlay is not None and run.overlay.previews > seen
                       and run.regions_done < run.regions_total) or not run.busy, timeout=600)
    shot_text = dock.progress_label.text()
    dock.scroll.ensureWidgetVisible(s.paint_button)  # (the mask section grew a line when the run locked it)
    shots = shoot(viewer, app, "05_redo_painted_area", wait_s=0.2)
    wait(app, lambda: not run.busy)
    took = time.monotonic() - started
    if run.state != "done":
        raise RuntimeError(f"redo run ended {run.state}: {run.text}")
    settle(app, 1.0)
    # painted_cells: cells of the redo-area layer (px x px image px each); painted_px_across: (height, width)
    record = {"painted_cells": int(crop.sum()),
              "painted_px_across": [int(crop.shape[0] * px), int(crop.shape[1] * px)],
              "painted_bbox_px": [oy, oy + crop.shape[0] * px, ox, ox + crop.shape[1] * px],
              "estimate": estimate, "progress_at_shot": shot_text, "regions": run.regions_total,
              "run_seconds": round(took, 1), "load_average_1min_at_start": round(load, 2),
              "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
    print(json.dumps({"redo": record}))
    return shots, record


def machine() -> str:
    """This machine's CPU, cores and torch build, as read here (for the record)."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


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
    print(f"wrote {shown(path)}")
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
    print(f"wrote {shown(path)}; review: {review.status.text()}")
    shots.append(path)
    return shots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None,
                        help="canvas side in px (default: 512 for tiny-test, 768 otherwise)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model card's)")
    parser.add_argument("--model", default=None,
                        help="model spec (default: 'default' when installed, else 'tiny-test')")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the pictures and screenshots.json (default: docs/screenshots; "
                             "another folder for a trial run)")
    args = parser.parse_args(argv)
    global OUT
    if args.out is not None:
        OUT = args.out.resolve()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_diffinfinite._worker import default_model_spec, model_card

    spec = args.model or default_model_spec()
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
    load = os.getloadavg()[0]
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
    load_end = os.getloadavg()[0]
    shots += shoot(viewer, app, "04_finished_canvas", wait_s=2.0)
    redo_shots, redo = redo_shot(viewer, app, dock, image, side, int(info["region_size"]))
    shots += redo_shots
    viewer.layers.selection.active = image
    shots += dock_shots(viewer, app, image, folder)
    record = {"model": spec, "card": card.name, "canvas_px": side, "region_px": info["region_size"],
              "regions": run.regions_total, "steps": run.request.steps, "omega": run.request.omega,
              "device": run.request.device, "run_seconds": round(took, 1),
              "load_average_1min_at_start": round(load, 2), "load_average_1min_at_end": round(load_end, 2),
              "machine": machine(), "redo_painted_area": redo,
              "window_sizes": [f"{w}x{h}" for w, h in SIZES], "shots": [path.name for path in shots]}
    (OUT / "screenshots.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
