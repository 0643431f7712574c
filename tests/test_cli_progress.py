"""The CLI says what a run will do before it starts, and shows progress for long work."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image


class _Terminal(io.StringIO):
    def isatty(self) -> bool:  # tqdm draws its bar only on a terminal
        return True


def test_generate_prints_the_estimate_before_sampling(tmp_path, monkeypatch, capsys):
    from src_models.cli.main import main

    monkeypatch.setenv("DIFFINFINITE_TIMINGS", str(tmp_path / "t.json"))
    m = np.zeros((32, 32), np.uint8)
    m[:, :16], m[:, 16:] = 1, 2
    Image.fromarray(m).save(tmp_path / "m.png")
    argv = ["generate", "--mask", str(tmp_path / "m.png"), "--size", "256x256", "--region-size", "64",
            "--model", "tiny-test", "--steps", "2", "--device", "cpu"]
    assert main(argv + ["--out", str(tmp_path / "a.zarr")]) == 0
    err = capsys.readouterr().err
    assert "this run: 16 regions, 65,536 px; no run of about 2 steps measured on cpu yet" in err


def test_make_mask_shows_a_progress_bar_of_the_layout_levels(tmp_path, monkeypatch):
    from src_models.cli.main import main
    from src_models.models.loading import find_card

    try:
        card, _ = find_card("default")
    except Exception:  # noqa: BLE001
        pytest.skip("the shipped default model is not installed")
    if not card.mask_model:
        pytest.skip("the default model has no layout model")
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["make-mask", "--model", "default", "--layout", "learned", "--size", "256x256", "--steps", "5",
                 "--device", "cpu", "--out", str(tmp_path / "m.png")]) == 0
    text = term.getvalue()
    assert "drawing the layout" in text and "5/5" in text
    # the anatomy recipe is drawn at once: no bar
    term.seek(0)
    term.truncate()
    assert main(["make-mask", "--model", "default", "--size", "256x256", "--device", "cpu",
                 "--out", str(tmp_path / "a.png")]) == 0
    assert "drawing the layout" not in term.getvalue()
