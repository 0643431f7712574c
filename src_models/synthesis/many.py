"""Many canvases over many workers with dask.distributed (``diffinfinite generate-many``).

One *job* is one canvas: a mask, a size, a seed, a model and the settings of a
:class:`~src_models.synthesis.request.SynthesisRequest`.  Each job runs as one dask task,
:func:`generate_canvas`, which does what ``diffinfinite generate`` does (and ``--resume`` when
the canvas exists): the canvas store's region state decides what is left, finished regions are
checked against their checksums and never sampled again, and the writer lock beside the store
keeps a second writer out.  A task that dies with its worker is run again by the scheduler on
another worker and picks the canvas up where its region state says it stopped.

Why one task per canvas, not per batch of regions: :func:`~src_models.synthesis.regions.synthesise`
samples each region with its finished neighbours as context and rewrites their border pixels,
so the regions of one canvas depend on the order they are done in; spread over workers they
would give another canvas than ``generate`` with the same seed, and they would need several
writers on one store (whose region-state and pyramid chunks are shared by neighbouring regions),
which its lock forbids.  A canvas is seconds to hours of work, so the scheduler's cost per task
does not matter, and a lost worker costs at most the region it was sampling.

On each worker a :class:`CanvasWorker` plugin pins the worker to its GPU(s) (a lock file per
GPU on the host, so restarted workers find a free one), sets torch's thread count and keeps the
loaded models: each model loads once per worker.  Progress goes to the scheduler as events
(topic ``diffinfinite``): one when a canvas starts, then at most one a second per canvas while
regions finish, and one at the end.

No napari, no Qt; dask.distributed is imported only by the functions that need it.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from src_models.errors import DiffInfiniteError

TOPIC = "diffinfinite"
KEY_PREFIX = "diffinfinite-canvas"
PLUGIN_NAME = "diffinfinite-canvas-worker"
SUMMARY_COLUMNS = ["name", "status", "canvas", "preview", "regions", "sampled", "done_before", "seed", "model",
                   "width", "height", "seconds", "attempts", "worker", "device", "error"]
# request fields a job may not set: the worker picks the device; a job is a whole canvas
NOT_JOB_FIELDS = ("device", "area")


class JobError(DiffInfiniteError, ValueError):
    """A job that cannot run as given (message names the job and says why)."""


@dataclass
class Job:
    """One canvas to make, as plain values (pickled to a worker)."""

    name: str
    mask: str
    out: str
    width: int
    height: int
    request: dict  # SynthesisRequest fields (device: "auto" = the worker's device)
    region_size: int | None = None
    preview: str = ""
    overwrite: bool = False
    lock_wait_s: float = 60.0
    run_id: str = ""  # set by run_jobs: tells this run's events from other runs' on a shared scheduler

    @property
    def seed(self) -> int:
        return int(self.request.get("seed", 0))


# ------------------------------------------------------------------------------------------------
# job tables: any SynthesisRequest field is a column
# ------------------------------------------------------------------------------------------------
def request_fields() -> dict[str, object]:
    """The SynthesisRequest fields a job table may set, with their type (or None where unknown)."""
    import src_models.synthesis.request as request_module
    from src_models.synthesis.request import SynthesisRequest

    out = {}
    for f in dataclasses.fields(SynthesisRequest):
        if f.name in NOT_JOB_FIELDS:
            continue
        kind = f.type
        if isinstance(kind, str):
            try:
                kind = eval(kind, vars(request_module), {**vars(typing)})  # noqa: S307 (our own annotations)
            except Exception:
                kind = None
        out[f.name] = kind
    return out


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "y", "on"):
        return True
    if t in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_value(text: str, kind, default=None):
    """A job-table cell as the field's type: int, float, bool, str, ``X | None`` (empty or
    ``none``), ``tuple[...]`` (comma separated), ``dict[int, float]`` (``2=6;3=1``); other
    types (or an unknown one) from JSON, else the text itself."""
    text = text.strip()
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if text.lower() in ("", "none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(text, inner[0] if len(inner) == 1 else None, default)
    if kind is bool:
        return _parse_bool(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is str:
        return text
    if origin is tuple:
        parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
        types = args if args and args[-1] is not Ellipsis else (args[0] if args else None,) * len(parts)
        if len(types) != len(parts):
            raise ValueError(f"expected {len(types)} comma-separated values, got {text!r}")
        return tuple(parse_value(p, t) for p, t in zip(parts, types))
    if origin is dict:
        kt, vt = args if len(args) == 2 else (None, None)
        out = {}
        for item in text.replace(",", ";").split(";"):
            if not item.strip():
                continue
            k, sep, v = item.partition("=")
            if not sep:
                raise ValueError(f"expected KEY=VALUE pairs separated by ';', got {text!r}")
            out[parse_value(k, kt)] = parse_value(v, vt)
        return out
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_job_rows(spec: str | Path) -> tuple[list[dict], Path]:
    """Rows of a job table (CSV with a ``mask`` column), or one row per mask file of a folder.
    Returns the rows (column -> text) and the folder relative mask paths are taken from."""
    import csv

    from src_models.io.masks import MASK_EXTS

    spec = Path(spec)
    if spec.is_dir():
        files = sorted(p for p in spec.iterdir() if p.is_file() and p.suffix.lower() in MASK_EXTS + (".tiff", ".tif"))
        files = [p for p in files if not p.stem.endswith("_colour")]
        if not files:
            raise JobError(f"no mask files ({', '.join(sorted(set(MASK_EXTS)))}) in {spec}")
        return [{"mask": p.name} for p in files], spec
    if not spec.is_file():
        raise JobError(f"jobs {spec} does not exist (give a CSV file or a folder of masks)")
    try:
        with spec.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = [{(k or "").strip(): (v or "") for k, v in row.items()} for row in reader]
            header = [h.strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise JobError(f"cannot read jobs {spec}: {e}") from None
    if "mask" not in header:
        raise JobError(f"jobs {spec} has no 'mask' column (columns: {', '.join(header) or 'none'})")
    rows = [r for r in rows if any(v.strip() for v in r.values())]
    if not rows:
        raise JobError(f"jobs {spec} holds no job")
    return rows, spec.parent


TABLE_COLUMNS = ("mask", "name", "size", "scale", "region_size")


def job_overrides(row: dict, where: str) -> dict:
    """The request fields a row sets (only cells that are not empty), parsed to their types."""
    known = request_fields()
    out = {}
    for col, text in row.items():
        if col in TABLE_COLUMNS or not text.strip():
            continue
        if col in NOT_JOB_FIELDS:
            raise JobError(f"{where}: column {col!r} cannot be set per job "
                           f"({'each worker uses its own device' if col == 'device' else 'a job is a whole canvas'})")
        if col not in known:
            raise JobError(f"{where}: unknown column {col!r} (known: {', '.join(TABLE_COLUMNS + tuple(known))})")
        try:
            out[col] = parse_value(text, known[col])
        except (ValueError, TypeError) as e:
            raise JobError(f"{where}: column {col!r}: {e}") from None
    return out


# ------------------------------------------------------------------------------------------------
# on the worker
# ------------------------------------------------------------------------------------------------
class _WorkerState:
    """Device, models and GPU locks of one worker process."""

    def __init__(self, gpus: int = 0, threads: int | None = None):
        self.gpus, self.threads = int(gpus), threads
        self.device = "cpu"
        self.models: dict = {}
        self.cards: dict = {}  # spec -> (card, model loaded for the card or None)
        self.loads = 0  # models loaded by this worker (one per model and device)
        self.lock_fds: list[int] = []
        self.error: str | None = None
        self.host = socket.gethostname()
        self._loading = threading.Lock()

    def start(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
        if self.gpus > 0:
            try:
                self.device = self._claim_gpus()
            except RuntimeError as e:
                self.error = str(e)

    def _claim_gpus(self) -> str:
        """Take ``gpus`` GPUs of this host that no other worker holds; returns the first as ``cuda:N``."""
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"worker on {self.host} was asked for {self.gpus} GPU(s) but CUDA is not available")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        count = torch.cuda.device_count()
        ids = [v.strip() for v in visible.split(",")][:count] if visible else [str(i) for i in range(count)]
        taken = claim_gpus(ids, self.gpus)
        if taken is None:
            raise RuntimeError(f"no free GPU for this worker on {self.host}: {count} GPU(s), held by other workers "
                               f"(start at most GPUs / --gpus-per-worker workers per host)")
        self.lock_fds = [fd for _, fd in taken]
        first = taken[0][0]
        torch.cuda.set_device(first)
        return f"cuda:{first}"

    def stop(self) -> None:
        self.models.clear()
        self.cards.clear()
        for fd in self.lock_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.lock_fds = []

    def card(self, spec: str):
        """The model card of ``spec`` (read once per worker; a published checkpoint is loaded on
        the CPU for it, and kept for :meth:`model`)."""
        key = str(spec)
        with self._loading:
            if key not in self.cards:
                from src_models.models.loading import find_card

                self.cards[key] = find_card(spec)
            return self.cards[key][0]

    def model(self, spec: str, device: str):
        """The model, loaded once per worker and device."""
        key = (str(spec), str(device))
        with self._loading:  # a worker with several threads loads a model once all the same
            if key not in self.models:
                from src_models.models.loading import load_for_run

                card, preloaded = self.cards.get(str(spec), (None, None))
                self.models[key] = load_for_run(spec, device, preloaded)
                if preloaded is not None:  # handed over: the card stays, the model is this one
                    self.cards[str(spec)] = (card, None)
                self.loads += 1
            return self.models[key]


def claim_gpus(ids: list[str], n: int, folder: Path | None = None) -> list[tuple[int, int]] | None:
    """Pin a worker to ``n`` of this host's GPUs (``ids``: their physical ids, in the order the
    worker sees them): a lock file per GPU, held (flock) for the worker's life and freed by the
    kernel when it dies, so a restarted worker finds the GPU its predecessor had.  Returns
    ``[(index among ids, lock fd), ...]``, or None when fewer than ``n`` are free."""
    folder = folder or Path(tempfile.gettempdir()) / f"diffinfinite-gpus-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    taken = []
    for index, gpu in enumerate(ids):
        fd = os.open(folder / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        taken.append((index, fd))
        if len(taken) == n:
            return taken
    for _, fd in taken:
        os.close(fd)
    return None


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _PluginBase
except ImportError:  # dask.distributed is optional: only generate-many needs it
    _PluginBase = object


class CanvasWorker(_PluginBase):
    """dask WorkerPlugin: GPU pinning, torch threads and the model cache of a worker."""

    name = PLUGIN_NAME

    def __init__(self, gpus_per_worker: int = 0, torch_threads: int | None = None):
        self.gpus_per_worker, self.torch_threads = int(gpus_per_worker), torch_threads
        self.state: _WorkerState | None = None

    def setup(self, worker):
        self.state = _WorkerState(self.gpus_per_worker, self.torch_threads)
        self.state.start()

    def teardown(self, worker):
        if self.state is not None:
            self.state.stop()


_LOCAL_STATE: _WorkerState | None = None


def _state() -> tuple[_WorkerState, object]:
    """This process's worker state and its dask worker (None outside a dask worker)."""
    global _LOCAL_STATE
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:
        plugin = worker.plugins.get(PLUGIN_NAME)
        if plugin is not None and plugin.state is not None:
            return plugin.state, worker
    if _LOCAL_STATE is None:
        _LOCAL_STATE = _WorkerState()
    return _LOCAL_STATE, worker


