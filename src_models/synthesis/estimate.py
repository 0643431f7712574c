"""What a run will do and how long it should take, said before it starts.

A run samples whole regions: :func:`estimate_run` counts the unfinished regions a request touches,
their area in pixels (more than the area asked for when a rectangle rounds out to whole regions), and
the expected time on this device from the runs measured before: every finished run records its
seconds per pixel and denoising step for (model, device kind) in a small JSON file
(:func:`timings_path`), and the estimate is the mean of the last few.  With nothing measured yet the
estimate says so (the progress bar's time left takes over after the first region).  No torch here.
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


def _key(model: str, device: str, sweep: bool) -> str:
    return f"{Path(str(model)).name}|{device}|{'sweep' if sweep else 'regions'}"


def _read() -> dict:
    try:
        data = json.loads(timings_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_run(model: str, device: str, pixels: int, steps: int, seconds: float, sweep: bool = False) -> bool:
    """Remember a finished run's speed (seconds per pixel and step); whether it was recorded.
    Never raises: a cache folder that cannot be written only loses the estimate."""
    if pixels <= 0 or steps <= 0 or not np.isfinite(seconds) or seconds < MIN_MEASURED_S:
        return False
    key = _key(model, device, sweep)
    with _LOCK:
        try:
            data = _read()
            rows = [r for r in data.get(key, []) if isinstance(r, (int, float)) and r > 0][-(KEEP - 1):]
            data[key] = rows + [seconds / (pixels * steps)]
            path = timings_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".timings-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)
            return True
        except OSError:
            return False


def rate(model: str, device: str, sweep: bool = False) -> tuple[float | None, int]:
    """(seconds per pixel and step, how many runs it rests on) for this model on this device kind."""
    rows = [r for r in _read().get(_key(model, device, sweep), []) if isinstance(r, (int, float)) and r > 0]
    return (float(np.mean(rows)), len(rows)) if rows else (None, 0)


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
    area_px: int  # pixels the run samples (whole regions)
    asked_px: int | None  # pixels of the rectangle asked for, when one was
    steps: int
    seconds: float | None  # expected time on this device; None: nothing measured here yet
    runs: int  # measured runs the time rests on
    device: str

    @property
    def rounds_out(self) -> bool:
        """The regions cover noticeably more than the rectangle asked for (whole regions are sampled)."""
        return self.asked_px is not None and self.area_px > 1.05 * self.asked_px

    def text(self) -> str:
        """One line: regions, area, rounding out, expected time."""
        parts = [f"{self.regions:,} region{'s' if self.regions != 1 else ''}, {area_text(self.area_px)}"]
        if self.rounds_out:
            parts.append(f"the rectangle ({area_text(self.asked_px)}) rounds out to whole regions")
        if self.regions == 0:
            parts.append("nothing to sample")
        elif self.seconds is None:
            parts.append(f"no run measured on {self.device} yet: the time left shows after the first region")
        else:
            parts.append(f"about {duration(self.seconds)} on {self.device} "
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


def estimate_run(canvas, request, device: str | None = None, redo: bool = False) -> Estimate:
    """The estimate for ``request`` on ``canvas`` (its ``area`` rectangle, if any, rounded out to whole
    regions), on ``device`` (the request's device when not given); ``redo``: finished regions in the
    area are sampled again too."""
    from src_models.store.regions import RegionSeq
    from src_models.synthesis.regions import pending_regions

    todo = pending_regions(canvas, request)
    if redo:
        size, ny, nx = canvas.region_grid
        f = canvas.factor
        y0, y1, x0, x1 = request.area if request.area is not None else (0, canvas.height, 0, canvas.width)
        iys = np.arange(max(0, (y0 // f) // size), min(ny, -(-(-(-y1 // f)) // size)))
        ixs = np.arange(max(0, (x0 // f) // size), min(nx, -(-(-(-x1 // f)) // size)))
        todo = RegionSeq((iys[:, None] * nx + ixs[None, :]).ravel(), size, nx, canvas.latent_shape)
    area = todo_area(canvas, todo)
    asked = None
    if request.area is not None:
        y0, y1, x0, x1 = request.area
        asked = max(0, min(y1, canvas.height) - max(0, y0)) * max(0, min(x1, canvas.width) - max(0, x0))
    kind = device_kind(device or request.device)
    steps = int(request.steps or (canvas.settings or {}).get("steps") or 1)
    per, runs = rate(request.model, kind, bool(request.sweep))
    seconds = per * area * steps if per is not None and area else None
    return Estimate(len(todo), area, asked, steps, seconds, runs, kind)


class RunClock:
    """Measures a run for :func:`record_run`: ``start()`` as sampling starts, ``add(pixels)`` per
    finished region, ``finish()`` at the end (records only when something was sampled)."""

    def __init__(self, model: str, device: str, steps: int, sweep: bool = False):
        self.model, self.device, self.steps, self.sweep = str(model), device_kind(device), int(steps), bool(sweep)
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
        return record_run(self.model, self.device, self.pixels, self.steps, self._last - self._t0, self.sweep)
