"""Release checkpoints (``model-N.pt``): loading with weights_only, conversion, clear errors."""
from __future__ import annotations

import json

import pytest
import torch

from src_models.models.card import ModelCard, ModelError
from src_models.models.base import build_network, load_safetensors_into
from src_models.models.loading import load_model
from src_models.models.release.checkpoint import (
    RELEASE_CLASSES,
    convert_release_checkpoint,
    infer_release_config,
    load_release_checkpoint,
    read_release_state,
)
from src_models.models.release.unet import ImageUNet, MaskUNet
from src_models.sampling.schedule import cosine_alphas_cumprod


IMAGE_CFG = {"dim": 8, "num_classes": 5, "dim_mults": [1, 2, 4], "channels": 4, "resnet_block_groups": 2, "block_per_layer": 2}
MASK_CFG = {"dim": 8, "num_classes": 2, "dim_mults": [1, 2], "channels": 4, "resnet_block_groups": 2, "block_per_layer": 1}
SCHEDULE_BUFFERS = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "p2_loss_weight",
]


class NeedsUnpickling:
    """An arbitrary object in a checkpoint: weights_only loading must refuse it."""


def _wrapper_state(unet: torch.nn.Module, alphas_cumprod=None) -> dict:
    """The diffusion wrapper's state dict: the UNet under ``model.`` plus 13 schedule buffers."""
    ac = cosine_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    state = {name: torch.rand(1000) for name in SCHEDULE_BUFFERS}
    state["alphas_cumprod"] = ac
    state |= {f"model.{k}": v.clone() for k, v in unet.state_dict().items()}
    return state


def write_release_checkpoint(path, ema_unet, online_unet, alphas_cumprod=None, edit=None) -> None:
    """A checkpoint in the release's layout; ``edit(ema_dict)`` may spoil it."""
    online = _wrapper_state(online_unet, alphas_cumprod)
    ema = {"initted": torch.tensor([True]), "step": torch.tensor([4321])}
    ema |= {f"online_model.{k}": v for k, v in online.items()}
    ema |= {f"ema_model.{k}": v for k, v in _wrapper_state(ema_unet, alphas_cumprod).items()}
    if edit is not None:
        edit(ema)
    opt_state = {i: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)} for i in range(3)}
    ckpt = {
        "step": 4321,
        "loss": 0.0123,
        "lr": 1e-4,
        "model": online,
        "opt": {"state": opt_state, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99), "params": [0, 1, 2]}]},
        "scheduler": {"last_epoch": 4321, "base_lrs": [1e-4]},
        "ema": ema,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
    }
    torch.save(ckpt, str(path))


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    ema, online = ImageUNet(**IMAGE_CFG).eval(), ImageUNet(**IMAGE_CFG).eval()
    mask_ema, mask_online = MaskUNet(**MASK_CFG).eval(), MaskUNet(**MASK_CFG).eval()
    return ema, online, mask_ema, mask_online


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([3, 700])
    mask = torch.randint(0, 5, (2, 1, 16, 16), generator=g)
    return x, t, mask


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers", reason="diffusers (the [release] extra) is not installed")
    from src_models.models.release.sd_vae import SD2_VAE_CONFIG

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**dict(SD2_VAE_CONFIG, block_out_channels=[4, 4, 4, 4], norm_num_groups=2, layers_per_block=0))
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(str(path))
    return path


@torch.no_grad()
def test_round_trip_load_and_convert(tmp_path, nets, inputs, vae_dir, monkeypatch):
    ema, online, mask_ema, mask_online = nets
    x, t, mask = inputs
    src, msrc = tmp_path / "model-43.pt", tmp_path / "mask-model-12.pt"
    write_release_checkpoint(src, ema, online)
    write_release_checkpoint(msrc, mask_ema, mask_online)
    want = ema(x, t, mask)
    assert not torch.allclose(online(x, t, mask), want), "the EMA and online weights must differ for this test"
    want_mask = mask_ema(x, t, torch.tensor([0, 1]))

    model = load_release_checkpoint(src, mask_checkpoint=msrc, vae_dir=vae_dir)
    assert torch.equal(model.unet(x, t, mask), want)  # the EMA weights, bit for bit
    assert torch.equal(model.mask_unet(x, t, torch.tensor([0, 1])), want_mask)
    card = model.card
    assert card.classes == RELEASE_CLASSES[5] == ["Unknown", "Carcinoma", "Necrosis", "Tumor stroma", "Others"]
    assert card.conditioning == "per_class" and card.patch_size == 64
    assert card.unet == {"arch": "release_image", "config": IMAGE_CFG}
    assert {k: card.codec[k] for k in ("type", "factor", "channels", "scale")} == {"type": "sd2", "factor": 8, "channels": 4, "scale": 50.0}
    assert card.mask_model["arch"] == "release_mask" and card.mask_model["config"] == MASK_CFG
    assert card.mask_model["latent_scales"] == [40.0, 36.0, 48.0, 32.0] and card.mask_model["labels"] == 5
    assert card.extra["release"]["step"] == 4321 and card.extra["release"]["weights"] == "ema"
    assert model.codec.factor == 8

    out = convert_release_checkpoint(src, tmp_path / "converted", vae_dir=vae_dir, mask_checkpoint=msrc)
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "mask_unet.safetensors", "unet.safetensors"]
    assert ModelCard.load(out) == card
    json.loads((out / "card.json").read_text())
    again = load_model(out)  # the project's own loader, VAE found through the card
    assert torch.equal(again.unet(x, t, mask), want)
    assert torch.equal(again.mask_unet(x, t, torch.tensor([0, 1])), want_mask)
    z = torch.randn(1, 4, 8, 8) * 0.02
    assert torch.allclose(again.codec.decode(z), model.codec.decode(z))

    # load_model dispatches .pt files here; the VAE then comes from $DIFFINFINITE_VAE
    monkeypatch.setenv("DIFFINFINITE_VAE", str(vae_dir))
    direct = load_model(src)
    assert torch.equal(direct.unet(x, t, mask), want) and direct.mask_unet is None


