"""The thread glue between the widgets and the headless core.

Worker side (runs in a napari worker thread, may import torch):
    :data:`MODELS` loads each model once per (spec, device) and keeps it;
    :func:`create_canvas_job` makes a canvas; :func:`synthesis_job` is the generator a run executes:
    it opens the canvas for writing (the store's lock: one writer at a time), writes the mask
    snapshot taken on the GUI thread, checks and repairs the finished regions as every resume does,
    loads the model, then yields every ``RegionDone`` of :func:`src_models.synthesis.regions.synthesise`
    (the core's use cases in :mod:`src_models.synthesis.canvases`; this module only carries them
    to a thread).  Level progress and low-resolution previews of the
    region in flight go into a queue; the worker never touches a widget or a layer.

A forward pre-hook on the model's network (:mod:`src_models.synthesis.cancel`) stops a cancelled run
before its next network call (within one window batch).  While runs are in flight the interpreter hands the GIL over every
millisecond (instead of every 5 ms), so the GUI thread waits less for the worker's Python glue.

GUI side (runs on the GUI thread): :class:`SynthesisRun` starts the worker, refreshes only the
image chunks under finished regions (at most ``1 / REFRESH_S`` times a second), keeps the region
overlay up to date (pending, in flight with its live preview, done), reports progress (regions
and levels, time left) to the widget, turns errors and warnings into notifications with a clear
message and reports its state.  It adds and removes no layer during a run (napari collects
garbage on every layer removal and processes all events when a progress bar of its activity dock
appears: each took about half a second on a loaded 2-core machine), so the GUI never stalls on it.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._reader import META, refresh_region

REFRESH_S = 0.25  # at most four image refreshes a second
PREVIEW_S = 1.0  # at most one preview a second ...
PREVIEW_SHARE = 0.2  # ... and decoding previews takes at most a fifth of the worker's time
PREVIEW_PX = 256  # longest side of a preview, in image pixels
GIL_SWITCH_S = float(os.environ.get("DIFFINFINITE_GIL_SWITCH_S", "0.001"))  # sys.setswitchinterval during runs


# ============================================================================ models
def _builtin_dir(spec: str) -> Path | None:
    """Where a built-in model directory lives (``src_models.models.card`` imports no torch)."""
    from src_models.models.card import BUILTIN_DIRS

    return BUILTIN_DIRS.get(str(spec))


def default_model_spec() -> str:
    """``default`` when its weights are installed, else ``tiny-test`` (no torch import)."""
    return "default" if (_builtin_dir("default") / "card.json").exists() else "tiny-test"


class ModelCache:
    """Models loaded once per (spec, device) and kept (the last ``size`` of them)."""

    def __init__(self, size: int = 2):
        self._lock = threading.Lock()
        self._models: OrderedDict = OrderedDict()
        self.size = size
        self.loads = 0  # how many times a model was actually loaded (tests check it)

    def get(self, spec: str, device: str = "auto"):
        from src_models.models.loading import load_model
        from src_models.models.device import resolve_device

        dev = resolve_device(device)
        key = (str(spec), str(dev))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model = load_model(spec, dev)
            self.loads += 1
            self._models[key] = model
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return model

    def has(self, spec: str, device: str = "auto") -> bool:
        """Whether ``spec`` is already loaded for ``device``."""
        from src_models.models.device import resolve_device

        try:
            key = (str(spec), str(resolve_device(device)))
        except Exception:
            return False
        with self._lock:
            return key in self._models

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


MODELS = ModelCache()


def model_card(spec: str):
    """The model card of ``spec`` (:func:`src_models.models.loading.find_card`: card.json alone where
    it can); a published checkpoint file is loaded once, through :data:`MODELS`."""
    directory = _builtin_dir(spec) or Path(spec)
    if str(spec) != "tiny-test" and (directory / "card.json").is_file():
        from src_models.models.card import ModelCard  # no torch: the widgets ask on the GUI thread

        return ModelCard.load(directory)
    if Path(str(spec)).is_file():
        return MODELS.get(spec, "cpu").card
    from src_models.models.loading import find_card

    return find_card(spec)[0]  # tiny-test, or a clear error


# ============================================================================ worker jobs
def device_region_size(spec: str, device: str = "auto") -> int:
    """The region side the dock's "auto for the device" means for model ``spec`` on ``device``:
    the core's :func:`~src_models.synthesis.canvases.auto_region_size` (as ``generate
    --region-size auto``): 256 px on the CPU; on CUDA from the batch that fits the free memory."""
    from src_models.models.device import resolve_device
    from src_models.synthesis.canvases import auto_region_size

    card = model_card(spec)
    dev = resolve_device(device)
    return auto_region_size(card, dev, MODELS.get(spec, device).unet if dev.type == "cuda" else None)


def create_canvas_job(spec: str, path: str, height: int, width: int, region_size: int | None, overwrite: bool,
                      device: str = "auto") -> str:
    """Make an empty canvas for model ``spec`` (regions sized for ``device`` unless ``region_size``);
    returns its resolved path."""
    from src_models.synthesis.canvases import new_canvas

    card = model_card(spec)
    region_size = region_size or device_region_size(spec, device)
    from src_models.synthesis.request import card_settings

    settings = card_settings(card, spec)
    canvas = new_canvas(card, path, int(height), int(width), region_size or None, overwrite=overwrite,
                        settings=settings)
    canvas.close()
    return str(Path(path).resolve())


class ImportCancelled(Exception):
    """The user cancelled a slide import (raised from its progress callback)."""


def import_slide_job(spec: str, slide: str, path: str, region_size: int | None, overwrite: bool,
                     progress=None, cancel=None) -> str:
    """Copy a slide (SVS, OME-TIFF, OME-Zarr, PNG) into a new canvas as finished context; ``progress``
    hears (regions copied, regions), ``cancel`` stops it between regions (the partial canvas stays)."""
    from src_models.synthesis.editing import import_slide

    if progress is not None:
        progress(0, 0, "loading the model")
    model = MODELS.get(spec, "cpu")

    def on_region(n, total):
        if cancel is not None and cancel.is_set():
            raise ImportCancelled(f"cancelled after {n} of {total} regions; {path} holds only those")
        if progress is not None:
            progress(n, total, "copying and encoding")

    canvas, _ = import_slide(slide, model, path, region_size or None, overwrite, on_region, model_spec=spec)
    canvas.close()
    return str(Path(path).resolve())


def outpaint_job(spec: str, source: str, path: str, pads: tuple[int, int, int, int], label: int,
                 overwrite: bool) -> str:
    """A new canvas holding ``source`` padded by ``pads`` (top, right, bottom, left px); the border
    is left pending for the Synthesis widget, under mask ``label``."""
    from src_models.synthesis.editing import outpaint

    canvas = outpaint(source, MODELS.get(spec, "cpu"), path, pads, label=label, overwrite=overwrite)
    canvas.close()
    return str(Path(path).resolve())


def estimate_job(path: str, request, redo: bool = False, where=None) -> tuple[str, float | None]:
    """The line the dock shows before Run: regions, area (a rectangle rounding out said, an area
    redone in part sampled in boxes sized to it), expected time on this device from the runs
    measured before (no torch unless the device is CUDA).  ``where``: a painted area to redo, as
    :func:`._common.painted_area` gives it."""
    from src_models.store.canvas import Canvas
    from src_models.synthesis.boxes import area_cells
    from src_models.synthesis.estimate import estimate_run

    device = request.device
    if device == "auto":
        from src_models.models.device import resolve_device

        device = resolve_device("auto")
    try:  # resolved: the card's steps, and the arithmetic it will run in (precision, student), as the run will
        from src_models.models.loading import find_card

        request = request.resolved(find_card(request.model)[0])
    except Exception:  # noqa: BLE001 - the run itself reports a request it cannot use
        pass
    with Canvas.open(path, "r") as canvas:
        cells = None
        if where is not None:
            shape, scale, origin = where
            cells = area_cells(shape, canvas.factor, canvas.latent_shape, origin, scale)
            if cells[0] is None:
                return "the painted area lies outside the canvas", None
        est = estimate_run(canvas, request, str(device), redo=redo, where=cells)
    return est.text(), est.seconds


_WRITERS: dict[str, threading.Lock] = {}  # one in-process writer per canvas (flock refuses a second fd)
_WRITERS_LOCK = threading.Lock()


def _writer_lock(path: str) -> threading.Lock:
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(str(Path(path).resolve()), threading.Lock())


def open_for_writing(path: str, wait_s: float = 60.0):
    """``Canvas.open(path, "r+")`` that waits (in this worker thread) for another job of this
    process writing the same canvas (a mask save) instead of failing on the store's lock."""
    from src_models.store.canvas import Canvas

    lock = _writer_lock(path)
    if not lock.acquire(timeout=wait_s):
        return Canvas.open(path, "r+")  # says who holds it
    try:
        return Canvas.open(path, "r+")
    finally:
        lock.release()


