"""The command line: a real run, resume after SIGKILL, and one clear message per bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from skimage import io

from src_models.cli.main import build_parser, main
from canvas_helpers import finished_regions as _finished
from canvas_helpers import generate_args as _gen
from src_models.store.canvas import Canvas




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
    cmd = [sys.executable, "-m", "src_models.cli.main", *_gen(tmp_path / "k.zarr", mask_png, *args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if _finished(tmp_path / "k.zarr") >= 5:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    finished = _finished(tmp_path / "k.zarr")
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
    "labels outside the model": (["generate", "--mask", "{tmp}/nine.npy", "--out", "{tmp}/o.zarr"], "(0: 56 px, 9: 8 px)"),
    "size off the grid": (["generate", "--mask", "{mask}", "--size", "100x130", "--out", "{tmp}/o.zarr"], "use 96 or 104"),
    "output exists": (["generate", "--mask", "{mask}", "--out", "{tmp}/exists.zarr"], "--overwrite"),
    "resume of nothing": (["generate", "--mask", "{mask}", "--out", "{tmp}/none.zarr", "--resume"], "does not exist"),
    "unknown model": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--model", "{tmp}/nomodel"], "not found"),
    "truncated weights": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--model", "{tmp}/trunc"], "corrupt or truncated"),
    "bad steps": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--steps", "0"], "steps"),
    "unknown device": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--device", "tpu"], "unknown device"),
    "ω for a missing class": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--omega-class", "8=2"], "class 8"),
    "empty mask file": (["generate", "--mask", "{tmp}/empty.png", "--out", "{tmp}/o.zarr"], "is empty (0 bytes)"),
    "mask is a directory": (["generate", "--mask", "{tmp}/adir", "--out", "{tmp}/o.zarr"], "is a directory"),
    "TIFF bomb": (["generate", "--mask", "{tmp}/bomb.tif", "--out", "{tmp}/o.zarr"], "more than the 179 M limit"),
    "JPEG mask": (["generate", "--mask", "{tmp}/m.jpg", "--out", "{tmp}/o.zarr"], "JPEG compression changes label values"),
    "ω nan": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--omega", "nan"], "--omega must be a finite number"),
    "ω negative": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--omega", "-1"], "--omega must be at least 0"),
    "ω per class inf": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--omega-class", "1=inf"], "finite"),
    "η negative": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--eta", "-0.5"], "--eta must be at least 0"),
    "η nan": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--eta", "nan"], "--eta must be a finite number"),
    "η above 1": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--eta", "1.5"], "--eta must be at most 1"),
    "too many steps": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--steps", "1001"], "at most 1000"),
    "region size off the grid": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--region-size", "-8"], "region-size"),
    "malicious pickle": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--model", "{tmp}/evil.pt"], "posix.system"),
    "import of a missing slide": (["import-slide", "{tmp}/noslide.svs", "--out", "{tmp}/o.zarr"], "slide"),
    "import over a canvas": (["import-slide", "{mask}", "--out", "{tmp}/exists.zarr"], "--overwrite"),
    "unknown plan": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--plan", "parallel"],
                     "unknown plan 'parallel' (use grid, release, sequential, tiled, average)"),
    "unknown solver": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--solver", "euler"],
                       "unknown solver 'euler' (use ddim, dpmpp-2m)"),
    "η for a deterministic solver": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--solver", "dpmpp-2m",
                                      "--eta", "1"], "solver dpmpp-2m is deterministic"),
    "unknown old --schedule": (["generate", "--mask", "{mask}", "--out", "{tmp}/o.zarr", "--schedule", "fast"],
                               "unknown --schedule 'fast'"),
}


class _Evil:
    """A pickle that runs a command when fully unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiles(n, side):
    for _ in range(n):
        yield np.zeros((side, side), np.uint8)


@pytest.fixture(scope="module")
def tiff_bomb(tmp_path_factory):
    """14,336² px of zeros, zlib-compressed tiles: a few hundred kB that would decode to 205 MB
    (written once for the module: it takes a while)."""
    import tifffile

    path = tmp_path_factory.mktemp("bomb") / "bomb.tif"
    tifffile.imwrite(path, data=_tiles(14 * 14, 1024), shape=(14336, 14336), dtype=np.uint8,
                     tile=(1024, 1024), compression="zlib")
    return path


@pytest.fixture
def bad_inputs(tmp_path, mask_png, tiny, tiff_bomb):
    import shutil

    from src_models.models.base import save_model

    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 7
    io.imsave(tmp_path / "rgb.png", rgb, check_contrast=False)
    np.save(tmp_path / "float.npy", np.random.default_rng(0).random((8, 8)))
    np.save(tmp_path / "cube.npy", np.zeros((2, 8, 8), np.uint8))
    np.save(tmp_path / "nine.npy", np.where(np.eye(8, dtype=bool), 9, 0).astype(np.uint8))
    (tmp_path / "exists.zarr").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    import torch

    shutil.copyfile(tiff_bomb, tmp_path / "bomb.tif")
    jpeg = (np.random.default_rng(0).random((64, 64)) > 0.5).astype(np.uint8) * 3
    io.imsave(tmp_path / "m.jpg", jpeg, check_contrast=False)
    assert io.imread(tmp_path / "m.jpg").max() > 3  # compression made labels the model lacks
    torch.save({"model": _Evil(tmp_path / "pwned")}, str(tmp_path / "evil.pt"))
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
    assert "Re-running" not in err  # torch's advice to unpickle fully is not passed on
    assert not (bad_inputs / "pwned").exists()
    # a refused run leaves nothing behind: no canvas, no lock file
    assert not (bad_inputs / "o.zarr").exists() and not (bad_inputs / "o.zarr.lock").exists()


