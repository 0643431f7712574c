"""A tiny label-map-conditioned denoiser with fixed random weights, for tests and for measuring the
machinery (``--model tiny-test``): a few thousand parameters, cheap on any device, identical on
every call.  It is not trained; its output is only meant to be deterministic, class-dependent and
of the right shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src_models.models.card import ModelCard
from src_models.models.native.unet import class_fractions, timestep_embedding

TINY_SEED = 1234
TINY_CLASSES = ["unknown", "glass", "epidermis", "dermis"]
TINY_COLOURS = ["#000000", "#e8e8e8", "#6a2d8f", "#e87ab0"]


class TinyDenoiser(nn.Module):
    """conv(latent ⊕ class embedding) → time shift → conv → conv, about 4k parameters.

    The weights are drawn from ``torch.Generator().manual_seed(seed)`` in the constructor, so two
    instances with the same config are identical.
    """

    conditioning = "label_map"

    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: int = 16, emb: int = 4, seed: int = TINY_SEED):
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.width = int(width)
        self.size_multiple = 1
        self.class_emb = nn.Parameter(torch.empty(self.num_classes, emb))
        self.conv_in = nn.Conv2d(self.in_channels + emb, width, 3, padding=1)
        self.time = nn.Linear(width, width)
        self.conv_mid = nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, self.in_channels, 3, padding=1)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            self.class_emb.mul_(2.0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        t = torch.as_tensor(t, device=x.device).long().reshape(-1).expand(b)
        frac = class_fractions(mask.to(x.device), self.num_classes, (h, w))
        cmap = torch.einsum("bkhw,kc->bchw", frac, self.class_emb.float()).to(x.dtype)
        hidden = F.silu(self.conv_in(torch.cat([x, cmap], dim=1)))
        hidden = hidden + self.time(timestep_embedding(t, self.width).to(x.dtype))[:, :, None, None]
        hidden = F.silu(self.conv_mid(hidden))
        return self.conv_out(hidden)


def tiny_test_card() -> ModelCard:
    card = ModelCard(
        name="tiny-test",
        classes=list(TINY_CLASSES),
        colours=list(TINY_COLOURS),
        conditioning="label_map",
        unet={"arch": "tiny", "config": {"in_channels": 3, "num_classes": len(TINY_CLASSES), "width": 16, "emb": 4, "seed": TINY_SEED}},
        codec={"type": "identity", "factor": 1, "channels": 3, "scale": 1.0},
        patch_size=16,
        training_data="none: fixed random weights (seed 1234)",
        licence="MIT",
        description="Untrained tiny denoiser for tests and for timing the machinery; its images are noise-like.",
        default_steps=10,
    )
    card.validate()
    return card


def tiny_test_model():
    """The ``tiny-test`` model: same weights on every call."""
    from src_models.models.codec import IdentityCodec
    from src_models.models.base import Model, build_network

    card = tiny_test_card()
    unet = build_network(card.unet).eval()
    return Model(card, unet, IdentityCodec().eval(), None)