def save_mask_job(path: str, mask: np.ndarray, step: int) -> bool:
    """Write a mask-layer snapshot into the canvas at ``path`` (takes the writer lock briefly)."""
    from src_models.synthesis.canvases import store_mask_grid

    with _writer_lock(path):
        from src_models.store.canvas import Canvas

        with Canvas.open(path, "r+") as canvas:
            return store_mask_grid(canvas, mask, step)


BUSY: set[str] = set()  # canvases a run of this process is writing (GUI thread only)
_ACTIVE: set = set()  # runs in flight (GUI thread only)
_QUIT_HOOKED = False


def cancel_all() -> None:
    """Cancel every run in flight (napari quitting: Qt's thread pool would wait for them)."""
    for run in list(_ACTIVE):
        run.cancel()


_DEFAULT_SWITCH = sys.getswitchinterval()


def _switch_interval(running: bool) -> None:
    sys.setswitchinterval(min(GIL_SWITCH_S, _DEFAULT_SWITCH) if running else _DEFAULT_SWITCH)


_FROZEN = False


def _freeze_heap() -> None:
    """Once per process, when the first run starts: move every object alive now (napari, Qt, and
    torch once imported) out of the cyclic garbage collector's reach (``gc.freeze``).
    A full collection otherwise walks them all and stops every thread while it does (0.75 s
    measured on a loaded 2-core machine: the GUI froze).  No collection runs first (it would be
    such a pause itself): the few cycles unreachable at this moment stay in memory; everything
    made later is collected as before."""
    global _FROZEN
    if not _FROZEN:
        import gc

        gc.freeze()
        _FROZEN = True


