"""The whole-canvas sweep (``--sweep``): every window of a level once, progress per tile, resume
after a failure at any level equal to an uninterrupted sweep, finished regions kept as context."""
import json
import threading

import numpy as np
import pytest
import torch

from src_models.synthesis.canvases import new_canvas, put_mask
from src_models.store.canvas import Canvas
from src_models.synthesis.editing import prepare_inpaint
from src_models.sampling.plan import PLANS
from src_models.sampling.sampler import LabelCounter
from src_models.synthesis.sweep import SweepStore, chunk_noise, discard_sweep, level_rng
from src_models.synthesis.regions import synthesise
from src_models.synthesis.request import SynthesisRequest
from src_models.synthesis.run import SynthesisError


def _canvas(tiny, path, mask, size=128, region=32):
    c = new_canvas(tiny.card, path, size, size, region)
    put_mask(c, mask)
    return c


def _arrays(c):
    return np.asarray(c.image(0)[:]), np.asarray(c.latent[:])


class Boom(Exception):
    pass


@pytest.mark.parametrize("plan", ["grid", "release"])
def test_sweep_fills_every_region_running_each_window_of_a_level_once(tiny, tmp_path, two_class_mask, plan):
    c = _canvas(tiny, tmp_path / "c.zarr", two_class_mask)
    req = SynthesisRequest(model="tiny-test", steps=3, seed=4, plan=plan, sweep=True)
    events = []
    done = list(synthesise(tiny, c, req, progress=events.append))
    assert sorted(e.index for e in done) == list(range(16)) and c.done_indices() == set(range(16))
    assert [(e.level, e.tile) for e in events] == [(lv, t) for lv in (1, 2, 3) for t in range(1, 17)]
    assert all(e.tiles == 16 and e.levels == 3 and tuple(e.x0.shape) == (c.latent.shape[0], 32, 32) for e in events)
    # the windows of each level's plan over the whole canvas, each run once (no tile runs one twice)
    lat_mask = np.asarray(c.mask[:])
    expected = 0
    for level in range(3):
        wy, wx = PLANS[plan].build(128, 128, 16, level_rng(4, level), None).starts()
        labelled = LabelCounter(lat_mask, 1)(wy, wx, 16)  # tiny-test guides with the whole label map
        expected += len(wy) + sum(1 for lab in labelled if lab)
    assert done[-1].forwards == expected
    assert not (tmp_path / "c.zarr" / "diffinfinite" / "sweep").exists()  # the state is removed when done
    info = c.done_info(0)
    assert info["sweep"] is True and info["plan"] == plan and info["solver"] == "ddim" and info["eta"] == 1.0
    img, lat = _arrays(c)
    assert img.std() > 0 and np.abs(lat).max() <= 1.0


@pytest.mark.parametrize("plan,solver", [("grid", "ddim"), ("release", "dpmpp-2m")])
def test_sweep_killed_mid_level_resumes_to_the_same_canvas(tiny, tmp_path, two_class_mask, plan, solver):
    req = SynthesisRequest(model="tiny-test", steps=5, seed=7, plan=plan, solver=solver, sweep=True)
    a = _canvas(tiny, tmp_path / "a.zarr", two_class_mask)
    list(synthesise(tiny, a, req))
    b = _canvas(tiny, tmp_path / "b.zarr", two_class_mask)

    def fail(p):  # a crash in the middle of level 3
        if p.level == 3 and p.tile == 7:
            raise Boom()

    with pytest.raises(Boom):
        list(synthesise(tiny, b, req, progress=fail))
    progress = json.loads((tmp_path / "b.zarr" / "diffinfinite" / "sweep" / "progress.json").read_text())
    assert progress["levels_done"] == 2 and b.done_indices() == set()
    b.close()
    b = Canvas.open(tmp_path / "b.zarr", "r+")
    levels = []
    list(synthesise(tiny, b, req, progress=lambda p: levels.append(p.level)))
    assert levels[0] == 3  # restarted at the level that did not finish
    for x, y in zip(_arrays(a), _arrays(b)):
        assert np.array_equal(x, y)


def test_sweep_cancelled_between_tiles_and_during_decoding_resumes(tiny, tmp_path, two_class_mask):
    req = SynthesisRequest(model="tiny-test", steps=3, seed=2, sweep=True)
    a = _canvas(tiny, tmp_path / "a.zarr", two_class_mask)
    list(synthesise(tiny, a, req))
    b = _canvas(tiny, tmp_path / "b.zarr", two_class_mask)
    stop = threading.Event()
    list(synthesise(tiny, b, req, cancel=stop, progress=lambda p: stop.set() if p.level == 2 else None))
    assert b.done_indices() == set() and SweepStore(b).progress()["levels_done"] == 1
    stop.clear()
    finished = []
    for ev in synthesise(tiny, b, req, cancel=stop):
        finished.append(ev.index)
        if len(finished) == 5:  # stop while regions are being decoded
            stop.set()
    assert len(finished) == 5 and b.done_indices() == set(finished)
    stop.clear()
    rest = [ev.index for ev in synthesise(tiny, b, req)]
    assert sorted(finished + rest) == list(range(16))
    for x, y in zip(_arrays(a), _arrays(b)):
        assert np.array_equal(x, y)


