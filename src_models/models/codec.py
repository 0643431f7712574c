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


class IdentityCodec(nn.Module):
    """The image is its own latent (scaled to [-1, 1]): for tests and tiny models."""

    factor = 1
    channels = 3

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        return img * 2.0 - 1.0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z + 1.0) * 0.5).clamp(0.0, 1.0)


def _tiled(codec, latent_side: int) -> int:
    """The codec's factor when an area of ``latent_side`` latent px should go through the
    Hann-blended tiling, else 0.  Codecs that tile by themselves carry a ``tile`` attribute
    (the SD-2 VAE); others would hold the whole area's activations in memory."""
    factor = int(getattr(codec, "factor", 1))
    return factor if factor > 1 and getattr(codec, "tile", None) is None and latent_side > 2 * CODEC_TILE else 0


def decode_latent(codec, z: torch.Tensor) -> np.ndarray:
    """Decode (C, h, w) latents to (h·f, w·f, 3) uint8, tiled for large areas."""
    factor = _tiled(codec, max(z.shape[-2:]))
    with torch.inference_mode():
        if factor:
            from src_models.models.tiling import tiled_decode

            img = tiled_decode(codec.decode, z[None], CODEC_TILE, factor)
        else:
            img = codec.decode(z[None])
    img = img[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return np.rint(img * 255).astype(np.uint8)


def encode_rgb(codec, rgb: np.ndarray, device) -> np.ndarray:
    """(h, w, 3) uint8 -> (C, h/f, w/f) float32 latents, tiled for large images."""
    img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255).to(device)
    factor = _tiled(codec, max(rgb.shape[:2]) // int(getattr(codec, "factor", 1)))
    with torch.inference_mode():
        if factor:
            from src_models.models.tiling import tiled_encode

            z = tiled_encode(codec.encode, img, CODEC_TILE * factor, factor)
        else:
            z = codec.encode(img)
    return z[0].float().cpu().numpy()