def _hook_quit() -> None:
    global _QUIT_HOOKED
    if not _QUIT_HOOKED:
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(cancel_all)
            _QUIT_HOOKED = True


@dataclass
class Stage:
    """A step before sampling starts (shown in the widget)."""

    text: str


@dataclass
class Plan:
    """What this run will do: regions to sample (``indices``, in order) and denoising levels per region."""

    regions: int
    levels: int
    indices: tuple[int, ...] = ()
    thread: int = 0  # the worker thread's ident (tests check that the work is off the GUI thread)


@dataclass
class Level:
    index: int
    level: int
    levels: int
    bbox: tuple[int, int, int, int] | None = None


@dataclass
class SweepLevel:
    """Progress of a whole-area sweep: tile ``tile`` of ``tiles`` of level ``level`` of ``levels`` is done."""

    level: int
    levels: int
    tile: int
    tiles: int


@dataclass
class Notice:
    """Something the user should know that does not stop the run (shown as a warning)."""

    text: str


@dataclass
class Preview:
    bbox: tuple[int, int, int, int]  # (y0, y1, x0, x1) px of the region in flight (a sweep: of its tile)
    rgb: np.ndarray  # (h, w, 3) uint8, at most PREVIEW_PX on a side
    index: int = -1  # the region in flight (-1: a sweep's tile, over whichever regions it covers)


