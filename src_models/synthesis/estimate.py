"""What a run will do and how long it should take, said before it starts.

:func:`estimate_run` counts the unfinished regions a request touches and their area in pixels: a
region never sampled counts whole (a rectangle over it rounds out to whole regions, and the line says
so); a region with a regeneration job (an inpaint, a painted area, a drawn rectangle redone) counts
only its job's cells, and is sampled in a box sized to them (:mod:`src_models.synthesis.boxes`).
The expected time on this device comes from the runs measured before: every finished run records its
seconds per pixel and denoising step, and its steps, for (model, device kind, arithmetic) in a small
JSON file (:func:`timings_path`), a region sampled in a smaller box counting for less
(:func:`~src_models.synthesis.boxes.work_px`), and the estimate is the mean of the last few runs with
a comparable number of steps (half to twice the run's: a run's decoding and writing do not scale with
its steps, so a 2-step run says little about a 50-step one).  The arithmetic is the precision,
whether a distilled student runs (one network pass per window instead of two) and at which levels
guidance runs its second pass (``guidance_below``).  With nothing
comparable measured yet the estimate says so (the progress bar's time left takes over after the
first region).  No torch here.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KEEP = 8  # measured runs kept per (model, device)
MIN_MEASURED_S = 2.0  # shorter runs say more about start-up than about speed: not recorded
_LOCK = threading.Lock()


def timings_path() -> Path:
    """``$DIFFINFINITE_TIMINGS`` if set, else ``timings.json`` in the plugin's cache folder
    (``$NAPARI_DIFFINFINITE_CACHE``, ``$XDG_CACHE_HOME/napari-diffinfinite`` or
    ``~/.cache/napari-diffinfinite``)."""
    env = os.environ.get("DIFFINFINITE_TIMINGS")
    if env:
        return Path(env)
    cache = os.environ.get("NAPARI_DIFFINFINITE_CACHE")
    if cache:
        return Path(cache) / "timings.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-diffinfinite" / "timings.json"


def device_kind(device) -> str:
    """``cpu``, ``cuda:<name>`` or ``mps``: runs on one kind of device are comparable."""
    text = str(device)
    if text.startswith("cuda"):
        try:
            import torch

            return f"cuda:{torch.cuda.get_device_name(torch.device(text))}"
        except Exception:  # noqa: BLE001 - no torch or no such device: the plain name
            return "cuda"
    return text.split(":")[0]


STEPS_RATIO = 2.0  # earlier runs with steps within this factor of a run's count for its estimate


def mode_of(precision: str | None = None, distilled: bool | None = None, guidance_below: int | None = None) -> str:
    """The arithmetic a run's speed depends on besides model and device: ``float32`` (what every
    run was before these options), ``bf16``, then ``+student`` where a distilled student runs, and
    ``+guided t<T`` where guidance is limited to the levels below T (the others run one pass)."""
    mode = precision if precision in ("float32", "bf16") else "float32"
    if distilled:
        mode = f"{mode}+student"
    if guidance_below is not None and int(guidance_below) < 1000:
        mode = f"{mode}+guided t<{int(guidance_below)}"
    return mode


def request_mode(request) -> str:
    """:func:`mode_of` a request (one left open counts as float32 with two passes at every level)."""
    return mode_of(getattr(request, "precision", None), getattr(request, "distilled", None),
                   getattr(request, "guidance_below", None))


def _key(model: str, device: str, sweep: bool, mode: str = "float32") -> str:
    key = f"{Path(str(model)).name}|{device}|{'sweep' if sweep else 'regions'}"
    return key if mode == "float32" else f"{key}|{mode}"


def _rows(data: dict, key: str) -> list[list[float]]:
    """[seconds per px and step, steps] of the runs kept under ``key`` (rows without their steps,
    written before steps were kept, are left out)."""
    rows = []
    for r in data.get(key, []):
        if (isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) for v in r)
                and r[0] > 0 and r[1] > 0):
            rows.append([float(r[0]), int(r[1])])
    return rows


def _read() -> dict:
    try:
        data = json.loads(timings_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_run(model: str, device: str, pixels: int, steps: int, seconds: float, sweep: bool = False,
               mode: str = "float32") -> bool:
    """Remember a finished run's speed (seconds per pixel and step, and its steps); whether it was
    recorded.  Never raises: a cache folder that cannot be written only loses the estimate."""
    if pixels <= 0 or steps <= 0 or not np.isfinite(seconds) or seconds < MIN_MEASURED_S:
        return False
    key = _key(model, device, sweep, mode)
    with _LOCK:
        try:
            data = _read()
            data[key] = _rows(data, key)[-(KEEP - 1):] + [[seconds / (pixels * steps), int(steps)]]
            path = timings_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".timings-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)
            return True
        except OSError:
            return False


def rate(model: str, device: str, sweep: bool = False, steps: int | None = None,
         mode: str = "float32") -> tuple[float | None, int]:
    """(seconds per pixel and step, how many runs it rests on) for this model on this device kind in
    this arithmetic, from the runs with ``steps`` within :data:`STEPS_RATIO` (all runs when None)."""
    rows = _rows(_read(), _key(model, device, sweep, mode))
    if steps is not None:
        rows = [r for r in rows if 1 / STEPS_RATIO <= r[1] / max(1, int(steps)) <= STEPS_RATIO]
    return (float(np.mean([r[0] for r in rows])), len(rows)) if rows else (None, 0)


def duration(seconds: float) -> str:
    """A duration as people say it: 40 s, 3 min, 2.5 h, 3 days."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def area_text(pixels: int) -> str:
    """An area in px (under a megapixel) or Mpx."""
    return f"{pixels:,} px" if pixels < 1_000_000 else f"{pixels / 1e6:,.1f} Mpx"


