"""The precision a run takes where it leaves it open: bf16 on a CPU with native bfloat16 (AVX512_BF16
or AMX), float32 elsewhere, ``DIFFINFINITE_PRECISION`` over both; a resume goes on in the precision
its canvas was made in.  (The rest of the suite pins float32 in conftest.py; these tests unset it.)"""
from __future__ import annotations

import dataclasses
import queue
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import src_models.models.fast as fast
from src_models.models import cpu
from src_models.store.canvas import Canvas
from src_models.synthesis.request import RequestError, SynthesisRequest, recorded_precision

ENV = cpu.PRECISION_ENV


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A machine whose CPU has native bfloat16, with the variable unset."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: True)


def test_the_default_follows_the_cpu_and_the_variable_overrides_it(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: True)
    assert fast.default_precision("cpu") == "bf16"
    assert fast.default_precision(torch.device("cuda", 0)) == "float32"  # CUDA keeps its fast path's own autocast
    assert fast.default_precision("mps") == "float32"
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: False)  # emulated bf16 would be slower
    assert fast.default_precision("cpu") == "float32"
    monkeypatch.setenv(ENV, "bf16")
    assert fast.default_precision("cpu") == "bf16" and fast.default_precision("cuda") == "bf16"
    monkeypatch.setenv(ENV, " Float32 ")
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: True)
    assert fast.default_precision("cpu") == "float32"
    monkeypatch.setenv(ENV, "auto")
    assert fast.default_precision("cpu") == "bf16"
    monkeypatch.setenv(ENV, "fp8")
    with pytest.raises(ValueError, match=ENV):
        fast.default_precision("cpu")


def test_a_request_left_open_names_its_precision_when_resolved(bf16_cpu, monkeypatch):
    for left_open in (None, "auto"):
        r = SynthesisRequest(model="tiny-test", device="cpu", precision=left_open)
        r.check()
        assert "precision" not in r.settings()  # not resolved: nothing to record yet
        done = r.resolved()
        assert done.precision == "bf16" and done.settings()["precision"] == "bf16"
    assert SynthesisRequest(device="cpu", precision="float32").resolved().precision == "float32"
    assert SynthesisRequest(device="cpu", precision="auto").resolved().resolved().precision == "bf16"
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: False)
    assert SynthesisRequest(device="cpu").resolved().precision == "float32"
    monkeypatch.setenv(ENV, "half")
    with pytest.raises(RequestError, match=f"{ENV} must be auto, float32 or bf16, got 'half'"):
        SynthesisRequest(device="cpu").resolved()
    with pytest.raises(RequestError, match="precision must be one of auto, float32, bf16"):
        SynthesisRequest(precision="fp16").check()


def test_recorded_precision_reads_what_a_run_stored():
    assert recorded_precision({"model": "m", "steps": 4}) is None  # a new canvas: no run has recorded one
    assert recorded_precision({"model": "m", "seed": 0}) == "float32"  # a run's settings name their seed
    assert recorded_precision({"model": "m", "seed": 0, "precision": "bf16"}) == "bf16"


def _stored(path):
    with Canvas.open(path, "r") as c:
        return dict(c.settings)


