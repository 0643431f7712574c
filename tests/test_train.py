"""Training module v1: data pipeline (unlabelled tiles are class 0), checkpoints, resume, CSV log,
and a model directory that loads."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import src_models.training.train as T
from src_models.models.codec import IdentityCodec
from src_models.models.loading import load_model


def _write_folder(root, n_labelled=2, n_unlabelled=1, size=64, seed=0, max_label=3):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n_labelled + n_unlabelled):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"tile{i}.png")
        if i < n_labelled:
            mask = np.ones((size, size), np.uint8)
            mask[:, size // 2 :] = max_label
            Image.fromarray(mask).save(root / "masks" / f"tile{i}.png")
    return root


def test_folder_loading_and_errors(tmp_path):
    data = T.load_training_set(_write_folder(tmp_path / "d"))
    assert [t.labelled for t in data.tiles] == [True, True, False]
    assert data.classes == ["unknown", "class_1", "class_2", "class_3"] and len(data.colours) == 4
    (tmp_path / "d" / "classes.json").write_text(json.dumps({"classes": ["unknown", "a", "b", "c"], "colours": ["#000000"] * 4}))
    assert T.load_training_set(tmp_path / "d").classes == ["unknown", "a", "b", "c"]
    with pytest.raises(T.TrainError, match="only classes"):
        T.load_training_set(tmp_path / "d", classes=["unknown", "a"], colours=["#000000", "#ffffff"])
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(tmp_path / "d" / "masks" / "tile0.png")
    with pytest.raises(T.TrainError, match="mask is"):
        T.load_training_set(tmp_path / "d")
    with pytest.raises(T.TrainError, match="does not exist"):
        T.load_training_set(tmp_path / "nowhere")


def test_unlabelled_tiles_are_class_zero(tmp_path):
    data = T.load_training_set(_write_folder(tmp_path / "d", n_labelled=1, n_unlabelled=1))
    gen = torch.Generator().manual_seed(0)
    img, mask, lab = T.PixelCrops(data.tiles, 32, gen).sample(64)
    assert img.shape == (64, 3, 32, 32) and 0 <= img.min() and img.max() <= 1
    assert lab.any() and (~lab).any()
    assert (mask[~lab] == 0).all()  # unlabelled crops: all class 0, the null condition
    assert set(mask[lab].unique().tolist()) <= {1, 3} and (mask[lab] > 0).all()
    z, zmask, zlab = T.LatentCrops(data.tiles, IdentityCodec(), 32, gen).sample(64)
    assert z.shape == (64, 3, 32, 32) and zmask.shape == (64, 1, 32, 32)
    assert (zmask[~zlab] == 0).all() and (zmask[zlab] > 0).all()
    # the latent cache holds the 8 dihedral orientations of each tile
    cache = T.LatentCrops(data.tiles[:1], IdentityCodec(), 32, gen)
    assert len(cache.latents) == 8
    ref = torch.from_numpy(data.tiles[0].image.copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    torch.testing.assert_close(cache.latents[5].float(), torch.rot90(ref.flip(-1), 1, (-2, -1)), atol=4e-3, rtol=0)


def test_run_loop_resume_is_exact(tmp_path):
    def make():
        torch.manual_seed(0)
        return torch.nn.Linear(4, 1)

    def loss_factory(model, gen, stop_at=None):
        def loss_fn(step):
            if step == stop_at:
                raise KeyboardInterrupt
            x = torch.randn(8, 4, generator=gen)
            return (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        return loss_fn

    ref = make()
    gen = torch.Generator().manual_seed(1)
    T.run_loop("s", ref, loss_factory(ref, gen), tmp_path / "a", 10, 1e-2, gen, ema=make(), ckpt_every=3, log_every=1, progress=False)

    m, ema = make(), make()
    gen = torch.Generator().manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        T.run_loop("s", m, loss_factory(m, gen, stop_at=7), tmp_path / "b", 10, 1e-2, gen, ema=ema, ckpt_every=3, log_every=1, progress=False)
    assert [p.name for p in T.checkpoints(tmp_path / "b" / "checkpoints" / "s")] == ["step_0000003", "step_0000006"]
    m, ema = make(), make()
    gen = torch.Generator().manual_seed(99)  # state comes back from the checkpoint
    info = T.run_loop("s", m, loss_factory(m, gen), tmp_path / "b", 10, 1e-2, gen, ema=ema, ckpt_every=3, log_every=1,
                      progress=False, resume=True)
    assert info["step"] == 10
    for p, q in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    rows = list(csv.DictReader(open(tmp_path / "b" / "logs" / "s.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))  # rows after the checkpoint were redone once


def test_train_command_checkpoints_resume_and_model(tmp_path):
    data = _write_folder(tmp_path / "d", n_labelled=2, n_unlabelled=1, size=48)
    out, work = tmp_path / "model", tmp_path / "work"
    common = ["--data", str(data), "--out", str(out), "--work", str(work), "--codec-widths", "8,16,16",
              "--codec-steps", "4", "--codec-crop", "32", "--codec-batch", "2", "--crop", "32", "--batch", "2",
              "--base", "8", "--mults", "1,2", "--blocks", "1", "--ckpt-every", "3", "--log-every", "1", "--no-progress",
              "--classes", "glass,epidermis,dermis", "--colours", "#000000,#eeeeee,#6a2d8f,#e87ab0"]
    assert T.main(common + ["--steps", "6"]) == 0
    assert (work / "checkpoints" / "unet" / "step_0000006" / "ema.safetensors").is_file()
    assert (work / "checkpoints" / "codec" / "step_0000004" / "model.safetensors").is_file()
    extra = torch.load(work / "checkpoints" / "unet" / "step_0000006" / "optim.pt", weights_only=True)
    assert "optimizer" in extra
    rows = list(csv.DictReader(open(work / "logs" / "unet.csv")))
    assert list(rows[0]) == ["step", "loss", "lr", "seconds"] and int(rows[-1]["step"]) == 6
    codec_log = (work / "logs" / "codec.csv").read_text()

    # the model directory exists: a second run without --resume/--overwrite refuses
    assert T.main(common + ["--steps", "6"]) == 2
    # resume with more steps: the codec stage is not redone, the UNet continues from step 6
    assert T.main(common + ["--steps", "9", "--resume"]) == 0
    assert (work / "logs" / "codec.csv").read_text() == codec_log
    rows = list(csv.DictReader(open(work / "logs" / "unet.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 10))
    assert json.loads((work / "checkpoints" / "unet" / "step_0000009" / "state.json").read_text())["step"] == 9

    model = load_model(out)
    card = model.card
    assert card.classes == ["unknown", "glass", "epidermis", "dermis"] and card.conditioning == "label_map"
    assert card.codec["type"] == "native" and card.codec["factor"] == 4 and card.patch_size == 8
    assert "--steps 9" in card.extra["command"]
    with torch.no_grad():
        eps = model.unet(torch.randn(1, 4, 8, 8), torch.tensor([5]), torch.zeros(1, 1, 32, 32, dtype=torch.long))
    assert eps.shape == (1, 4, 8, 8) and torch.isfinite(eps).all()


def test_train_command_bad_input(tmp_path, capsys):
    assert T.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert T.main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m")]) == 2
    assert "no images" in capsys.readouterr().err


def test_codec_critic_frozen_encoder_and_stop_at(tmp_path):
    """The critic trains only from its start step, the frozen encoder stops changing there (only
    the decoder learns on), and stop_at ends a longer schedule early with the codec finalised."""
    from safetensors.torch import load_file

    data = T.load_training_set(_write_folder(tmp_path / "d"))
    cfg = {"widths": [8, 8], "latent_channels": 2, "mid_blocks": 1}
    common = dict(config=cfg, crop=16, batch=2, lr=1e-2, gan_weight=0.1, gan_start=2, freeze_encoder=True,
                  ckpt_every=1, log_every=1, progress=False)
    T.train_codec(data, tmp_path / "w", steps=6, stop_at=4, **common)
    ck = {n: load_file(str(tmp_path / "w" / "checkpoints" / "codec" / f"step_{n:07d}" / "model.safetensors")) for n in (3, 4)}
    enc = [k for k in ck[3] if k.startswith("codec.encoder.")]
    dec = [k for k in ck[3] if k.startswith("codec.decoder.")]
    crit = [k for k in ck[3] if k.startswith("critic.")]
    assert enc and dec and crit
    assert all(torch.equal(ck[3][k], ck[4][k]) for k in enc)  # frozen from step 2 on
    assert any(not torch.equal(ck[3][k], ck[4][k]) for k in dec)
    assert any(not torch.equal(ck[3][k], ck[4][k]) for k in crit)
    info = json.loads((tmp_path / "w" / "codec_final" / "codec.json").read_text())
    assert info["steps"] == 4 and info["schedule_steps"] == 6 and info["encoder_frozen_from"] == 2
    assert not (tmp_path / "w" / "checkpoints" / "codec" / "step_0000005").exists()


def test_a_decoder_only_fine_tune_keeps_the_latents_and_their_normalisation(tmp_path):
    """Encoder frozen from step 0, started from a codec: the encoder and the latent scale and shift
    come out bit for bit as they went in (an image model on that codec stays valid); the decoder learns."""
    from safetensors.torch import load_file, save_file

    data = T.load_training_set(_write_folder(tmp_path / "d"))
    cfg = {"widths": [8, 8], "latent_channels": 2, "mid_blocks": 1}
    common = dict(config=cfg, crop=16, batch=2, lr=1e-2, ckpt_every=10, log_every=1, progress=False)
    T.train_codec(data, tmp_path / "a", steps=3, **common)
    start = load_file(str(tmp_path / "a" / "codec_final" / "codec.safetensors"))
    start["latent_scale"] = start["latent_scale"] * 1.37  # not what the data would give: must survive as it is
    save_file(start, str(tmp_path / "start.safetensors"))
    T.train_codec(data, tmp_path / "b", steps=3, gan_weight=0.1, gan_start=0, freeze_encoder=True,
                  init=tmp_path / "start.safetensors", seed=1, **common)
    tuned = load_file(str(tmp_path / "b" / "codec_final" / "codec.safetensors"))
    assert all(torch.equal(tuned[k], start[k]) for k in start if not k.startswith("decoder."))
    assert any(not torch.equal(tuned[k], start[k]) for k in start if k.startswith("decoder."))
    info = json.loads((tmp_path / "b" / "codec_final" / "codec.json").read_text())
    assert info["scale"] == float(start["latent_scale"]) and info["encoder_frozen_from"] == 0


def test_latent_grid_pattern_finds_exactly_what_repeats_with_the_grid():
    """A pattern repeating every 4 px comes back exactly (less its mean) whatever lies under it;
    content with no phase against the grid (a smooth ramp, a random field) gives next to nothing."""
    rng = np.random.default_rng(0)
    pattern = torch.from_numpy(rng.normal(0, 1, (3, 4, 4)).astype(np.float32))
    ramp = torch.linspace(0, 1, 64)[None, None, :, None] + torch.linspace(0, 1, 64)[None, None, None, :]
    content = ramp.expand(2, 3, 64, 64).clone()
    content[1] = torch.from_numpy(rng.normal(0, 1, (3, 64, 64)).astype(np.float32))
    x = content + pattern.repeat(1, 16, 16)[None]
    got = T.latent_grid_pattern(x, 4)
    want = pattern - pattern.mean(dim=(1, 2), keepdim=True)
    assert got.shape == (2, 3, 4, 4)
    assert torch.allclose(got[0], want + T.latent_grid_pattern(content, 4)[0], atol=1e-5)
    # a ramp leaves only the change within one cell (3 px of its slope, 1/63 a px along each axis)
    assert T.latent_grid_pattern(ramp.expand(1, 3, 64, 64), 4).abs().max() <= 3 / 63 + 1e-6
    assert (got[1] - want).abs().mean() < 0.15 < want.abs().mean()  # random content: noise of 1/16 its std a cell mean


def test_the_grid_loss_is_zero_without_a_pattern_and_pulls_one_out(tmp_path):
    """grid_loss is 0 for a faithful reconstruction and grows with a pattern added on the grid;
    gradient steps on it take a learnable pattern away; train_codec adds it with its weight (the
    first step's loss, same seed and crops, is higher by the term) and records the weight."""
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.uniform(0, 1, (2, 3, 32, 32)).astype(np.float32))
    assert T.grid_loss(img, img, 4) == 0
    bump = torch.zeros(3, 4, 4)
    bump[:, 0, 0] = 0.2
    assert T.grid_loss(img + bump.repeat(1, 8, 8), img, 4) > 0.02
    learnt = torch.nn.Parameter(torch.from_numpy(rng.normal(0, 0.1, (3, 4, 4)).astype(np.float32)))
    opt = torch.optim.SGD([learnt], lr=0.5)
    first = None
    for _ in range(50):
        loss = T.grid_loss(img + learnt.repeat(1, 8, 8), img, 4)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first

    data = T.load_training_set(_write_folder(tmp_path / "d"))
    cfg = {"widths": [8, 8, 8], "latent_channels": 2, "mid_blocks": 1}
    common = dict(config=cfg, crop=32, batch=2, lr=1e-2, ckpt_every=10, log_every=1, progress=False, seed=3)
    first_loss = {}
    for name, weight in (("plain", 0.0), ("grid", 10.0)):
        T.train_codec(data, tmp_path / name, steps=2, grid_weight=weight, **common)
        first_loss[name] = float(next(csv.DictReader(open(tmp_path / name / "logs" / "codec.csv")))["loss"])
        assert json.loads((tmp_path / name / "codec_final" / "codec.json").read_text())["grid_weight"] == weight
    assert first_loss["grid"] > first_loss["plain"] + 0.01


