"""The command line: a real run, resume after SIGKILL, and one clear message per bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from skimage import io

from napari_diffinfinite.cli import build_parser, main
from src_models.canvas import Canvas


@pytest.fixture
def mask_png(tmp_path, two_class_mask):
    p = tmp_path / "m.png"
    io.imsave(p, two_class_mask, check_contrast=False)
    return p


def _gen(out, mask, *extra):
    return ["generate", "--mask", str(mask), "--out", str(out), "--model", "tiny-test", "--device", "cpu", *extra]


def test_generate_writes_canvas_and_preview_and_is_reproducible(tmp_path, mask_png, capsys):
    args = ["--size", "128x128", "--region-size", "32", "--steps", "2", "--seed", "3"]
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args)) == 0
    out = capsys.readouterr().out
    assert "16 regions sampled" in out and str(tmp_path / "a.png") in out
    assert io.imread(tmp_path / "a.png").shape == (128, 128, 3)
    assert main(_gen(tmp_path / "b.zarr", mask_png, *args)) == 0
    a, b = Canvas.open(tmp_path / "a.zarr"), Canvas.open(tmp_path / "b.zarr")
    assert np.array_equal(np.asarray(a.image(0)[:]), np.asarray(b.image(0)[:]))
    assert np.asarray(a.image(0)[:]).std() > 0
    assert np.array_equal(np.asarray(a.mask[:]), np.asarray(io.imread(mask_png)).repeat(2, 0).repeat(2, 1))


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, mask_png):
    args = ["--size", "128x128", "--region-size", "32", "--steps", "20", "--seed", "5"]
    assert main(_gen(tmp_path / "full.zarr", mask_png, *args)) == 0
    cmd = [sys.executable, "-m", "napari_diffinfinite.cli", *_gen(tmp_path / "k.zarr", mask_png, *args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    regions = tmp_path / "k.zarr" / "diffinfinite" / "regions"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if regions.exists() and len(list(regions.glob("*.done"))) >= 5:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    finished = len(list(regions.glob("*.done")))
    assert 5 <= finished < 16
    assert main(_gen(tmp_path / "k.zarr", mask_png, *args, "--resume")) == 0
    a, b = Canvas.open(tmp_path / "full.zarr"), Canvas.open(tmp_path / "k.zarr")
    for level in range(a.levels):
        assert np.array_equal(np.asarray(a.image(level)[:]), np.asarray(b.image(level)[:]))
    assert np.array_equal(np.asarray(a.latent[:]), np.asarray(b.latent[:]))


BAD = {
    "missing mask": (["generate", "--mask", "{tmp}/nope.png", "--out", "{tmp}/o.zarr"], "does not exist"),
    "unreadable mask": (["generate", "--mask", "{tmp}/junk.png", "--out", "{tmp}/o.zarr"], "cannot read mask"),
    "colour mask": (["generate", "--mask", "{tmp}/rgb.png", "--out", "{tmp}/o.zarr"], "not class colours"),
    "float mask": (["generate", "--mask", "{tmp}/float.npy", "--out", "{tmp}/o.zarr"], "labels must be integers"),
    "3-D mask": (["generate", "--mask", "{tmp}/cube.npy", "--out", "{tmp}/o.zarr"], "2-D label image"),
    "labels outside the model": (["generate", "--mask", "{tmp}/nine.npy", "--out", "{tmp}/o.zarr"], "labels [0, 9]"),
    "size off the grid": (["generate", "--mask", "{mask}", "--size", "100x130", "--out", "{tmp}/o.zarr"], "use 96 or 104"),
    "output exists": (["generate", "--mask", "{mask}", "--out", "{tmp}/exists.zarr"], "--overwrite"),
    "resume of nothing": (["generate", "--mask", "{mask}", "--out", "{tmp}/none.zarr", "--resume"], "does not exist"),
    "unknown model": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--model", "{tmp}/nomodel"], "not found"),
    "truncated weights": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--model", "{tmp}/trunc"], "corrupt or truncated"),
    "bad steps": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--steps", "0"], "steps"),
    "unknown device": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--device", "tpu"], "unknown device"),
    "ω for a missing class": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--omega-class", "8=2"], "class 8"),
    "unknown plan": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--plan", "parallel"],
                     "unknown plan 'parallel' (use grid, release, sequential)"),
    "unknown solver": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--solver", "euler"],
                       "unknown solver 'euler' (use ddim, dpmpp-2m)"),
    "η for a deterministic solver": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--solver", "dpmpp-2m",
                                      "--eta", "1"], "solver dpmpp-2m is deterministic"),
    "unknown old --schedule": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--schedule", "fast"],
                               "unknown --schedule 'fast'"),
}


@pytest.fixture
def bad_inputs(tmp_path, mask_png, tiny):
    from src_models.models import save_model

    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 7
    io.imsave(tmp_path / "rgb.png", rgb, check_contrast=False)
    np.save(tmp_path / "float.npy", np.random.default_rng(0).random((8, 8)))
    np.save(tmp_path / "cube.npy", np.zeros((2, 8, 8), np.uint8))
    np.save(tmp_path / "nine.npy", np.where(np.eye(8, dtype=bool), 9, 0).astype(np.uint8))
    (tmp_path / "exists.zarr").mkdir()
    save_model(tiny, tmp_path / "trunc")
    weights = tmp_path / "trunc" / "unet.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    # the "tiny" architecture is built from its card; point the card at it
    return tmp_path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_clear_message(case, bad_inputs, mask_png, capsys):
    argv, expected = BAD[case]
    argv = [a.format(tmp=bad_inputs, mask=mask_png) for a in argv]
    if "--model" not in argv:
        argv += ["--model", "tiny-test"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffinfinite: error:"), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err


def test_every_plan_and_solver_runs_and_the_old_schedule_option_still_works(tmp_path, mask_png, capsys):
    from src_models.plan import PLANS
    from src_models.solvers import SOLVERS

    args = ["--size", "64x64", "--region-size", "32", "--steps", "2", "--seed", "1"]
    for plan in PLANS:
        for solver in SOLVERS:
            out = tmp_path / f"{plan}-{solver}.zarr"
            assert main(_gen(out, mask_png, *args, "--plan", plan, "--solver", solver)) == 0, (plan, solver)
            settings = Canvas.open(out).settings
            assert (settings["plan"], settings["solver"], settings["sweep"]) == (plan, solver, False)
            assert settings["eta"] == (1.0 if solver == "ddim" else 0.0)
    assert main(_gen(tmp_path / "sweep.zarr", mask_png, *args, "--sweep", "--plan", "release")) == 0
    assert Canvas.open(tmp_path / "sweep.zarr").done_indices() == {0, 1, 2, 3}
    capsys.readouterr()
    assert main(_gen(tmp_path / "old.zarr", mask_png, *args, "--schedule", "parallel")) == 0
    assert "--schedule is deprecated; use --plan" in capsys.readouterr().err
    old, grid = Canvas.open(tmp_path / "old.zarr"), Canvas.open(tmp_path / "grid-ddim.zarr")
    assert np.array_equal(np.asarray(old.image(0)[:]), np.asarray(grid.image(0)[:]))
    assert "--schedule" not in build_parser().format_help() + _generate_help()  # hidden


def _generate_help():
    import contextlib
    import io as io_

    buf = io_.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["generate", "--help"])
    return buf.getvalue()


def test_dpmpp_steps_default_to_the_solver_and_ddim_to_the_card(tmp_path, mask_png, capsys):
    args = ["--size", "64x64", "--region-size", "32"]
    assert main(_gen(tmp_path / "d.zarr", mask_png, *args, "--solver", "dpmpp-2m")) == 0
    assert Canvas.open(tmp_path / "d.zarr").settings["steps"] == 20  # the solver's provisional default
    assert main(_gen(tmp_path / "e.zarr", mask_png, *args)) == 0
    assert Canvas.open(tmp_path / "e.zarr").settings["steps"] == 10  # tiny-test's card


def test_resume_of_a_canvas_made_before_plans_and_solvers(tmp_path, mask_png):
    args = ["--size", "64x64", "--region-size", "32", "--steps", "1"]
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args)) == 0
    with Canvas.open(tmp_path / "a.zarr", "r+") as c:
        old = {k: v for k, v in c.settings.items() if k not in ("plan", "solver", "sweep")}
        c.set_settings({**old, "schedule": "parallel"})
        c.clear_done({3})
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args, "--resume")) == 0
    assert Canvas.open(tmp_path / "a.zarr").done_indices() == {0, 1, 2, 3}


def test_sweep_killed_mid_level_resumes_to_the_same_canvas(tmp_path, mask_png):
    """``--sweep`` killed with SIGKILL while a level is being written: ``--resume`` restarts at the
    last finished level and ends on the canvas of an uninterrupted sweep (4 x 4 regions)."""
    args = ["--size", "128x128", "--region-size", "32", "--steps", "8", "--seed", "5", "--sweep"]
    assert main(_gen(tmp_path / "full.zarr", mask_png, *args)) == 0
    cmd = [sys.executable, "-m", "napari_diffinfinite.cli", *_gen(tmp_path / "k.zarr", mask_png, *args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "k.zarr" / "diffinfinite" / "sweep" / "progress.json"
    deadline, levels = time.time() + 120, -1
    while time.time() < deadline and proc.poll() is None:
        try:
            levels = json.loads(progress.read_text())["levels_done"]
        except (FileNotFoundError, ValueError):
            pass
        if levels >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    assert 3 <= json.loads(progress.read_text())["levels_done"] < 8
    assert not list((tmp_path / "k.zarr" / "diffinfinite" / "regions").glob("*.done"))
    assert main(_gen(tmp_path / "k.zarr", mask_png, *args, "--resume")) == 0
    a, b = Canvas.open(tmp_path / "full.zarr"), Canvas.open(tmp_path / "k.zarr")
    for level in range(a.levels):
        assert np.array_equal(np.asarray(a.image(level)[:]), np.asarray(b.image(level)[:]))
    assert np.array_equal(np.asarray(a.latent[:]), np.asarray(b.latent[:]))
    assert not progress.exists()


def test_resume_refuses_other_settings(tmp_path, mask_png, capsys):
    args = ["--size", "64x64", "--region-size", "32", "--steps", "1"]
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args)) == 0
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args, "--resume", "--seed", "9")) == 2
    assert "seed: canvas 0 vs now 9" in capsys.readouterr().err


def test_lock_refuses_a_second_writer(tmp_path, mask_png, capsys):
    args = ["--size", "64x64", "--region-size", "32", "--steps", "1"]
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args)) == 0
    with Canvas.open(tmp_path / "a.zarr", "r+"):
        assert main(_gen(tmp_path / "a.zarr", mask_png, *args, "--resume")) == 2
    assert "being written by another process" in capsys.readouterr().err


def test_cuda_missing_falls_back_to_cpu_with_a_warning(tmp_path, mask_png, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(_gen(tmp_path / "a.zarr", mask_png, "--size", "64x64", "--steps", "1")[:-2] + ["--device", "cuda"]) == 0
    captured = capsys.readouterr()
    assert "CUDA is not available; running on the CPU" in captured.err
    assert "device cpu" in captured.out


def test_check_reference_command(capsys):
    import json
    from pathlib import Path

    ref = Path(__file__).resolve().parents[2] / "shared" / "reference" / "reference_vectors.safetensors"
    if not ref.exists():
        pytest.skip("shared reference vectors not beside the checkout")
    assert main(["check-reference", str(ref)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["max_relative_error"] < 1e-5


def test_make_mask_without_a_mask_model_is_procedural(tmp_path, capsys):
    import json

    assert main(["make-mask", "--out", str(tmp_path / "m.png"), "--size", "96x64", "--model", "tiny-test"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "procedural" in report["made_by"]
    m = io.imread(tmp_path / "m.png")
    assert m.shape == (64, 96) and set(np.unique(m)) <= {1, 2, 3} and len(np.unique(m)) > 1


def test_demo_writes_an_ome_zarr_canvas_and_png(tmp_path, capsys):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    assert main(["demo", "--out", str(tmp_path), "--model", "tiny-test", "--size", "128x96", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "demo.zarr") in out and str(tmp_path / "demo.png") in out
    image = list(Reader(parse_url(str(tmp_path / "demo.zarr")))())[0]
    assert image.data[0].shape == (3, 96, 128) and np.asarray(image.data[0]).std() > 0
    assert io.imread(tmp_path / "demo.png").shape == (96, 128, 3)
    assert io.imread(tmp_path / "demo_mask.png").shape == (96, 128, 3)


@pytest.mark.parametrize("err,expected", [(28, "disk full while writing"), (30, "is not writable")])
def test_disk_full_or_read_only_stops_with_finished_regions_intact(tmp_path, mask_png, monkeypatch, capsys, err, expected):
    from src_models import canvas as canvas_mod

    calls = {"n": 0}
    real = canvas_mod.Canvas.update_pyramid

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(err, os.strerror(err))
        return real(self, *a, **k)

    monkeypatch.setattr(canvas_mod.Canvas, "update_pyramid", failing)
    args = ["--size", "64x64", "--region-size", "32", "--steps", "1"]
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args)) == 2
    err_text = capsys.readouterr().err
    assert expected in err_text and "Traceback" not in err_text
    c = Canvas.open(tmp_path / "a.zarr")
    done = c.done_indices()
    assert 1 <= len(done) < 4  # the regions finished before the failure, marked and on disk
    for i in done:
        y0, y1, x0, x1 = c.region(i).px(c.factor)
        assert c.read_rgb(y0, y1, x0, x1).any()
    c.close()
    monkeypatch.setattr(canvas_mod.Canvas, "update_pyramid", real)
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args, "--resume")) == 0


def test_ctrl_c_keeps_finished_regions(tmp_path, mask_png, monkeypatch, capsys):
    import src_models.synthesis as syn

    real = syn.synthesise

    def interrupted(*a, **k):
        for i, ev in enumerate(real(*a, **k)):
            yield ev
            if i == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(syn, "synthesise", interrupted)
    assert main(_gen(tmp_path / "a.zarr", mask_png, "--size", "64x64", "--region-size", "32", "--steps", "1")) == 130
    assert "finished regions are kept" in capsys.readouterr().err
    assert len(Canvas.open(tmp_path / "a.zarr").done_indices()) == 2