@pytest.mark.parametrize("case", ["ω nan", "η negative", "too many steps", "empty mask file", "JPEG mask",
                                  "size off the grid", "output exists", "labels outside the model", "ω for a missing class"])
def test_input_checks_run_before_the_model_loads(case, bad_inputs, mask_png, monkeypatch, capsys):
    import src_models.models.loading as models

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(models, "load_model", no_loading)
    for model in ("tiny-test", "default"):
        argv = [a.format(tmp=bad_inputs, mask=mask_png) for a in BAD[case][0]] + ["--model", model]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert (BAD[case][1] if model == "tiny-test" else "diffinfinite: error:") in err, err


def test_refused_steps_leave_nothing_that_blocks_the_rerun(tmp_path, mask_png, capsys):
    args = ["--size", "64x64", "--region-size", "32"]
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args, "--steps", "1001")) == 2
    assert "at most 1000" in capsys.readouterr().err
    assert not (tmp_path / "a.zarr").exists()
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args, "--steps", "1")) == 0


def test_nan_never_reaches_the_canvas_attributes(tmp_path):
    from src_models.store.canvas import CanvasError

    c = Canvas.create(tmp_path / "c.zarr", 64, 64, factor=1, latent_channels=3, region_size=32,
                      classes=["u", "a"], colours=["#000000", "#ff0000"])
    with pytest.raises(CanvasError, match="not a finite number"):
        c.set_info(settings={"omega": float("nan")})
    c.close()
    import json

    json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())  # still strict JSON


def test_every_plan_and_solver_runs_and_the_old_schedule_option_still_works(tmp_path, mask_png, capsys):
    from src_models.sampling.plan import PLANS
    from src_models.sampling.solvers import SOLVERS

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
    cmd = [sys.executable, "-m", "src_models.cli.main", *_gen(tmp_path / "k.zarr", mask_png, *args)]
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


@pytest.mark.conformance
def test_check_reference_command(capsys):
    import json
    from pathlib import Path

    ref = Path(__file__).resolve().parent / "data" / "reference_vectors.safetensors"
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
    import src_models.store.canvas as canvas_mod

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
    import src_models.synthesis.regions as syn

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