def test_sweep_stopped_by_the_network_cancel_hook_within_a_level_resumes(tiny, tmp_path, two_class_mask):
    """napari's Cancel stops the network itself (``stop_on_cancel``: the next call raises ``Cancelled``),
    in the middle of a level: the sweep returns as cancelled, keeps the levels before, and a resume
    gives the canvas an uninterrupted sweep gives."""
    from src_models.synthesis.cancel import set_cancel_token, stop_on_cancel

    req = SynthesisRequest(model="tiny-test", steps=3, seed=5, sweep=True)
    a = _canvas(tiny, tmp_path / "a.zarr", two_class_mask)
    list(synthesise(tiny, a, req))
    b = _canvas(tiny, tmp_path / "b.zarr", two_class_mask)
    stop = threading.Event()
    stop_on_cancel(tiny)
    set_cancel_token(stop)
    try:
        # the first tile of level 2 done: the next network call, in the same level, raises
        # (no cancel given to the sweep itself: only the hook can stop it)
        assert list(synthesise(tiny, b, req,
                               progress=lambda p: stop.set() if (p.level, p.tile) == (2, 1) else None)) == []
    finally:
        set_cancel_token(None)
    assert b.done_indices() == set() and SweepStore(b).progress()["levels_done"] == 1
    rest = [ev.index for ev in synthesise(tiny, b, req)]
    assert sorted(rest) == list(range(16))
    for x, y in zip(_arrays(a), _arrays(b)):
        assert np.array_equal(x, y)


def test_sweep_inpaints_a_rectangle_with_the_rest_as_context(tiny, tmp_path, two_class_mask):
    c = _canvas(tiny, tmp_path / "c.zarr", two_class_mask)
    list(synthesise(tiny, c, SynthesisRequest(steps=2, seed=1)))
    before = _arrays(c)[0]
    rect = prepare_inpaint(c, (40, 80, 20, 70), label=3)
    events = list(synthesise(tiny, c, SynthesisRequest(steps=2, seed=2, area=rect, sweep=True)))
    assert sorted(e.index for e in events) == [4, 5, 6, 8, 9, 10] and c.jobs() == {}
    after = _arrays(c)[0]
    inside = np.zeros(before.shape[1:], bool)
    inside[40:80, 20:70] = True
    assert np.array_equal(before[:, ~inside], after[:, ~inside])
    assert (before[:, inside] != after[:, inside]).mean() > 0.5


def test_an_unfinished_sweep_of_other_settings_is_refused_then_discarded(tiny, tmp_path, two_class_mask):
    c = _canvas(tiny, tmp_path / "c.zarr", two_class_mask)
    with pytest.raises(Boom):
        list(synthesise(tiny, c, SynthesisRequest(steps=3, seed=1, sweep=True), progress=lambda p: (_ for _ in ()).throw(Boom())))
    with pytest.raises(SynthesisError, match="unfinished sweep with other settings .*seed: 1 vs 2"):
        list(synthesise(tiny, c, SynthesisRequest(steps=3, seed=2, sweep=True)))
    assert discard_sweep(c) and not discard_sweep(c)
    assert len(list(synthesise(tiny, c, SynthesisRequest(steps=3, seed=2, sweep=True)))) == 16


def test_a_sweep_needs_a_batched_plan(tiny, tmp_path, two_class_mask):
    c = _canvas(tiny, tmp_path / "c.zarr", two_class_mask, size=64)
    for plan in ("sequential", "average"):  # one window at a time; eps averaged over windows
        with pytest.raises(SynthesisError, match=f"one window writes each pixel .*; {plan} is not one"):
            list(synthesise(tiny, c, SynthesisRequest(steps=2, plan=plan, sweep=True)))


def test_noise_does_not_depend_on_how_the_canvas_is_cut():
    whole = chunk_noise(3, 1, 5, 4, 10, 150, 20, 200)
    part = chunk_noise(3, 1, 5, 4, 70, 140, 100, 131)
    assert torch.equal(whole[:, 60:130, 80:111], part)
    assert not torch.equal(chunk_noise(3, 1, 6, 4, 70, 140, 100, 131), part)  # another level
    assert abs(float(whole.std()) - 1) < 0.02


def test_disk_full_during_a_sweep_is_one_clear_error_and_resumable(tiny, tmp_path, two_class_mask, monkeypatch):
    import errno
    import os

    import src_models.synthesis.sweep as sweep_mod

    req = SynthesisRequest(model="tiny-test", steps=3, seed=3, sweep=True)
    a = _canvas(tiny, tmp_path / "a.zarr", two_class_mask)
    list(synthesise(tiny, a, req))
    b = _canvas(tiny, tmp_path / "b.zarr", two_class_mask)
    real, calls = sweep_mod._Sweep.write, {"n": 0}

    def full(self, *args):
        calls["n"] += 1
        if calls["n"] == 40:  # in level 2
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args)

    monkeypatch.setattr(sweep_mod._Sweep, "write", full)
    with pytest.raises(SynthesisError, match="disk full while writing the sweep of .*finished levels are kept"):
        list(synthesise(tiny, b, req))
    monkeypatch.setattr(sweep_mod._Sweep, "write", real)
    assert SweepStore(b).progress()["levels_done"] == 1
    list(synthesise(tiny, b, req))
    for x, y in zip(_arrays(a), _arrays(b)):
        assert np.array_equal(x, y)
