"""``python -m napari_diffinfinite.launch`` (``make napari``): napari with the plugin's dock and the
demo canvas open, ready to paint and Run."""
from __future__ import annotations

import argparse

WIDGETS = ("DiffInfinite",)


def open_viewer(canvas: str | None = None, show: bool = True):
    import napari

    from ._reader import PLUGIN, prefer_this_reader

    viewer = napari.Viewer(title="DiffInfinite", show=show)
    if show:  # the canvas gets the whole screen (a laptop's 1280 x 800 included)
        window = getattr(viewer.window, "_qt_window", None)
        if window is not None:
            window.showMaximized()
    prefer_this_reader()
    for name in WIDGETS:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=False)
    if canvas:
        widget.canvas.open(canvas)
    else:
        viewer.open_sample(PLUGIN, "demo")
    return viewer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_diffinfinite.launch",
                                     description="napari with the DiffInfinite dock and a canvas")
    parser.add_argument("canvas", nargs="?", default=None, help="a canvas (.zarr) to open instead of the demo canvas")
    args = parser.parse_args(argv)
    import napari

    open_viewer(args.canvas)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
