"""Latent codecs: map RGB images in [0, 1] to model latents and back.

Interface (duck-typed): ``factor`` (pixels per latent pixel), ``channels`` (latent channels),
``encode(img)`` with img (B, 3, H, W) float in [0, 1] -> latent (B, C, H/f, W/f), already
divided by the card's latent scale, and ``decode(z)`` -> (B, 3, H, W) in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn


class IdentityCodec(nn.Module):
    """The image is its own latent (scaled to [-1, 1]): for tests and tiny models."""

    factor = 1
    channels = 3

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        return img * 2.0 - 1.0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z + 1.0) * 0.5).clamp(0.0, 1.0)