def _latent_preview(model, x0, factor: int) -> np.ndarray:
    """The live preview of a sweep's tile (:func:`src_models.synthesis.regions.latent_preview`)."""
    from src_models.synthesis.regions import latent_preview

    return latent_preview(model, x0, factor, PREVIEW_PX)


def _preview_rgb(model, x0, p, factor: int, latent_shape) -> np.ndarray:
    """The live preview of the region in flight (:func:`src_models.synthesis.regions.region_preview`)."""
    from src_models.synthesis.regions import region_preview

    return region_preview(model, x0, p, factor, PREVIEW_PX)


def _is_expected(e: BaseException) -> bool:
    """Errors the core raises for bad input, with messages written for users (the base class every
    interface handles alike); anything else is a bug and keeps its traceback."""
    from src_models.errors import DiffInfiniteError

    return isinstance(e, DiffInfiniteError)


def _clear_message(e: BaseException, request) -> str:
    """A message a user can act on, for errors the core does not phrase itself."""
    text = str(e) or type(e).__name__
    low = text.lower()
    if isinstance(e, MemoryError) or "out of memory" in low:
        return (f"out of memory on {request.device} ({text.splitlines()[0]}); finished regions are kept. "
                "Lower the batch size, use a smaller area, or run on the CPU.")
    return f"synthesis failed: {type(e).__name__}: {text}"


@dataclass
class Failed:
    """The run stopped on an error (always the last event); ``message`` says why and what to do."""

    message: str
    error: BaseException
    expected: bool  # a known kind of bad input (no traceback needed)


def _device_notice(requested: str, device) -> str | None:
    """What to tell the user when the device asked for is not the one used."""
    name = (requested or "auto").strip().lower()
    if name not in ("auto", "cpu") and str(device) == "cpu":
        return f"{requested} requested but not available on this machine; running on the CPU"
    return None


def _limit_cpu_threads(device: str) -> None:
    """On the CPU, leave one core to the GUI thread (torch's pool would otherwise take them all)."""
    import os

    import torch

    cores = os.cpu_count() or 1
    if str(device) == "cpu" and cores > 1 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)


