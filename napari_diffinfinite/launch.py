"""``python -m napari_diffinfinite.launch`` (``make napari``): napari with the plugin's three dock
widgets and the demo canvas open, ready to paint and Run."""
from __future__ import annotations

import argparse

WIDGETS = ("Canvas", "Mask tools", "Synthesis")


def open_viewer(canvas: str | None = None, show: bool = True):
    import napari

    viewer = napari.Viewer(title="DiffInfinite", show=show)
    if canvas:
        viewer.open(canvas, plugin="napari-diffinfinite")
    else:
        viewer.open_sample("napari-diffinfinite", "demo")
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget("napari-diffinfinite", name, tabify=False)
    return viewer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_diffinfinite.launch",
                                     description="napari with the DiffInfinite widgets and a canvas")
    parser.add_argument("canvas", nargs="?", default=None, help="a canvas (.zarr) to open instead of the demo canvas")
    args = parser.parse_args(argv)
    import napari

    open_viewer(args.canvas)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
