"""``diffinfinite generate-many``: one canvas per job, spread over dask.distributed workers.

    diffinfinite generate-many --jobs JOBS.csv|MASK_DIR --out DIR [--scheduler ADDR | --local-workers N]
                               [--gpus-per-worker G] [generate's options as defaults for every job]

Each job is one canvas ``DIR/NAME.zarr`` (with ``DIR/NAME.png``); ``DIR/summary.csv`` gets a row per
canvas as it finishes.  Rerunning the same command finishes only what is missing.  Bad input ends
with one line on stderr and exit status 2 before any worker starts and before anything is written;
exit status 1 when some canvas failed (the summary says which and why), 0 when all are done.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from src_models.cli.common import (UserError, add_run_options, check_run_args, follow_canvas, parse_size, resolve_request,
                                   run_command)


def build_parser(prog: str = "diffinfinite generate-many") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Make many canvases at once on a dask.distributed cluster (one task per canvas, one model load "
        "per worker, GPU pinning per worker, resume from the canvases' region state).  JOBS is a CSV file with a "
        "'mask' column and optional columns name, size (WxH), scale, region_size and any synthesis setting "
        "(model, seed, steps, omega, omega_per_class as 2=6;3=1, guidance_below, eta, schedule, max_batch, fast, compile, "
        "halo, distilled, "
        "precision, centre ...), empty cells taking the defaults below; or a folder of masks (one job each, sorted by "
        "name).  "
        "A job without a seed gets --seed plus its row number (0, 1, ...).",
    )
    p.add_argument("--jobs", required=True, type=Path, help="job table (CSV) or a folder of mask files")
    p.add_argument("--out", required=True, type=Path, help="folder for the canvases (NAME.zarr, NAME.png) and summary.csv")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDR",
                       help="address of a running dask scheduler (tcp://host:8786); its workers run the canvases")
    where.add_argument("--local-workers", type=int, default=None, metavar="N",
                       help="start N worker processes on this machine (default: one per GPU, or 1 without a GPU)")
    p.add_argument("--gpus-per-worker", type=int, default=None, metavar="G",
                   help="GPUs each canvas task reserves (dask resource GPU) and each worker is pinned to "
                   "(default: 1 when the workers have GPUs, else 0 = CPU)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=parse_size, default=None, metavar="WxH", help="canvas size for jobs without one")
    size.add_argument("--scale", type=float, default=None, help="canvas px per mask px for jobs without a size (default 1)")
    p.add_argument("--overwrite", action="store_true", help="make every canvas anew (default: finish existing ones)")
    p.add_argument("--retries", type=int, default=2, help="times a failed canvas task is run again (default 2)")
    p.add_argument("--summary", type=Path, default=None, help="summary CSV (default: OUT/summary.csv)")
    p.add_argument("--dashboard-address", default=":8787", help="dashboard of the local cluster (default :8787; "
                   "'none' for none)")
    add_run_options(p)
    for action in p._actions:  # each canvas's preview is OUT/NAME.png
        if "--preview" in action.option_strings:
            action.help = argparse.SUPPRESS
    return p


def _scale_size(row: dict, args, mask_shape, where: str) -> tuple[int, int]:
    text = row.get("size", "").strip()
    if text:
        try:
            return parse_size(text)
        except argparse.ArgumentTypeError as e:
            raise UserError(f"{where}: {e}") from None
    scale_text = row.get("scale", "").strip()
    if scale_text:
        try:
            scale = float(scale_text)
        except ValueError:
            raise UserError(f"{where}: scale must be a number, got {scale_text!r}") from None
    elif args.size is not None:
        return args.size
    else:
        scale = args.scale if args.scale is not None else 1.0
    if not (math.isfinite(scale) and scale > 0):
        raise UserError(f"{where}: scale must be a positive number, got {scale}")
    return int(round(mask_shape[1] * scale)), int(round(mask_shape[0] * scale))


def table_option(field: str) -> str:
    """A request field as a job table names it (``omega_per_class 2`` -> ``omega for class 2``)."""
    if field.startswith("omega_per_class "):
        return "omega for class " + field.split(" ", 1)[1]
    return field


def _warn(text: str) -> None:
    warnings.warn(text, RuntimeWarning, stacklevel=2)


def build_jobs(args) -> list:
    """Every job, checked (masks read, labels, sizes, settings against canvases already on disk)."""
    from src_models.models.loading import find_card
    from src_models.store.canvas import CanvasError
    from src_models.synthesis.canvases import CanvasSpec, check_existing, check_spec, read_mask_for_model
    from src_models.synthesis.many import Job, JobError, job_overrides, read_job_rows
    from src_models.synthesis.request import RequestError, SynthesisRequest

    if args.region_size == "auto":
        raise UserError("--region-size auto is for generate (give generate-many regions in px)")
    try:
        rows, base = read_job_rows(args.jobs)
    except JobError as e:
        raise UserError(str(e)) from None
    cards: dict = {}
    jobs, names = [], {}
    for index, row in enumerate(rows):
        where = f"job {index + 1} ({args.jobs.name})" if args.jobs.is_file() else f"mask {row['mask']}"
        try:
            fields = job_overrides(row, where)
        except JobError as e:
            raise UserError(str(e)) from None
        mask_path = Path(row["mask"].strip())
        if not row["mask"].strip():
            raise UserError(f"{where}: no mask given")
        if not mask_path.is_absolute():
            mask_path = base / mask_path
        name = row.get("name", "").strip() or mask_path.stem
        if "/" in name or name in (".", ".."):
            raise UserError(f"{where}: name {name!r} must be a plain file name")
        if name in names:
            raise UserError(f"{where}: two jobs are named {name!r} (also {names[name]}); give a name column")
        names[name] = where
        if not mask_path.exists():
            raise UserError(f"{where}: mask file {mask_path} does not exist")
        model = str(fields.get("model", args.model))
        if model not in cards:
            cards[model] = find_card(model)[0]
        card = cards[model]
        job_args = copy.copy(args)
        job_args.model = model
        out = args.out / f"{name}.zarr"
        if out.exists() and not args.overwrite:  # what is left open goes on as the canvas was made
            follow_canvas(job_args, out, card, fields)
        values = {k: v for k, v in dataclasses.asdict(resolve_request(job_args, card, args.device)).items() if k != "area"}
        values["seed"] = args.seed + index
        values.update(fields)
        try:
            request = SynthesisRequest(**values).resolved(card, option=table_option)
        except (TypeError, RequestError) as e:
            raise UserError(f"{where}: {e}") from None
        mask = read_mask_for_model(mask_path, card, warn=_warn)
        width, height = _scale_size(row, args, mask.shape, where)
        region_size = args.region_size
        if row.get("region_size", "").strip():
            try:
                region_size = int(row["region_size"])
            except ValueError:
                raise UserError(f"{where}: region_size must be an integer, got {row['region_size']!r}") from None
        spec = CanvasSpec(out, height, width, mask, request.settings(), region_size, mask_name=str(mask_path))
        try:
            check_spec(card, spec)
            if out.exists() and not args.overwrite:
                check_existing(spec, card)
        except CanvasError as e:
            text = f"{e}; pass --overwrite to make it anew" if out.exists() and not args.overwrite else str(e)
            raise UserError(f"{where}: {text}") from None
        if fields.get("precision", job_args.precision) in (None, "auto"):  # each worker's device decides
            request = dataclasses.replace(request, precision="auto")
        jobs.append(Job(name=name, mask=str(mask_path), out=str(out), width=width, height=height,
                        request=dataclasses.asdict(request), region_size=region_size,
                        preview=str(args.out / f"{name}.png"), overwrite=args.overwrite))
    return jobs


def _start(args, n_jobs: int):
    """(client, cluster or None, gpus per worker)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError("generate-many needs dask.distributed: pip install 'napari-diffinfinite[distributed]'") from None
    import torch

    if args.scheduler:
        try:
            client = Client(args.scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise UserError(f"cannot reach the dask scheduler at {args.scheduler} ({e})") from None
        try:
            client.wait_for_workers(1, timeout=60)
        except TimeoutError:
            client.close()
            raise UserError(f"the dask scheduler at {args.scheduler} has no worker (start some with "
                            f"`dask worker {args.scheduler} --nthreads 1 --resources GPU=1`)") from None
        workers = client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) else client.scheduler_info()["workers"]
        offered = max((w.get("resources", {}).get("GPU", 0) for w in workers.values()), default=0)
        gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1 if offered else 0)
        if gpus > 0 and offered < gpus:
            client.close()
            raise UserError(f"no worker of {args.scheduler} offers {gpus} GPU(s) (start workers with --resources "
                            f"GPU={gpus}, or pass --gpus-per-worker 0 to run on their CPUs)")
        return client, None, gpus
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1 if n_gpus else 0)
    if gpus > 0 and n_gpus < gpus:
        raise UserError(f"--gpus-per-worker {gpus} but this machine has {n_gpus} GPU(s)")
    n = args.local_workers or (max(1, n_gpus // gpus) if gpus else 1)
    if gpus and n * gpus > n_gpus:
        raise UserError(f"{n} workers x {gpus} GPU(s) each, but this machine has {n_gpus} GPU(s)")
    n = min(n, max(1, n_jobs))
    threads = 1 if gpus else max(1, (os.cpu_count() or 1) // n)
    dash = None if str(args.dashboard_address).lower() == "none" else args.dashboard_address
    import logging

    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=dash,
                           resources={"GPU": gpus} if gpus else None, silence_logs=logging.CRITICAL,
                           env={"OMP_NUM_THREADS": str(threads)})
    client = Client(cluster)
    args._torch_threads = threads
    return client, cluster, gpus


def _stop_local_workers(client) -> None:
    """On Ctrl+C or SIGTERM: end this machine's worker processes at once rather than letting
    them finish the canvases in flight (a dask worker closes only after its running task, which
    may take hours).  Their finished regions are on disk; the region in flight is dropped."""
    try:
        pids = client.run(os.getpid, wait=True)
    except Exception:
        return
    for pid in pids.values():
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _takes_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


class _Printer:
    """Per-canvas progress lines on stderr (at most one every two seconds per canvas)."""

    def __init__(self, every_s: float = 2.0):
        self.every_s, self.last = every_s, {}

    def event(self, msg: dict) -> None:
        name, kind = msg.get("name"), msg.get("kind")
        now = time.monotonic()
        if kind == "start":
            again = f" (resumed: {msg['done_before']} already done)" if msg.get("done_before") else ""
            self._print(f"{name}: {msg['todo']} of {msg['regions']} regions to sample on {msg.get('worker', '?')} "
                        f"({msg.get('device')}){again}")
            self.last[name] = now
        elif kind == "region":
            if now - self.last.get(name, 0) >= self.every_s or msg.get("done") == msg.get("regions"):
                self.last[name] = now
                self._print(f"{name}: {msg['done']}/{msg['regions']} regions")
        elif kind == "repaired":
            self._print(f"{name}: {msg['regions']} damaged region(s) found; they are generated again")

    def row(self, row: dict, done: int, total: int) -> None:
        head = f"[{done}/{total}] {row['name']}:"
        if row.get("status") == "failed":
            self._print(f"{head} failed: {row.get('error')}")
        elif row.get("status") == "already done":
            self._print(f"{head} already done ({row.get('regions')} regions)")
        else:
            again = f", {row['done_before']} were done before" if row.get("done_before") else ""
            tries = f", attempt {row['attempts']}" if (row.get("attempts") or 0) > 1 else ""
            self._print(f"{head} done: {row.get('sampled')} regions sampled{again} in {row.get('seconds')} s on "
                        f"{row.get('worker')} ({row.get('device')}){tries}")

    @staticmethod
    def _print(text: str) -> None:
        print(f"generate-many: {text}", file=sys.stderr, flush=True)


def run(args) -> int:
    from src_models.synthesis.many import run_jobs

    check_run_args(args)
    if args.preview is not None:
        raise UserError("--preview: generate-many writes OUT/NAME.png beside each canvas")
    if args.local_workers is not None and args.local_workers < 1:
        raise UserError(f"--local-workers must be at least 1, got {args.local_workers}")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise UserError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")
    if args.retries < 0:
        raise UserError(f"--retries must be 0 or more, got {args.retries}")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale > 0):
        raise UserError(f"--scale must be a positive number, got {args.scale}")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; give a folder")
    jobs = build_jobs(args)
    summary = args.summary or args.out / "summary.csv"
    client, cluster, gpus = _start(args, len(jobs))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        link = None
        if cluster is None or str(args.dashboard_address).lower() != "none":
            try:
                import bokeh  # noqa: F401 (the dashboard needs it)

                link = client.dashboard_link
            except ImportError:
                pass
        print(f"generate-many: {len(jobs)} canvas(es) on {len(client.scheduler_info()['workers'])} worker(s)"
              f"{f' with {gpus} GPU(s) each' if gpus else ' (CPU)'}" + (f"; dashboard {link}" if link else ""),
              file=sys.stderr, flush=True)
        printer = _Printer()
        result = run_jobs(client, jobs, summary, gpus_per_worker=gpus, torch_threads=getattr(args, "_torch_threads", None),
                          retries=args.retries, on_event=printer.event, on_row=printer.row)
    except BaseException:
        if cluster is not None:
            _stop_local_workers(client)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    counts: dict[str, int] = {}
    for r in result.rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    for r in result.rows:
        print(f"{r['name']}\t{r['status']}\t{r.get('canvas')}" + (f"\t{r.get('error')}" if r["status"] == "failed" else ""))
    print(f"summary: {summary}  ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    return 1 if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_command(run, args, kept="finished regions are kept (run the same command again to finish)")
