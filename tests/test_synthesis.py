import threading
import warnings

import numpy as np
import pytest
import torch

from src_models.synthesis.canvases import new_canvas, put_mask
from src_models.store.canvas import Canvas
from src_models.synthesis.editing import import_slide, outpaint, prepare_inpaint
from src_models.synthesis.regions import pending_regions, synthesise
from src_models.synthesis.request import SynthesisRequest
from src_models.synthesis.run import SynthesisError


def _canvas(tiny, path, mask, size=128, region=32):
    c = new_canvas(tiny.card, path, size, size, region)
    put_mask(c, mask)
    return c


def _image(c):
    return np.asarray(c.image(0)[:])


def test_regions_nearest_the_centre_go_first_and_fill_progressively(tiny, tmp_path, two_class_mask):
    c = _canvas(tiny, tmp_path / "c.zarr", two_class_mask)
    req = SynthesisRequest(model="tiny-test", steps=2, seed=1, centre=(127, 127))
    order = [r.index for r in pending_regions(c, req)]
    assert order[0] == 15 and order[-1] == 0
    seen = []
    for ev in synthesise(tiny, c, req):
        y0, y1, x0, x1 = ev.bbox
        assert _image(c)[:, y0:y1, x0:x1].any()  # on disk when the event arrives
        seen.append(ev.index)
    assert seen == order and c.done_indices() == set(range(16))
    assert list(synthesise(tiny, c, req)) == []  # nothing left


def test_cancel_then_resume_equals_an_uninterrupted_run(tiny, tmp_path, two_class_mask):
    req = SynthesisRequest(model="tiny-test", steps=3, seed=7)
    a = _canvas(tiny, tmp_path / "a.zarr", two_class_mask)
    list(synthesise(tiny, a, req))
    b = _canvas(tiny, tmp_path / "b.zarr", two_class_mask)
    stop = threading.Event()
    levels = []

    def progress(p):
        levels.append(p)
        if len(levels) == 3 * 5 + 2:  # in the middle of the sixth region
            stop.set()

    done = [ev.index for ev in synthesise(tiny, b, req, cancel=stop, progress=progress)]
    assert len(done) == 5 and b.done_indices() == set(done)
    b.close()
    b = Canvas.open(tmp_path / "b.zarr", "r+")
    list(synthesise(tiny, b, req))
    assert np.array_equal(_image(a), _image(b))
    assert np.array_equal(np.asarray(a.latent[:]), np.asarray(b.latent[:]))


def test_out_of_memory_halves_the_batch_and_completes(tiny, tmp_path, two_class_mask):
    c = _canvas(tiny, tmp_path / "c.zarr", two_class_mask, size=64)
    real = tiny.unet.forward
    sizes = []

    def flaky(x, t, mask):
        sizes.append(x.shape[0])
        if x.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(x, t, mask)

    tiny.unet.forward = flaky
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            events = list(synthesise(tiny, c, SynthesisRequest(steps=2, max_batch=16)))
    finally:
        del tiny.unet.forward
    assert len(events) == 4
    assert max(sizes) == 16 and sizes[-1] <= 4
    oom = [x for x in w if "out of GPU memory" in str(x.message)]
    assert len(oom) == 1 and "batch size halved to 8" in str(oom[0].message)


def test_labels_outside_the_model_are_refused(tiny, tmp_path):
    c = new_canvas(tiny.card, tmp_path / "c.zarr", 64, 64, 32)
    c.mask[:4, :4] = 9  # written behind the canvas's own check, as a damaged store would be
    with pytest.raises(SynthesisError, match="label 9"):
        list(synthesise(tiny, c, SynthesisRequest(steps=1)))


def test_inpaint_changes_only_the_rectangle(tiny, tmp_path, two_class_mask):
    c = _canvas(tiny, tmp_path / "c.zarr", two_class_mask)
    list(synthesise(tiny, c, SynthesisRequest(steps=2, seed=1)))
    before = _image(c)
    rect = prepare_inpaint(c, (40, 80, 20, 70), label=3)
    assert rect == (40, 80, 20, 70)
    assert c.done_indices() == set(range(16)) - {4, 5, 6, 8, 9, 10}
    events = list(synthesise(tiny, c, SynthesisRequest(steps=2, seed=2, area=rect)))
    assert sorted(e.index for e in events) == [4, 5, 6, 8, 9, 10] and c.jobs() == {}
    after = _image(c)
    inside = np.zeros(before.shape[1:], bool)
    inside[40:80, 20:70] = True
    assert np.array_equal(before[:, ~inside], after[:, ~inside])
    assert (before[:, inside] != after[:, inside]).mean() > 0.5


