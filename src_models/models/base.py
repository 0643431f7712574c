"""What a model is: a :class:`Model` holds the card, the denoiser network and the latent codec;
networks and codecs are built from the card through the registries below and saved as a model
directory.  Loading by name or path is :mod:`src_models.models.loading` (which also knows the
built-in ``tiny-test`` and the published checkpoints; they build on this module, not the other way).

Model directory layout::

    card.json            the ModelCard
    unet.safetensors     the denoiser's state dict
    codec.safetensors    the codec's state dict (native codec only)
    mask_unet.safetensors  optional mask diffusion model

Architectures are looked up by name in ``ARCHS`` and imported lazily, so a card names what it
needs and nothing else is imported.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from src_models.models.card import ModelCard, ModelError

# registry name -> "module:Class"; a card names what it needs and only that module is imported
ARCHS = {
    "native": "src_models.models.native.unet:NativeUNet",
    "tiny": "src_models.models.tiny:TinyDenoiser",
    "release_image": "src_models.models.release.unet:ImageUNet",
    "release_mask": "src_models.models.release.unet:MaskUNet",
}
CODECS = {
    "identity": "src_models.models.codec:IdentityCodec",
    "native": "src_models.models.native.autoencoder:NativeAutoencoder",
    "sd2": "src_models.models.release.sd_vae:SD2Codec",
}



def _resolve(table: dict, name: str, what: str):
    if name not in table:
        raise ModelError(f"unknown {what} {name!r}; known: {', '.join(sorted(table))}")
    mod, cls = table[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def build_network(spec: dict) -> nn.Module:
    """Instantiate ``{"arch": name, "config": {...}}`` with its initial weights."""
    cls = _resolve(ARCHS, spec.get("arch", ""), "architecture")
    try:
        return cls(**spec.get("config", {}))
    except TypeError as e:
        raise ModelError(f"architecture {spec.get('arch')!r} rejects its config: {e}") from None


def load_safetensors_into(module: nn.Module, path: Path) -> None:
    """Load ``path`` into ``module`` strictly; name missing, unexpected and mis-shaped keys."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise ModelError(f"weights file {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"weights file {path} is corrupt or truncated ({e})") from None
    check_state_dict(module, state, str(path))
    module.load_state_dict(state, strict=True)


def check_state_dict(module: nn.Module, state: dict, source: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if shapes:
            parts.append(
                "mis-shaped keys: "
                + few([f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in shapes])
            )
        raise ModelError(f"{source} does not match the model: " + "; ".join(parts))


def build_codec(card: ModelCard, directory: Path | None) -> nn.Module:
    spec = dict(card.codec)
    kind = spec.get("type", "identity")
    cls = _resolve(CODECS, kind, "codec")
    if kind == "identity":
        return cls()
    if kind == "sd2":
        return cls.from_card(card, directory)
    codec = cls(**spec.get("config", {}))
    if directory is not None:
        load_safetensors_into(codec, directory / "codec.safetensors")
    return codec


@dataclass
class Model:
    card: ModelCard
    unet: nn.Module
    codec: nn.Module
    path: Path | None = None
    mask_unet: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device) -> "Model":
        self.unet.to(device)
        self.codec.to(device)
        if self.mask_unet is not None:
            self.mask_unet.to(device)
        return self


def save_model(model: Model, directory: str | Path) -> Path:
    """Write card + safetensors weights; returns the directory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.card.save(directory)

    def cpu_state(m):
        return {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}

    save_file(cpu_state(model.unet), str(directory / "unet.safetensors"))
    if model.card.codec.get("type") == "native":
        save_file(cpu_state(model.codec), str(directory / "codec.safetensors"))
    if model.mask_unet is not None:
        save_file(cpu_state(model.mask_unet), str(directory / "mask_unet.safetensors"))
    return directory
