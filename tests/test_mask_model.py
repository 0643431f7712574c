"""The project's layout (mask) diffusion model: sampling on any canvas size with the random patch
sampler, smooth class borders from the bilinear upsampling of its codes, the CLI's make-mask."""
import json

import numpy as np
import pytest
import torch

from src_models.models.native.mask_model import KIND, codes_to_labels, codes_to_rgb, generate_layout, layout_codes, layout_grid


def _layout_model(tmp_path):
    """A model directory: the tiny-test image model plus a random-weight layout network."""
    from src_models.models.base import Model, save_model
    from src_models.models.loading import load_model
    from src_models.models.native.unet import NativeUNet

    tiny = load_model("tiny-test")
    cfg = {"base": 8, "mults": [1, 2], "blocks": 1, "cond_dim": 8, "heads": 2, "groups": 4, "mid_attention": False,
           "in_channels": 3, "num_classes": 2}
    torch.manual_seed(0)
    net = NativeUNet(**cfg).eval()
    card = tiny.card
    card.name = "tiny-layout"
    card.mask_model = {"arch": "native", "config": cfg, "kind": KIND, "classes": [1, 2, 3], "scale_px": 16,
                       "patch_size": 16, "steps": 4}
    save_model(Model(card, tiny.unet, tiny.codec, None, net), tmp_path / "m")
    return load_model(tmp_path / "m")


def test_codes_round_trip_and_rgb_training_image():
    labels = np.array([[1, 2], [3, 1]], np.uint8)
    codes = layout_codes(labels, [1, 2, 3])
    assert codes.shape == (3, 2, 2) and set(np.unique(codes)) == {-1.0, 1.0}
    assert np.array_equal(codes_to_labels(torch.from_numpy(codes), [1, 2, 3], (2, 2)), labels)
    rgb = codes_to_rgb(labels, [1, 2, 3])
    assert rgb.shape == (2, 2, 3) and tuple(rgb[0, 1]) == (0, 255, 0)


def test_the_all_off_code_is_the_off_class():
    # the tumour model's layouts: channels tumour (2), stroma (3), infiltrate (4); background (1) is all off
    labels = np.array([[1, 2], [3, 4]], np.uint8)
    codes = layout_codes(labels, [2, 3, 4])
    assert np.all(codes[:, 0, 0] == -1)
    assert np.array_equal(codes_to_labels(torch.from_numpy(codes), [2, 3, 4], (2, 2), off_class=1), labels)
    # without an off class the all-off pixel goes to a channel's class
    assert codes_to_labels(torch.from_numpy(codes), [2, 3, 4], (2, 2))[0, 0] in (2, 3, 4)


def test_a_card_checks_its_layout_classes(tmp_path):
    from src_models.models.card import ModelCard, ModelError
    from src_models.models.loading import load_model

    card = load_model("tiny-test").card
    cfg = {"arch": "native", "config": {}, "kind": KIND, "scale_px": 16}  # a one-hot layout model's entry
    for bad in ({"classes": [1, 2, 9]}, {"classes": [1, 2, 3], "off_class": 2}, {"classes": [1, 2], "off_class": 0}):
        card.mask_model = {**cfg, **bad}
        with pytest.raises(ModelError, match="mask_model"):
            card.validate()
    card.mask_model = {**cfg, "classes": [2, 3], "off_class": 1}
    card.validate()
    ModelCard.from_dict(card.to_dict()).validate()


def test_upsampled_borders_are_smooth_not_blocky():
    # a diagonal border on a coarse 8x8 grid, upsampled 16x: a staircase of 16-px steps if blocky
    yy, xx = np.mgrid[0:8, 0:8]
    a = (xx - yy).astype(np.float32) / 4
    codes = torch.from_numpy(np.stack([a, -a, np.full_like(a, -5)]))
    labels = codes_to_labels(codes, [1, 2, 3], (128, 128), band=40)  # bands must join seamlessly
    first2 = (labels == 2).argmin(axis=1)  # per row: first column of class 1 after the class-2 part
    steps = np.diff(first2[8:-8])
    assert np.abs(steps).max() <= 2  # the border advances about one column per row: a straight diagonal
    assert set(np.unique(labels)) == {1, 2}