@torch.no_grad()
def test_convert_without_vae_and_ten_classes(tmp_path, inputs):
    torch.manual_seed(3)
    cfg = dict(IMAGE_CFG, num_classes=10)
    ema = ImageUNet(**cfg).eval()
    src = tmp_path / "model-10.pt"
    write_release_checkpoint(src, ema, ema)
    out = convert_release_checkpoint(src, tmp_path / "out10")
    card = ModelCard.load(out)
    assert card.classes == RELEASE_CLASSES[10] and len(set(card.colours)) == 10
    assert "path" not in card.codec and card.mask_model is None
    unet = build_network(card.unet)
    load_safetensors_into(unet, out / "unet.safetensors")
    x, t, mask = inputs
    assert torch.equal(unet.eval()(x, t, mask * 2), ema(x, t, mask * 2))

    names = [f"tissue {i}" for i in range(10)]
    names[0] = "Unknown"
    assert ModelCard.load(convert_release_checkpoint(src, tmp_path / "named", classes=names)).classes == names
    with pytest.raises(ModelError, match="3 class names given, but the checkpoint has 10"):
        convert_release_checkpoint(src, tmp_path / "bad", classes=["a", "b", "c"])


def test_infer_config_of_the_published_size():
    with torch.device("meta"):
        state = ImageUNet(dim=256, num_classes=5).state_dict()
    spec = infer_release_config(state)
    assert spec == {"arch": "release_image", "config": {"dim": 256, "num_classes": 5, "dim_mults": [1, 2, 4], "channels": 4,
                                                        "resnet_block_groups": 2, "block_per_layer": 2}}
    with torch.device("meta"):
        mstate = MaskUNet(dim=64, num_classes=2).state_dict()
    assert infer_release_config(mstate)["config"]["dim_mults"] == [1, 2, 4, 8]
    assert infer_release_config(mstate)["arch"] == "release_mask"


def _spoil(tmp_path, nets, edit, name="spoilt.pt"):
    ema, online = nets[0], nets[1]
    path = tmp_path / name
    write_release_checkpoint(path, ema, online, edit=edit)
    return path


def test_mismatched_checkpoints_name_the_keys(tmp_path, nets):
    def drop(ema):
        del ema["ema_model.model.final_conv.bias"]
        del ema["ema_model.model.downs.1.2.fn.fn.to_q.weight"]

    def extra(ema):
        ema["ema_model.model.downs.0.9.weight"] = torch.zeros(3)

    def reshape(ema):
        ema["ema_model.model.ups.0.0.mlp.1.weight"] = torch.zeros(7, 7)

    with pytest.raises(ModelError) as err:
        convert_release_checkpoint(_spoil(tmp_path, nets, drop), tmp_path / "o1")
    assert "missing keys" in str(err.value)
    assert "final_conv.bias" in str(err.value) and "downs.1.2.fn.fn.to_q.weight" in str(err.value)
    with pytest.raises(ModelError, match=r"unexpected keys: downs\.0\.9\.weight"):
        convert_release_checkpoint(_spoil(tmp_path, nets, extra), tmp_path / "o2")
    with pytest.raises(ModelError, match=r"mis-shaped keys: ups\.0\.0\.mlp\.1\.weight \(7, 7\)"):
        convert_release_checkpoint(_spoil(tmp_path, nets, reshape), tmp_path / "o3")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))  # nothing half-written


def test_other_bad_files(tmp_path, nets):
    ema, online, mask_ema, _ = nets
    torch.save({"weights": {"a": torch.zeros(1)}}, str(tmp_path / "other.pt"))
    with pytest.raises(ModelError, match=r"not a DiffInfinite release checkpoint.*top-level keys: weights"):
        read_release_state(tmp_path / "other.pt")

    torch.save({"ema": NeedsUnpickling()}, str(tmp_path / "pickled.pt"))
    with pytest.raises(ModelError, match=r"NeedsUnpickling.*weights_only=True"):
        read_release_state(tmp_path / "pickled.pt")

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        read_release_state(tmp_path / "garbage.pt")
    with pytest.raises(ModelError, match="does not exist"):
        read_release_state(tmp_path / "absent.pt")

    linear = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    write_release_checkpoint(tmp_path / "linear.pt", ema, online, alphas_cumprod=linear)
    with pytest.raises(ModelError, match="not the 1000-step cosine schedule"):
        convert_release_checkpoint(tmp_path / "linear.pt", tmp_path / "o4")

    write_release_checkpoint(tmp_path / "mask.pt", mask_ema, mask_ema)
    with pytest.raises(ModelError, match="mask model"):
        convert_release_checkpoint(tmp_path / "mask.pt", tmp_path / "o5")
    # the image checkpoint passed as the mask model
    write_release_checkpoint(tmp_path / "image.pt", ema, online)
    with pytest.raises(ModelError, match="not a mask model"):
        convert_release_checkpoint(tmp_path / "image.pt", tmp_path / "o7", mask_checkpoint=tmp_path / "image.pt")


def test_online_weights_when_asked(tmp_path, nets, inputs):
    ema, online = nets[0], nets[1]
    write_release_checkpoint(tmp_path / "m.pt", ema, online)
    state, info = read_release_state(tmp_path / "m.pt", use_ema=False)
    assert info["weights"] == "model"
    x, t, mask = inputs
    net = build_network(infer_release_config(state)).eval()
    net.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(net(x, t, mask), online(x, t, mask))