def test_generate_and_generate_many_go_on_in_the_canvas_precision(tmp_path, monkeypatch, capsys):
    """A canvas made in float32 (a run recorded it) resumes in float32 on a machine whose default is
    bf16, and one made in bf16 resumes in bf16 where the default is float32, when ``--precision`` is
    left open; naming the other one is refused as a change of settings."""
    from src_models.cli.main import main as cli
    from src_models.cli.many import build_jobs, build_parser

    mask = np.full((64, 64), 2, np.uint8)
    mask[:, :24] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    base = ["generate", "--mask", str(tmp_path / "m.png"), "--model", "tiny-test", "--steps", "2",
            "--region-size", "32", "--device", "cpu"]
    monkeypatch.setenv(ENV, "float32")
    f32 = tmp_path / "f.zarr"
    assert cli(base + ["--out", str(f32)]) == 0
    assert "precision" not in _stored(f32) and recorded_precision(_stored(f32)) == "float32"
    b16 = tmp_path / "b.zarr"
    assert cli(base + ["--out", str(b16), "--precision", "bf16"]) == 0
    assert _stored(b16)["precision"] == "bf16"

    monkeypatch.setenv(ENV, "bf16")
    assert cli(base + ["--out", str(f32), "--resume"]) == 0
    assert "precision" not in _stored(f32)
    capsys.readouterr()
    assert cli(base + ["--out", str(f32), "--resume", "--precision", "bf16"]) == 2
    assert "precision" in capsys.readouterr().err
    monkeypatch.setenv(ENV, "float32")
    assert cli(base + ["--out", str(b16), "--resume"]) == 0
    assert _stored(b16)["precision"] == "bf16"

    # generate-many: an existing canvas goes on as made, a new one takes the machine's default
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "b.png")
    table = ["--jobs", str(tmp_path / "masks"), "--model", "tiny-test", "--steps", "2", "--region-size", "32",
             "--device", "cpu"]
    assert [j.request["precision"] for j in build_jobs(build_parser().parse_args(table + ["--out", str(tmp_path)]))] \
        == ["bf16"]
    fresh = build_jobs(build_parser().parse_args(table + ["--out", str(tmp_path / "new")]))
    assert [j.request["precision"] for j in fresh] == ["auto"]  # each worker's device decides
    pinned = build_jobs(build_parser().parse_args(table + ["--out", str(tmp_path / "new"), "--precision", "bf16"]))
    assert [j.request["precision"] for j in pinned] == ["bf16"]

    # on the worker: an open precision is the canvas's where it exists, else the worker device's
    from src_models.models.loading import find_card
    from src_models.synthesis.many import job_request

    card = find_card("tiny-test")[0]
    (job,) = fresh
    monkeypatch.setenv(ENV, "bf16")
    assert job_request(job, "cpu", card).precision == "bf16"
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: True)
    monkeypatch.delenv(ENV)
    assert job_request(job, "cpu", card).precision == "bf16"
    assert job_request(job, "cuda", card).precision == "float32"
    made_f32 = dataclasses.replace(job, out=str(f32))
    assert job_request(made_f32, "cpu", card).precision == "float32"  # a retried job goes on as made
    assert job_request(dataclasses.replace(made_f32, overwrite=True), "cpu", card).precision == "bf16"


def test_inpaint_resume_goes_on_in_the_canvas_precision(tmp_path, monkeypatch):
    """An inpaint stopped before its area was sampled goes on, with ``--precision`` left open, in the
    precision its canvas was made in, not the machine's."""
    from src_models.cli.main import main as cli
    from src_models.synthesis.editing import prepare_inpaint

    Image.fromarray(np.full((64, 64), 2, np.uint8)).save(tmp_path / "m.png")
    out = tmp_path / "b.zarr"
    run = ["--model", "tiny-test", "--steps", "1", "--device", "cpu"]
    assert cli(["generate", "--mask", str(tmp_path / "m.png"), "--region-size", "32", "--out", str(out),
                "--precision", "bf16", *run]) == 0
    with Canvas.open(out, "r+") as c:  # a run that scheduled its rectangle and stopped
        prepare_inpaint(c, (0, 32, 0, 32))
        assert c.jobs()
    import src_models.synthesis.regions as regions

    seen, plain = [], regions.prepare_run
    monkeypatch.setattr(regions, "prepare_run", lambda m, c, r: seen.append(r.precision) or plain(m, c, r))
    monkeypatch.setenv(ENV, "float32")
    assert cli(["inpaint", str(out), "--resume", *run]) == 0
    with Canvas.open(out) as c:
        assert c.jobs() == {} and c.settings["precision"] == "bf16"
    assert seen == ["bf16"]


def test_a_new_canvas_takes_the_machine_default(tmp_path, bf16_cpu):
    from src_models.cli.main import main as cli

    Image.fromarray(np.full((64, 64), 1, np.uint8)).save(tmp_path / "m.png")
    out = tmp_path / "c.zarr"
    assert cli(["generate", "--mask", str(tmp_path / "m.png"), "--model", "tiny-test", "--steps", "1",
                "--region-size", "32", "--device", "cpu", "--out", str(out)]) == 0
    assert _stored(out)["precision"] == "bf16"


def test_a_dock_run_in_float32_does_not_keep_an_earlier_bf16_record(tmp_path):
    """The worker merges the run's settings into the canvas's: the keys stored only when not the
    default (precision, distilled, guidance_below) must not survive from an earlier run that had them."""
    from napari_diffinfinite._worker import create_canvas_job, synthesis_job

    path = create_canvas_job("tiny-test", str(tmp_path / "g.zarr"), 64, 64, 32, False, "cpu")
    with Canvas.open(path, "r+") as c:
        c.set_settings({**c.settings, "seed": 0, "precision": "bf16", "distilled": True, "guidance_below": 300})
    mask = np.full((64, 64), 2, np.uint8)
    req = SynthesisRequest(model="tiny-test", device="cpu", steps=1, seed=1, precision="float32")
    out = list(synthesis_job(path, req, mask, 1, False, threading.Event(), queue.SimpleQueue(), False))
    assert not [e for e in out if type(e).__name__ == "Failed"], out
    stored = _stored(path)
    assert "precision" not in stored and "distilled" not in stored and stored["seed"] == 1
    assert "guidance_below" not in stored  # the tiny model's card guides every level