def synthesis_job(path: str, request, mask: np.ndarray | None, step: int, redo: bool,
                  cancel: threading.Event, events: queue.SimpleQueue, preview: bool = True, where=None,
                  discard_sweep: bool = False):
    """The generator a run executes in the worker thread (see the module docstring).

    ``redo`` with ``where`` (a painted area: map, image px per map px, (y, x) px of its corner)
    schedules exactly the latent cells it touches (:func:`src_models.synthesis.editing.prepare_redo`)
    and samples only the regions they touch, each in a box sized to them; ``redo`` with
    ``request.area`` does the same for the rectangle, without it every region is sampled again.
    ``discard_sweep`` first forgets the canvas's unfinished sweep (the user agreed to it: a sweep of
    other settings is refused otherwise, :class:`~src_models.synthesis.sweep.SweepConflict`).
    It never raises: an error becomes a :class:`Failed` event, so the GUI side alone decides how
    it is shown.  The canvas lock is released however the run ends.
    """
    yield Stage("opening the canvas")
    from src_models.synthesis.cancel import set_cancel_token, stop_on_cancel  # no torch

    canvas = None
    set_cancel_token(cancel)
    try:
        from src_models.store.canvas import Canvas
        from src_models.synthesis.canvases import repair_finished, store_mask_grid
        from src_models.synthesis.regions import pending_regions, synthesise
        from src_models.synthesis.request import SPARSE_SETTINGS, SweepProgress

        canvas = open_for_writing(path)
        if discard_sweep:
            from src_models.synthesis.sweep import discard_sweep as forget_sweep

            yield Stage("discarding the unfinished sweep")
            forget_sweep(canvas)
        if mask is not None:
            yield Stage("saving the mask")
            store_mask_grid(canvas, mask, step)
        if canvas.done_indices():  # as every resume does (generate --resume, generate-many)
            yield Stage("checking finished regions")
            repair_finished(canvas, notice=lambda text: events.put(Notice(text)))
        if not MODELS.has(request.model, request.device):
            yield Stage(f"loading model {request.model!r}")
        model = MODELS.get(request.model, request.device)
        notice = _device_notice(request.device, model.device)
        if notice:
            events.put(Notice(notice))
        stop_on_cancel(model)
        _limit_cpu_threads(model.device)
        if redo:
            import dataclasses

            from src_models.synthesis.editing import prepare_inpaint, prepare_redo

            if where is not None:
                shape, scale, origin = where
                request = dataclasses.replace(request, area=prepare_redo(canvas, shape, origin=origin, scale=scale))
            elif request.area is not None:  # the rectangle case, as `inpaint --rect` schedules it
                request = dataclasses.replace(request, area=prepare_inpaint(canvas, request.area))
            else:
                canvas.clear_done()
        request = request.resolved(model.card)  # stored as a CLI run would store them ("auto" plan named)
        # settings()'s keys that are stored only when not the default (precision, distilled, guidance_below)
        # go first, so a run in float32, with two passes or guided at every level does not keep an earlier
        # run's record of bf16, the student or a guidance limit
        kept = {k: v for k, v in canvas.settings.items() if k not in SPARSE_SETTINGS}
        canvas.set_settings({**kept, **request.settings()})
        todo = pending_regions(canvas, request)
        yield Plan(len(todo), int(request.steps), tuple(r.index for r in todo), threading.get_ident())
        next_preview = [0.0]  # time.monotonic() after which the next preview may be decoded
        latent_shape = canvas.latent_shape
        factor = canvas.factor

        def on_level(p):
            if isinstance(p, SweepProgress):  # a sweep's tile: every region at once
                events.put(SweepLevel(p.level, p.levels, p.tile, p.tiles))
                if p.level < p.levels:  # previews of the tile, drawn over the regions under it
                    offer_preview(p.x0, tuple(p.area), -1, lambda: _latent_preview(model, p.x0, factor))
                return
            events.put(Level(p.index, p.level, p.levels, tuple(p.bbox)))
            if p.level < p.levels:
                offer_preview(p.x0, tuple(p.bbox), p.index, lambda: _preview_rgb(model, p.x0, p, factor, latent_shape))

        def offer_preview(x0, bbox, index, make_rgb):
            """A preview at most every PREVIEW_S, and never more than PREVIEW_SHARE of the worker's time."""
            if not preview or x0 is None:
                return
            now = time.monotonic()
            if now < next_preview[0]:
                return
            try:
                rgb = make_rgb()
            except Exception as e:  # a preview must never stop a run: say so once, then go without
                next_preview[0] = float("inf")
                events.put(Notice(f"live preview unavailable for this model ({type(e).__name__}: {e}); "
                                  "the run goes on without it"))
                return
            took = time.monotonic() - now
            next_preview[0] = now + max(PREVIEW_S, took / PREVIEW_SHARE)
            events.put(Preview(bbox, rgb, index))

        from src_models.synthesis.estimate import RunClock, request_mode

        clock = RunClock(request.model, model.device, int(request.steps), bool(request.sweep), request_mode(request))
        try:
            for ev in synthesise(model, canvas, request, cancel=cancel, progress=on_level):
                clock.add(ev.cost_px)
                yield ev
        finally:
            clock.finish()  # the next estimate on this device rests on this run too
    except Exception as e:
        known = _is_expected(e)
        yield Failed(str(e) if known else _clear_message(e, request), e, known)
    finally:
        set_cancel_token(None)
        if canvas is not None:
            canvas.close()