@dataclass
class Estimate:
    regions: int
    area_px: int  # pixels the run samples again (whole regions, or the cells of their jobs)
    asked_px: int | None  # pixels of the rectangle asked for, when one was
    steps: int
    seconds: float | None  # expected time on this device; None: nothing measured here yet
    runs: int  # measured runs the time rests on
    device: str
    partial: int = 0  # regions sampled in part (a job), each in a box sized to its cells
    box_px: int = 0  # pixels of those boxes, context around the cells included
    mode: str = "float32"  # the arithmetic (mode_of): runs in another one do not count

    @property
    def rounds_out(self) -> bool:
        """The regions cover noticeably more than the rectangle asked for (whole regions are sampled)."""
        return self.asked_px is not None and self.area_px > 1.05 * self.asked_px

    @property
    def where(self) -> str:
        """The device, and the arithmetic where it is not the plain float32 one."""
        return self.device if self.mode == "float32" else f"{self.device} in {self.mode}"

    def text(self) -> str:
        """One line: regions, area, rounding out, expected time."""
        parts = [f"{self.regions:,} region{'s' if self.regions != 1 else ''}, {area_text(self.area_px)}"]
        if self.partial:  # regions redone in part: each sampled in a box sized to its part
            which = "" if self.partial == self.regions else f" ({self.partial} of the regions)"
            parts[0] += f" to redo, sampled in boxes of {area_text(self.box_px)} with their context{which}"
        if self.rounds_out:
            parts.append(f"the rectangle ({area_text(self.asked_px)}) rounds out to whole regions")
        if self.regions == 0:
            parts.append("nothing to sample")
        elif self.seconds is None:
            parts.append(f"no run of about {self.steps} steps measured on {self.where} yet: the time left shows "
                         "after the first region")
        else:
            parts.append(f"about {duration(self.seconds)} on {self.where} "
                         f"(from {self.runs} earlier run{'s' if self.runs != 1 else ''})")
        return "; ".join(parts)