class _Events:
    """Progress of one canvas as scheduler events (or calls of ``sink`` outside a worker)."""

    def __init__(self, worker, job: Job, sink=None, every_s: float = 1.0):
        self.worker, self.job, self.sink, self.every_s = worker, job, sink, every_s
        self.last = 0.0

    def send(self, kind: str, force: bool = True, **values) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        msg = {"kind": kind, "name": self.job.name, "run": self.job.run_id, **values}
        if self.worker is not None:
            msg["worker"] = self.worker.address
            try:
                self.worker.log_event(TOPIC, msg)
            except Exception:  # progress must never stop a canvas
                pass
        if self.sink is not None:
            self.sink(msg)


def generate_canvas(job: Job, sink=None) -> dict:
    """Make (or finish) the canvas of ``job``; the body of one dask task.

    Returns a summary row.  Bad input (mask, model, settings that differ from the canvas on
    disk) comes back as a row with status ``failed`` and the reason: running it again would not
    help.  A canvas another process is writing is waited for up to ``job.lock_wait_s``, then
    the task fails with an exception, which dask retries."""
    from src_models.errors import DiffInfiniteError
    from src_models.store.canvas import CanvasLockedError

    state, worker = _state()
    events = _Events(worker, job, sink)
    started = time.perf_counter()
    row = {"name": job.name, "canvas": job.out, "preview": job.preview, "seed": job.seed,
           "model": str(job.request.get("model", "")), "width": job.width, "height": job.height,
           "worker": worker.address if worker is not None else f"{state.host}:{os.getpid()}"}
    events.send("task")
    try:
        if state.error:
            raise JobError(state.error)
        deadline = time.monotonic() + job.lock_wait_s
        while True:
            try:
                result = _make(job, state, events)
                break
            except CanvasLockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
    except CanvasLockedError:
        raise
    except DiffInfiniteError as e:
        row.update(status="failed", error=str(e), seconds=round(time.perf_counter() - started, 2))
        events.send("failed", error=str(e))
        return row
    row.update(result, seconds=round(time.perf_counter() - started, 2), error="")
    events.send("end", status=row["status"], sampled=row["sampled"], regions=row["regions"])
    return row


