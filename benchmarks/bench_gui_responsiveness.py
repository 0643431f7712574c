"""How responsive napari stays while the DiffInfinite dock runs a synthesis; prints one JSON object.

    xvfb-run -a -s "-screen 0 1920x1080x24" env QT_QPA_PLATFORM=xcb \\
        .venv/bin/python benchmarks/bench_gui_responsiveness.py [--model default] [--size 1024] [--run-s 150]

A real napari window (1280 x 800) with the one dock and a canvas of ``--size`` px (regions sized for
the CPU: 256 px) under a procedural mask.  A Qt timer asks to fire every ``--tick-ms`` on the GUI
thread; the gaps between its firings (the "heartbeat") are recorded first with nothing running
(``--idle-s``), then while Run samples the canvas (``--run-s``, or until the run ends).  Then Cancel
is pressed and the time until the run has stopped is taken.  Reported:

* heartbeat gap percentiles (p50, p95, p99, max, ms) idle and during the run, and p95 run / idle;
* the first visible change after Run: the region in flight outlined in the overlay, the first live
  preview drawn in it, the first finished region on screen (seconds from the click, model loading
  included; each checked every 50 ms);
* the slowest single call of each GUI-side step of the run, and the canvas repaints (OpenGL, which
  Xvfb renders in software: far slower than a real display's GPU);
* how long Cancel took and how many network calls finished after it;
* the load average (1 min) before and after, the CPU count and torch's thread count: the figures
  depend on what else the machine runs, so compare idle and run from the same invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentiles(gaps_s: list[float]) -> dict:
    if not gaps_s:
        return {"n": 0}
    ms = np.asarray(gaps_s) * 1000
    return {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="default (shipped) or tiny-test")
    parser.add_argument("--size", type=int, default=1024, help="canvas side in px")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the card's)")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--run-s", type=float, default=150.0, help="heartbeat during the run for this long at most")
    parser.add_argument("--tick-ms", type=int, default=20)
    parser.add_argument("--sweep", action="store_true",
                        help="tick the dock's 'whole area at once' box: the run is a sweep, its tiles previewed")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_diffinfinite._worker import MODELS, model_card
    from src_models.synthesis.canvases import new_canvas, put_mask, region_size_for_device
    from src_models.io.masks import procedural_mask

    load_before = os.getloadavg()[0]
    card = model_card(args.model)
    side = args.size - args.size % (card.factor * 8)
    folder = Path(tempfile.mkdtemp(prefix="bench-gui-"))
    region = region_size_for_device(card, "cpu")
    steps = args.steps or int(card.default_steps)
    settings = {"model": args.model, "steps": steps, "omega": float(card.default_omega)}
    with new_canvas(card, folder / "c.zarr", side, side, region_size=region, settings=settings) as canvas:
        lh, lw = canvas.latent_shape
        put_mask(canvas, procedural_mask(lh, lw, list(range(1, card.num_classes)), seed=0))

    viewer = napari.Viewer(title="bench", show=True)
    viewer.window._qt_window.resize(1280, 800)
    app = QApplication.instance()
    _, dock = viewer.window.add_plugin_dock_widget("napari-diffinfinite", "DiffInfinite")
    dock.canvas.open(str(folder / "c.zarr"))
    dock.synthesis.device_box.setCurrentText("cpu")
    dock.synthesis.steps_box.setValue(steps)
    dock.synthesis.sweep_box.setChecked(args.sweep)

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(args.tick_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    def spin(seconds: float, until=None) -> None:
        """Run the Qt event loop for ``seconds`` (or until ``until()`` turns true)."""
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        if until is not None:
            check = QTimer()
            check.setInterval(50)
            check.timeout.connect(lambda: until() and loop.quit())
            check.start()
        loop.exec()

    import torch  # imported here (the dock's warm-up imports it too) so the idle phase is quiet

    # time what the run does on the GUI thread, step by step (the slowest calls are reported)
    from napari_diffinfinite import _worker

    slowest: dict[str, float] = {}

    def timed(cls, name):
        original = getattr(cls, name)

        def wrapper(self, *a, **k):
            t = time.perf_counter()
            try:
                return original(self, *a, **k)
            finally:
                slowest[name] = max(slowest.get(name, 0.0), time.perf_counter() - t)

        setattr(cls, name, wrapper)

    for name in ("start", "_on_yielded", "_tick", "_refresh", "_show_preview", "_on_finished"):
        timed(_worker.SynthesisRun, name)
    # Python's cyclic garbage collections (a full one stops every thread while it runs)
    import gc

    gc_runs: list[tuple[int, float]] = []
    gc_started = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_runs.append((info["generation"], time.perf_counter() - gc_started[0]))

    gc.callbacks.append(on_gc)
    # and the canvas repaints (OpenGL; software rendering under Xvfb makes them costly)
    draws: list[float] = []
    native = viewer.window._qt_viewer.canvas.native
    paint = native.paintGL

    def timed_paint(*a):
        t = time.perf_counter()
        try:
            return paint(*a)
        finally:
            draws.append(time.perf_counter() - t)

    native.paintGL = timed_paint

    spin(2.0)  # the window settles, the warm-up import finishes
    timer.start()
    spin(args.idle_s)
    idle = np.diff(ticks).tolist()

    # ------------------------------------------------------------------ the run
    firsts: dict[str, float] = {}
    net_calls = {"n": 0}
    clicked = time.perf_counter()

    def watch() -> None:
        now = time.perf_counter() - clicked
        run = dock.synthesis.run
        if run is None:
            return
        if "overlay_in_flight_s" not in firsts and run.overlay is not None and (run.overlay.states == 1).any():
            firsts["overlay_in_flight_s"] = now
        if "preview_s" not in firsts and run.overlay is not None and run.overlay.previews:
            firsts["preview_s"] = now  # the live preview drawn into the overlay
        if "region_on_screen_s" not in firsts and run.refreshes:
            firsts["region_on_screen_s"] = now
        if "model_loaded_s" not in firsts and run.state == "running":
            firsts["model_loaded_s"] = now
            model = MODELS.get(args.model, "cpu")
            model.unet.register_forward_hook(lambda *a: net_calls.__setitem__("n", net_calls["n"] + 1))

    watcher = QTimer()
    watcher.setInterval(50)  # cheap checks, on the GUI thread like everything else here (50 ms: the figures are ±0.05 s)
    watcher.timeout.connect(watch)
    watcher.start()
    ticks.clear()
    idle_draws = len(draws)
    run = dock.synthesis.start()
    spin(args.run_s, until=lambda: not run.busy)
    during = np.diff(ticks).tolist()
    long_gaps = [(round(ticks[i] - clicked, 2), round(g * 1000)) for i, g in enumerate(during) if g > 0.2]
    regions_done = run.regions_done
    levels_done = run.units()[0]
    sampling_s = time.perf_counter() - clicked - firsts.get("model_loaded_s", 0.0)
    cancel_s = calls_after_cancel = None
    if run.busy:
        pressed = time.perf_counter()
        dock.run_button.click()  # Cancel
        at_cancel = net_calls["n"]
        spin(120.0, until=lambda: not run.busy)
        cancel_s = time.perf_counter() - pressed
        calls_after_cancel = net_calls["n"] - at_cancel
    timer.stop()
    watcher.stop()
    load_after = os.getloadavg()[0]
    idle_p, run_p = percentiles(idle), percentiles(during)
    result = {
        "benchmark": "gui_responsiveness",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "torch_threads_in_run": torch.get_num_threads(),
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(load_after, 2),
        "model": args.model,
        "canvas_px": side,
        "region_px": region,
        "regions": run.regions_total,
        "steps": steps,
        "sweep": bool(args.sweep),
        "tick_ms": args.tick_ms,
        "heartbeat_idle": idle_p,
        "heartbeat_run": run_p,
        "p95_run_over_idle": round(run_p["p95_ms"] / idle_p["p95_ms"], 2) if idle_p.get("n") and run_p.get("n") else None,
        "first_visible_change_s": round(min(firsts.get("preview_s", 1e9), firsts.get("region_on_screen_s", 1e9),
                                            firsts.get("overlay_in_flight_s", 1e9)), 2) if firsts else None,
        **{k: round(v, 2) for k, v in sorted(firsts.items())},
        "regions_done_in_run_window": regions_done,
        "levels_done_in_run_window": levels_done,
        "seconds_per_level": round(sampling_s / levels_done, 2) if levels_done else None,
        "refreshes": run.refreshes,
        "cancel_s": round(cancel_s, 2) if cancel_s is not None else None,
        "network_calls_after_cancel": calls_after_cancel,
        "state": run.state,
        "gil_switch_interval_in_run_s": _worker.GIL_SWITCH_S,
        "gaps_over_200ms_at_s": long_gaps[:20],  # (seconds after Run, gap ms)
        "gc_full_collections": sum(1 for g, _ in gc_runs if g == 2),
        "gc_longest_ms": round(max((d for _, d in gc_runs), default=0.0) * 1000, 1),
        "canvas_repaints_idle": idle_draws,
        "canvas_repaints_run": len(draws) - idle_draws,
        "canvas_repaint_ms_median": round(float(np.median(draws)) * 1000, 1) if draws else None,
        "slowest_gui_steps_ms": {k: round(v * 1000, 1) for k, v in sorted(slowest.items(), key=lambda kv: -kv[1])},
    }
    print(json.dumps(result))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
