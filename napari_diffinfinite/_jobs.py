"""Long actions other than Run (generating a layout, loading annotations, importing a slide, making
a canvas) with progress, time left and Cancel.

``start_job(viewer, what, func, *args, button=...)`` runs ``func(*args, progress=..., cancel=...)``
in a napari worker thread: ``progress(done, total, text="")`` may be called from that thread at any
rate (it only puts the numbers in a queue), and ``cancel`` is a ``threading.Event`` the function
checks (the samplers take it as their cancel token).  On the GUI thread a timer reads the queue
four times a second and tells the viewer's :class:`Activity`, which the DiffInfinite dock's footer
shows: what runs, its progress bar, "n of m, about t left", and Run disabled until it ends.  The
action's own button reads "Cancel" meanwhile.  The worker never touches a widget.
"""
from __future__ import annotations

import queue
import threading
import time
import weakref

from qtpy.QtCore import QObject, QTimer, Signal

POLL_MS = 250


class Activity(QObject):
    """What a viewer's long actions are doing, for whoever shows it (the dock's footer)."""

    started = Signal(str)  # what (e.g. "generating a learned layout")
    progress = Signal(int, int, str)  # done, total (0: unknown), the line to show
    ended = Signal(str)  # how it ended, in words

    def __init__(self):
        super().__init__()
        self.jobs: list = []

    @property
    def busy(self) -> bool:
        return any(job.busy for job in self.jobs)


_ACTIVITIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def activity_of(viewer) -> Activity:
    real = getattr(viewer, "__wrapped__", viewer)
    act = _ACTIVITIES.get(real)
    if act is None:
        act = _ACTIVITIES[real] = Activity()
    return act


def left_text(elapsed: float, done: float, total: float) -> str:
    """", about 3 min left" once a share is done (nothing before: a guess from nothing misleads)."""
    if total <= 0 or done <= 0 or done >= total:
        return ""
    from src_models.synthesis.estimate import duration

    return f", about {duration(elapsed * (total - done) / done)} left"


class Job:
    """One long action in a worker thread (see the module docstring)."""

    def __init__(self, viewer, what: str, func, args: tuple, *, button=None, on_result=None, on_error=None,
                 on_end=None, unit: str = ""):
        from napari.qt.threading import create_worker

        self.what, self.unit = what, unit
        self.activity = activity_of(viewer)
        self.cancel_event = threading.Event()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._button = button
        self._button_text = button.text() if button is not None else None
        self._on_result, self._on_error, self._on_end = on_result, on_error, on_end
        self.state = "running"
        self.last = (0, 0, "")
        self._t0 = time.monotonic()
        self.worker = create_worker(func, *args, progress=self._put, cancel=self.cancel_event,
                                    _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)
        self._timer = QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)

    # worker thread
    def _put(self, done, total, text: str = "") -> None:
        self._queue.put((int(done), int(total), str(text)))

    # GUI thread
    def start(self) -> "Job":
        self.activity.jobs.append(self)
        if self._button is not None:
            self._button.setText("Cancel")
            self._button.setEnabled(True)
        self.activity.started.emit(self.what)
        self.activity.progress.emit(0, 0, f"{self.what}…")
        self._timer.start()
        self.worker.start()
        return self

    @property
    def busy(self) -> bool:
        return self.state in ("running", "cancelling")

    def cancel(self) -> None:
        if self.state == "running":
            self.state = "cancelling"
            self.cancel_event.set()
            if self._button is not None:
                self._button.setText("Cancelling…")
                self._button.setEnabled(False)
            self.activity.progress.emit(*self.last[:2], f"{self.what}: cancelling…")

    def line(self, done: int, total: int, text: str) -> str:
        count = f"{done:,} of {total:,}{' ' + self.unit if self.unit else ''}" if total else ""
        detail = ", ".join(p for p in (text, count) if p)
        return f"{self.what}" + (f": {detail}" if detail else "…") + left_text(time.monotonic() - self._t0, done, total)

    def _poll(self) -> None:
        got = None
        while True:
            try:
                got = self._queue.get_nowait()
            except queue.Empty:
                break
        if got is not None and self.state == "running":
            self.last = got
            self.activity.progress.emit(got[0], got[1], self.line(*got))

    def _returned(self, value) -> None:
        if self.state == "cancelling" or self.cancel_event.is_set():
            self.state = "cancelled"
            return
        self.state = "done"
        if self._on_result is not None:
            self._on_result(value)

    def _errored(self, exc) -> None:
        if self.cancel_event.is_set():
            self.state = "cancelled"
            return
        self.state = "failed"
        self.error = exc
        if self._on_error is not None:
            self._on_error(exc)

    def _finished(self) -> None:
        self._timer.stop()
        self._poll()
        if self.state in ("running", "cancelling"):
            self.state = "cancelled" if self.cancel_event.is_set() else "done"
        took = time.monotonic() - self._t0
        from src_models.synthesis.estimate import duration

        text = {"done": f"{self.what}: done in {duration(took)}", "cancelled": f"{self.what}: cancelled",
                "failed": f"{self.what}: failed"}[self.state]
        if self._button is not None:
            try:
                self._button.setText(self._button_text)
                self._button.setEnabled(True)
            except RuntimeError:  # the dock was closed meanwhile
                pass
        if self in self.activity.jobs:
            self.activity.jobs.remove(self)
        if self._on_end is not None:  # connected before the worker started: a quick job cannot slip past it
            self._on_end(self)
        self.activity.ended.emit(text)


def start_job(viewer, what: str, func, *args, button=None, on_result=None, on_error=None, on_end=None,
              unit: str = "") -> Job:
    """Start a :class:`Job`; ``on_end(job)`` runs when it has ended, however (``job.state`` says how)."""
    return Job(viewer, what, func, args, button=button, on_result=on_result, on_error=on_error, on_end=on_end,
               unit=unit).start()