def _device_for(job: Job, state: _WorkerState) -> str:
    """``auto``: the GPU the worker is pinned to, the CPU for a worker without GPUs."""
    from src_models.models.device import resolve_device

    wanted = str(job.request.get("device") or "auto")
    if wanted == "auto":
        return state.device
    return str(resolve_device(wanted))


def job_spec(job: Job, card, settings: dict):
    """The :class:`~src_models.synthesis.canvases.CanvasSpec` of a job (its mask read the one way)."""
    from src_models.synthesis.canvases import CanvasSpec, read_mask_for_model

    mask = read_mask_for_model(job.mask, card)
    return CanvasSpec(Path(job.out), job.height, job.width, mask, settings, job.region_size, mask_name=job.mask,
                      inputs=(job.mask,))


def job_request(job: Job, device: str, card):
    """The job's request on this worker's ``device``.  A precision the job leaves open (``auto``) is
    the canvas's where one exists (a job retried on another worker goes on as it was made), else
    this device's default (bf16 on a CPU with native bfloat16, float32 on CUDA)."""
    from src_models.synthesis.canvases import made_with
    from src_models.synthesis.request import SynthesisRequest, machine_precision

    request = SynthesisRequest(**{**job.request, "device": device})
    if request.precision in (None, "auto"):
        out = Path(job.out)
        made = made_with(out, card).get("precision", "auto") if out.exists() and not job.overwrite else "auto"
        request = dataclasses.replace(request, precision=made if made != "auto" else machine_precision(device))
    return request


