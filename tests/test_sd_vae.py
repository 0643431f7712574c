"""The SD-2 VAE codec (issue 4, item 4) and the four-tiling Hann blend, with random weights."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from src_models.models.card import ModelCard, ModelError
from src_models.models.tiling import axis_starts, hann_1d, tiled_decode, tiled_encode, tiled_map


# --- the blend itself (no diffusers needed) ------------------------------------------------


@pytest.mark.parametrize("size,tile", [(256, 64), (64, 64), (40, 64), (100, 64), (160, 64)])
def test_windows_sum_to_one_along_an_axis(size, tile):
    total = torch.zeros(size)
    for s, first, last in axis_starts(size, min(tile, size)):
        n = min(tile, size)
        total[s : s + n] += hann_1d(n, first, last)
    if size % tile == 0 or size < tile:
        assert torch.allclose(total, torch.ones(size), atol=1e-6)  # a partition of unity as is
    assert bool((total > 0.5).all())


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 40, 72), (1, 3, 16, 12)])
def test_tiled_map_of_a_local_map_is_exact(shape):
    """A tile-independent map (pointwise, or 8×8 pooling for the encoder direction) must come
    out of the blend unchanged, for any size, whatever the number of tiles."""
    x = torch.randn(shape)
    calls = []

    def pointwise(t):
        calls.append(t.shape[0])
        return torch.tanh(t) * 2 + 1

    out = tiled_map(pointwise, x, tile=16, scale=1.0, batch=5)
    assert torch.allclose(out, torch.tanh(x) * 2 + 1, atol=1e-5)
    assert max(calls) <= 5

    up = tiled_decode(lambda t: F.interpolate(t, scale_factor=8, mode="nearest"), x, tile=16, factor=8, batch=64)
    assert torch.allclose(up, F.interpolate(x, scale_factor=8, mode="nearest"), atol=1e-5)
    img = torch.rand(1, 3, shape[2] * 8, shape[3] * 8)
    down = tiled_encode(lambda t: F.avg_pool2d(t, 8), img, tile=128, factor=8)
    assert torch.allclose(down, F.avg_pool2d(img, 8), atol=1e-5)


# --- the diffusers codec -------------------------------------------------------------------

diffusers = pytest.importorskip("diffusers", reason="diffusers (the [release] extra) is not installed")

from src_models.models.release.sd_vae import ENV_VAR, HF_REPO, SD2_VAE_CONFIG, SD2Codec  # noqa: E402

# the SD-2 VAE's structure (4 levels, f = 8, 4 latent channels, mid-block attention, one ResNet
# per decoder level) at a width that decodes a 2048² image on two CPU cores in seconds
SMALL = dict(SD2_VAE_CONFIG, block_out_channels=[4, 4, 4, 4], norm_num_groups=2, layers_per_block=0)


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return SD2Codec.from_config(SMALL).eval()


def test_sd2_config_is_the_published_structure():
    assert SD2_VAE_CONFIG["block_out_channels"] == [128, 256, 512, 512]
    assert SD2_VAE_CONFIG["latent_channels"] == 4 and SD2_VAE_CONFIG["layers_per_block"] == 2
    with torch.device("meta"):
        vae = diffusers.AutoencoderKL(**SD2_VAE_CONFIG)
    assert 83_000_000 < sum(p.numel() for p in vae.parameters()) < 84_000_000  # the SD VAE's 83.7 M


def _border_ratio(img: torch.Tensor, period: int) -> tuple[float, float]:
    """Mean |∂| across the lines where tiles of either grid meet, over the mean elsewhere."""
    gx = (img[..., 1:] - img[..., :-1]).abs().mean(dim=(0, 1, 2))
    gy = (img[..., 1:, :] - img[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    out = []
    for g in (gx, gy):
        borders = torch.arange(period - 1, g.numel(), period)
        inner = torch.ones_like(g, dtype=torch.bool)
        inner[borders] = False
        out.append((g[borders].mean() / g[inner].mean()).item())
    return tuple(out)


@torch.no_grad()
def test_256_latent_decodes_without_seams(codec):
    torch.manual_seed(1)
    z = F.interpolate(torch.randn(1, 4, 16, 16), size=(256, 256), mode="bilinear", align_corners=False)
    seen = []

    def record(tiles):
        out = codec.vae.decode(tiles).sample
        seen.extend(zip(tiles, out))
        return out

    codec._decode_tiles = record
    try:
        blended = codec.decode_raw(z)  # what codec.decode runs, before the ·50 and the clip
    finally:
        del codec._decode_tiles
    assert blended.shape == (1, 3, 2048, 2048)
    assert len(seen) == 7 * 7  # 4 plain + 3 shifted starts per axis

    # the plain grid alone, pasted edge to edge: the seams the blend must remove
    naive = torch.zeros_like(blended)
    for y in range(0, 256, 64):
        for x in range(0, 256, 64):
            crop = z[0, :, y : y + 64, x : x + 64]
            (out,) = [o for t, o in seen if torch.equal(t, crop)]
            naive[0, :, y * 8 : y * 8 + 512, x * 8 : x * 8 + 512] = out
    assert min(_border_ratio(naive, 512)) > 2.0, "the test image must show seams when tiles are pasted"
    # plain-grid borders (every 512 px) and shifted-grid borders (every 256 px) look like the interior
    assert max(_border_ratio(blended, 256)) < 1.25


@torch.no_grad()
def test_release_conventions_on_one_tile(codec):
    img = torch.rand(2, 3, 64, 64)
    dist = codec.vae.encode(img).latent_dist
    assert torch.allclose(codec.encode(img), dist.mean / 50, atol=1e-6)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sampled = codec.encode(img, generator=g1)
    assert torch.equal(sampled, codec.encode(img, generator=g2))
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(sampled, (dist.mean + dist.std * noise) / 50, atol=1e-6)
    z = torch.randn(1, 4, 8, 8) * 0.05
    assert torch.allclose(codec.decode(z), codec.vae.decode(z * 50).sample.clamp(0, 1), atol=1e-6)
    assert codec.factor == 8 and codec.channels == 4


@torch.no_grad()
def test_large_images_are_encoded_in_batched_tiles(codec):
    img = torch.rand(1, 3, 1024, 768)
    calls = []
    orig = codec._moments

    def counted(t):
        calls.append(t.shape[0])
        return orig(t)

    codec._moments = counted
    try:
        z = codec.encode(img)
    finally:
        del codec._moments
    assert z.shape == (1, 4, 128, 96)
    tiles = len(axis_starts(1024, 512)) * len(axis_starts(768, 512))
    assert sum(calls) == tiles and len(calls) == math.ceil(tiles / codec.batch)
    assert torch.isfinite(z).all()


def _card(codec_extra: dict) -> ModelCard:
    return ModelCard(
        name="t", classes=["Unknown", "A"], colours=["#000000", "#ff0000"], conditioning="per_class",
        unet={"arch": "release_image", "config": {}},
        codec={"type": "sd2", "factor": 8, "channels": 4, "scale": 50.0, **codec_extra}, patch_size=64,
    )


def _fake_hf_cache(root, vae) -> None:
    """The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = root / ("models--" + HF_REPO.replace("/", "--"))
    rev = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    vae.save_pretrained(str(repo / "snapshots" / rev / "vae"))


