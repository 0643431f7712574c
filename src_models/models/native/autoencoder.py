"""The project's own latent codec: a small convolutional autoencoder (factor 4, 4 channels).

It follows the codec interface of :mod:`src_models.models.codec`: ``encode(img)`` takes RGB in [0, 1]
and returns latents already normalised, ``decode(z)`` returns RGB in [0, 1].

The raw latent is bounded by ``tanh`` (so no KL term is needed and the encoder cannot buy
robustness to noise by inflating its output).  After training, ``latent_shift`` (per channel) and
``latent_scale`` (one number) are set from the training data so that the normalised latents
``(raw - shift) / scale`` lie in [-1, 1] with a std of about 0.5: that is the range in which the
sampler's x0 clamp (the release's convention) is harmless.  Both are buffers, saved in
``codec.safetensors``; the model card repeats them (``codec["scale"]``, ``codec["shift"]``).

Encoding is deterministic (no sampling), so latents of a training set can be cached.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """SiLU-conv twice with a residual path (1x1 conv when the width changes).

    No normalisation layer: GroupNorm pools statistics over the whole image, which would make the
    codec non-local (the code of a pixel would depend on the size and content of the whole image,
    and tiles decoded apart would not match).  Without it the codec is a plain convolution stack:
    away from the border, encoding a crop gives the crop of the encoding, so large images are
    coded in tiles without seams and training latents can be cached.  The second conv of each
    block starts small so the stack starts close to the identity and trains stably.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)
            self.conv2.bias.zero_()

    def forward(self, x):
        h = self.conv1(F.silu(x))
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class NativeAutoencoder(nn.Module):
    """Deterministic autoencoder; ``factor = 2 ** (len(widths) - 1)`` pixels per latent pixel.

    ``widths`` are the feature widths from full resolution down to latent resolution.
    """

    def __init__(self, widths=(32, 64, 96), latent_channels: int = 4, mid_blocks: int = 2):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError("NativeAutoencoder needs at least two widths (factor >= 2)")
        self.config = {"widths": widths, "latent_channels": int(latent_channels), "mid_blocks": int(mid_blocks)}
        self.factor = 2 ** (len(widths) - 1)
        self.channels = int(latent_channels)
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("latent_shift", torch.zeros(self.channels))

        enc = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for a, b in zip(widths[:-1], widths[1:]):
            enc.append(nn.Conv2d(a, b, 3, stride=2, padding=1))
            enc.append(ResBlock(b, b))
        enc += [ResBlock(widths[-1], widths[-1]) for _ in range(mid_blocks - 1)]
        enc += [nn.SiLU(), nn.Conv2d(widths[-1], self.channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec = [nn.Conv2d(self.channels, widths[-1], 3, padding=1)]
        dec += [ResBlock(widths[-1], widths[-1]) for _ in range(mid_blocks)]
        for a, b in zip(widths[::-1][:-1], widths[::-1][1:]):
            dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
            dec.append(nn.Conv2d(a, b, 3, padding=1))
            dec.append(ResBlock(b, b))
        dec += [nn.SiLU(), nn.Conv2d(widths[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    # --- raw (unnormalised) latents, used in training -------------------------------------
    def encode_raw(self, img: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.encoder(img * 2.0 - 1.0))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Logits-free output in [0, 1] (sigmoid)."""
        return torch.sigmoid(self.decoder(z))

    # --- codec interface ---------------------------------------------------------------
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[-1] % self.factor or img.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(img.shape[-2:])} is not a multiple of the codec factor {self.factor}")
        z = self.encode_raw(img)
        return (z - self.latent_shift.view(1, -1, 1, 1)) / self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raw = z * self.latent_scale + self.latent_shift.view(1, -1, 1, 1).to(z.dtype)
        return self.decode_raw(raw.clamp(-1.0, 1.0)).clamp(0.0, 1.0)

    @torch.no_grad()
    def set_normalisation(self, raw_latents: torch.Tensor, quantile: float = 0.999) -> tuple[float, list[float]]:
        """Set shift = per-channel mean and scale = the ``quantile`` of |raw - shift| (so that
        normalised latents lie in [-1, 1]); returns ``(scale, shift)``."""
        z = raw_latents.float().transpose(0, 1).reshape(self.channels, -1)
        shift = z.mean(1)
        dev = (z - shift[:, None]).abs().reshape(-1)
        if dev.numel() > 2_000_000:
            dev = dev[torch.randperm(dev.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]]
        scale = float(torch.quantile(dev, quantile).clamp(min=1e-3))
        self.latent_shift.copy_(shift)
        self.latent_scale.fill_(scale)
        return scale, [float(v) for v in shift]
