"""``--guidance-below``: the CLI passes it to the sampler, records it in the canvas, and a resume that
leaves it open goes on with the canvas's value (the card's default may have changed since)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from src_models.store.canvas import Canvas


def _stored(path):
    with Canvas.open(path, "r") as c:
        return dict(c.settings)


def test_generate_records_it_and_a_resume_follows_the_canvas(tmp_path, monkeypatch, capsys):
    from src_models.cli.main import main as cli
    import src_models.synthesis.regions as regions

    mask = np.full((64, 64), 2, np.uint8)
    mask[:, :24] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    base = ["generate", "--mask", str(tmp_path / "m.png"), "--model", "tiny-test", "--steps", "4",
            "--region-size", "32", "--device", "cpu"]
    seen, plain = [], regions.prepare_run
    monkeypatch.setattr(regions, "prepare_run", lambda m, c, r: seen.append(r.guidance_below) or plain(m, c, r))

    limited, every = tmp_path / "l.zarr", tmp_path / "e.zarr"
    assert cli(base + ["--out", str(limited), "--guidance-below", "300"]) == 0
    assert cli(base + ["--out", str(every)]) == 0  # the tiny model's card guides every level
    assert seen == [300, 1000]
    assert _stored(limited)["guidance_below"] == 300 and "guidance_below" not in _stored(every)
    with Canvas.open(limited) as a, Canvas.open(every) as b:
        assert not np.array_equal(a.image(0)[:], b.image(0)[:])

    # a resume with it left open goes on as made; naming another value is a change of settings
    with Canvas.open(limited, "r+") as c:
        c.clear_done([c.regions()[-1].index])
    seen.clear()
    assert cli(base + ["--out", str(limited), "--resume"]) == 0
    assert seen == [300] and _stored(limited)["guidance_below"] == 300
    capsys.readouterr()
    assert cli(base + ["--out", str(limited), "--resume", "--guidance-below", "1000"]) == 2
    assert "guidance_below" in capsys.readouterr().err
    assert cli(base + ["--out", str(every), "--resume", "--guidance-below", "-1"]) == 2
    assert "--guidance-below must be a whole number from 0 to 1000" in capsys.readouterr().err