def test_outpaint_keeps_the_old_canvas_and_fills_the_border(tiny, tmp_path, two_class_mask):
    c = _canvas(tiny, tmp_path / "c.zarr", two_class_mask, size=64)
    list(synthesise(tiny, c, SynthesisRequest(steps=2, seed=1)))
    old = _image(c)
    c.close()
    big = outpaint(tmp_path / "c.zarr", tiny, tmp_path / "big.zarr", (16, 0, 0, 32), label=2)
    assert (big.height, big.width) == (80, 96)
    list(synthesise(tiny, big, SynthesisRequest(steps=2, seed=1)))
    img = _image(big)
    assert np.array_equal(img[:, 16:, 32:], old)
    assert img[:, :16].any() and img[:, :, :32].any()
    assert big.done_indices() == {r.index for r in big.regions()}


def test_import_real_slide(tiny, tmp_path):
    from pathlib import Path

    from src_models.io.slides import open_slide

    svs = Path(__file__).resolve().parents[1] / "data" / "cmu_small_region" / "cmu_small_region.svs"  # a real Aperio file
    canvas, report = import_slide(svs, tiny, tmp_path / "s.zarr", region_size=512)
    assert report["canvas_size"] == [2216, 2960]  # cropped to the 8 px grid
    with open_slide(svs) as s:
        want = s.read(1000, 1100, 500, 700)
    assert np.array_equal(canvas.read_rgb(1000, 1100, 500, 700), want)
    assert canvas.done_indices() == {r.index for r in canvas.regions()}


def test_omega_zero_paints_the_same_canvas_with_half_the_network_calls(tiny, tmp_path, two_class_mask, monkeypatch):
    """At ω = 0 a whole-label-map model needs no null pass: half the calls, the same canvas (to
    rounding: the guided ε null + 1·(cond − null) and the conditional ε differ by float error)."""
    import src_models.sampling.sampler as sampler_module

    canvases, forwards = [], []
    for name in ("guided", "skipped"):
        if name == "guided":  # as before the shortcut: every window's null pass runs
            monkeypatch.setattr(sampler_module, "free_labels", lambda omega, conditioning: frozenset())
        else:
            monkeypatch.undo()
        c = _canvas(tiny, tmp_path / f"{name}.zarr", two_class_mask)
        req = SynthesisRequest(model="tiny-test", steps=4, seed=3, omega=0.0)
        forwards.append(sum(ev.forwards for ev in synthesise(tiny, c, req)))
        canvases.append(_image(c).astype(int))
    assert forwards[1] * 2 == forwards[0]
    assert np.abs(canvases[0] - canvases[1]).max() <= 1 and (canvases[0] != canvases[1]).mean() < 1e-3


def test_per_class_omega_zero_skips_the_null_pass_only_where_a_window_holds_no_guided_class(
        tiny, tmp_path, two_class_mask, monkeypatch):
    """ω 0 for class 1 only: windows inside the class-1 area run one pass, the others two; the
    canvas is the one every null pass gives, to rounding."""
    import src_models.sampling.sampler as sampler_module

    canvases, forwards = [], []
    for name in ("guided", "skipped"):
        if name == "guided":
            monkeypatch.setattr(sampler_module, "free_labels", lambda omega, conditioning: frozenset())
        else:
            monkeypatch.undo()
        c = _canvas(tiny, tmp_path / f"{name}.zarr", two_class_mask)
        req = SynthesisRequest(model="tiny-test", steps=4, seed=3, omega=2.0, omega_per_class={1: 0.0})
        forwards.append(sum(ev.forwards for ev in synthesise(tiny, c, req)))
        canvases.append(_image(c).astype(int))
    assert forwards[0] // 2 < forwards[1] < forwards[0]
    assert np.abs(canvases[0] - canvases[1]).max() <= 1 and (canvases[0] != canvases[1]).mean() < 1e-3
