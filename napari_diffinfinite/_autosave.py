"""Mask edits reach the canvas store on their own.

Every finished stroke, fill, polygon, undo, redo, generated or loaded mask marks the mask layer
"unsaved"; :data:`SAVE_DELAY_S` after the last edit a worker thread writes a snapshot of the layer
into the store (only the rows that differ from what is stored).  Edits made while a save is in flight
are saved once it ends.  Closing the napari window, quitting, or removing the mask layer writes
what is still unsaved at once (the window is going away: a short wait there blocks nothing the user
still sees); a mask that cannot be written (another process holds the canvas) is named in a
warning and tried again a few seconds later.

A run writes the mask itself before it samples, and the mask is locked meanwhile, so no save is
made while a run of this process writes the canvas.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np
from qtpy.QtCore import QEvent, QObject, QTimer

META = "diffinfinite"  # the layers' metadata key (as in _reader)

SAVE_DELAY_S = 1.0  # quiet time after the last edit before the mask is written
RETRY_S = 5.0  # after a failed save (the canvas held by another process)
RETRIES = 3  # automatic retries after a failed save
FLUSH_WAIT_S = 30.0  # closing: the longest wait for a save in flight

_SAVERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # mask layer -> MaskAutosave
_HOOKED_VIEWERS: "weakref.WeakSet" = weakref.WeakSet()


def _info(layer) -> dict | None:
    meta = getattr(layer, "metadata", None)
    info = meta.get(META) if isinstance(meta, dict) else None
    return info if isinstance(info, dict) else None


class MaskAutosave(QObject):
    """Keeps one canvas mask layer written to its store (see the module's docstring)."""

    def __init__(self, layer, parent=None):
        super().__init__(parent)
        self._layer = weakref.ref(layer)
        info = _info(layer)
        self.path = info["path"]
        self.step = int(info.get("mask_step", 1))
        self.dirty = False  # edits not yet written
        self.saving = False  # a save in flight
        self.saves = 0  # saves that wrote something (the tests look at it)
        self.last_error: str | None = None
        self.failures = 0  # saves failed in a row
        self._worker = None
        self._done: threading.Event | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(SAVE_DELAY_S * 1000))
        self._timer.timeout.connect(self.save_soon)
        layer.events.paint.connect(self.mark_edited)  # strokes, fills, polygons, generate/load/clear
        layer.events.data.connect(self.mark_edited)  # the whole array replaced
        for name in ("undo", "redo"):  # napari emits nothing of its own on undo and redo
            original = getattr(layer, name)

            def wrapped(*args, _original=original, **kwargs):
                out = _original(*args, **kwargs)
                self.mark_edited()
                return out

            setattr(layer, name, wrapped)

    @property
    def layer(self):
        return self._layer()

    def mark_edited(self, event=None) -> None:
        """The layer changed: save it SAVE_DELAY_S after the last change."""
        self.dirty = True
        self.failures = min(self.failures, RETRIES)  # an edit earns one more try
        self._timer.start(int(SAVE_DELAY_S * 1000))  # debounce: restarted by every edit

    def save_soon(self) -> None:
        """Start a save in a worker thread if there is something to save and none is running."""
        from ._worker import BUSY

        layer = self.layer
        if not self.dirty or layer is None:
            return
        if self.saving:
            return  # saved again when the one in flight ends
        if self.path in BUSY:  # a run writes the mask before it samples, and locks it
            self.dirty = False
            return
        from napari.qt.threading import create_worker

        from ._worker import save_mask_job

        snapshot = np.array(layer.data, copy=True)
        self.dirty = False
        self.saving = True
        done = self._done = threading.Event()

        def job(path, mask, step):
            try:
                return save_mask_job(path, mask, step)
            finally:
                done.set()

        worker = create_worker(job, self.path, snapshot, self.step, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_saved)
        worker.errored.connect(self._on_failed)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def _on_saved(self, changed) -> None:
        self.last_error = None
        self.failures = 0
        self.saves += bool(changed)

    def _on_failed(self, exc) -> None:
        from napari.utils.notifications import show_error, show_warning

        def notify(text, severity):
            (show_warning if severity == "warning" else show_error)(text)

        self.dirty = True
        self.last_error = str(exc)
        self.failures += 1
        if self.failures <= RETRIES:
            notify(f"the mask edits of {self.path} are not saved yet: {exc}; trying again in {RETRY_S:.0f} s",
                   "warning")
            self._timer.start(int(RETRY_S * 1000))
        else:  # a read-only folder, say: no endless retries; the next edit or closing tries again
            notify(f"the mask edits of {self.path} could not be saved: {exc}; use Save mask to canvas "
                   "once the canvas can be written", "error")

    def _on_finished(self) -> None:
        self.saving = False
        self._worker = None
        if self.dirty and not self._timer.isActive():
            self._timer.start(int(SAVE_DELAY_S * 1000))

    def flush(self) -> bool:
        """Write what is unsaved now, on this thread (the window is closing).  Returns whether the
        store holds the layer's mask afterwards."""
        from ._worker import BUSY, save_mask_job

        self._timer.stop()
        if self.saving and self._done is not None:  # a save in flight: let it end first (it holds the lock)
            self._done.wait(FLUSH_WAIT_S)
        layer = self.layer
        if layer is None or not self.dirty or self.path in BUSY:
            return not self.dirty
        try:
            save_mask_job(self.path, np.array(layer.data, copy=True), self.step)
        except Exception as e:  # noqa: BLE001 - said to the user, never raised into Qt's close
            import warnings

            self.last_error = str(e)
            warnings.warn(f"the last mask edits of {self.path} could not be saved: {e}", UserWarning, stacklevel=2)
            return False
        self.dirty = False
        return True


