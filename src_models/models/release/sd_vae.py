"""The Stable Diffusion 2 VAE as a latent codec, with the release's conventions.

``diffusers`` is an optional dependency (``pip install .[release]``), imported only when a codec
is built.  The VAE is never downloaded: it is read from a local directory or from the user's
Hugging Face cache with ``local_files_only=True``.

Conventions of the published DiffInfinite models:

* images enter the encoder in [0, 1] (not the [-1, 1] the VAE was trained on);
* latent = ``latent_dist`` / 50 — :meth:`SD2Codec.encode` returns the *mean* of the posterior
  (deterministic, what inpainting context wants; the posterior's standard deviation is tiny next
  to the mean) unless a ``generator`` is given, in which case it draws ``mean + std·noise`` as
  the release's ``latent_dist.sample()`` does;
* decode(z · 50), clipped to [0, 1].

Latents larger than one tile (64 latent pixels = 512 px) are decoded with the four-tiling Hann
blend of :mod:`src_models.models.tiling`, all tiles batched; images larger than 512 px are encoded the
same way (the posterior mean and standard deviation are blended, then sampled once).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from src_models.models.card import ModelCard, ModelError
from src_models.models.tiling import tiled_decode, tiled_encode

ENV_VAR = "DIFFINFINITE_VAE"
HF_REPO = "stabilityai/stable-diffusion-2-base"
INSTALL_HINT = (
    "the SD-2 VAE needs the optional dependency diffusers: pip install '.[release]' (or pip install diffusers)"
)

# the SD-2 base VAE's architecture (diffusers AutoencoderKL config), for reference and tests
SD2_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}


def _autoencoder_class():
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ModelError(f"{INSTALL_HINT} ({e})") from None
    return AutoencoderKL


class SD2Codec(nn.Module):
    """Codec interface (``factor``, ``channels``, ``encode``, ``decode``) over an ``AutoencoderKL``."""

    factor = 8
    channels = 4

    def __init__(self, vae: nn.Module, scale: float = 50.0, tile: int = 64, batch: int = 8):
        super().__init__()
        self.vae = vae
        self.scale = float(scale)
        self.tile = int(tile)  # latent pixels per tile
        self.batch = int(batch)

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict | None = None, **kw) -> "SD2Codec":
        """A codec with random weights (tests): ``config`` defaults to the SD-2 VAE's."""
        return cls(_autoencoder_class()(**(config or SD2_VAE_CONFIG)), **kw)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kw) -> "SD2Codec":
        """Load from a local directory: the VAE folder itself or a pipeline folder with ``vae/``."""
        path = Path(path).expanduser()
        if (path / "config.json").is_file():
            target, sub = path, None
        elif (path / "vae" / "config.json").is_file():
            target, sub = path, "vae"
        else:
            raise ModelError(f"{path} holds no VAE (expected config.json there or in {path / 'vae'})")
        auto = _autoencoder_class()
        try:
            vae = auto.from_pretrained(str(target), subfolder=sub, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"the VAE in {path} could not be loaded: {e}") from None
        return cls(vae, **kw)

    @classmethod
    def from_hf_cache(cls, repo: str = HF_REPO, cache_dir: str | Path | None = None, **kw) -> "SD2Codec":
        """Load from the Hugging Face cache only (``local_files_only=True``, never downloads);
        ``cache_dir`` defaults to Hugging Face's own (``HF_HOME`` / ``HF_HUB_CACHE``)."""
        auto = _autoencoder_class()
        try:
            vae = auto.from_pretrained(
                repo, subfolder="vae", local_files_only=True, cache_dir=None if cache_dir is None else str(cache_dir)
            )
        except (OSError, ValueError) as e:
            first = str(e).splitlines()[0]
            raise ModelError(f"{repo} (subfolder vae) is not in the Hugging Face cache: {first}") from None
        return cls(vae, **kw)

    @classmethod
    def from_card(
        cls, card: ModelCard, directory: str | Path | None = None, cache_dir: str | Path | None = None
    ) -> "SD2Codec":
        """Find the VAE: ``card.codec["path"]`` (relative to the model directory), then the
        ``DIFFINFINITE_VAE`` environment variable, then the Hugging Face cache
        (``card.codec["hf_repo"]``, default ``stabilityai/stable-diffusion-2-base``)."""
        _autoencoder_class()  # a missing diffusers is the first thing to report
        spec = card.codec
        kw = {"scale": float(spec.get("scale", 50.0))}
        if int(spec.get("factor", 8)) != cls.factor or int(spec.get("channels", 4)) != cls.channels:
            raise ModelError(f"model card {card.name!r}: an sd2 codec has factor 8 and 4 channels, card says {spec}")
        tried = []
        candidates = []
        if spec.get("path"):
            p = Path(spec["path"]).expanduser()
            if not p.is_absolute() and directory is not None:
                p = Path(directory) / p
            candidates.append((f"card codec.path {p}", p))
        if os.environ.get(ENV_VAR):
            candidates.append((f"${ENV_VAR} {os.environ[ENV_VAR]}", Path(os.environ[ENV_VAR])))
        for what, p in candidates:
            if not p.exists():
                tried.append(f"{what}: does not exist")
                continue
            try:
                return cls.from_pretrained(p, **kw)
            except ModelError as e:
                tried.append(f"{what}: {e}")
        repo = spec.get("hf_repo", HF_REPO)
        try:
            return cls.from_hf_cache(repo, cache_dir=cache_dir, **kw)
        except ModelError as e:
            tried.append(f"Hugging Face cache: {e}")
        raise ModelError(
            "the SD-2 VAE was not found (it is never downloaded). Tried: "
            + "; ".join(tried)
            + f". Point the card's codec.path or ${ENV_VAR} at a folder with the VAE's config.json and weights, "
            f"or put {repo} (subfolder vae) in the Hugging Face cache."
        )

    # --- raw VAE maps (no scaling, no clipping), tiled -----------------------------------
    @property
    def _dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _moments(self, img: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(img.to(self._dtype)).latent_dist
        return torch.cat((dist.mean, dist.std), dim=1)

    def encode_raw(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image (B, 3, H, W) as given -> unscaled latent: posterior mean, or a sample when a
        (CPU) ``generator`` is given."""
        moments = tiled_encode(self._moments, img, self.tile * self.factor, self.factor, self.batch)
        mean, std = moments.chunk(2, dim=1)
        if generator is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32, device=generator.device)
        return mean + std * noise.to(mean.device)

    def _decode_tiles(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.to(self._dtype)).sample

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (B, 4, h, w) -> image (B, 3, 8h, 8w), not clipped."""
        return tiled_decode(self._decode_tiles, z, self.tile, self.factor, self.batch)

    # --- codec interface -----------------------------------------------------------------
    def encode(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """RGB in [0, 1] -> latent / 50."""
        return self.encode_raw(img, generator) / self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latent -> RGB: decode(z · 50) clipped to [0, 1]."""
        return self.decode_raw(z * self.scale).clamp(0.0, 1.0)
