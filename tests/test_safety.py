"""Users' data is sacred (issue 20): --overwrite replaces only a canvas this tool made, a canvas
appears whole, an interrupted re-run keeps the old result, the writer lock belongs to the real
path, and every bad argument is one line before any model loads."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from skimage import io

from canvas_helpers import generate_args as _gen
from canvas_helpers import one_line as _one_line
from src_models.cli.main import main
from src_models.store.canvas import Canvas, CanvasError, CanvasLockedError
from src_models.store.safety import leftovers, real_path
from src_models.store.verify import verify_canvas

ARGS = ["--size", "64x64", "--region-size", "32", "--steps", "1"]






def _pixels(path):
    with Canvas.open(path) as c:
        return np.asarray(c.image(0)[:]), len(c.done_indices())


def _no_model(monkeypatch):
    """Refusals must come before any model loads."""
    import src_models.cli.main as cli

    def boom(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "_model", boom)


# ------------------------------------------------------------------------------ --overwrite
def test_overwrite_never_deletes_the_current_directory_or_its_parent(tmp_path, two_class_mask, monkeypatch, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "important.txt").write_text("keep me")
    io.imsave(proj / "m.png", two_class_mask, check_contrast=False)
    monkeypatch.chdir(proj)
    _no_model(monkeypatch)
    for out in ("../proj", ".", ".."):
        assert main(_gen(out, "m.png", *ARGS, "--overwrite")) == 2
        _one_line(capsys, "current directory", "canvas.zarr")
        assert main(_gen(out, "m.png", *ARGS)) == 2  # and without --overwrite: no advice to use it
        assert "--overwrite to replace" not in _one_line(capsys, "current directory")
    assert (proj / "important.txt").read_text() == "keep me" and (proj / "m.png").exists()


def test_overwrite_refuses_what_is_not_a_canvas(tmp_path, mask_png, monkeypatch, capsys):
    _no_model(monkeypatch)
    folder = tmp_path / "notacanvas"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years")
    notes = tmp_path / "notes.txt"
    notes.write_text("notes")
    assert main(_gen(folder, mask_png, *ARGS, "--overwrite")) == 2
    _one_line(capsys, "not a napari-diffinfinite canvas", "thesis.txt", "choose another name")
    assert main(_gen(folder, mask_png, *ARGS)) == 2  # the plain refusal does not suggest --overwrite
    line = _one_line(capsys, "thesis.txt")
    assert "pass --overwrite" not in line
    assert main(_gen(notes, mask_png, *ARGS, "--overwrite")) == 2
    _one_line(capsys, "a file of 5 bytes")
    assert (folder / "thesis.txt").read_text() == "four years" and notes.read_text() == "notes"
    # a folder holding the mask (even a canvas) is never replaced
    monkeypatch.undo()
    assert main(_gen(tmp_path / "c.zarr", mask_png, *ARGS)) == 0
    inner = tmp_path / "c.zarr" / "labels" / "m.png"
    inner.write_bytes(mask_png.read_bytes())
    capsys.readouterr()
    _no_model(monkeypatch)
    assert main(_gen(tmp_path / "c.zarr", inner, *ARGS, "--overwrite")) == 2
    _one_line(capsys, "holds the input")
    # nor a canvas the user put files into
    inner.unlink()
    (tmp_path / "c.zarr" / "notes.md").write_text("mine")
    assert main(_gen(tmp_path / "c.zarr", mask_png, *ARGS, "--overwrite")) == 2
    _one_line(capsys, "also holds notes.md")
    assert (tmp_path / "c.zarr" / "notes.md").read_text() == "mine"


def test_an_interrupted_overwrite_keeps_the_old_canvas(tmp_path, mask_png, monkeypatch, capsys):
    import src_models.cli.main as cli

    out = tmp_path / "a.zarr"
    assert main(_gen(out, mask_png, *ARGS, "--seed", "1")) == 0
    old, n = _pixels(out)
    assert n == 4

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_and_preview", stopped)
    assert main(_gen(out, mask_png, *ARGS, "--seed", "2", "--overwrite")) == 130
    again, n = _pixels(out)
    assert n == 4 and np.array_equal(again, old)
    assert leftovers(real_path(out)) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.zarr", "m.png"]
    monkeypatch.undo()
    assert main(_gen(out, mask_png, *ARGS, "--seed", "2", "--overwrite")) == 0
    new, n = _pixels(out)
    assert n == 4 and not np.array_equal(new, old)
    assert main(["verify", str(out)]) == 0
    assert leftovers(real_path(out)) == []


def test_the_overwrite_swaps_in_at_its_first_region(tiny, tmp_path):
    from src_models.synthesis.canvases import new_canvas, put_mask
    from src_models.synthesis.regions import synthesise
    from src_models.synthesis.request import SynthesisRequest

    path = tmp_path / "c.zarr"
    with new_canvas(tiny.card, path, 64, 64, 32) as c:
        put_mask(c, np.ones((32, 32), np.uint8))
        list(synthesise(tiny, c, SynthesisRequest(model="tiny-test", steps=1, seed=1)))
    old, _ = _pixels(path)
    c = new_canvas(tiny.card, path, 64, 64, 32, overwrite=True, replace_when_sampled=True)
    put_mask(c, np.full((32, 32), 2, np.uint8))
    assert c.path != path and _pixels(path)[1] == 4  # built beside: the old canvas is still there
    events = synthesise(tiny, c, SynthesisRequest(model="tiny-test", steps=1, seed=3))
    next(events)
    assert c.path == path  # the first region swapped it in
    with pytest.raises(CanvasLockedError):
        Canvas.open(path, "r+")
    list(events)
    c.close()
    new, n = _pixels(path)
    assert n == 4 and not np.array_equal(new, old) and leftovers(real_path(path)) == []
    with Canvas.open(path) as c:
        assert verify_canvas(c).ok and int(np.asarray(c.mask[:]).max()) == 2


def test_demo_rerun_stopped_early_keeps_the_previous_demo(tmp_path, monkeypatch, capsys):
    import src_models.cli.main as cli

    out = tmp_path / "demo_out"
    demo = ["demo", "--out", str(out), "--model", "tiny-test", "--size", "64x64", "--steps", "1", "--device", "cpu"]
    assert main(demo) == 0
    old, n = _pixels(out / "demo.zarr")

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_and_preview", stopped)
    assert main([*demo, "--seed", "4"]) == 130
    again, n2 = _pixels(out / "demo.zarr")
    assert n2 == n and np.array_equal(again, old)
    assert main(["verify", str(out / "demo.zarr")]) == 0
    (out / "x").mkdir()
    (out / "demo.zarr").rename(out / "x" / "kept")
    (out / "demo.zarr").mkdir()
    (out / "demo.zarr" / "mine.txt").write_text("mine")
    capsys.readouterr()
    assert main(demo) == 2
    _one_line(capsys, "mine.txt")


# ------------------------------------------------------------------------------ atomic creation
KILLER = textwrap.dedent("""
    import os, sys
    from src_models.store import safety
    from src_models.synthesis import canvases
    from src_models.cli.main import main
    where = sys.argv[1]
    if where == "before-rename":
        safety.rename_new = lambda *a: os._exit(9)
    else:
        canvases.store_mask = lambda *a: os._exit(9)
    main(sys.argv[2:])
