"""A screenshot of the Blinded review dock in use (``docs/screenshots/05_blinded_review_1280x800.png``).

    xvfb-run -a env QT_QPA_PLATFORM=xcb python scripts/review_screenshot.py --real REAL --synthetic CANVAS

REAL: e.g. the held-out band of the CC0 slide (``benchmarks/quality.py --keep DIR`` writes it as
``DIR/heldout``); CANVAS: a canvas painted under its labels (same folder).  The dock is opened
through the plugin manifest, started, and one tile answered with the keyboard (S, 3, Space) so the
picture shows a session under way; the answers go to a temporary folder.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True)
    p.add_argument("--synthetic", required=True)
    p.add_argument("--out", type=Path, default=OUT / "05_blinded_review_1280x800.png")
    a = p.parse_args(argv)

    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication
    from skimage import io

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    window = viewer.window._qt_window
    window.resize(1280, 800)
    _, widget = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "Blinded review")

    def settle(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    with tempfile.TemporaryDirectory() as answers:
        widget.real_edit.setText(a.real)
        widget.syn_edit.setText(a.synthetic)
        widget.folder_edit.setText(answers)
        widget.name_edit.setText("reviewer")
        widget.per_side_box.setValue(10)
        widget.tile_box.setValue(256)
        widget.start_button.click()
        end = time.monotonic() + 300
        while not widget.start_button.isEnabled() and time.monotonic() < end:
            settle(0.2)
        widget.setFocus()
        for key in (Qt.Key.Key_S, Qt.Key.Key_3, Qt.Key.Key_Space):
            QTest.keyClick(widget, key)
        settle(1.0)
        img = viewer.screenshot(canvas_only=False, flash=False)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        io.imsave(a.out, np.asarray(img)[..., :3], check_contrast=False)
        print(f"wrote {a.out} ({img.shape[1]}x{img.shape[0]}); status: {widget.status.text()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