def todo_area(canvas, todo) -> int:
    """Pixels of the regions ``todo`` (a RegionSeq or a list of Regions) of ``canvas``."""
    f = canvas.factor
    indices = getattr(todo, "indices", None)
    if indices is None:
        return int(sum((r.y1 - r.y0) * (r.x1 - r.x0) for r in todo)) * f * f
    size, ny, nx = canvas.region_grid
    lh, lw = canvas.latent_shape
    idx = np.asarray(indices, dtype=np.int64)
    iy, ix = idx // nx, idx % nx
    h = np.minimum(lh, (iy + 1) * size) - iy * size
    w = np.minimum(lw, (ix + 1) * size) - ix * size
    return int((h * w).sum()) * f * f


def estimate_run(canvas, request, device: str | None = None, redo: bool = False, card=None, where=None) -> Estimate:
    """The estimate for ``request`` on ``canvas`` on ``device`` (the request's device when not given).

    ``redo``: the finished parts of ``request.area`` are sampled again too (the dock's "sample
    finished parts again": the whole canvas when there is no area, else the area's cells, as
    :func:`~src_models.synthesis.editing.prepare_inpaint` schedules them); ``where`` = (cells, ly0,
    lx0), latent cells about to be scheduled (:func:`~src_models.synthesis.boxes.area_cells` of a
    painted area), is counted the same way.  ``card`` (the model's card; found from
    ``request.model`` when needed and not given) sizes the boxes of regions sampled in part."""
    from src_models.store.regions import RegionSeq
    from src_models.synthesis.regions import pending_regions

    todo = pending_regions(canvas, request)
    size, ny, nx = canvas.region_grid
    f = canvas.factor
    lh, lw = canvas.latent_shape
    new = None  # latent cells about to be scheduled: (cells, ly0, lx0)
    if where is not None:
        new = where
    elif redo and request.area is not None:
        y0, y1, x0, x1 = request.area
        ly0, lx0 = max(0, y0 // f), max(0, x0 // f)
        ly1, lx1 = min(lh, -(-y1 // f)), min(lw, -(-x1 // f))
        if ly1 > ly0 and lx1 > lx0:
            new = (_Rect(ly1 - ly0, lx1 - lx0), ly0, lx0)
    if redo and where is None and request.area is None:  # every region sampled again, whole
        todo = RegionSeq(np.arange(ny * nx), size, nx, canvas.latent_shape)
        targets = {}
    else:
        targets, scheduled = _partial_targets(canvas, todo, new)
        if scheduled:  # finished regions the new cells send back to sampling
            todo = RegionSeq(np.concatenate([np.asarray(todo.indices, dtype=np.int64),
                                             np.asarray(sorted(scheduled), dtype=np.int64)]), size, nx,
                             canvas.latent_shape)
    whole = todo
    if targets:
        whole = RegionSeq(np.asarray([i for i in np.asarray(todo.indices).tolist() if i not in targets],
                                     dtype=np.int64), size, nx, canvas.latent_shape)
    area = work = todo_area(canvas, whole)
    box_px = 0
    partial = 0
    if targets:
        from src_models.synthesis.boxes import sample_box, window_and_halo, work_px

        if card is None:
            from src_models.models.loading import find_card

            card = find_card(request.model)[0]
        window, halo = window_and_halo(card.patch_size, canvas.latent_shape, request.halo)
        for index, target in targets.items():
            if not target.any():  # nothing left to sample there: no time
                continue
            r = canvas.region(index)
            box = sample_box(r, target, canvas.latent_shape, halo, window)
            area += int(target.sum()) * f * f
            work += work_px(r, box, canvas.latent_shape, halo, window, f)
            box_px += (box[1] - box[0]) * (box[3] - box[2]) * f * f
            partial += 1
    asked = None
    if request.area is not None:
        y0, y1, x0, x1 = request.area
        asked = max(0, min(y1, canvas.height) - max(0, y0)) * max(0, min(x1, canvas.width) - max(0, x0))
    kind = device_kind(device or request.device)
    steps = int(request.steps or (canvas.settings or {}).get("steps") or 1)
    mode = request_mode(request)
    per, runs = rate(request.model, kind, bool(request.sweep), steps, mode)
    if request.sweep:  # the sweep samples its regions whole, level by level
        area = work = todo_area(canvas, todo)
        partial = box_px = 0
    seconds = per * work * steps if per is not None and work else None
    return Estimate(len(todo), area, asked, steps, seconds, runs, kind, partial, box_px, mode)


class _Rect:
    """An all-true cell map of a rectangle, without the array (a view of a huge canvas)."""

    def __init__(self, h: int, w: int):
        self.shape = (h, w)

    def __getitem__(self, item):
        ys, xs = item
        return np.ones((len(range(*ys.indices(self.shape[0]))), len(range(*xs.indices(self.shape[1])))), bool)


def _partial_targets(canvas, todo, new) -> tuple[dict[int, np.ndarray], set[int]]:
    """Region-local target maps of the regions that will be sampled in part (a job already on the
    canvas, for the regions of ``todo``; the cells ``new`` = (cells, ly0, lx0) about to be
    scheduled: a finished region gets them as its job, one with a job adds them, one never sampled
    stays whole), and the finished regions ``new`` sends back to sampling (in part or whole).
    Regions sampled whole have no map."""
    jobs = canvas.jobs()
    out: dict[int, np.ndarray] = {}
    if jobs:
        todo_set = set(np.asarray(todo.indices).tolist())
        for index in jobs:
            if index in todo_set:
                out[index] = canvas.target_map(canvas.region(index), jobs)
    scheduled: set[int] = set()
    if new is None:
        return out, scheduled
    cells, ly0, lx0 = new
    h, w = cells.shape
    done = np.asarray(canvas.state_table()[..., 0]).ravel() != 0
    for r in canvas.regions_in(ly0, ly0 + h, lx0, lx0 + w):
        has_job = r.index in out
        if not has_job and not done[r.index]:
            continue  # never sampled: whole, and already pending
        y0, y1, x0, x1 = max(r.y0, ly0), min(r.y1, ly0 + h), max(r.x0, lx0), min(r.x1, lx0 + w)
        if not has_job and isinstance(cells, _Rect) and (y0, y1, x0, x1) == (r.y0, r.y1, r.x0, r.x1):
            scheduled.add(r.index)  # a finished region inside the rectangle: sampled again whole
            continue
        sub = cells[slice(y0 - ly0, y1 - ly0), slice(x0 - lx0, x1 - lx0)]
        if not sub.any():
            continue
        if not has_job:
            scheduled.add(r.index)
        target = out.get(r.index)
        if target is None:
            target = np.zeros((r.y1 - r.y0, r.x1 - r.x0), bool)
        target[y0 - r.y0 : y1 - r.y0, x0 - r.x0 : x1 - r.x0] |= sub
        if target.all():
            out.pop(r.index, None)
        else:
            out[r.index] = target
    return out, scheduled


class RunClock:
    """Measures a run for :func:`record_run`: ``start()`` as sampling starts, ``add(pixels)`` per
    finished region, ``finish()`` at the end (records only when something was sampled)."""

    def __init__(self, model: str, device: str, steps: int, sweep: bool = False, mode: str = "float32"):
        self.model, self.device, self.steps, self.sweep = str(model), device_kind(device), int(steps), bool(sweep)
        self.mode = mode
        self.pixels = 0
        self._t0 = self._last = time.perf_counter()

    def start(self) -> None:
        self._t0 = self._last = time.perf_counter()

    def add(self, pixels: int) -> None:
        """A region of ``pixels`` finished now."""
        self.pixels += int(pixels)
        self._last = time.perf_counter()

    def finish(self) -> bool:
        """Record the run up to its last finished region (a cancelled region in flight is not counted)."""
        return record_run(self.model, self.device, self.pixels, self.steps, self._last - self._t0, self.sweep,
                          self.mode)
