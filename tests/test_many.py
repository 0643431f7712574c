"""``diffinfinite generate-many``: job tables, a LocalCluster of two worker processes making the
same canvases as sequential ``generate`` runs, rerun after an interruption, and a worker killed
mid-canvas losing no finished region."""
from __future__ import annotations

import csv
import logging
import os
import signal
import threading
import time

import numpy as np
import pytest
from skimage import io

from src_models.cli.main import main
import src_models.synthesis.many as many
from canvas_helpers import finished_regions as _finished
from src_models.store.canvas import Canvas
from src_models.synthesis.request import SynthesisRequest

pytest.importorskip("distributed")

RUN = ["--model", "tiny-test", "--device", "cpu", "--size", "128x128", "--region-size", "32", "--steps", "3"]


def _masks(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = np.zeros((64, 64), np.uint8)
        m[:, :32] = 1 + i % 3
        m[:, 32:] = 2
        m[40 + 4 * i :, :] = 3
        io.imsave(folder / f"slide{i}.png", m, check_contrast=False)
    return folder


def _same(a_path, b_path):
    with Canvas.open(a_path) as a, Canvas.open(b_path) as b:
        assert a.levels == b.levels
        for level in range(a.levels):
            assert np.array_equal(np.asarray(a.image(level)[:]), np.asarray(b.image(level)[:])), level
        assert np.array_equal(np.asarray(a.latent[:]), np.asarray(b.latent[:]))
        assert a.settings == b.settings and a.info["mask_signature"] == b.info["mask_signature"]


def _rows(path):
    return {r["name"]: r for r in csv.DictReader(open(path))}


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.CRITICAL, env={"OMP_NUM_THREADS": "1"})
    client = Client(cluster)
    yield cluster, client
    client.close()
    cluster.close()


def test_job_values_follow_the_request_fields():
    fields = many.request_fields()
    assert "device" not in fields and "area" not in fields and {"seed", "steps", "model", "omega_per_class"} <= set(fields)
    assert many.parse_value("2=6;3=1.5", fields["omega_per_class"]) == {2: 6.0, 3: 1.5}
    assert many.parse_value("10, 20", fields["centre"]) == (10.0, 20.0)
    assert many.parse_value("", fields["halo"]) is None and many.parse_value("7", fields["halo"]) == 7
    assert many.parse_value("no", fields["fast"]) is False and many.parse_value("12", fields["steps"]) == 12
    # a field of a type the table does not know (e.g. added to SynthesisRequest later) comes from JSON or as text
    assert many.parse_value('{"a": 1}', None) == {"a": 1} and many.parse_value("linear", None) == "linear"
    row = {"mask": "m.png", "name": "x", "seed": "4", "steps": "", "omega_per_class": "1=2"}
    assert many.job_overrides(row, "job 1") == {"seed": 4, "omega_per_class": {1: 2.0}}
    with pytest.raises(many.JobError, match="unknown column 'colour'"):
        many.job_overrides({"mask": "m.png", "colour": "red"}, "job 1")
    with pytest.raises(many.JobError, match="each worker uses its own device"):
        many.job_overrides({"mask": "m.png", "device": "cuda:1"}, "job 1")


def test_gpu_pinning_takes_free_gpus_and_frees_them_with_the_worker(tmp_path):
    a = many.claim_gpus(["0", "1", "2"], 1, tmp_path)
    b = many.claim_gpus(["0", "1", "2"], 2, tmp_path)
    assert [i for i, _ in a] == [0] and [i for i, _ in b] == [1, 2]
    assert many.claim_gpus(["0", "1", "2"], 1, tmp_path) is None  # all held
    for _, fd in a:
        os.close(fd)  # what the kernel does when a worker dies
    again = many.claim_gpus(["0", "1", "2"], 1, tmp_path)
    assert [i for i, _ in again] == [0]
    # a worker that sees the GPUs in another order (CUDA_VISIBLE_DEVICES=2,0,1) prefers its first one
    for _, fd in again + b:
        os.close(fd)
    assert [i for i, _ in many.claim_gpus(["2", "0", "1"], 1, tmp_path)] == [0]


