"""Regenerate the plugin screenshots in docs/screenshots/ (the real napari window, under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1200x24" env QT_QPA_PLATFORM=xcb .venv/bin/python scripts/screenshots.py

Uses the shipped ``default`` model when src_models/weights/default exists, else ``tiny-test``
(untrained: its "tissue" is noise-like), and prints which.  Steps:

1. a new, empty canvas with the three dock widgets;
2. a mask painted with the brush (strokes) and the fill tool, as a user would;
3. a run half done (regions nearest the view centre first, live preview of the region in flight);
4. the finished canvas.
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


def wait(app, until, timeout: float = 900.0, step: float = 0.02) -> None:
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


def shoot(viewer, app, name: str, wait_s: float = 0.7) -> Path:
    from skimage import io

    settle(app, wait_s)
    img = viewer.screenshot(canvas_only=False, flash=False)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    io.imsave(path, np.asarray(img)[..., :3], check_contrast=False)
    print(f"wrote {path.relative_to(ROOT)}  {img.shape[1]}x{img.shape[0]}")
    return path


def stroke(layer, points, label: int) -> None:
    """Paint a brush stroke through ``points`` (y, x), one dab per brush radius."""
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
    viewer.window.resize(1600, 1000)
    app = QApplication.instance()
    _, canvas_w = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "Canvas", tabify=False)
    _, tools = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "Mask tools", tabify=False)
    _, synth = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "Synthesis", tabify=True)

    folder = Path(tempfile.mkdtemp(prefix="diffinfinite-shots-"))
    canvas_w.width_box.setValue(side)
    canvas_w.height_box.setValue(side)
    canvas_w.model_picker.set_spec(spec)
    canvas_w.region_box.setValue(side // 4)
    canvas_w.path_edit.setText(str(folder / "canvas.zarr"))
    canvas_w.create()
    wait(app, lambda: len(viewer.layers) == 2)
    image, mask = viewer.layers
    shots = [shoot(viewer, app, "01_empty_canvas.png")]

    info = mask.metadata["diffinfinite"]
    paint_mask(mask, info)
    viewer.layers.selection.active = mask
    mask.mode = "paint"
    mask.selected_label = 2
    shots.append(shoot(viewer, app, "02_painted_mask.png"))

    mask.mode = "pan_zoom"
    mask.opacity = 0.25
    synth.model_picker.set_spec(spec)
    synth.device_box.setCurrentText("auto")
    if args.steps:
        synth.steps_box.setValue(args.steps)
    synth.region_box.setCurrentText("whole canvas")
    dock = synth.parentWidget()
    while dock is not None and not hasattr(dock, "raise_"):
        dock = dock.parentWidget()
    if dock is not None:
        dock.raise_()  # show the Synthesis tab (Run -> Cancel) during the run
    started = time.monotonic()
    run = synth.start()
    wait(app, lambda: run.regions_total and run.regions_done >= run.regions_total // 2 or not run.busy)

    def preview_shown() -> bool:
        return any(layer.metadata.get("diffinfinite", {}).get("role") == "preview"
                   and layer.visible and layer.opacity > 0 for layer in viewer.layers)

    wait(app, lambda: preview_shown() or not run.busy, timeout=60)
    shots.append(shoot(viewer, app, "03_run_half_done.png", wait_s=0.2))
    wait(app, lambda: not run.busy)
    took = time.monotonic() - started
    if run.state != "done":
        print(f"run ended {run.state}: {run.text}", file=sys.stderr)
        return 1
    mask.visible = False
    viewer.layers.selection.active = image
    shots.append(shoot(viewer, app, "04_finished_canvas.png", wait_s=2.0))
    record = {"model": spec, "card": card.name, "canvas_px": side, "regions": run.regions_total,
              "steps": run.request.steps, "device": run.request.device, "run_seconds": round(took, 1)}
    (OUT / "screenshots.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
