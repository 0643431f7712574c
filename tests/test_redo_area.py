"""Redoing an area of any shape (issue 21, item 7; issue 19, item 5): only the regions it touches
run, each in a box sized to its part of the area, only its latent cells are written, and the
estimate counts that area.  Whole regions keep sampling as before (tests/test_golden.py holds them
bit for bit).  ``diffinfinite inpaint --where``: the area as an image, and its refusals."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from canvas_helpers import one_line
from src_models.store.canvas import Canvas
from src_models.store.regions import cells_to_rects
from src_models.synthesis.boxes import area_cells, expand, sample_box
from src_models.synthesis.canvases import new_canvas, put_mask
from src_models.synthesis.editing import prepare_inpaint, prepare_redo
from src_models.synthesis.estimate import estimate_run, rate, record_run
from src_models.synthesis.regions import synthesise
from src_models.synthesis.request import SynthesisRequest

SIZE, REGION = 128, 64  # tiny-test: factor 1, window 16, halo 8; 2 x 2 regions


def _finished(tiny, path, mask):
    canvas = new_canvas(tiny.card, path, SIZE, SIZE, REGION)
    put_mask(canvas, np.kron(mask, np.ones((2, 2), np.uint8)))
    first = {e.index: e.forwards for e in synthesise(tiny, canvas, SynthesisRequest(steps=2, seed=1))}
    return canvas, first


def _disc(cy, cx, r):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def _state(canvas):
    return np.asarray(canvas.image(0)[:]).copy(), np.asarray(canvas.latent[:]).copy(), np.asarray(canvas.mask[:]).copy()


def test_a_small_job_samples_a_box_sized_to_it_and_changes_nothing_outside(tiny, tmp_path, two_class_mask):
    canvas, first = _finished(tiny, tmp_path / "c.zarr", two_class_mask)
    rgb, lat, mask = _state(canvas)
    shape = _disc(24, 26, 9)  # inside region 0 (64 x 64 latent px)
    area = prepare_redo(canvas, shape, label=3)
    assert area == (16, 33, 18, 35)  # the disc's bounding box
    assert list(canvas.jobs()) == [0] and canvas.done_indices() == {1, 2, 3}
    seen = []
    events = list(synthesise(tiny, canvas, SynthesisRequest(steps=2, seed=7, area=area), progress=seen.append))
    assert [e.index for e in events] == [0] and canvas.jobs() == {} and canvas.done_indices() == {0, 1, 2, 3}
    # sampled: the disc's box and 8 px of context, not the region's 72 x 72 px box
    assert {p.area for p in seen} == {(8, 41, 10, 43)} and {p.bbox for p in seen} == {area}
    region = canvas.region(0)
    whole = sample_box(region, None, canvas.latent_shape, 8, 16)
    assert whole == (0, 72, 0, 72) and events[0].forwards < first[0]
    assert 0 < events[0].work_px < (REGION * REGION) * (33 * 33) / (72 * 72) + 1
    after_rgb, after_lat, after_mask = _state(canvas)
    assert np.array_equal(after_rgb[:, ~shape], rgb[:, ~shape])  # outside the shape: byte for byte
    assert np.array_equal(after_lat[:, ~shape], lat[:, ~shape])
    assert np.array_equal(after_mask[~shape], mask[~shape]) and (after_mask[shape] == 3).all()
    assert (after_rgb[:, shape] != rgb[:, shape]).any(axis=0).mean() > 0.5


def test_a_shape_over_two_regions_runs_those_two_only_and_the_estimate_says_so(tiny, tmp_path, two_class_mask,
                                                                               monkeypatch):
    monkeypatch.setenv("DIFFINFINITE_TIMINGS", str(tmp_path / "t.json"))
    canvas, _ = _finished(tiny, tmp_path / "c.zarr", two_class_mask)
    rgb, lat, _ = _state(canvas)
    shape = _disc(30, 64, 12)  # across the border of regions 0 and 1
    request = SynthesisRequest(model="tiny-test", steps=2, seed=5, device="cpu")
    cells = area_cells(shape, canvas.factor, canvas.latent_shape)
    est = estimate_run(canvas, request, "cpu", redo=True, where=cells)
    assert (est.regions, est.partial, est.area_px) == (2, 2, int(shape.sum()))
    assert "2 regions" in est.text() and "to redo, sampled in boxes of" in est.text()
    area = prepare_redo(canvas, shape)
    request.area = area
    after = estimate_run(canvas, request, "cpu")  # the same figures from the jobs now stored
    assert (after.regions, after.partial, after.area_px, after.box_px) == (2, 2, est.area_px, est.box_px)
    record_run("tiny-test", "cpu", pixels=1000, steps=2, seconds=10.0)
    predicted = estimate_run(canvas, request, "cpu").seconds
    events = list(synthesise(tiny, canvas, request))
    assert sorted(e.index for e in events) == [0, 1] and canvas.jobs() == {}
    # the time said before is the time the run's own speed record counts for
    per, _ = rate("tiny-test", "cpu")
    assert predicted == pytest.approx(per * 2 * sum(e.work_px for e in events))
    after_rgb, after_lat, _ = _state(canvas)
    assert np.array_equal(after_rgb[:, ~shape], rgb[:, ~shape]) and np.array_equal(after_lat[:, ~shape], lat[:, ~shape])
    assert (after_rgb[:, shape] != rgb[:, shape]).any(axis=0).mean() > 0.5


def test_the_same_shape_and_seed_give_the_same_canvas(tiny, tmp_path, two_class_mask):
    shape = _disc(70, 40, 10) | _disc(90, 90, 6)
    out = []
    for name in ("a.zarr", "b.zarr"):
        canvas, _ = _finished(tiny, tmp_path / name, two_class_mask)
        area = prepare_redo(canvas, shape)
        list(synthesise(tiny, canvas, SynthesisRequest(steps=2, seed=9, area=area)))
        out.append(_state(canvas))
        canvas.close()
    assert all(np.array_equal(a, b) for a, b in zip(*out))


def test_jobs_are_rectangles_that_round_trip_and_a_rectangle_is_the_special_case(tiny, tmp_path, two_class_mask):
    rng = np.random.default_rng(0)
    for _ in range(20):  # exact cover, no overlap, rows with the same run merged
        cells = rng.random((rng.integers(1, 30), rng.integers(1, 30))) < 0.4
        cover = np.zeros(cells.shape, np.int64)
        for y0, y1, x0, x1 in cells_to_rects(cells):
            cover[y0:y1, x0:x1] += 1
        assert np.array_equal(cover, cells.astype(np.int64))
    assert cells_to_rects(np.ones((5, 7), bool)) == [[0, 5, 0, 7]]
    canvas, _ = _finished(tiny, tmp_path / "c.zarr", two_class_mask)
    shape = _disc(60, 60, 20)
    prepare_redo(canvas, shape)
    jobs = canvas.jobs()
    canvas.close()
    with Canvas.open(tmp_path / "c.zarr") as again:  # stored in the canvas, as rectangles per region
        assert again.jobs() == jobs and sorted(jobs) == [0, 1, 2, 3]
        redone = np.zeros((SIZE, SIZE), bool)
        for r in again.regions():
            redone[r.y0 : r.y1, r.x0 : r.x1] = again.target_map(r)
        assert np.array_equal(redone, shape)
    # a rectangle: prepare_redo of its pixels and prepare_inpaint give the same jobs and area
    a, _ = _finished(tiny, tmp_path / "a.zarr", two_class_mask)
    b, _ = _finished(tiny, tmp_path / "b.zarr", two_class_mask)
    box = np.zeros((SIZE, SIZE), bool)
    box[40:80, 20:70] = True
    assert prepare_redo(a, box) == prepare_inpaint(b, (40, 80, 20, 70)) and a.jobs() == b.jobs()
    # a job over a whole region samples the box of the whole region
    r = a.region(0)
    assert sample_box(r, np.ones((64, 64), bool), a.latent_shape, 8, 16) == (*expand(0, 64, SIZE, 8, 16),) * 2


def test_a_map_coarser_than_the_grid_or_off_it_marks_every_cell_it_touches():
    cells, y0, x0 = area_cells(np.eye(3, dtype=bool)[:, :2], factor=4, latent_shape=(64, 64), origin=(8, 16), scale=8)
    assert (y0, x0) == (2, 4) and cells.shape == (4, 4) and cells[:2, :2].all() and not cells[:2, 2:].any()
    px = np.zeros((20, 20), np.uint8)
    px[5, 7] = 255  # one pixel, placed off the cell grid: its cell only
    cells, y0, x0 = area_cells(px, factor=4, latent_shape=(64, 64), origin=(2, 3))
    assert (y0, x0, cells.shape) == (1, 2, (1, 1))
    assert area_cells(px, factor=4, latent_shape=(4, 4), origin=(100, 100))[0] is None  # outside: nothing


# ------------------------------------------------------------------ the command line
RUN = ["--model", "tiny-test", "--steps", "1", "--device", "cpu"]


@pytest.fixture
def cli_canvas(tmp_path, monkeypatch, mask_png):
    from src_models.cli.main import main

    monkeypatch.setenv("DIFFINFINITE_TIMINGS", str(tmp_path / "t.json"))
    out = tmp_path / "a.zarr"
    assert main(["generate", "--mask", str(mask_png), "--size", f"{SIZE}x{SIZE}", "--region-size", str(REGION),
                 "--out", str(out), *RUN]) == 0
    return out


def test_inpaint_where_redoes_the_painted_pixels_only(cli_canvas, tmp_path, capsys):
    from src_models.cli.main import main

    with Canvas.open(cli_canvas) as c:
        rgb, lat, mask = _state(c)
    shape = _disc(40, 40, 10) | _disc(90, 100, 8)  # two blobs, in regions 0 and 3
    Image.fromarray((shape * 255).astype(np.uint8)).save(tmp_path / "area.png")
    capsys.readouterr()
    assert main(["inpaint", str(cli_canvas), "--where", str(tmp_path / "area.png"), "--label", "2", *RUN]) == 0
    out = capsys.readouterr()
    assert "2 regions" in out.err and "to redo, sampled in boxes of" in out.err and "area y 31:98, x 31:108 px" in out.out
    with Canvas.open(cli_canvas) as c:
        new_rgb, new_lat, new_mask = _state(c)
        assert c.jobs() == {} and c.done_indices() == {0, 1, 2, 3}
        assert {int(c.done_info(i)["seed"] is not None) for i in (1, 2)} == {1}
    assert np.array_equal(new_rgb[:, ~shape], rgb[:, ~shape]) and np.array_equal(new_lat[:, ~shape], lat[:, ~shape])
    assert np.array_equal(new_mask[~shape], mask[~shape]) and (new_mask[shape] == 2).all()


def test_inpaint_where_with_the_releases_inpainting_mask(cli_canvas, tmp_path, capsys):
    """The release's inpainting masks: 0 keep, another value (here 9) the 10-class label to paint
    there.  Passed as --where (what to redo) and --mask with --class-map (what to paint), placed
    by --rect and resized to it; the labels outside the area stay as they were."""
    from src_models.cli.main import main

    with Canvas.open(cli_canvas) as c:
        rgb, _, mask = _state(c)
    release = np.zeros((32, 32), np.uint8)
    release[8:24, 4:20] = 9
    Image.fromarray(release).save(tmp_path / "inpaint_mask.png")
    path = str(tmp_path / "inpaint_mask.png")
    assert main(["inpaint", str(cli_canvas), "--where", path, "--rect", "64,0,64,64", "--mask", path,
                 "--class-map", "9=3", *RUN]) == 0
    shape = np.zeros((SIZE, SIZE), bool)
    shape[16:48, 72:104] = True  # the 9s, doubled onto the 64 px rectangle at x 64
    with Canvas.open(cli_canvas) as c:
        new_rgb, _, new_mask = _state(c)
    assert (new_mask[shape] == 3).all() and np.array_equal(new_mask[~shape], mask[~shape])
    assert np.array_equal(new_rgb[:, ~shape], rgb[:, ~shape])


def test_inpaint_where_refusals_are_one_line_and_change_nothing(cli_canvas, tmp_path, capsys):
    from src_models.cli.main import main

    with Canvas.open(cli_canvas) as c:
        before = _state(c)
    Image.fromarray(np.full((64, 32), 255, np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((SIZE, SIZE), 1, np.uint8)).save(tmp_path / "all.png")
    capsys.readouterr()
    cases = [
        (["--where", str(tmp_path / "small.png")], ("32x64 px", "canvas's size", "--rect")),
        (["--where", str(tmp_path / "empty.png")], ("marks nothing to redo",)),
        (["--where", str(tmp_path / "small.png"), "--rect", "160,0,32,32"], ("--rect", "outside")),
        (["--where", str(tmp_path / "gone.png")], ("--where", "does not exist")),
        ([], ("--rect X,Y,W,H or --where AREA.png",)),
        (["--where", str(tmp_path / "all.png"), "--resume"], ("--resume", "leave out --where")),
        (["--resume"], ("--resume", "no unfinished inpaint")),
    ]
    for extra, words in cases:
        assert main(["inpaint", str(cli_canvas), *extra, *RUN]) == 2, extra
        one_line(capsys, *words)
    with Canvas.open(cli_canvas) as c:
        assert c.jobs() == {} and all(np.array_equal(a, b) for a, b in zip(before, _state(c)))


def test_inpaint_resume_takes_the_area_from_the_canvas(cli_canvas, tmp_path, tiny):
    from src_models.cli.main import main

    with Canvas.open(cli_canvas, "r+") as c:  # a run that scheduled an area and stopped before sampling it
        prepare_redo(c, _disc(64, 64, 20))
        assert sorted(c.jobs()) == [0, 1, 2, 3]
    assert main(["inpaint", str(cli_canvas), "--resume", *RUN]) == 0
    with Canvas.open(cli_canvas) as c:
        assert c.jobs() == {} and c.done_indices() == {0, 1, 2, 3}
