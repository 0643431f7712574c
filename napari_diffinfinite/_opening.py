"""The npe2 reader entry point: :func:`napari_diffinfinite._reader.get_reader`, plus the mask
autosave of the viewer the canvas opens in (a canvas opened by File > Open or the shell, with no
dock of this plugin open, keeps its mask edits too)."""
from __future__ import annotations

from ._reader import get_reader as _get_reader


def get_reader(path):
    reader = _get_reader(path)
    if reader is None:
        return None

    def read(p, **kwargs):
        _watch_current_viewer()
        return reader(p, **kwargs) if kwargs else reader(p)

    return read


def _watch_current_viewer() -> None:
    try:
        import napari

        from ._autosave import watch_viewer

        watch_viewer(napari.current_viewer())
    except Exception:  # noqa: BLE001 - no Qt viewer (a headless read): nothing to watch
        pass
