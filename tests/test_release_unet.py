"""The release's image and mask UNets (issue 4, items 1 and 2)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from src_models.models.base import build_network
from src_models.models.release.unet import ImageUNet, MaskCrossAttention, MaskUNet


# the release's key lists, shipped with the tests (origin: tests/data/README.md)
REFERENCE_DIR = Path(__file__).resolve().parent / "data"
needs_reference = pytest.mark.conformance


def _tsv(name: str) -> list[tuple[str, tuple]]:
    rows = []
    for line in (REFERENCE_DIR / name).read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            rows.append((key, tuple(ast.literal_eval(shape))))
    return rows


@needs_reference
@pytest.mark.parametrize(
    "arch,config,tsv,params",
    [
        ("release_image", {"dim": 256, "num_classes": 5}, "image_unet_5classes_keys.tsv", 172_101_124),
        ("release_image", {"dim": 256, "num_classes": 10}, "image_unet_10classes_keys.tsv", 172_101_124 + 5 * 256),
        ("release_mask", {"dim": 64, "num_classes": 2, "dim_mults": [1, 2, 4, 8]}, "mask_unet_2classes_keys.tsv", None),
    ],
)
def test_published_networks_have_the_release_keys_and_shapes(arch, config, tsv, params):
    with torch.device("meta"):
        net = build_network({"arch": arch, "config": config})
    ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    ref = _tsv(tsv)
    assert dict(ours) == dict(ref)
    assert ours == ref  # same order too
    n = sum(p.numel() for p in net.parameters())
    if params is not None:
        assert n == params
    else:
        assert round(n / 1e6, 1) == 38.4


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ImageUNet(dim=8, num_classes=5, dim_mults=(1, 2), block_per_layer=1).eval()


@torch.no_grad()
def test_attention_paths_agree_and_exact_is_default(tiny):
    assert tiny.attention == "linear_exact" and tiny.conditioning == "per_class" and tiny.num_classes == 5
    x = torch.randn(3, 4, 16, 16)
    t = torch.tensor([0, 500, 999])
    mask = torch.randint(0, 5, (3, 1, 16, 16))
    mask[1] = 0  # null condition
    mask[2] = 3  # one class everywhere
    exact = tiny(x, t, mask)
    tiny.attention = "softmax"
    try:
        assert all(m.mode == "softmax" for m in tiny.modules() if isinstance(m, MaskCrossAttention))
        full = tiny(x, t, mask)
    finally:
        tiny.attention = "linear_exact"
    assert ((exact - full).abs().max() / full.abs().max()) < 1e-5
    with pytest.raises(ValueError):
        tiny.attention = "flash"


@torch.no_grad()
def test_mask_conditioning(tiny):
    """Class embedding of the largest label; attention sees the binarised mask; a mask at ×8 of
    the latent (nearest) gives the same output as at latent size."""
    x = torch.randn(1, 4, 16, 16)
    t = torch.tensor([300])
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    mask[..., 4:12, 2:9] = 2
    mask[..., 0:3, 10:] = 4
    out = tiny(x, t, mask)
    big = mask.repeat_interleave(8, -2).repeat_interleave(8, -1)
    assert torch.allclose(tiny(x, t, big), out, atol=1e-6)
    assert torch.allclose(tiny(x, t, big.float()), out, atol=1e-6)
    # only the largest label picks the class embedding: relabelling 2 -> 1 keeps the output
    assert torch.allclose(tiny(x, t, torch.where(mask == 2, 1, mask)), out, atol=1e-6)
    # ... but changing the largest label changes it
    assert not torch.allclose(tiny(x, t, torch.where(mask == 4, 3, mask)), out, atol=1e-4)
    with pytest.raises(ValueError, match="labels"):
        tiny(x, t, mask + 5)
    with pytest.raises(ValueError, match="multiple"):
        tiny(x, t, mask[..., :12])


def test_eps_follows_the_input_dtype():
    from src_models.models.release.unet import ChannelLayerNorm, WSConv2d

    torch.manual_seed(0)
    conv = WSConv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(1e-3)  # var(w) ~ 1e-7: ε dominates, so its value shows
    x = torch.randn(1, 2, 5, 5)

    def standardised(eps):
        w = conv.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + eps).sqrt()
        return torch.nn.functional.conv2d(x.double(), w.double(), conv.bias.double(), padding=1)

    with torch.no_grad():
        assert torch.allclose(conv(x).double(), standardised(1e-5), rtol=1e-4)
        conv64 = WSConv2d(2, 3, 3, padding=1).double()
        conv64.load_state_dict(conv.state_dict())
        assert torch.allclose(conv64(x.double()), standardised(1e-3), rtol=1e-6)
        ln = ChannelLayerNorm(4)
        y = torch.randn(1, 4, 2, 2) * 1e-2
        assert torch.allclose(ln(y.double()), (y - y.mean(1, True)).double() / (y.var(1, False, True).double() + 1e-3).sqrt())


@torch.no_grad()
def test_bf16_autocast_runs_and_stays_close():
    torch.manual_seed(1)
    net = ImageUNet(dim=16, num_classes=3, dim_mults=(1, 2), block_per_layer=1).eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 800])
    mask = torch.randint(0, 3, (2, 1, 16, 16))
    ref = net(x, t, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, t, mask)
    assert low.dtype == torch.bfloat16
    assert ((low.float() - ref).abs().max() / ref.abs().max()) < 0.1


@torch.no_grad()
def test_mask_unet_null_embedding_and_dropout():
    torch.manual_seed(2)
    net = MaskUNet(dim=8, num_classes=2, dim_mults=(1, 2), block_per_layer=1).eval()
    x, t = torch.randn(4, 4, 16, 16), torch.tensor([1, 2, 3, 4])
    classes = torch.tensor([0, 1, 0, 1])
    cond = net(x, t, classes)
    null = net(x, t, classes, cond_drop_prob=1.0)
    assert not torch.allclose(cond, null, atol=1e-4)
    # with the null embedding, the class no longer matters
    assert torch.allclose(net(x, t, 1 - classes, cond_drop_prob=1.0), null, atol=1e-6)
    # partial dropout: each row is either its conditional or its null output
    mixed = net(x, t, classes, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(0))
    rows = [torch.allclose(mixed[i], cond[i], atol=1e-5) or torch.allclose(mixed[i], null[i], atol=1e-5) for i in range(4)]
    assert all(rows)


def test_no_gui_imports():
    import subprocess
    import sys

    code = (
        "import sys, src_models.models.release.unet, src_models.models.release.checkpoint, src_models.models.release.mask, "
        "src_models.models.release.reference_check, src_models.models.tiling, src_models.models.release.sd_vae;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('napari','qtpy','PyQt5','PyQt6','PySide2','PySide6','diffusers')];"
        "print(json.dumps(bad))"
    )
    out = subprocess.run([sys.executable, "-c", "import json;" + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []  # diffusers too: it is imported only when a codec is built
