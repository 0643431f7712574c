"""The release mask model's conventions and the clean-up of generated masks (issue 4, item 2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src_models.models.card import ModelCard
from src_models.models.base import Model
from src_models.models.release.mask import (
    MASK_LATENT_SCALES,
    RELEASE_COND_DROP,
    SubtypeDenoiser,
    decode_mask_grey,
    encode_mask,
    generate_release_mask,
    grey_to_values,
    labels_to_grey,
    mask_from_decoded,
    minimum_filter,
    thick_boundaries,
    upsample_mask,
)
from src_models.models.release.unet import MaskUNet


def _blocks(n_labels: int = 5) -> np.ndarray:
    lab = np.full((48, 64), 1, dtype=np.int64)
    lab[:, 32:] = 3
    lab[24:, 10:50] = n_labels - 1
    lab[30:40, 52:60] = 2
    return lab


@pytest.mark.parametrize("n", [5, 10])
def test_grey_encoding_and_its_inverse(n):
    lab = torch.arange(n).reshape(1, 1, 1, n)
    grey = labels_to_grey(lab, n)
    assert grey.shape == (1, 3, 1, n)
    assert torch.allclose(grey[0, 0, 0], torch.tensor([2 * l / (n - 1) - 1 for l in range(n)]))
    assert torch.equal(grey_to_values(grey, n).round().long()[:, :1], lab)


def test_boundaries_and_minimum_filter_match_scipy_and_skimage():
    ndi = pytest.importorskip("scipy.ndimage")
    seg = pytest.importorskip("skimage.segmentation")
    rng = np.random.default_rng(0)
    lab = _blocks()
    want = seg.find_boundaries(lab, mode="thick")  # connectivity 1, both sides
    assert np.array_equal(thick_boundaries(torch.from_numpy(lab)[None, None])[0, 0].numpy(), want)
    x = rng.normal(size=(37, 23)).astype(np.float32)
    got = minimum_filter(torch.from_numpy(x)[None, None], 6)[0, 0].numpy()
    assert np.array_equal(got, ndi.minimum_filter(x, size=6))


@pytest.mark.parametrize("n", [5, 10])
def test_mask_from_decoded_cleans_up(n):
    lab = _blocks(n)
    rng = np.random.default_rng(1)
    grey = labels_to_grey(lab, n)[0].numpy()  # (3, H, W)
    grey = grey + rng.uniform(-0.4, 0.4, grey.shape).astype(np.float32) / (n - 1)  # under half a label
    grey[:, 5, 5] = 1.0  # a one-pixel spike of the last label inside label 1
    out = mask_from_decoded(grey, n)
    assert isinstance(out, np.ndarray) and out.shape == lab.shape and out.dtype == np.int64

    edges = thick_boundaries(torch.from_numpy(lab)[None, None])[0, 0].numpy()
    dist = F.max_pool2d(torch.from_numpy(edges).float()[None, None], 11, stride=1, padding=5)[0, 0].numpy()
    yy, xx = np.mgrid[:48, :64]
    keep = (dist == 0) & ((np.abs(yy - 5) > 4) | (np.abs(xx - 5) > 4))  # > 5 px from boundaries and the spike
    assert np.array_equal(out[keep], lab[keep])
    assert (out[edges] == 0).all()  # boundaries cleared ...
    assert (out[3:7, 3:7] == 0).all() and (out == n - 1).sum() < (lab == n - 1).sum()  # ... spike gone
    assert set(np.unique(out)) <= set(range(n))

    # torch input, batch and grey-only forms give the same labels
    t = mask_from_decoded(torch.from_numpy(grey)[None], n)
    assert t.shape == (1, 1, 48, 64) and torch.equal(t[0, 0], torch.from_numpy(out))
    assert np.array_equal(mask_from_decoded(grey.mean(0), n), out)


def test_upsample_is_nearest():
    m = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    up = upsample_mask(m, 4)
    assert up.shape == (8, 8) and up.dtype == np.uint8
    assert (up[:4, :4] == 0).all() and (up[4:, 4:] == 3).all() and (up[:4, 4:] == 1).all()
    t = upsample_mask(torch.from_numpy(m)[None, None].long(), 4)
    assert torch.equal(t[0, 0], torch.from_numpy(up).long())


def test_latent_scaling_is_training_consistent():
    """Encoding divides by the per-channel scales; decoding multiplies by the same ones."""
    calls = {}

    def encode_raw(img):
        calls["encode_in"] = img
        return torch.cat((img, img[:, :1]), dim=1)  # a stand-in VAE: 3 -> 4 channels

    def decode_raw(z):
        calls["decode_in"] = z
        return z[:, :3]

    lab = torch.from_numpy(_blocks(10))[None, None]
    z = encode_mask(encode_raw, lab, 10)
    # the VAE sees the [-1, 1] grey image on 3 channels (not the [0, 1] convention of images)
    assert torch.allclose(calls["encode_in"], (lab.float() * 2 / 9 - 1).expand(-1, 3, -1, -1))
    scales = torch.tensor(MASK_LATENT_SCALES[10]).view(1, 4, 1, 1)
    assert torch.allclose(z * scales, encode_raw(labels_to_grey(lab, 10)))
    grey = decode_mask_grey(decode_raw, z, 10)
    assert torch.allclose(calls["decode_in"], z * scales)
    out = mask_from_decoded(grey, 10, min_filter=1)
    edges = thick_boundaries(lab)
    assert torch.equal(out[~edges], lab[~edges]) and (out[edges] == 0).all()
    assert MASK_LATENT_SCALES == {5: (40.0, 36.0, 48.0, 32.0), 10: (46.0, 36.0, 55.0, 36.0)}


class _NearestCodec(torch.nn.Module):
    """A stand-in for the SD-2 codec: factor 8, raw decode = nearest ×8 of the first 3 channels."""

    factor = 8
    channels = 4

    def decode_raw(self, z):
        return F.interpolate(z[:, :3], scale_factor=8, mode="nearest")


def _mask_model() -> Model:
    torch.manual_seed(0)
    cfg = {"dim": 8, "num_classes": 2, "dim_mults": [1, 2], "block_per_layer": 1}
    card = ModelCard(
        name="m", classes=["Unknown", "Carcinoma", "Necrosis", "Tumor stroma", "Others"],
        colours=["#808080", "#e6194b", "#ffe119", "#3cb44b", "#4363d8"], conditioning="per_class",
        unet={"arch": "release_image", "config": {}}, codec={"type": "sd2", "factor": 8, "channels": 4, "scale": 50.0},
        patch_size=64,
        mask_model={"arch": "release_mask", "config": cfg, "labels": 5, "latent_scales": [40.0, 36.0, 48.0, 32.0],
                    "subtypes": ["adenocarcinoma", "squamous cell carcinoma"]},
    )
    return Model(card, unet=torch.nn.Identity(), codec=_NearestCodec(), mask_unet=MaskUNet(**cfg).eval())


def test_subtype_denoiser_drops_the_condition_as_the_release_samples():
    """The release samples its mask model with condition dropout 0.5: each window's pass ignores the
    subtype with that probability.  0 always conditions, 1 never; the draws come from a generator."""
    cfg = dict(dim=8, num_classes=2, channels=4, dim_mults=(1, 2), heads=2, dim_head=8, block_per_layer=1)
    torch.manual_seed(0)
    unet = MaskUNet(**cfg).eval()
    x, t, mask = torch.randn(16, 4, 8, 8), torch.full((16,), 500), torch.zeros(16, 1, 8, 8, dtype=torch.long)
    with torch.no_grad():
        cond = unet(x, t, torch.ones(16, dtype=torch.long), cond_drop_prob=0.0)
        null = unet(x, t, torch.ones(16, dtype=torch.long), cond_drop_prob=1.0)
        assert SubtypeDenoiser(unet, 1).cond_drop == RELEASE_COND_DROP == 0.5
        assert torch.equal(SubtypeDenoiser(unet, 1, cond_drop=0.0)(x, t, mask), cond)
        assert torch.equal(SubtypeDenoiser(unet, 1, cond_drop=1.0)(x, t, mask), null)
        half = SubtypeDenoiser(unet, 1, generator=torch.Generator().manual_seed(3))(x, t, mask)
        again = SubtypeDenoiser(unet, 1, generator=torch.Generator().manual_seed(3))(x, t, mask)
    is_null = [torch.allclose(half[i], null[i], atol=1e-6) for i in range(16)]
    is_cond = [torch.allclose(half[i], cond[i], atol=1e-6) for i in range(16)]
    assert all(a != b for a, b in zip(is_null, is_cond))  # each window one or the other
    assert 0 < sum(is_null) < 16 and torch.equal(half, again)
    with pytest.raises(ValueError, match="between 0 and 1"):
        SubtypeDenoiser(unet, 1, cond_drop=1.5)


def test_generate_release_mask():
    model = _mask_model()
    levels = []
    full, small = generate_release_mask(model, (1024, 768), "squamous", seed=3, steps=3, return_low_res=True,
                                        callback=levels.append)
    assert full.shape == (1024, 768) and full.dtype == np.uint8 and small.shape == (256, 192)
    assert np.array_equal(full, upsample_mask(small, 4))
    assert full.max() <= 4 and len(levels) == 3
    assert np.array_equal(generate_release_mask(model, (1024, 768), 1, seed=3, steps=3), full)  # name or index
    assert not np.array_equal(generate_release_mask(model, (1024, 768), 1, seed=4, steps=3), full)
    assert not np.array_equal(generate_release_mask(model, (1024, 768), 0, seed=3, steps=3), full)
    with pytest.raises(ValueError, match="multiple of 32"):
        generate_release_mask(model, 1000, 0)
    with pytest.raises(ValueError, match="unknown subtype"):
        generate_release_mask(model, 1024, "lymphoma")
    # always conditioned (cond_drop 0) is another mask than the release's dropout 0.5
    assert not np.array_equal(generate_release_mask(model, (1024, 768), 1, seed=3, steps=3, cond_drop=0.0), full)