def _spawn(out, mask, *extra):
    cmd = [sys.executable, "-m", "src_models.cli.main", *_gen(out, mask, *extra)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_regions(proc, path, n, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if _finished(path) >= n:
            return True
        time.sleep(0.02)
    return False


SLOW = ["--size", "128x128", "--region-size", "32", "--steps", "15", "--seed", "5"]


def test_sigterm_is_handled_like_ctrl_c(tmp_path, mask_png):
    proc = _spawn(tmp_path / "t.zarr", mask_png, *SLOW)
    assert _wait_for_regions(proc, tmp_path / "t.zarr", 2), "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("diffinfinite: this run:")]
    assert lines == ["diffinfinite: terminated (SIGTERM); finished regions are kept (run again with --resume)"]
    assert "diffinfinite: this run: 16 regions" in err  # the estimate said before sampling
    kept = _finished(tmp_path / "t.zarr")
    assert 2 <= kept < 16 and not (tmp_path / "t.zarr.lock").exists()
    assert main(_gen(tmp_path / "t.zarr", mask_png, *SLOW, "--resume")) == 0
    assert main(["verify", str(tmp_path / "t.zarr")]) == 0


def test_overwrite_of_a_canvas_being_written_is_refused_and_destroys_nothing(tmp_path, mask_png, capsys):
    proc = _spawn(tmp_path / "a.zarr", mask_png, *SLOW)
    assert _wait_for_regions(proc, tmp_path / "a.zarr", 2), "the run ended before the second one started"
    assert main(_gen(tmp_path / "a.zarr", mask_png, "--size", "64x64", "--steps", "1", "--overwrite")) == 2
    assert "being written by another process" in capsys.readouterr().err
    assert proc.poll() is None  # the first run goes on
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    with Canvas.open(tmp_path / "a.zarr") as c:  # its canvas and finished regions are intact
        assert c.width == 128 and len(c.done_indices()) >= 2
    assert main(["verify", str(tmp_path / "a.zarr")]) == 0


def test_two_fresh_runs_on_one_path_one_wins_the_other_says_why(tmp_path, mask_png):
    procs = [_spawn(tmp_path / "r.zarr", mask_png, "--size", "64x64", "--region-size", "32", "--steps", "10")
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    lines = [ln for ln in loser[2].splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in loser[2]
    assert "being written by another process" in lines[0] or "exists; pass --overwrite" in lines[0], lines
    assert main(["verify", str(tmp_path / "r.zarr")]) == 0


def test_a_run_that_finds_out_made_while_its_model_loaded_says_so(tmp_path, mask_png, capsys, monkeypatch):
    # the slow half of the race above, made certain: another run makes OUT after this one checked
    import src_models.cli.main as cli

    out = tmp_path / "r.zarr"
    args = ["--size", "64x64", "--region-size", "32", "--steps", "1"]
    loader = cli._model

    def late(*a, **k):
        monkeypatch.setattr(cli, "_model", loader)  # the other run loads normally
        assert main(_gen(out, mask_png, *args)) == 0
        return loader(*a, **k)

    monkeypatch.setattr(cli, "_model", late)
    capsys.readouterr()
    assert main(_gen(out, mask_png, *args)) == 2
    err = capsys.readouterr().err
    assert "exists; pass --overwrite" in err and "Traceback" not in err
    assert main(["verify", str(out)]) == 0


def test_verify_finds_damage_and_resume_generates_it_again(tmp_path, mask_png, capsys):
    import json

    args = ["--size", "64x64", "--region-size", "32", "--steps", "1"]
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args)) == 0
    assert main(["verify", str(tmp_path / "a.zarr")]) == 0
    assert "none damaged" in capsys.readouterr().out
    (tmp_path / "a.zarr" / "diffinfinite" / "latent" / "c" / "0" / "0" / "0").unlink()
    assert main(["verify", str(tmp_path / "a.zarr")]) == 1
    out = capsys.readouterr().out
    assert "4 of 4 finished regions damaged (0, 1, 2, 3)" in out and "latents differ from what was written" in out
    assert main(["verify", str(tmp_path / "a.zarr"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args, "--resume")) == 0
    captured = capsys.readouterr()
    assert "diffinfinite: warning: 4 damaged region(s) will be generated again (0, 1, 2, 3;" in captured.err
    assert "4 regions sampled" in captured.out
    assert main(["verify", str(tmp_path / "a.zarr")]) == 0


@pytest.mark.parametrize("damage", ["truncated chunk", "corrupt array zarr.json", "missing latent array"])
def test_damaged_canvas_never_gives_a_traceback(tmp_path, mask_png, capsys, damage):
    import shutil

    args = ["--size", "64x64", "--region-size", "32", "--steps", "1"]
    assert main(_gen(tmp_path / "a.zarr", mask_png, *args)) == 0
    capsys.readouterr()
    store = tmp_path / "a.zarr"
    if damage == "truncated chunk":
        chunk = store / "0" / "c" / "0" / "0" / "0"
        chunk.write_bytes(chunk.read_bytes()[:30])
    elif damage == "corrupt array zarr.json":
        (store / "0" / "zarr.json").write_bytes(b"\xff\xfe garbage")
    else:
        shutil.rmtree(store / "diffinfinite" / "latent")
    assert main(["verify", str(store)]) == 1
    verify_out = capsys.readouterr()
    assert "damaged" in verify_out.out and "Traceback" not in verify_out.err
    code = main(_gen(store, mask_png, *args, "--resume"))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if damage == "truncated chunk":  # the damaged regions are sampled again
        assert code == 0 and "will be generated again" in err
        assert main(["verify", str(store)]) == 0
    else:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and "is damaged" in lines[0], err


def test_resume_after_a_kill_while_the_mask_was_written(tmp_path, mask_png, capsys):
    from src_models.synthesis.canvases import new_canvas
    from src_models.synthesis.request import SynthesisRequest
    from src_models.models.tiny import tiny_test_card

    # what a kill -9 between creating the canvas and recording the mask leaves
    settings = SynthesisRequest(model="tiny-test", steps=1, seed=0, device="cpu").settings()
    new_canvas(tiny_test_card(), tmp_path / "a.zarr", 64, 64, 32, settings=settings).close()
    assert main(_gen(tmp_path / "a.zarr", mask_png, "--size", "64x64", "--region-size", "32", "--steps", "1",
                     "--resume")) == 0, capsys.readouterr().err
    with Canvas.open(tmp_path / "a.zarr") as c:
        assert np.array_equal(np.asarray(c.mask[:]), io.imread(mask_png))
        assert c.done_indices() == set(range(4))


def test_writes_abandoned_by_an_interruption_print_nothing_at_exit(tmp_path):
    """An interruption abandons the store's pending asyncio writes of the region in flight; asyncio's
    reports of them at exit ("Task was destroyed but it is pending!") must not follow the one line."""
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import asyncio, sys\n"
        "from src_models.cli.common import Terminated, run_command\n"
        "def fn():\n"
        "    global task\n"
        "    task = asyncio.new_event_loop().create_task(asyncio.sleep(100))\n"
        "    raise Terminated()\n"
        "sys.exit(run_command(fn))\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert done.returncode == 143
    assert done.stderr.strip().splitlines() == [
        "diffinfinite: terminated (SIGTERM); finished regions are kept (run again with --resume)"], done.stderr