BAD = {
    "no jobs": (["--jobs", "{tmp}/nothing"], "does not exist"),
    "no mask column": (["--jobs", "{tmp}/nomask.csv"], "has no 'mask' column"),
    "unknown column": (["--jobs", "{tmp}/unknown.csv"], "unknown column 'colour'"),
    "device column": (["--jobs", "{tmp}/device.csv"], "each worker uses its own device"),
    "duplicate names": (["--jobs", "{tmp}/twice.csv"], "two jobs are named 'a'"),
    "missing mask": (["--jobs", "{tmp}/missing.csv"], "mask file"),
    "bad steps in a row": (["--jobs", "{tmp}/steps.csv"], "steps must be at least 1"),
    "bad size in a row": (["--jobs", "{tmp}/size.csv"], "use 96 or 104"),
    "preview option": (["--jobs", "{tmp}/masks", "--preview", "{tmp}/p.png"], "beside each canvas"),
    "settings differ": (["--jobs", "{tmp}/masks", "--seed", "7"], "settings differ"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_status_2_before_anything_starts(tmp_path, capsys, case):
    masks = _masks(tmp_path / "masks", 1)
    tables = {"nomask": "name\na\n", "unknown": "mask,colour\nmasks/slide0.png,red\n",
              "device": "mask,device\nmasks/slide0.png,cuda:1\n", "twice": "mask,name\nmasks/slide0.png,a\nmasks/slide0.png,a\n",
              "missing": "mask\nmasks/nope.png\n", "steps": "mask,steps\nmasks/slide0.png,0\n",
              "size": "mask,size\nmasks/slide0.png,100x100\n"}
    for name, text in tables.items():
        (tmp_path / f"{name}.csv").write_text(text)
    out = tmp_path / "out"
    if case == "settings differ":  # a canvas made with seed 0 exists; the job would make it with seed 7
        assert main(["generate", "--mask", str(masks / "slide0.png"), "--out", str(out / "slide0.zarr"), *RUN]) == 0
        capsys.readouterr()
    argv, expected = BAD[case]
    argv = [a.format(tmp=tmp_path) for a in argv]
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert main(["generate-many", *argv, "--out", str(out), *RUN, "--local-workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffinfinite: error:") and expected in err[0], err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before  # nothing written


def test_two_workers_make_the_canvases_of_sequential_generate_runs_and_rerun_finishes_what_is_missing(
        tmp_path, cluster, capsys):
    _, client = cluster
    masks = _masks(tmp_path / "masks")
    for i in range(4):  # job i gets seed --seed + i
        argv = ["generate", "--mask", str(masks / f"slide{i}.png"), "--out", str(tmp_path / "seq" / f"slide{i}.zarr"),
                *RUN, "--seed", str(10 + i)]
        assert main(argv) == 0
    out = tmp_path / "out"
    many_argv = ["generate-many", "--jobs", str(masks), "--out", str(out), *RUN, "--seed", "10"]
    # the first run starts its own two worker processes; the rerun uses the running cluster
    assert main(many_argv + ["--local-workers", "2", "--dashboard-address", "none"]) == 0
    captured = capsys.readouterr()
    assert "4 canvas(es) on 2 worker(s) (CPU)" in captured.err
    for i in range(4):
        _same(tmp_path / "seq" / f"slide{i}.zarr", out / f"slide{i}.zarr")
        assert (out / f"slide{i}.png").is_file()
        assert f"slide{i}: 16/16 regions" in captured.err  # per-canvas progress on stderr
    assert "summary: " in captured.out and "(4 done)" in captured.out
    rows = _rows(out / "summary.csv")
    assert sorted(rows) == [f"slide{i}" for i in range(4)]
    assert {r["status"] for r in rows.values()} == {"done"} and {r["sampled"] for r in rows.values()} == {"16"}
    assert [rows[f"slide{i}"]["seed"] for i in range(4)] == ["10", "11", "12", "13"]
    assert len({r["worker"] for r in rows.values()}) == 2  # both workers took canvases

    # what a kill leaves: slide1 stopped after 11 of its 16 regions (regions finish in index
    # order), slide2 never started; slide0 and slide3 are complete
    with Canvas.open(out / "slide1.zarr", "r+") as c:
        c.clear_done(range(11, 16))
    import shutil

    shutil.rmtree(out / "slide2.zarr")
    assert main(many_argv + ["--scheduler", client.scheduler.address]) == 0
    captured = capsys.readouterr()
    rows = _rows(out / "summary.csv")
    assert rows["slide0"]["status"] == rows["slide3"]["status"] == "already done"
    assert (rows["slide1"]["status"], rows["slide1"]["done_before"], rows["slide1"]["sampled"]) == ("done", "11", "5")
    assert (rows["slide2"]["status"], rows["slide2"]["sampled"]) == ("done", "16")
    assert "slide1: 5 of 16 regions to sample" in captured.err and "(resumed: 11 already done)" in captured.err
    for i in range(4):
        _same(tmp_path / "seq" / f"slide{i}.zarr", out / f"slide{i}.zarr")


def test_each_worker_loads_the_model_once_for_all_its_canvases(tmp_path, cluster):
    import dataclasses

    _, client = cluster
    mask = _masks(tmp_path / "masks", 1) / "slide0.png"
    request = dataclasses.asdict(SynthesisRequest(model="tiny-test", steps=1, omega=3.0))
    jobs = [many.Job(name=f"c{i}", mask=str(mask), out=str(tmp_path / f"c{i}.zarr"), width=64, height=64,
                     request=dict(request, seed=i)) for i in range(6)]
    result = many.run_jobs(client, jobs, tmp_path / "summary.csv")
    assert [r["status"] for r in result.rows] == ["done"] * 6
    used = {r["worker"] for r in result.rows}
    loads = client.run(lambda dask_worker: dask_worker.plugins[many.PLUGIN_NAME].state.loads, workers=list(used))
    assert loads == {w: 1 for w in used}, (loads, [r["worker"] for r in result.rows])


def test_a_worker_killed_mid_canvas_loses_no_finished_region(tmp_path, cluster):
    """SIGKILL the worker while it samples a canvas: the scheduler runs the task again and it
    goes on from the canvas's region state.  (halo 0: no region rewrites its finished
    neighbours' border pixels, so a kill at any instant leaves every finished region intact;
    with a halo, a kill between that rewrite and the next region-state write makes the
    neighbours fail their checksums, and they are sampled again, as with `generate --resume`.)"""
    import dataclasses

    _, client = cluster
    mask = _masks(tmp_path / "masks", 1) / "slide0.png"
    request = dataclasses.asdict(SynthesisRequest(model="tiny-test", steps=20, seed=5, omega=3.0, halo=0))
    job = many.Job(name="k", mask=str(mask), out=str(tmp_path / "k.zarr"), width=128, height=128, request=request,
                   region_size=32)
    reference = many.generate_canvas(dataclasses.replace(job, name="ref", out=str(tmp_path / "ref.zarr")))
    assert (reference["status"], reference["sampled"]) == ("done", 16)

    events, result = [], {}
    thread = threading.Thread(target=lambda: result.update(
        r=many.run_jobs(client, [job], tmp_path / "summary.csv", retries=0, on_event=events.append)))
    thread.start()
    deadline, pid, killed_at = time.time() + 120, None, None
    while time.time() < deadline and thread.is_alive():
        starts = [e for e in events if e.get("kind") == "start"]
        if starts and pid is None:
            pid = client.run(os.getpid, workers=[starts[0]["worker"]])[starts[0]["worker"]]
        if pid is not None and _finished(tmp_path / "k.zarr") >= 3:
            os.kill(pid, signal.SIGKILL)
            killed_at = _finished(tmp_path / "k.zarr")
            break
        time.sleep(0.005)
    thread.join(180)
    assert killed_at is not None, "the canvas finished before its worker could be killed"
    assert killed_at < 16
    row = result["r"].rows[0]
    assert row["status"] == "done" and row["attempts"] == 2, row
    # the second attempt began with every region finished before the kill and sampled the rest
    assert (row["done_before"], row["sampled"]) == (killed_at, 16 - killed_at)
    assert _rows(tmp_path / "summary.csv")["k"]["attempts"] == "2"
    _same(tmp_path / "ref.zarr", tmp_path / "k.zarr")


def test_generate_many_finishes_a_canvas_that_generate_started(tmp_path):
    """Both commands store settings resolved against the card (plan, steps, eta named), so the
    jobs of generate-many match a canvas that generate left half done."""
    from src_models.cli.main import UserError
    from src_models.cli.many import build_jobs, build_parser

    masks = _masks(tmp_path / "masks", n=1)
    out = tmp_path / "out"
    assert main(["generate", "--mask", str(masks / "slide0.png"), "--out", str(out / "slide0.zarr"), *RUN,
                 "--seed", "10"]) == 0
    with Canvas.open(out / "slide0.zarr", "r+") as c:
        c.clear_done(range(8, 16))  # stopped half way
        stored = c.settings
    jobs = build_jobs(build_parser().parse_args(["--jobs", str(masks), "--out", str(out), *RUN, "--seed", "10"]))
    assert len(jobs) == 1 and jobs[0].request["plan"] == stored["plan"] and jobs[0].request["eta"] == stored["eta"]
    # another seed is still refused
    with pytest.raises(UserError, match="settings differ"):
        build_jobs(build_parser().parse_args(["--jobs", str(masks), "--out", str(out), *RUN, "--seed", "11"]))