def _make(job: Job, state: _WorkerState, events: _Events) -> dict:
    """One canvas through the use cases ``generate`` runs (check, open or make, repair, sample)."""
    from src_models.synthesis import regions
    from src_models.synthesis.canvases import (CanvasMismatchError, check_existing, check_spec, open_for_run,
                                               save_preview)

    out = Path(job.out)
    device = _device_for(job, state)
    card = state.card(job.request["model"])
    request = job_request(job, device, card)
    spec = job_spec(job, card, request.settings())
    check_spec(card, spec)
    resume = out.exists() and not job.overwrite
    if resume:
        try:
            existing = check_existing(spec, card)
        except CanvasMismatchError as e:
            raise CanvasMismatchError(f"{e}; pass --overwrite to make it anew") from None
        if existing.complete:
            if job.preview and not Path(job.preview).exists():
                from src_models.store.canvas import Canvas

                with Canvas.open(out, "r") as canvas:
                    save_preview(canvas, job.preview)
            return {"status": "already done", "regions": existing.total, "sampled": 0, "done_before": existing.done,
                    "device": device}
    model = state.model(request.model, device)  # loads once per worker
    repaired: list[int] = []
    canvas = open_for_run(spec, model.card, resume=resume, overwrite=job.overwrite, repaired=repaired)
    if repaired:
        events.send("repaired", regions=len(repaired))
    with canvas:
        done_before = len(canvas.done_indices())
        todo = len(regions.pending_regions(canvas, request))
        total = len(canvas.regions())
        events.send("start", regions=total, todo=todo, done_before=done_before, device=device)
        sampled = 0
        for ev in regions.synthesise(model, canvas, request):
            sampled += 1
            events.send("region", force=sampled == todo, done=done_before + sampled, regions=total)
        if job.preview:
            save_preview(canvas, job.preview)
    return {"status": "done", "regions": total, "sampled": sampled, "done_before": done_before, "device": device}