def test_unet_stop_at_ends_a_longer_schedule_with_its_learning_rate(tmp_path):
    """--stop-at writes the model at that step of the --steps schedule; the learning rate of the
    steps run is the full schedule's (not a shorter cosine), and the card records both counts."""
    data = _write_folder(tmp_path / "d", size=32)
    out, work = tmp_path / "model", tmp_path / "work"
    args = ["--data", str(data), "--out", str(out), "--work", str(work), "--codec", "identity", "--crop", "16",
            "--batch", "2", "--base", "8", "--mults", "1,2", "--blocks", "1", "--ckpt-every", "2", "--log-every", "1",
            "--no-progress", "--steps", "20", "--stop-at", "4", "--lr", "1e-3"]
    assert T.main(args) == 0
    rows = list(csv.DictReader(open(work / "logs" / "unet.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    warmup = min(200, 20 // 10 + 1)
    assert [float(r["lr"]) for r in rows] == pytest.approx([T.lr_at(s - 1, 20, 1e-3, warmup) for s in (1, 2, 3, 4)], rel=1e-3)
    assert not (work / "checkpoints" / "unet" / "step_0000006").exists()
    card = load_model(out).card
    assert card.extra["unet_steps"] == 4 and card.extra["unet_schedule_steps"] == 20


def test_layout_image_is_the_majority_class_per_cell_with_ink_as_glass(tmp_path):
    from src_models.models.native.mask_model import codes_to_rgb
    from src_models.data.masks_from_he import layout_labels

    labels = np.full((32, 48), 3, np.uint8)
    labels[:16, :16] = 2  # a whole cell of epidermis
    labels[:16, 16:32] = 0  # ink ...
    labels[:4, 16:32] = 3  # ... with a little dermis: ink counts as glass, so glass wins
    labels[16:, 32:] = 1
    labels[31, :] = 2  # a minority in its cells: they stay dermis / glass
    lay = layout_labels(labels, 16)
    assert lay.tolist() == [[2, 1, 3], [3, 3, 1]]
    rgb = codes_to_rgb(lay, [1, 2, 3])
    assert rgb[0, 0].tolist() == [0, 255, 0] and rgb[0, 1].tolist() == [255, 0, 0]
    assert layout_labels(np.ones((40, 40), np.uint8), 16).shape == (2, 2)  # a ragged edge is dropped


def test_class_balance_favours_rare_classes_and_keeps_unlabelled_share():
    common = T.Tile("a", np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8))
    rare = np.ones((8, 8), np.uint8)
    rare[:2] = 2  # class 2 is a quarter of this tile and 1/8 of all labelled pixels
    mixed = T.Tile("b", np.zeros((8, 8, 3), np.uint8), rare)
    unlabelled = T.Tile("c", np.zeros((8, 8, 3), np.uint8), None)
    assert T.class_balance([common, mixed, unlabelled], 0.0) == [1.0, 1.0, 1.0]
    w = T.class_balance([common, mixed, unlabelled], 1.0)
    assert w[1] > w[0]  # the tile holding the rare class is drawn more often
    # beta 1: weight = mean of 1/f_c over the tile's pixels; f_1 = 7/8, f_2 = 1/8
    assert w[0] == pytest.approx(8 / 7) and w[1] == pytest.approx(0.75 * 8 / 7 + 0.25 * 8)
    assert w[2] == pytest.approx(2.0)  # a labelled pixel's mean weight: 7/8 * 8/7 + 1/8 * 8


def test_init_copies_a_model_and_the_common_class_rows(tmp_path):
    from safetensors.torch import save_file

    from src_models.models.native.unet import NativeUNet

    cfg = dict(in_channels=3, base=8, mults=(1, 2), blocks=1, cond_dim=8, heads=2, groups=4)
    torch.manual_seed(0)
    src = NativeUNet(num_classes=4, **cfg)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "unet.safetensors"))
    torch.manual_seed(1)
    dst = NativeUNet(num_classes=6, **cfg)
    fresh_rows = dst.class_emb[4:].detach().clone()
    info = T.init_weights(dst, tmp_path / "unet.safetensors", "--init")
    assert info["rows_copied"] == ["class_emb"] and not info["fresh"]
    assert torch.equal(dst.class_emb[:4], src.class_emb) and torch.equal(dst.class_emb[4:], fresh_rows)
    assert torch.equal(dst.init_conv.weight, src.init_conv.weight)
    # another width shares nothing useful: refused with one line
    other = NativeUNet(num_classes=4, **dict(cfg, base=16))
    with pytest.raises(T.TrainError, match="matches only"):
        T.init_weights(other, tmp_path / "unet.safetensors", "--init")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(T.TrainError, match="cannot read"):
        T.init_weights(dst, tmp_path / "bad.safetensors", "--init")


def test_train_from_a_model_with_min_snr_and_balance_records_them(tmp_path, capsys):
    data = _write_folder(tmp_path / "d")
    first = ["--data", str(data), "--codec", "identity", "--steps", "2", "--crop", "32", "--batch", "2",
             "--base", "8", "--mults", "1,2", "--blocks", "1", "--no-progress", "--ckpt-every", "1"]
    assert T.main(first + ["--out", str(tmp_path / "m1")]) == 0
    assert T.main(first + ["--out", str(tmp_path / "m2"), "--init", str(tmp_path / "m1"), "--snr-gamma", "5",
                           "--balance", "0.5"]) == 0
    extra = json.loads((tmp_path / "m2" / "card.json").read_text())["extra"]
    assert extra["init"] == str(tmp_path / "m1") and extra["snr_gamma"] == 5.0 and extra["balance"] == 0.5
    capsys.readouterr()
    assert T.main(first + ["--out", str(tmp_path / "m3"), "--init", str(tmp_path / "nowhere")]) == 2
    assert "no unet.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "m3.train").exists()  # refused before anything was written
