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

import os
from pathlib import Path

import torch

from src_models.models.base import Model, build_codec, build_network, load_safetensors_into
from src_models.models.card import BUILTIN_DIRS, ModelCard, ModelError


def load_model(spec: str | Path = "default", device: str | torch.device = "cpu") -> Model:
    """Load a model by built-in name (``default``, ``tumour``, ``tiny-test``) or from a model directory."""
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
    check_sizes(card)
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


def guided_network(model: Model) -> torch.nn.Module:
    """The card's guidance-distilled student of ``model.unet`` (:mod:`src_models.training.distil`),
    built once and kept on the model: the UNet with the student's tensors (the condition branch, or
    all of them) loaded over a copy of it, on the UNet's device."""
    import copy

    from safetensors.torch import load_file

    cached = model.__dict__.get("_guided")
    if cached is not None and next(cached.parameters()).device == model.device:
        return cached
    entry = model.card.guided_unet
    if not entry or model.path is None:
        raise ModelError(f"model {model.card.name!r} has no distilled student")
    path = Path(model.path) / entry["file"]
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise ModelError(f"model {model.card.name!r}: its card names {entry['file']}, which is not in {model.path}") from None
    except Exception as e:  # noqa: BLE001 - a damaged file: one line
        raise ModelError(f"model {model.card.name!r}: cannot read {path}: {e}") from None
    student = copy.deepcopy(model.unet)
    own = student.state_dict()
    wrong = [k for k, v in tensors.items() if k not in own or own[k].shape != v.shape]
    if wrong or (entry.get("parts") == "all" and set(tensors) != set(own)):
        raise ModelError(f"model {model.card.name!r}: {entry['file']} does not fit its UNet "
                         f"({', '.join(wrong[:3]) or 'tensors missing'})")
    student.load_state_dict(tensors, strict=False)
    student.eval()
    model.__dict__["_guided"] = student
    return student


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_sizes(card: ModelCard) -> None:
    """Build the card's networks on the meta device (nothing allocated) and refuse, in one line,
    a card whose networks cannot be built or would not fit this machine's memory."""
    total = 0
    for field in ("unet", "mask_model"):
        spec = getattr(card, field)
        if spec is None:
            continue
        try:
            with torch.device("meta"):
                net = build_network(spec)
            total += sum(p.numel() * p.element_size() for p in net.parameters())
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - a config no network accepts
            text = str(e).strip().splitlines()
            raise ModelError(f"model card {card.name!r}: {field} config does not build a network "
                             f"({type(e).__name__}{': ' + text[0][:100] if text else ''})") from None
    memory = _memory_bytes()
    if total > memory // 2:
        raise ModelError(f"model card {card.name!r}: its networks hold {total / 2**30:,.1f} GiB of weights, more "
                         f"than half this machine's {memory / 2**30:,.0f} GiB of memory; is the card right?")


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
