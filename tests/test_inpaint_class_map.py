"""``inpaint --mask`` takes ``--class-map``: masks made for other models (the release's inpainting
masks hold labels 0 and 9) can be used."""
from __future__ import annotations

import numpy as np
from PIL import Image


def test_inpaint_mask_with_a_class_map(tmp_path, monkeypatch, capsys):
    from src_models.cli.main import main
    from src_models.store.canvas import Canvas

    monkeypatch.setenv("DIFFINFINITE_TIMINGS", str(tmp_path / "t.json"))
    base = np.ones((32, 32), np.uint8)
    Image.fromarray(base).save(tmp_path / "m.png")
    run = ["--model", "tiny-test", "--steps", "1", "--device", "cpu"]
    out = tmp_path / "a.zarr"
    assert main(["generate", "--mask", str(tmp_path / "m.png"), "--size", "128x128", "--region-size", "64",
                 "--out", str(out), *run]) == 0
    irregular = np.zeros((64, 64), np.uint8)
    irregular[16:48, 8:40] = 9  # the area to redo, in the release's inpainting labels
    Image.fromarray(irregular).save(tmp_path / "hole.png")
    capsys.readouterr()
    argv = ["inpaint", str(out), "--rect", "0,0,64,64", "--mask", str(tmp_path / "hole.png"), *run]
    assert main(argv) == 2  # label 9 is no class of tiny-test: refused, with the way out
    assert "--class-map" in capsys.readouterr().err
    assert main(argv + ["--class-map", "9=2,0=1"]) == 0
    with Canvas.open(out) as canvas:
        f = canvas.factor
        m = np.asarray(canvas.mask[: 64 // f, : 64 // f])
    assert set(np.unique(m)) == {1, 2} and (m == 2).sum() > 0
    assert main(["inpaint", str(out), "--rect", "0,0,64,64", "--label", "2", "--class-map", "9=2", *run]) == 2
