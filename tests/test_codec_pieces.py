"""Codec areas up to ONE_PIECE_LATENT_PX go through the codec in one piece; larger ones through the
Hann-blended tiling, whose result stays close to the one-piece result."""
import numpy as np
import pytest
import torch
from torch import nn

from src_models.models import codec as codec_mod
from src_models.models.codec import decode_latent, encode_rgb


class ConvCodec(nn.Module):
    """A tiny convolutional codec (factor 4) that records the shapes it was called with."""

    factor, channels = 4, 4

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.down = nn.Conv2d(3, 4, 4, stride=4)
        self.up = nn.ConvTranspose2d(4, 3, 4, stride=4)
        self.smooth = nn.Conv2d(3, 3, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.1
        self.calls = []

    def encode(self, img):
        self.calls.append(("encode", tuple(img.shape[-2:])))
        return self.down(img)

    def decode(self, z):
        self.calls.append(("decode", tuple(z.shape[-2:])))
        return torch.sigmoid(self.smooth(self.up(z)))


def test_an_area_within_the_budget_is_decoded_and_encoded_in_one_piece(monkeypatch):
    monkeypatch.setattr(codec_mod, "ONE_PIECE_LATENT_PX", 160 * 160)
    c = ConvCodec()
    z = torch.randn(4, 160, 150, generator=torch.Generator().manual_seed(1))
    rgb = decode_latent(c, z)
    assert rgb.shape == (640, 600, 3) and c.calls == [("decode", (160, 150))]
    c.calls.clear()
    lat = encode_rgb(c, rgb, "cpu")
    assert lat.shape == (4, 160, 150) and c.calls == [("encode", (640, 600))]


def test_a_larger_area_is_tiled_and_stays_close_to_one_piece(monkeypatch):
    c = ConvCodec()
    z = torch.randn(4, 160, 150, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(codec_mod, "ONE_PIECE_LATENT_PX", 160 * 160)
    whole = decode_latent(c, z)
    monkeypatch.setattr(codec_mod, "ONE_PIECE_LATENT_PX", 100 * 100)
    c.calls.clear()
    tiled = decode_latent(c, z)
    assert len(c.calls) > 1 and all(shape[0] <= 2 * codec_mod.CODEC_TILE for _, shape in c.calls)
    # this codec sees 3 latent px around each pixel: the blend of overlapping tiles matches one piece
    # except where a tile's edge cuts that neighbourhood, and then by little
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8


def test_a_bf16_decode_runs_in_bfloat16_close_to_float32_and_float32_is_the_default():
    """``precision="bf16"`` decodes under bfloat16 autocast (the run's --precision bf16): the decoder's
    convolutions see bf16 inputs and the pixels stay within a few grey levels of float32's; the default
    decode is float32 throughout."""
    import warnings

    from src_models.models.loading import load_model

    codec = load_model("default").codec
    seen = []
    convs = [m for m in codec.modules() if isinstance(m, nn.Conv2d)]
    handles = [c.register_forward_hook(lambda m, a, out: seen.append(out.dtype)) for c in convs]
    z = torch.randn(4, 24, 24, generator=torch.Generator().manual_seed(0)) * 0.4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = decode_latent(codec, z).astype(int)
        dtypes_full, seen[:] = set(seen), []
        half = decode_latent(codec, z, "bf16").astype(int)
    for h in handles:
        h.remove()
    assert dtypes_full == {torch.float32} and torch.bfloat16 in set(seen)
    diff = np.abs(full - half)
    assert 0 < diff.mean() < 1.0 and diff.max() <= 8


def test_a_bf16_encode_runs_in_bfloat16_close_to_float32_and_float32_is_the_default():
    """``encode_rgb(..., "bf16")`` (import-slide's default on a CPU with native bfloat16) runs the
    encoder's convolutions under bfloat16 autocast; its latents stay within a small part of their
    spread of float32's; the default encode is float32 throughout."""
    from src_models.models.codec import encode_rgb
    from src_models.models.loading import load_model

    codec = load_model("default").codec
    seen = []
    handles = [c.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
               for c in codec.modules() if isinstance(c, nn.Conv2d)]
    rgb = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    full = encode_rgb(codec, rgb, "cpu")
    dtypes_full, seen[:] = set(seen), []
    half = encode_rgb(codec, rgb, "cpu", "bf16")
    for h in handles:
        h.remove()
    assert dtypes_full == {torch.float32} and torch.bfloat16 in set(seen)
    assert half.dtype == np.float32 and half.shape == full.shape
    gap = np.abs(full - half).mean()
    assert 0 < gap < 0.02 * full.std()


def test_import_slide_encodes_in_the_precision_asked(tmp_path, monkeypatch):
    import src_models.synthesis.editing as editing
    from PIL import Image

    from src_models.models.loading import load_model

    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "s.png")
    asked = []
    plain = editing.encode_rgb
    monkeypatch.setattr(editing, "encode_rgb", lambda c, rgb, d, p="float32": asked.append(p) or plain(c, rgb, d, p))
    tiny = load_model("tiny-test")
    canvas, _ = editing.import_slide(tmp_path / "s.png", tiny, tmp_path / "a.zarr", precision="bf16")
    canvas.close()
    assert asked and set(asked) == {"bf16"}
    asked.clear()
    monkeypatch.setenv("DIFFINFINITE_PRECISION", "float32")  # left open: the device's default
    canvas, _ = editing.import_slide(tmp_path / "s.png", tiny, tmp_path / "b.zarr")
    canvas.close()
    assert asked and set(asked) == {"float32"}
    with pytest.raises(ValueError, match="precision"):
        editing.import_slide(tmp_path / "s.png", tiny, tmp_path / "c.zarr", precision="fp8")
    assert not (tmp_path / "c.zarr").exists()  # refused before anything is written