def test_generate_layout_any_size_deterministic(tmp_path):
    model = _layout_model(tmp_path)
    assert layout_grid(model.card, 100, 300) == (8, 24)
    a = generate_layout(model, (96, 320), seed=3)
    b = generate_layout(model, (96, 320), seed=3)
    c = generate_layout(model, (96, 320), seed=4)
    assert a.shape == (96, 320) and a.dtype == np.uint8
    assert set(np.unique(a)) <= {1, 2, 3}
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # the same layout on a coarser grid (a canvas's mask grid) is the same drawing, resampled
    small = generate_layout(model, (24, 80), seed=3, image_px=(96, 320))
    assert (small == a[2::4, 2::4]).mean() > 0.9


def test_a_bf16_layout_runs_the_network_under_autocast_and_keeps_the_drawing(tmp_path):
    """precision="bf16" calls the layout network inside bfloat16 autocast (float32 otherwise), hands
    the sampler float32, and draws nearly the same layout from the same seed; an unknown precision
    is refused before anything runs."""
    model = _layout_model(tmp_path)
    seen = []
    model.mask_unet.register_forward_pre_hook(
        lambda *_: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    plain = generate_layout(model, (64, 64), seed=2)
    assert seen and not any(on for on, _ in seen)
    seen.clear()
    half = generate_layout(model, (64, 64), seed=2, precision="bf16")
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)
    assert half.shape == plain.shape and half.dtype == np.uint8
    assert (half == plain).mean() > 0.8
    with pytest.raises(ValueError, match="precision"):
        generate_layout(model, (64, 64), seed=2, precision="fp8")


def test_the_cards_layout_solver_steps_and_eta_are_used(tmp_path):
    model = _layout_model(tmp_path)
    calls = []
    model.mask_unet.register_forward_pre_hook(lambda *_: calls.append(1))
    ddim = generate_layout(model, (64, 64), seed=1)  # the card: 4 steps, no solver named: DDIM with eta 1
    assert len(calls) == 4
    assert np.array_equal(ddim, generate_layout(model, (64, 64), seed=1, solver="ddim", eta=1.0))
    explicit = generate_layout(model, (64, 64), seed=1, steps=2, solver="dpmpp-2m")
    calls.clear()
    model.card.mask_model.update(solver="dpmpp-2m", steps=2)
    from_card = generate_layout(model, (64, 64), seed=1)
    assert len(calls) == 2
    assert np.array_equal(from_card, explicit) and not np.array_equal(from_card, ddim)
    model.card.mask_model.update(solver="ddim", eta=0.0, steps=4)
    assert np.array_equal(generate_layout(model, (64, 64), seed=1),
                          generate_layout(model, (64, 64), seed=1, solver="ddim", eta=0.0, steps=4))


def test_a_card_checks_its_layout_sampling_settings():
    from src_models.models.card import ModelError
    from src_models.models.loading import load_model

    card = load_model("tiny-test").card
    cfg = {"arch": "native", "config": {}, "kind": KIND, "classes": [1, 2, 3], "scale_px": 16}
    for bad, field in (({"solver": "euler"}, "solver"), ({"solver": "dpmpp-2m", "eta": 1.0}, "eta"),
                       ({"eta": -1}, "eta"), ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps")):
        card.mask_model = {**cfg, **bad}
        with pytest.raises(ModelError, match=f"mask_model.{field}"):
            card.validate()
    card.mask_model = {**cfg, "solver": "dpmpp-2m", "steps": 20}
    card.validate()


def test_make_mask_cli_uses_the_layout_model(tmp_path, capsys):
    from skimage import io

    from src_models.cli.main import main

    model = _layout_model(tmp_path)
    assert main(["make-mask", "--out", str(tmp_path / "m.png"), "--size", "200x120", "--model", str(model.path),
                 "--device", "cpu", "--steps", "3"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "layout diffusion model" in info["made_by"]
    mask = io.imread(tmp_path / "m.png")
    assert mask.shape == (120, 200) and set(np.unique(mask)) <= {1, 2, 3}
    # --precision bf16 reaches the layout network: the same seed, nearly the same drawing
    assert main(["make-mask", "--out", str(tmp_path / "b.png"), "--size", "200x120", "--model", str(model.path),
                 "--device", "cpu", "--steps", "3", "--precision", "bf16"]) == 0
    capsys.readouterr()
    assert (io.imread(tmp_path / "b.png") == mask).mean() > 0.8


def test_a_model_without_layout_model_is_refused(tiny):
    with pytest.raises(ValueError, match="no layout mask model"):
        generate_layout(tiny, (64, 64))