class _CloseWatcher(QObject):
    """Writes every unsaved mask of a viewer when its main window closes."""

    def __init__(self, viewer):
        super().__init__()
        self._viewer = weakref.ref(viewer)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Close:
            viewer = self._viewer()
            if viewer is not None:
                flush_viewer(viewer)
        return False


def flush_viewer(viewer) -> bool:
    """Write every unsaved mask of the canvases shown in ``viewer``; whether all are saved."""
    ok = True
    for layer in list(viewer.layers):
        saver = _SAVERS.get(layer)
        if saver is not None:
            ok = saver.flush() and ok
    return ok


def flush_all() -> None:
    for saver in list(_SAVERS.values()):
        saver.flush()


def autosave(layer):
    """The :class:`MaskAutosave` of a canvas mask layer (made on first call); None for other layers."""
    info = _info(layer)
    if not info or info.get("role") != "mask" or "path" not in info:
        return None
    saver = _SAVERS.get(layer)
    if saver is None:
        saver = MaskAutosave(layer)
        _SAVERS[layer] = saver
    return saver


def watch_viewer(viewer) -> None:
    """Autosave the mask of every canvas shown in ``viewer``, now and later, and flush on close."""
    if viewer is None or viewer in _HOOKED_VIEWERS:
        return
    _HOOKED_VIEWERS.add(viewer)
    for layer in list(viewer.layers):
        autosave(layer)

    def on_inserted(event):
        autosave(event.value)

    def on_removed(event):
        saver = _SAVERS.get(event.value)
        if saver is not None:
            saver.flush()

    viewer.layers.events.inserted.connect(on_inserted)
    viewer.layers.events.removed.connect(on_removed)
    real = getattr(viewer, "__wrapped__", viewer)  # widgets get a proxy of the viewer
    window = getattr(getattr(real, "window", None), "_qt_window", None)  # its QMainWindow
    if window is not None:
        watcher = _CloseWatcher(viewer)
        watcher.setParent(window)
        window.installEventFilter(watcher)
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None and not getattr(app, "_diffinfinite_flush_hooked", False):
        app.aboutToQuit.connect(flush_all)
        app._diffinfinite_flush_hooked = True