def test_from_card_finds_the_vae_and_never_downloads(codec, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vae_dir = tmp_path / "models" / "sd2-vae"
    codec.vae.save_pretrained(str(vae_dir))
    z = torch.randn(1, 4, 8, 8) * 0.02
    want = codec.decode(z)

    # 1. the card's path, relative to the model directory; a pipeline folder with vae/ works too
    loaded = SD2Codec.from_card(_card({"path": "sd2-vae", "scale": 25.0}), tmp_path / "models")
    assert loaded.scale == 25.0
    assert torch.allclose(SD2Codec.from_card(_card({"path": str(vae_dir)}), None).decode(z), want, atol=1e-6)
    pipeline = tmp_path / "pipeline"
    codec.vae.save_pretrained(str(pipeline / "vae"))
    assert isinstance(SD2Codec.from_card(_card({"path": str(pipeline)})), SD2Codec)

    # 2. the environment variable
    monkeypatch.setenv(ENV_VAR, str(vae_dir))
    assert torch.allclose(SD2Codec.from_card(_card({})).decode(z), want, atol=1e-6)
    monkeypatch.delenv(ENV_VAR)

    # 3. the Hugging Face cache
    cache = tmp_path / "hf"
    _fake_hf_cache(cache, codec.vae)
    assert torch.allclose(SD2Codec.from_card(_card({}), cache_dir=cache).decode(z), want, atol=1e-6)

    # nothing anywhere: one message saying what was tried
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(ModelError) as err:
        SD2Codec.from_card(_card({"path": str(tmp_path / "missing")}), cache_dir=tmp_path / "empty-cache")
    msg = str(err.value)
    assert "never downloaded" in msg and "missing" in msg and "nowhere" in msg and HF_REPO in msg


def test_missing_diffusers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes "import diffusers" fail
    with pytest.raises(ModelError, match=r"pip install '\.\[release\]'"):
        SD2Codec.from_config(SMALL)
    with pytest.raises(ModelError, match="diffusers"):
        SD2Codec.from_card(_card({}))


def test_card_codec_must_be_f8_with_4_channels():
    card = _card({"factor": 4})
    with pytest.raises(ModelError, match="factor 8"):
        SD2Codec.from_card(card)
    json.dumps(card.codec)  # the card stays serialisable
