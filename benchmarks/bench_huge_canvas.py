"""Huge canvases: what the CLI does before the first region, the first region itself, opening the
canvas in the napari reader, and asking which regions are done.  Prints one JSON object.

    python benchmarks/bench_huge_canvas.py [--sizes 10000 100000] [--model tiny-test] [--steps 2]

For each canvas side (px) it does what ``diffinfinite generate --mask M --size SxS`` does, in one
process: create the canvas, put a 64x64 label mask on it (stretched to the canvas), and sample
until the first region is on disk; then it opens the canvas as the napari reader does, times the
region-state look-ups, and runs the quick and the deep check of ``diffinfinite verify``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def _files(path: Path) -> int:
    return sum(len(f) for _, _, f in os.walk(path))


def one(side: int, model, steps: int, workdir: Path) -> dict:
    import numpy as np

    from src_models.synthesis.canvases import new_canvas, put_mask
    from src_models.store.canvas import Canvas
    from src_models.io.masks import procedural_mask
    from src_models.synthesis.regions import synthesise
    from src_models.synthesis.request import SynthesisRequest
    from src_models.store.verify import verify_canvas

    card = model.card
    step = card.factor * 8
    side -= side % step
    path = workdir / f"c{side}.zarr"
    mask = procedural_mask(64, 64, list(range(1, card.num_classes)), seed=0)  # every pixel labelled
    request = SynthesisRequest(model=card.name, steps=steps, seed=0, centre=(side / 2, side / 2))
    t0 = time.perf_counter()
    canvas = new_canvas(card, path, side, side, settings=request.settings())
    created = time.perf_counter() - t0
    put_mask(canvas, mask)
    masked = time.perf_counter() - t0
    first_event = None
    for ev in synthesise(model, canvas, request):
        first_event = ev
        break
    first = time.perf_counter() - t0
    canvas.close()
    out = {
        "side_px": side,
        "regions": len(canvas.regions()),
        "region_px": canvas.region_size,
        "create_s": round(created, 3),
        "mask_s": round(masked - created, 3),
        "first_region_s": round(first, 3),
        "first_region_sampling_s": round(first_event.seconds, 3),
    }
    out["files_after_first_region"] = _files(path)

    import dask.array  # noqa: F401  (napari has it imported when a reader runs)

    from napari_diffinfinite._reader import canvas_layer_data

    t = time.perf_counter()
    layers = canvas_layer_data(path)
    out["reader_open_s"] = round(time.perf_counter() - t, 3)
    out["reader_mask_layer_shape"] = list(layers[1][0].shape)

    with Canvas.open(path) as c:
        n = min(2000, len(c.regions()))
        idx = np.random.default_rng(0).integers(0, len(c.regions()), n)
        t = time.perf_counter()
        for i in idx:
            c.is_done(int(i))
        out["is_done_reader_ms"] = round((time.perf_counter() - t) / n * 1e3, 3)
        t = time.perf_counter()
        done = c.done_indices()
        out["done_indices_s"] = round(time.perf_counter() - t, 4)
        out["done"] = len(done)
        t = time.perf_counter()
        quick = verify_canvas(c, deep=False)
        out["verify_quick_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        deep = verify_canvas(c, deep=True)
        out["verify_deep_s"] = round(time.perf_counter() - t, 3)
        out["verify_ok"] = quick.ok and deep.ok
    with Canvas.open(path, "r+") as c:
        c.state_table()
        t = time.perf_counter()
        for i in idx:
            c.is_done(int(i))
        out["is_done_writer_us"] = round((time.perf_counter() - t) / n * 1e6, 2)
        # the reader's check on a canvas whose every region is finished: it looks for every
        # chunk file of every level; stand-ins (empty files) take the place of the real chunks
        table = c.state_table()
        table[..., 0] = 1
        c._array("diffinfinite/region_state")[:] = table
        # ...and its mask written everywhere: the mask level the reader shows holds real labels
        from napari_diffinfinite._reader import mask_step

        step = mask_step(c.latent_shape)
        level = step.bit_length() - 1
        shown = c.read_mask(level=level)
        c._array("diffinfinite/mask_written")[:] = 1
        c.mask_level(level)[:] = shown
        names = [str(level) for level in range(c.levels)] + ["diffinfinite/latent"]
        chunk_files = [p for name in names for p in c.chunk_files(name, [(0, n) for n in c._array(name).shape])]
    if len(chunk_files) <= 100_000:
        for p in chunk_files:
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch()
        with Canvas.open(path) as c:
            t = time.perf_counter()
            report = verify_canvas(c, deep=False)
            out["all_done_verify_quick_s"] = round(time.perf_counter() - t, 3)
            out["all_done_chunk_files"] = len(chunk_files)
            assert report.ok
        t = time.perf_counter()
        canvas_layer_data(path)
        out["all_done_reader_open_s"] = round(time.perf_counter() - t, 3)
    shutil.rmtree(path, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--model", default="tiny-test")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from src_models.models.loading import load_model

    model = load_model(args.model, "cpu")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one(side, model, args.steps, Path(tmp)) for side in args.sizes]
    result = {
        "benchmark": "huge_canvas",
        "model": args.model,
        "steps": args.steps,
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}",
        "load_average_before": [round(v, 2) for v in load],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "runs": runs,
    }
    if len(runs) >= 2:
        result["first_region_ratio_largest_vs_smallest"] = round(runs[-1]["first_region_s"] / runs[0]["first_region_s"], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
