"""Data-parallel training: two gloo processes under torchrun against one process with the whole
batch, and exact resume with another world size (optimiser, data position, gradient accumulation)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import src_models.training.train as T
from src_models.training.distributed import Parallel, micro_ranges


def _folder(root):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "images" / f"t{i}.png")
        if i < 2:
            m = np.ones((48, 48), np.uint8)
            m[:, 24:] = 3
            Image.fromarray(m).save(root / "masks" / f"t{i}.png")
    return root


def _args(data, out):
    return ["--data", str(data), "--out", str(out), "--codec-widths", "8,16,16", "--codec-steps", "4",
            "--codec-crop", "32", "--codec-batch", "4", "--crop", "32", "--batch", "4", "--base", "8", "--mults", "1,2",
            "--blocks", "1", "--ckpt-every", "2", "--log-every", "1", "--no-progress", "--steps", "4", "--device", "cpu"]


def _losses(work, stage):
    return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(open(work / "logs" / f"{stage}.csv"))]


def _state(work, stage, step):
    return json.loads((work / "checkpoints" / stage / f"step_{step:07d}" / "state.json").read_text())


def test_shards_and_micro_batches_cover_the_global_batch():
    for world in (1, 2, 3, 8):
        parts = [Parallel(rank=r, world=world).shard(10) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == 10
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1
    assert micro_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert micro_ranges(5, None) == [(0, 5)] and micro_ranges(5, 9) == [(0, 5)]


def test_a_shard_draws_the_same_random_stream_as_the_whole_batch(tmp_path):
    data = T.load_training_set(_folder(tmp_path / "d"))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    whole = T.PixelCrops(data.tiles, 16, g1).sample(6)
    part = T.PixelCrops(data.tiles, 16, g2).sample(6, keep=(2, 5))
    for a, b in zip(whole, part):
        assert torch.equal(a[2:5], b)
    assert torch.equal(g1.get_state(), g2.get_state())  # the stream goes on the same


def test_two_gloo_processes_match_one_process_and_resume_with_another_world_size(tmp_path):
    data = _folder(tmp_path / "data")
    # one process, global batch 4 (reference)
    one = tmp_path / "one"
    assert T.main(_args(data, one)) == 0

    # two processes under torchrun (gloo), global batch 4 = 2 per process; the codec resumes from
    # the single process's step-2 checkpoint (1 -> 2 processes), the UNet trains from scratch
    two = tmp_path / "two"
    shutil.copytree(tmp_path / "one.train", tmp_path / "two.train")
    shutil.rmtree(tmp_path / "two.train" / "checkpoints" / "codec" / "step_0000004")
    shutil.rmtree(tmp_path / "two.train" / "checkpoints" / "unet")
    shutil.rmtree(tmp_path / "two.train" / "codec_final")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "src_models.training.train", *_args(data, two), "--resume"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes (gloo" in proc.stderr

    # the loss of every step (the mean over both processes' shards) matches the single process
    for stage in ("codec", "unet"):
        a, b = _losses(tmp_path / "one.train", stage), _losses(tmp_path / "two.train", stage)
        assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
        np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=0, atol=2e-6)
    assert _state(tmp_path / "two.train", "unet", 4)["parallel"] == {"world_size": 2, "batch": 4, "micro_batch": 2}
    ca, cb = load_file(str(one / "codec.safetensors")), load_file(str(two / "codec.safetensors"))
    for k in ca:
        torch.testing.assert_close(cb[k], ca[k], rtol=1e-4, atol=1e-5)
    # The UNet agrees as closely except in a few parameters whose true gradient is zero (biases
    # right before a GroupNorm): there AdamW divides rounding noise by its own size and moves
    # them by up to about lr (2e-4) per step either way, so two runs of 4 steps can part by
    # 2 x 4 x lr.  A broken all-reduce or wrong shards would move most of the 92k values.
    ua, ub = load_file(str(one / "unet.safetensors")), load_file(str(two / "unet.safetensors"))
    diff = torch.cat([(ua[k] - ub[k]).abs().flatten() for k in ua])
    assert float((diff > 1e-5).float().mean()) < 1e-3 and float(diff.max()) < 2 * 4 * 2e-4

    # resume the two-process run with ONE process from its step-2 checkpoint: the global batch
    # stays 4, the micro-batch of 2 comes from the checkpoint (gradients of 2 accumulated)
    solo = tmp_path / "solo"
    shutil.copytree(tmp_path / "two.train", tmp_path / "solo.train")
    shutil.rmtree(tmp_path / "solo.train" / "checkpoints" / "unet" / "step_0000004")
    assert T.main(_args(data, solo) + ["--resume"]) == 0
    assert _state(tmp_path / "solo.train", "unet", 4)["parallel"] == {"world_size": 1, "batch": 4, "micro_batch": 2}
    assert [s for s, _ in _losses(tmp_path / "solo.train", "unet")] == [1, 2, 3, 4]
    us = load_file(str(solo / "unet.safetensors"))
    for k in ub:
        torch.testing.assert_close(us[k], ub[k], rtol=1e-5, atol=1e-6)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "two.train" / "checkpoints" / "unet" / "step_0000004" / name))
        b = load_file(str(tmp_path / "solo.train" / "checkpoints" / "unet" / "step_0000004" / name))
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