# ------------------------------------------------------------------------------------------------
# on the client
# ------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    rows: list[dict] = field(default_factory=list)
    summary: Path | None = None

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r.get("status") == "failed"]


def write_summary(rows: list[dict], path: Path) -> Path:
    """The summary CSV, replaced atomically (a reader never sees half a file)."""
    import csv

    from src_models.durable import atomic_write

    path = Path(path)
    with atomic_write(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in SUMMARY_COLUMNS})
    return path


def run_jobs(client, jobs: list[Job], summary: Path, *, gpus_per_worker: int = 0, torch_threads: int | None = None,
             retries: int = 2, on_event=None, on_row=None) -> RunResult:
    """Submit one task per job to ``client`` (a ``distributed.Client``), collect the rows and
    keep ``summary`` up to date after each canvas.

    ``on_event(msg)`` receives the workers' progress events, ``on_row(row, done, total)`` each
    finished canvas.  Workers need the :class:`CanvasWorker` plugin, which this registers."""
    import uuid

    from distributed import as_completed

    client.register_plugin(CanvasWorker(gpus_per_worker, torch_threads), name=PLUGIN_NAME)
    starts: dict[str, int] = {}

    token = uuid.uuid4().hex[:8]

    def handler(event):
        _, msg = event if isinstance(event, tuple) else (None, event)
        if not isinstance(msg, dict) or msg.get("run") != token:
            return
        if msg.get("kind") == "task":
            starts[msg["name"]] = starts.get(msg["name"], 0) + 1
        if on_event is not None:
            on_event(msg)

    client.subscribe_topic(TOPIC, handler)
    resources = {"GPU": gpus_per_worker} if gpus_per_worker > 0 else None
    futures = {}
    for index, job in enumerate(jobs):
        job = dataclasses.replace(job, run_id=token)
        fut = client.submit(generate_canvas, job, key=(f"{KEY_PREFIX}-{token}", index, job.name),
                            resources=resources, retries=retries, pure=False)
        futures[fut] = job
    rows: dict[str, dict] = {}
    result = RunResult(summary=Path(summary))
    try:
        for fut in as_completed(list(futures)):
            job = futures[fut]
            try:
                row = fut.result()
            except Exception as e:  # the task failed on every try (worker lost too often, or an error)
                row = {"name": job.name, "canvas": job.out, "preview": job.preview, "seed": job.seed,
                       "model": job.request.get("model", ""), "width": job.width, "height": job.height,
                       "status": "failed", "error": f"{type(e).__name__}: {e}"}
            row["attempts"] = starts.get(job.name, 0)
            rows[job.name] = row
            write_summary([rows[j.name] for j in jobs if j.name in rows], summary)
            if on_row is not None:
                on_row(row, len(rows), len(jobs))
    except BaseException:  # Ctrl+C, SIGTERM: queued canvases are dropped; running ones keep their finished regions
        client.cancel(list(futures))
        raise
    finally:
        try:
            client.unsubscribe_topic(TOPIC)
        except Exception:
            pass
    result.rows = [rows[j.name] for j in jobs if j.name in rows]
    write_summary(result.rows, summary)
    return result
