"""Loading a model by name or path: ``default`` (shipped in ``src_models/weights``), ``tiny-test``
(fixed random weights, for tests), a model directory (``card.json`` + safetensors weights) or a
published ``model-N.pt`` checkpoint (converted on the fly).

Model directory layout::

    card.json            the ModelCard
    unet.safetensors     the denoiser's state dict
    codec.safetensors    the codec's state dict (native codec only)
    mask_unet.safetensors  optional mask diffusion model
"""
from __future__ import annotations

from pathlib import Path

import torch

from src_models.models.base import Model, build_codec, build_network, load_safetensors_into
from src_models.models.card import BUILTIN_DIRS, ModelCard, ModelError


def load_model(spec: str | Path = "default", device: str | torch.device = "cpu") -> Model:
    """Load a model by built-in name (``default``, ``tiny-test``) or from a model directory."""
    if str(spec) == "tiny-test":
        from src_models.models.tiny import tiny_test_model

        return tiny_test_model().to(device)
    directory = BUILTIN_DIRS.get(str(spec), Path(spec))
    if not directory.exists():
        raise ModelError(f"model {spec!r} not found (expected a model directory with {'card.json'})")
    if directory.is_file():
        if directory.suffix == ".pt":
            from src_models.models.release.checkpoint import load_release_checkpoint

            return load_release_checkpoint(directory).to(device)
        raise ModelError(f"{directory} is a file; a model is a directory with card.json and safetensors weights")
    card = ModelCard.load(directory)
    unet = build_network(card.unet)
    load_safetensors_into(unet, directory / "unet.safetensors")
    unet.eval()
    codec = build_codec(card, directory)
    codec.eval()
    mask_unet = None
    if card.mask_model:
        mask_unet = build_network(card.mask_model)
        load_safetensors_into(mask_unet, directory / "mask_unet.safetensors")
        mask_unet.eval()
    return Model(card, unet, codec, directory, mask_unet).to(device)


def find_card(spec: str | Path) -> tuple[ModelCard, Model | None]:
    """The model card of ``spec``, without loading weights where it can (built-in names, model
    directories: ``card.json`` alone, no torch work); a published checkpoint is loaded whole on
    the CPU and returned with its card, so it is not read twice.  Returns (card, model or None)."""
    if str(spec) == "tiny-test":
        from src_models.models.tiny import tiny_test_card

        return tiny_test_card(), None
    directory = BUILTIN_DIRS.get(str(spec), Path(spec))
    if directory.is_dir():
        return ModelCard.load(directory), None
    if not directory.exists():
        raise ModelError(f"model {str(spec)!r} not found (expected a model directory with card.json)")
    model = load_model(spec, "cpu")
    return model.card, model


def load_for_run(spec: str | Path, device, preloaded: Model | None = None) -> Model:
    """The model of ``spec`` on ``device``; ``preloaded`` (from :func:`find_card`) is moved there."""
    if preloaded is not None:
        return preloaded.to(device)
    return load_model(spec, device)