""")


@pytest.mark.parametrize("where", ["before-rename", "before-mask"])
def test_a_kill_during_creation_leaves_nothing_or_a_canvas_that_resumes(tmp_path, mask_png, where, capsys):
    out = tmp_path / "k.zarr"
    proc = subprocess.run([sys.executable, "-c", KILLER, where, *_gen(out, mask_png, *ARGS, "--seed", "6")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    if where == "before-rename":
        assert not out.exists()  # nothing at the name; the half-built canvas is cleared by the next run
        assert main(_gen(out, mask_png, *ARGS, "--seed", "6")) == 0
    else:
        assert out.exists()
        assert main(_gen(out, mask_png, *ARGS, "--seed", "6", "--resume")) == 0
    assert leftovers(real_path(out)) == []
    assert main(_gen(tmp_path / "clean.zarr", mask_png, *ARGS, "--seed", "6")) == 0
    assert np.array_equal(_pixels(out)[0], _pixels(tmp_path / "clean.zarr")[0])


# ------------------------------------------------------------------------------ the lock
def test_the_lock_belongs_to_the_real_path(tiny, tmp_path):
    from src_models.synthesis.canvases import new_canvas

    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "a.zarr"
    new_canvas(tiny.card, real, 64, 64, 32).close()
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    os.chdir(tmp_path)
    try:
        for writer, other in ((link, real), (real, link), (link, "real/a.zarr"), ("real/../real/a.zarr", link)):
            with Canvas.open(writer, "r+"):
                with pytest.raises(CanvasLockedError, match="being written by another process"):
                    Canvas.create(other, 64, 64, factor=8, latent_channels=4, region_size=32, classes=tiny.card.classes,
                                  colours=tiny.card.colours, overwrite=True)
                with pytest.raises(CanvasLockedError):
                    Canvas.open(other, "r+")
    finally:
        os.chdir(os.path.dirname(os.path.abspath(__file__)))
    assert link.is_symlink() and Canvas.open(real).width == 64


def test_two_writers_through_a_link_and_the_real_path(tmp_path, mask_png, monkeypatch, capsys):
    # the first run (through the link) holds the lock while it samples; the second (real path,
    # --overwrite) is refused; the first run's canvas is whole afterwards
    import src_models.cli.main as cli

    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "a.zarr"
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    assert main(_gen(link, mask_png, *ARGS, "--seed", "7")) == 0
    first, _ = _pixels(real)
    run = cli.run_and_preview
    answers = []

    def with_a_rival(*a, **k):
        answers.append(main(_gen(real, mask_png, *ARGS, "--seed", "8", "--overwrite")))
        return run(*a, **k)

    monkeypatch.setattr(cli, "run_and_preview", with_a_rival)
    with Canvas.open(real, "r+") as c:
        c.clear_done([0, 1])
    capsys.readouterr()
    assert main(_gen(link, mask_png, *ARGS, "--seed", "7", "--resume")) == 0
    assert answers == [2]
    assert "being written by another process" in capsys.readouterr().err
    assert np.array_equal(_pixels(real)[0], first)


def test_a_lock_file_that_is_a_link_is_never_written_through(tiny, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "lk.zarr.lock").symlink_to(victim)
    with pytest.raises(CanvasLockedError, match="is a link"):
        Canvas.create(tmp_path / "lk.zarr", 64, 64, factor=8, latent_channels=4, region_size=32,
                      classes=tiny.card.classes, colours=tiny.card.colours)
    assert victim.read_text() == "precious" and (tmp_path / "lk.zarr.lock").is_symlink()
    assert not (tmp_path / "lk.zarr").exists()


def test_the_core_refuses_to_replace_a_file(tiny, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(CanvasError, match="a file of 1 bytes"):
        Canvas.create(f, 64, 64, factor=8, latent_channels=4, region_size=32, classes=tiny.card.classes,
                      colours=tiny.card.colours, overwrite=True)
    assert f.read_text() == "x"


# ------------------------------------------------------------------------------ arguments, before any model
@pytest.mark.parametrize("seed,words", [("-1", "--seed must be a whole number from 0 to 2**64-1"),
                                         (str(2**64), "got 18446744073709551616")])
def test_seeds_out_of_range_are_one_line_before_anything(tmp_path, mask_png, seed, words, monkeypatch, capsys):
    _no_model(monkeypatch)
    out = tmp_path / "s.zarr"
    assert main(_gen(out, mask_png, *ARGS, "--seed", seed)) == 2
    _one_line(capsys, words)
    assert not out.exists()
    assert main(["make-mask", "--out", str(tmp_path / "mm.png"), "--size", "64x64", "--model", "tiny-test",
                 "--seed", seed]) == 2
    _one_line(capsys, words)


def test_the_largest_seed_runs(tmp_path, mask_png):
    assert main(_gen(tmp_path / "s.zarr", mask_png, *ARGS, "--seed", str(2**64 - 1))) == 0
    assert main(_gen(tmp_path / "s.zarr", mask_png, *ARGS, "--seed", str(2**64 - 1), "--resume")) == 0


def test_inpaint_rectangles_off_the_grid_or_the_canvas_are_refused_with_the_nearest(tmp_path, monkeypatch, capsys):
    from src_models.models.loading import find_card
    from src_models.synthesis.canvases import new_canvas
    from src_models.synthesis.editing import check_rect

    card, _ = find_card("default")  # latent factor 4: the grid is 4 px; no weights are read
    path = tmp_path / "c.zarr"
    new_canvas(card, path, 256, 256).close()
    import src_models.models.loading as loading

    def boom(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_for_run", boom)
    cases = {"0,0,100,100": None, "1,2,100,100": "use 0,0,104,104 or 4,4,96,96",
             "200,0,100,64": "reaches past the 256x256 px canvas; use 200,0,56,64",
             "300,0,10,10": "lies outside the 256x256 px canvas",
             "250,3,10,10": "reaches past the 256x256 px canvas and is not on the model's grid of 4 px; "
                            "use 248,0,8,16 or 252,4,4,8"}
    with Canvas.open(path) as c:
        for rect, words in cases.items():
            x, y, w, h = (int(v) for v in rect.split(","))
            if words is None:
                assert check_rect(c, (y, y + h, x, x + w)) == (y, y + h, x, x + w)
                continue
            assert main(["inpaint", str(path), "--rect", rect, "--label", "1", "--device", "cpu"]) == 2
            _one_line(capsys, f"--rect {rect}", words)
    with Canvas.open(path) as c:
        assert not c.jobs()  # nothing was scheduled


def test_import_slide_says_on_stderr_what_it_cropped(tmp_path, capsys):
    import json

    import tifffile

    rgb = np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", rgb, photometric="rgb")
    assert main(["import-slide", str(tmp_path / "s.tif"), "--out", str(tmp_path / "s.zarr"), "--model", "tiny-test",
                 "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["cropped_px"] == [4, 6]
    lines = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(lines) == 1 and "last 4 column(s) and 6 row(s) were left out" in lines[0] and "96x64" in lines[0]


def test_data_commands_never_write_over_the_current_directory_or_an_input(tmp_path, monkeypatch, capsys):
    import json as json_

    (tmp_path / "a.geojson").write_text(json_.dumps({"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9]]]}))
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(["annotations-to-mask", "a.geojson", "--out", "keep", "--size", "64x64", "--class-map",
                 "Unclassified=1", "--overwrite"]) == 2
    _one_line(capsys, "writes a file")
    assert main(["make-dataset", "--slide", "s.tif", "--out", ".", "--class-map", "Tumor=1", "--overwrite"]) == 2
    _one_line(capsys, "is the current directory", "data set folder")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "s.tif").write_bytes(b"x")
    (tmp_path / "ds" / "dataset.json").write_text("{}")
    assert main(["make-dataset", "--slide", "ds/s.tif", "--out", "ds", "--class-map", "Tumor=1", "--overwrite"]) == 2
    _one_line(capsys, "holds the input ds/s.tif")
    assert (tmp_path / "ds" / "s.tif").exists() and (tmp_path / "keep" / "mine.txt").exists()


def test_an_import_over_a_canvas_stopped_before_its_first_region_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    import tifffile

    import src_models.synthesis.editing as editing

    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", rgb, photometric="rgb")
    cmd = ["import-slide", str(tmp_path / "s.tif"), "--out", str(tmp_path / "s.zarr"), "--model", "tiny-test",
           "--device", "cpu"]
    assert main(cmd) == 0
    old, n = _pixels(tmp_path / "s.zarr")

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(editing, "encode_rgb", stopped)
    assert main([*cmd, "--overwrite"]) == 130
    again, n2 = _pixels(tmp_path / "s.zarr")
    assert n2 == n and np.array_equal(again, old) and leftovers(real_path(tmp_path / "s.zarr")) == []