# ============================================================================ GUI side
def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _notify(text: str, severity: str = "warning") -> None:
    from napari.utils.notifications import show_error, show_info, show_warning

    {"error": show_error, "info": show_info}.get(severity, show_warning)(text)


class SynthesisRun:
    """One run, seen from the GUI thread.

    ``state`` goes "starting" -> "running" -> ("cancelling") -> "done" | "cancelled" | "failed";
    ``on_state(state, text)`` is called on every change, ``on_progress(value, maximum, text)`` as the
    run advances (levels of all regions; ``text`` says region, level and time left) and
    ``on_refresh()`` after every image refresh.  Nothing here blocks: the worker does the work, a
    timer applies its events.
    """

    def __init__(self, viewer, image_layer, request, *, mask=None, mask_step=1, redo=False, preview=True,
                 on_state=None, on_refresh=None, on_progress=None, expected_s: float | None = None, where=None,
                 discard_sweep: bool = False):
        from qtpy.QtCore import QTimer

        self.expected_s = expected_s  # the estimate said before Run (earlier runs on this device), if any
        self.where = where  # a painted area to redo: (map, image px per map px, (y, x) px of its corner)

        self.viewer = viewer
        self.layer = image_layer
        self.info = image_layer.metadata[META]
        self.request = request
        self.state = "starting"
        self.text = ""
        self.failure: Failed | None = None
        self.regions_done = 0
        self.regions_total = 0
        self.refreshes = 0
        self.refresh_times: list[float] = []  # time.monotonic() of every image refresh
        self.worker_thread = 0  # ident of the thread that ran the job (from its Plan)
        self.overlay = None
        self._on_state = on_state
        self._on_refresh = on_refresh
        self._on_progress = on_progress
        self._cancel = threading.Event()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._dirty: list[tuple[int, int, int, int]] = []  # bboxes of regions finished since the last refresh
        self._last_refresh = 0.0
        self._levels = max(1, int(request.steps))
        self._level_in_flight = 0
        self._region_in_flight = None
        self._order: list[int] = []
        self._sweep: SweepLevel | None = None  # the last tile a sweep finished (request.sweep)
        self._pending_preview: Preview | None = None
        self._started = 0.0
        self._sampling_started = 0.0
        self._args = (self.info["path"], request, mask, int(mask_step), bool(redo), self._cancel, self._events,
                      bool(preview), where, bool(discard_sweep))
        self._timer = QTimer()
        self._timer.setInterval(int(REFRESH_S * 1000 / 2))  # refreshes and previews take turns
        self._timer.timeout.connect(self._tick)
        self.worker = None

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        from napari.qt.threading import create_worker

        from ._overlay import show_overlay

        self._started = time.monotonic()
        _freeze_heap()
        # redoing an area (or resuming one): the overlay veils and previews only inside it
        area = self.request.area if self._args[4] and self.request.area is not None else None
        self.overlay = show_overlay(self.viewer, self.layer, running=True, area=None if self.where else area,
                                    area_map=self.where)
        self.worker = create_worker(synthesis_job, *self._args, _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._on_yielded)
        self.worker.errored.connect(self._on_errored)  # synthesis_job reports its errors; this is for bugs
        self.worker.finished.connect(self._on_finished)
        BUSY.add(self.info["path"])
        _ACTIVE.add(self)
        _hook_quit()
        _switch_interval(True)
        self._timer.start()
        self._set_state("starting", "starting…")
        self.worker.start()

    def cancel(self) -> None:
        """Ask the worker to stop before its next network call; finished regions stay."""
        if self.state in ("starting", "running"):
            self._cancel.set()
            self._set_state("cancelling", "cancelling…")

    @property
    def busy(self) -> bool:
        return self.state in ("starting", "running", "cancelling")

    # ------------------------------------------------------------------ worker events (GUI thread)
    def _on_yielded(self, ev) -> None:
        if not self.busy:
            return
        if isinstance(ev, Stage):
            if self.state == "starting":
                self._set_state("starting", ev.text + "…")
        elif isinstance(ev, Plan):
            self._sampling_started = time.monotonic()
            self.regions_total = ev.regions
            self.worker_thread = ev.thread
            self._levels = max(1, ev.levels)
            self._order = list(ev.indices)
            if self.overlay is not None:
                from ._overlay import PENDING

                for i in ev.indices:
                    self.overlay.set(i, PENDING, refresh=False)
                self._mark_next()  # the first region starts now
            if self.state == "starting":
                self._set_state("running", self._describe())
            self._advance()
        elif isinstance(ev, Failed):
            self.failure = ev
        else:  # RegionDone: note it; the next tick shows it
            from ._overlay import DONE

            self.regions_done = ev.done
            self.regions_total = ev.total
            self._level_in_flight = 0
            self._dirty.append(tuple(ev.bbox))
            self._pending_preview = None
            if self.overlay is not None:
                self.overlay.set(ev.index, DONE, refresh=False)
                self._mark_next()
            if self.state == "running":
                self._set_state("running", self._describe())

    def _mark_next(self) -> None:
        """Outline the region the worker takes next (the plan's order; levels confirm it).  A sweep
        samples every region at once: none is outlined, each stays veiled until it is done."""
        if self.overlay is None:
            return
        if self.request.sweep:
            self.overlay.layer.refresh()
            return
        if self.regions_done < len(self._order) and not self._cancel.is_set():
            self._region_in_flight = self._order[self.regions_done]
            self.overlay.in_flight(self._region_in_flight)
        else:
            self.overlay.layer.refresh()

    def _on_errored(self, exc: BaseException) -> None:
        self.failure = Failed(_clear_message(exc, self.request), exc, False)

    def _tick(self) -> None:
        """Apply what the worker reported, one costly step per tick so the event loop keeps turning:
        an image refresh (at most every REFRESH_S) or else the newest preview."""
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            if isinstance(ev, SweepLevel):
                self._sweep = ev
            elif isinstance(ev, Level):  # (queued: one may arrive after its region's RegionDone)
                if ev.index == self._region_in_flight:
                    self._levels = max(1, ev.levels)
                    self._level_in_flight = ev.level if ev.level < ev.levels else 0
            elif isinstance(ev, Preview):
                self._pending_preview = ev
            elif isinstance(ev, Notice):
                _notify(ev.text)
        self._advance()
        if self._dirty and time.monotonic() - self._last_refresh >= REFRESH_S:
            self._refresh()
        elif self._pending_preview is not None and self.state == "running":
            self._show_preview(self._pending_preview)
            self._pending_preview = None

    def _on_finished(self) -> None:
        if not self.busy:
            return
        self._timer.stop()
        BUSY.discard(self.info["path"])
        _ACTIVE.discard(self)
        _switch_interval(bool(_ACTIVE))
        while True:  # of what the worker left in the queue only notices still matter
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            if isinstance(ev, Notice):
                _notify(ev.text)
        if self._dirty:
            self._refresh()
        if self.overlay is not None:
            self.overlay.finish()
        if self.failure is not None:
            self._notify_failure(self.failure)
            self._set_state("failed", self.failure.message)
        elif self._cancel.is_set():
            self._set_state("cancelled", f"cancelled: {self.regions_done} of {self.regions_total} regions done; "
                                         "Run resumes")
        else:
            took = time.monotonic() - self._started
            self._set_state("done", f"done: {self.regions_done} regions in {_duration(took)}")
        self._report_progress(final=True)

    # ------------------------------------------------------------------ helpers
    def _notify_failure(self, failure: Failed) -> None:
        import logging

        from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

        if failure.expected:
            notification_manager.dispatch(Notification(failure.message, severity=NotificationSeverity.ERROR))
        else:  # keep the traceback reachable from the notification and in the log
            logging.getLogger(__name__).error(failure.message, exc_info=failure.error)
            note = Notification.from_exception(failure.error)
            note.message = failure.message
            notification_manager.dispatch(note)

    def sweep_conflict(self) -> str | None:
        """Where the run failed because the canvas holds an unfinished sweep of other settings: those
        settings' differences ("seed: 3 vs 4"); else None."""
        if self.failure is None or self.failure.error is None:
            return None
        from src_models.synthesis.sweep import SweepConflict  # the worker has imported it (and torch) already

        return self.failure.error.differences if isinstance(self.failure.error, SweepConflict) else None

    def units(self) -> tuple[int, int]:
        """(levels done, levels in all) over the regions of this run; a sweep's levels are every
        region's at once, counted tile by tile (its regions are decoded, and done, at the end)."""
        total = self.regions_total * self._levels
        if self.request.sweep:
            if self.regions_done:
                return total, total
            sw = self._sweep
            if sw is None:
                return 0, total
            frac = ((sw.level - 1) * sw.tiles + sw.tile) / max(1, sw.levels * sw.tiles)
            return min(total, int(frac * total)), total
        return min(total, self.regions_done * self._levels + self._level_in_flight), total

    def eta(self) -> float | None:
        """Seconds left: from the estimate said before Run (earlier runs on this device) until a tenth
        of the levels are done, then from the levels done so far (the first ones carry the start-up
        and read high); None while neither is known."""
        done, total = self.units()
        if not self._sampling_started:
            return None
        elapsed = time.monotonic() - self._sampling_started
        if self.expected_s is not None and (not total or done < 0.1 * total):
            return max(1.0, self.expected_s - elapsed)
        if not done:
            return None
        return elapsed / done * (total - done)

    def _describe(self) -> str:
        """"DiffInfinite: 3/12 regions", with the step of the region in flight and the time left when known."""
        text = f"DiffInfinite: {self.regions_done}/{self.regions_total} regions"
        if self.request.sweep and self._sweep is not None and not self.regions_done:
            text += f" · step {self._sweep.level}/{self._sweep.levels} of the whole area"
        elif self.regions_total and self.regions_done < self.regions_total and self._level_in_flight:
            text += f" · step {self._level_in_flight}/{self._levels}"
        left = self.eta()
        if left is not None and self.regions_done < self.regions_total:
            text += f" · about {_duration(left)} left"
        return text

    def _report_progress(self, final: bool = False) -> None:
        if self._on_progress is None:
            return
        done, total = self.units()
        try:
            self._on_progress(done, max(total, 1), self.text if final else self._describe().removeprefix("DiffInfinite: "))
        except RuntimeError:  # the dock was closed while the run went on
            self._on_progress = None

    def _advance(self) -> None:
        self._report_progress()

    def _refresh(self) -> None:
        boxes, self._dirty = self._dirty, []
        self._last_refresh = time.monotonic()
        if self.layer in self.viewer.layers:
            # neighbours' border bands are rewritten too (see synthesis._refresh_borders): half a region covers them
            refresh_region(self.layer, boxes, grow=int(self.info["region_size"]) // 2)
        self.refreshes += 1
        self.refresh_times.append(self._last_refresh)
        if self._on_refresh is not None:
            self._on_refresh()

    def _show_preview(self, p: Preview) -> None:
        """Draw the preview into the region overlay, over the region in flight (a sweep's: over the
        unfinished regions under its tile)."""
        if self.overlay is None:
            return
        if p.index < 0 and self.request.sweep:
            self.overlay.show_area_preview(p.bbox, p.rgb)
        elif p.index == self._region_in_flight:
            self.overlay.show_preview(p.index, p.bbox, p.rgb)

    def _set_state(self, state: str, text: str) -> None:
        self.state, self.text = state, text
        if self._on_state is not None:
            self._on_state(state, text)
