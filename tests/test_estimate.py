"""The estimate said before a run: regions, area (rounding out named), time from earlier runs."""
from __future__ import annotations

import numpy as np

from src_models.synthesis.estimate import (Estimate, RunClock, duration, estimate_run, mode_of, rate, record_run,
                                           request_mode, todo_area)


def test_runs_are_remembered_per_model_and_device(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFINFINITE_TIMINGS", str(tmp_path / "t.json"))
    assert rate("tiny-test", "cpu") == (None, 0)
    assert not record_run("tiny-test", "cpu", pixels=1000, steps=4, seconds=0.5)  # too short to mean anything
    assert record_run("tiny-test", "cpu", pixels=1000, steps=4, seconds=8.0)
    assert record_run("tiny-test", "cpu", pixels=1000, steps=4, seconds=4.0)
    per, runs = rate("tiny-test", "cpu")
    assert runs == 2 and abs(per - 0.0015) < 1e-12
    assert rate("tiny-test", "cuda:H100") == (None, 0) and rate("default", "cpu") == (None, 0)
    for _ in range(20):
        record_run("tiny-test", "cpu", pixels=1000, steps=4, seconds=40.0)
    assert rate("tiny-test", "cpu")[1] == 8  # the last few only
    (tmp_path / "t.json").write_text("not json")
    assert rate("tiny-test", "cpu") == (None, 0)  # a damaged file loses the estimate, nothing else


def test_estimate_counts_the_regions_a_rectangle_touches_and_says_it_rounds_out(tiny, tmp_path, monkeypatch):
    from src_models.synthesis.canvases import new_canvas
    from src_models.synthesis.regions import pending_regions
    from src_models.synthesis.request import SynthesisRequest

    monkeypatch.setenv("DIFFINFINITE_TIMINGS", str(tmp_path / "t.json"))
    with new_canvas(tiny.card, tmp_path / "c.zarr", 512, 512, region_size=128) as canvas:
        whole = SynthesisRequest(model="tiny-test", steps=4, device="cpu")
        est = estimate_run(canvas, whole, "cpu")
        assert (est.regions, est.area_px, est.seconds) == (16, 512 * 512, None)
        assert "16 regions" in est.text() and "no run of about 4 steps measured on cpu" in est.text()
        assert todo_area(canvas, pending_regions(canvas, whole)) == todo_area(canvas, list(pending_regions(canvas, whole)))
        # a rectangle touching one pixel row of the next regions: whole regions, said so
        rect = SynthesisRequest(model="tiny-test", steps=4, device="cpu", area=(0, 129, 0, 128))
        est = estimate_run(canvas, rect, "cpu")
        assert est.regions == 2 and est.area_px == 2 * 128 * 128 and est.rounds_out
        assert "rounds out to whole regions" in est.text()
        record_run("tiny-test", "cpu", pixels=512 * 512, steps=4, seconds=10.0)
        est = estimate_run(canvas, rect, "cpu")
        assert abs(est.seconds - 10.0 * 2 * 128 * 128 / (512 * 512)) < 1e-6
        assert "about 1 s on cpu (from 1 earlier run)" in est.text()
        exact = estimate_run(canvas, SynthesisRequest(model="tiny-test", steps=4, device="cpu", area=(0, 128, 0, 128)))
        assert exact.regions == 1 and not exact.rounds_out


def test_the_clock_counts_finished_regions_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFINFINITE_TIMINGS", str(tmp_path / "t.json"))
    clock = RunClock("tiny-test", "cpu", steps=4)
    clock._t0 -= 10.0  # ten seconds ago
    clock.add(1000)
    assert clock.finish()
    per, _ = rate("tiny-test", "cpu")
    assert 10.0 / 4000 <= per < 11.0 / 4000
    assert not RunClock("tiny-test", "cpu", steps=4).finish()  # nothing finished: nothing recorded


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (0.2, 40, 200, 3 * 3600, 5 * 86400)] == ["1 s", "40 s", "3 min", "3.0 h", "5 days"]
    assert Estimate(0, 0, None, 4, None, 0, "cpu").text().endswith("nothing to sample")
    assert np.isclose(Estimate(1, 10, None, 4, 1.0, 1, "cpu").seconds, 1.0)


def test_runs_of_other_steps_or_another_arithmetic_do_not_count(tiny, tmp_path, monkeypatch):
    """A 2-step run (its decoding and writing spread over 2 levels) says nothing about a 50-step one:
    only runs with half to twice the steps count.  A run in bf16 or with a distilled student is
    faster than one in float32 with two passes: each arithmetic keeps its own runs."""
    import json

    from src_models.synthesis.canvases import new_canvas
    from src_models.synthesis.request import SynthesisRequest

    monkeypatch.setenv("DIFFINFINITE_TIMINGS", str(tmp_path / "t.json"))
    assert record_run("tiny-test", "cpu", pixels=1000, steps=2, seconds=10.0)
    assert rate("tiny-test", "cpu", steps=50) == (None, 0) and rate("tiny-test", "cpu", steps=3)[1] == 1
    assert record_run("tiny-test", "cpu", pixels=1000, steps=40, seconds=40.0)
    assert rate("tiny-test", "cpu", steps=50) == (0.001, 1) and rate("tiny-test", "cpu")[1] == 2
    assert rate("tiny-test", "cpu", steps=50, mode="bf16") == (None, 0)
    assert record_run("tiny-test", "cpu", pixels=1000, steps=50, seconds=25.0, mode=mode_of("bf16", True))
    assert rate("tiny-test", "cpu", steps=50, mode="bf16+student") == (0.0005, 1)
    assert rate("tiny-test", "cpu", steps=50) == (0.001, 1)
    assert request_mode(SynthesisRequest(precision="bf16", distilled=True)) == "bf16+student"
    assert request_mode(SynthesisRequest()) == "float32"  # left open: as before these options
    assert request_mode(SynthesisRequest(precision="bf16", guidance_below=500)) == "bf16+guided t<500"
    assert request_mode(SynthesisRequest(guidance_below=1000)) == "float32"
    assert record_run("tiny-test", "cpu", pixels=1000, steps=50, seconds=30.0, mode="bf16")
    assert rate("tiny-test", "cpu", steps=50, mode="bf16")[1] == 1
    assert rate("tiny-test", "cpu", steps=50, mode="bf16+guided t<500") == (None, 0)  # not mixed with bf16 runs
    with new_canvas(tiny.card, tmp_path / "c.zarr", 128, 128, region_size=128) as canvas:
        est = estimate_run(canvas, SynthesisRequest(model="tiny-test", steps=50, device="cpu", precision="bf16",
                                                    distilled=True), "cpu")
        assert abs(est.seconds - 0.0005 * 128 * 128 * 50) < 1e-6
        assert "on cpu in bf16+student (from 1 earlier run)" in est.text()
        est = estimate_run(canvas, SynthesisRequest(model="tiny-test", steps=5, device="cpu"), "cpu")
        assert est.seconds is None and "no run of about 5 steps measured on cpu yet" in est.text()
    # rows written before steps were kept (a bare rate) are left out, not misread
    data = json.loads((tmp_path / "t.json").read_text())
    data["tiny-test|cpu|regions"].insert(0, 0.5)
    (tmp_path / "t.json").write_text(json.dumps(data))
    assert rate("tiny-test", "cpu", steps=50) == (0.001, 1)
