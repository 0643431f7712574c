"""Latent codecs: map RGB images in [0, 1] to model latents and back.

Interface (duck-typed): ``factor`` (pixels per latent pixel), ``channels`` (latent channels),
``encode(img)`` with img (B, 3, H, W) float in [0, 1] -> latent (B, C, H/f, W/f), already
divided by the card's latent scale, and ``decode(z)`` -> (B, 3, H, W) in [0, 1].
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

CODEC_TILE = 64  # latent px per tile when a codec without its own tiling handles a large area
# Up to this many latent px (288² = a 1024 px region and a 64 px halo around it at factor 4) an area is
# decoded or encoded in one piece.  The Hann-blended tiling passes every pixel through about 3 codec
# tiles; one piece costs a third of the CPU time and, on a 768 x 1024 px crop of the CC0 slide,
# differed from the tiled decode by at most 1 grey level (mean 0.006), with the same error against the
# real pixels (docs/cpu_speed.md).  Its activations peak near 2 GB for the largest such area.
ONE_PIECE_LATENT_PX = 288 * 288


class IdentityCodec(nn.Module):
    """The image is its own latent (scaled to [-1, 1]): for tests and tiny models."""

    factor = 1
    channels = 3

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        return img * 2.0 - 1.0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z + 1.0) * 0.5).clamp(0.0, 1.0)


def _tiled(codec, latent_h: int, latent_w: int) -> int:
    """The codec's factor when an area of ``latent_h`` x ``latent_w`` latent px should go through the
    Hann-blended tiling, else 0.  Codecs that tile by themselves carry a ``tile`` attribute
    (the SD-2 VAE); others take areas up to :data:`ONE_PIECE_LATENT_PX` in one piece, larger ones
    would hold too much of the area's activations in memory."""
    factor = int(getattr(codec, "factor", 1))
    own = getattr(codec, "tile", None) is not None
    large = latent_h * latent_w > ONE_PIECE_LATENT_PX and max(latent_h, latent_w) > 2 * CODEC_TILE
    return factor if factor > 1 and not own and large else 0


def _codec_autocast(device: torch.device, precision: str):
    """bfloat16 autocast around the codec where ``precision`` is "bf16" (CPU or CUDA); off otherwise."""
    bf16 = precision == "bf16" and device.type in ("cpu", "cuda")
    return torch.autocast(device.type if bf16 else "cpu", dtype=torch.bfloat16, enabled=bf16)


def decode_latent(codec, z: torch.Tensor, precision: str = "float32") -> np.ndarray:
    """Decode (C, h, w) latents to (h·f, w·f, 3) uint8, tiled for large areas.  ``precision`` "bf16":
    the decoder under bfloat16 autocast (the run's ``--precision bf16``; on a CPU with AVX512_BF16 about
    2 x faster, 0.2 grey levels from float32 on average: docs/cpu_speed.md)."""
    factor = _tiled(codec, int(z.shape[-2]), int(z.shape[-1]))
    with torch.inference_mode(), _codec_autocast(z.device, precision):
        if factor:
            from src_models.models.tiling import tiled_decode

            img = tiled_decode(codec.decode, z[None], CODEC_TILE, factor)
        else:
            img = codec.decode(z[None])
    img = img[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return np.rint(img * 255).astype(np.uint8)


def encode_rgb(codec, rgb: np.ndarray, device, precision: str = "float32") -> np.ndarray:
    """(h, w, 3) uint8 -> (C, h/f, w/f) float32 latents, tiled for large images.  ``precision`` "bf16":
    the encoder under bfloat16 autocast (on a CPU with AVX512_BF16 about 2 x faster; the latents
    0.2 % of their spread from float32's: docs/cpu_speed.md)."""
    img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255).to(device)
    f = int(getattr(codec, "factor", 1))
    factor = _tiled(codec, rgb.shape[0] // f, rgb.shape[1] // f)
    with torch.inference_mode(), _codec_autocast(img.device, precision):
        if factor:
            from src_models.models.tiling import tiled_encode

            z = tiled_encode(codec.encode, img, CODEC_TILE * factor, factor)
        else:
            z = codec.encode(img)
    return z[0].float().cpu().numpy()
