"""The shipped tumour model (issue 24): its card says what it paints and where it came from, it loads
as ``--model tumour`` everywhere, paints tumour darker and denser than stroma, and draws layouts
(its anatomy recipe and its learned layout model, whose background is the all-off code)."""
import json

import numpy as np
import pytest
import torch

from src_models.data.masks_from_nuclei import CLASSES, COLOURS, PIXEL_UM
from src_models.models.card import BUILTIN_DIRS, installed_builtins
from src_models.models.loading import find_card, load_model


@pytest.fixture(scope="module")
def tumour():
    return load_model("tumour")


def test_the_tumour_model_is_installed_beside_the_default():
    assert installed_builtins() == ["default", "tumour"]
    size = sum(f.stat().st_size for name in ("default", "tumour") for f in BUILTIN_DIRS[name].iterdir())
    assert size <= 80e6  # the limit for both shipped models together


def test_the_tumour_card_names_classes_scale_data_and_licences():
    card, _ = find_card("tumour")
    card.validate()
    assert card.classes == CLASSES and card.colours == COLOURS
    assert card.pixel_size_um == pytest.approx(PIXEL_UM)
    assert "histolytics" in card.training_data and "tiatoolbox" in card.training_data
    assert "held out" in card.training_data
    assert "BSD" in card.licence and "MIT" in card.licence
    # its sampling defaults are the card's own (measured by the sweep), through the one function
    from src_models.synthesis.request import sampling_defaults

    d = sampling_defaults(card, None)
    assert d["solver"] == card.default_solver and d["omega"] == card.default_omega
    recipe = card.extra["layout_recipe"]
    assert recipe["kind"] == "nests" and all("train" in s for s in recipe["measured_on"])
    layout = card.mask_model
    assert layout["classes"] == [2, 3, 4] and layout["off_class"] == 1


def test_tumour_paints_darker_denser_nests_than_stroma(tumour):
    from src_models.evaluation.sample_sheet import sample_window

    side = tumour.card.patch_px
    mask = torch.full((1, 1, side, side), CLASSES.index("stroma"), dtype=torch.long)
    mask[..., : side // 2] = CLASSES.index("tumour")
    img = sample_window(tumour, mask, steps=12, omega=1.0, seed=0)[0]
    assert img.shape == (3, side, side) and torch.isfinite(img).all()
    margin = side // 8
    nest = img[:, :, : side // 2 - margin].reshape(3, -1).mean(1)
    stroma = img[:, :, side // 2 + margin:].reshape(3, -1).mean(1)
    assert nest.mean() < stroma.mean(), (nest, stroma)  # nuclei-packed nests are darker than stroma


def test_generate_and_make_mask_take_the_tumour_model(tmp_path, capsys):
    from PIL import Image

    from src_models.cli.main import main
    from src_models.store.canvas import Canvas

    mask = np.full((128, 128), CLASSES.index("stroma"), np.uint8)
    mask[32:96, 32:96] = CLASSES.index("tumour")
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert main(["generate", "--model", "tumour", "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "c.zarr"),
                 "--steps", "3", "--device", "cpu"]) == 0
    capsys.readouterr()
    with Canvas.open(tmp_path / "c.zarr") as c:
        assert c.classes == CLASSES and c.settings["model"] == "tumour"
        rgb = c.read_rgb(0, 128, 0, 128)
    assert rgb.shape == (128, 128, 3) and rgb.std() > 5
    for layout in ("anatomy", "learned"):
        out = tmp_path / f"{layout}.png"
        assert main(["make-mask", "--model", "tumour", "--layout", layout, "--out", str(out), "--size", "512x512",
                     "--seed", "2", "--steps", "5"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert ("anatomy recipe" if layout == "anatomy" else "layout diffusion model") in info["made_by"]
        lab = np.asarray(Image.open(out))
        assert lab.shape == (512, 512) and set(np.unique(lab)) <= {1, 2, 3, 4}
