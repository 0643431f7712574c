"""Loading the published DiffInfinite checkpoints (``model-N.pt``) and converting them to the
project's format (``card.json`` + safetensors).

A release checkpoint is a ``torch.save`` dictionary with ``step``, ``loss``, ``lr``, ``model``,
``opt``, ``scheduler``, ``ema`` and ``scaler``.  ``model`` is the diffusion wrapper's state dict
(UNet under ``model.``, plus schedule buffers); ``ema`` is the EMA wrapper's, whose averaged UNet
under ``ema_model.model.`` is the one to sample with.  Files are read with
``torch.load(..., weights_only=True)`` only: a file that needs full unpickling is refused.

The architecture is inferred from the weights (width, levels, blocks per level, classes); the
GroupNorm group count cannot be seen in the weights and defaults to the release's 2.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from src_models.models.card import ModelCard, ModelError
from src_models.models.base import Model, build_network, check_state_dict, save_model
from src_models.models.release.mask import MASK_LATENT_SCALES, SUBTYPES
from src_models.sampling.schedule import TRAIN_STEPS, cosine_alphas_cumprod

RELEASE_CLASSES: dict[int, list[str]] = {
    5: ["Unknown", "Carcinoma", "Necrosis", "Tumor stroma", "Others"],
    10: [
        "Unknown", "Alveole", "Artery", "Artifacts", "Carcinoma", "Cartilage",
        "Connective tissue", "Necrosis", "Tumor stroma", "Others",
    ],
}
# one colour per class name, shared by both models (Unknown grey)
CLASS_COLOURS = {
    "Unknown": "#808080", "Carcinoma": "#e6194b", "Necrosis": "#ffe119", "Tumor stroma": "#3cb44b",
    "Others": "#4363d8", "Alveole": "#46f0f0", "Artery": "#f032e6", "Artifacts": "#bcf60c",
    "Cartilage": "#fabebe", "Connective tissue": "#008080",
}
_FALLBACK_COLOURS = ["#f58231", "#911eb4", "#9a6324", "#800000", "#aaffc3", "#808000", "#ffd8b1", "#000075"]

SD2_CODEC = {"type": "sd2", "factor": 8, "channels": 4, "scale": 50.0, "input_range": [0.0, 1.0]}
PATCH_SIZE = 64
EMA_PREFIX = "ema_model.model."
MODEL_PREFIX = "model."
RELEASE_GROUPS = 2


def _torch_load(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True`` (memory-mapped where the format allows)."""
    if not path.exists():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch < 2.13: "Unsupported global: GLOBAL x.y"; torch 2.13: "unsupported GLOBAL x.y whose module ..."
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(e))
        if found:
            raise ModelError(
                f"{path} holds an object of type {found[1]}, which only full unpickling could build; "
                "it is not loaded (checkpoints are read with torch.load(weights_only=True) only)"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        reason = detail[1].strip() if detail else "refused by the weights-only unpickler"
        raise ModelError(
            f"{path} is not a readable PyTorch checkpoint ({reason}); it is not loaded "
            "(checkpoints are read with torch.load(weights_only=True) only)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelError(f"{path} is not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return obj


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}


def read_release_state(path: str | Path, use_ema: bool = True) -> tuple[dict, dict]:
    """The UNet state dict of a release checkpoint and facts about it (``weights``, ``step``,
    ``alphas_cumprod`` when the file has the schedule buffers)."""
    path = Path(path)
    ckpt = _torch_load(path)
    info: dict = {"source": str(path)}
    state = None
    if use_ema and isinstance(ckpt.get("ema"), dict):
        state = _strip(ckpt["ema"], EMA_PREFIX)
        info["weights"] = "ema"
        wrapper = _strip(ckpt["ema"], "ema_model.")
    if not state and isinstance(ckpt.get("model"), dict):
        state = _strip(ckpt["model"], MODEL_PREFIX)
        info["weights"] = "model"
        wrapper = ckpt["model"]
    if not state and "init_conv.weight" in ckpt:  # a bare UNet state dict
        state, wrapper = dict(ckpt), {}
        info["weights"] = "bare state dict"
    if not state:
        top = ", ".join(sorted(map(str, ckpt))[:12])
        raise ModelError(
            f"{path} is not a DiffInfinite release checkpoint: no UNet weights under "
            f"ema['{EMA_PREFIX}...'] or model['{MODEL_PREFIX}...'] (top-level keys: {top})"
        )
    if "alphas_cumprod" in wrapper:
        info["alphas_cumprod"] = wrapper["alphas_cumprod"]
    step = ckpt.get("step")
    if isinstance(step, (int, float)) or (torch.is_tensor(step) and step.numel() == 1):
        info["step"] = int(step)
    return state, info


def _shape(state: dict, key: str, source: str) -> tuple:
    if key not in state or not torch.is_tensor(state[key]):
        raise ModelError(f"{source} does not match the release UNet: missing keys: {key}")
    return tuple(state[key].shape)


def infer_release_config(state: dict, source: str = "checkpoint", resnet_block_groups: int = RELEASE_GROUPS) -> dict:
    """``{"arch": ..., "config": ...}`` of the release UNet whose weights are ``state``."""
    dim, channels = _shape(state, "init_conv.weight", source)[:2]
    num_classes = _shape(state, "classes_emb.weight", source)[0]
    levels = sorted({int(m[1]) for k in state if (m := re.match(r"downs\.(\d+)\.", k))})
    if not levels or levels != list(range(len(levels))):
        raise ModelError(f"{source} does not match the release UNet: missing keys: downs.0.* (levels found: {levels})")
    blocks = 0
    while f"downs.0.{blocks}.block1.proj.weight" in state:
        blocks += 1
    if blocks == 0:
        raise ModelError(f"{source} does not match the release UNet: missing keys: downs.0.0.block1.proj.weight")
    mults = []
    for i in levels:
        out = _shape(state, f"downs.{i}.{blocks + 1}.weight", source)[0]
        if out % dim:
            raise ModelError(
                f"{source}: mis-shaped keys: downs.{i}.{blocks + 1}.weight {out} is not a multiple of {dim}"
            )
        mults.append(out // dim)
    arch = "release_mask" if "null_classes_emb" in state else "release_image"
    config = {
        "dim": int(dim),
        "num_classes": int(num_classes),
        "dim_mults": mults,
        "channels": int(channels),
        "resnet_block_groups": int(resnet_block_groups),
        "block_per_layer": blocks,
    }
    return {"arch": arch, "config": config}


def _load_network(spec: dict, state: dict, source: str) -> nn.Module:
    net = build_network(spec)
    check_state_dict(net, state, source)
    net.load_state_dict(state, strict=True)
    return net.eval()


def _check_schedule(info: dict) -> None:
    ac = info.pop("alphas_cumprod", None)
    if ac is None:
        return
    ours = cosine_alphas_cumprod()
    if tuple(ac.shape) != (TRAIN_STEPS,) or float((ac.float() - ours).abs().max()) > 1e-5:
        raise ModelError(
            f"{info['source']}: the checkpoint's diffusion schedule (alphas_cumprod, {tuple(ac.shape)}) is not "
            f"the {TRAIN_STEPS}-step cosine schedule this project samples with"
        )


def _release_card(
    image_spec: dict,
    info: dict,
    classes: list[str] | None,
    mask_spec: dict | None,
    mask_info: dict | None,
    mask_latent_scales,
    vae_dir,
) -> ModelCard:
    n = image_spec["config"]["num_classes"]
    if classes is None:
        classes = RELEASE_CLASSES.get(n) or ["Unknown"] + [f"Class {i}" for i in range(1, n)]
    classes = [str(c) for c in classes]
    if len(classes) != n:
        raise ModelError(f"{len(classes)} class names given, but the checkpoint has {n} classes")
    spare = iter(_FALLBACK_COLOURS * (n // len(_FALLBACK_COLOURS) + 1))
    colours = [CLASS_COLOURS.get(c) or next(spare) for c in classes]
    codec = dict(SD2_CODEC)
    if vae_dir is not None:
        codec["path"] = str(Path(vae_dir).expanduser().resolve())
    mask_model = None
    if mask_spec is not None:
        scales = mask_latent_scales if mask_latent_scales is not None else MASK_LATENT_SCALES.get(n)
        if scales is None:
            raise ModelError(
                f"no published mask latent scales for {n} labels (known: {sorted(MASK_LATENT_SCALES)}); "
                "pass mask_latent_scales"
            )
        mask_model = dict(mask_spec)
        mask_model.update(
            labels=n,
            latent_scales=[float(s) for s in scales],
            subtypes=list(SUBTYPES[: mask_spec["config"]["num_classes"]])
            + [f"subtype {i}" for i in range(len(SUBTYPES), mask_spec["config"]["num_classes"])],
            size_factor=4,
            source=mask_info["source"],
        )
    release = {k: v for k, v in info.items() if k in ("source", "step", "weights")}
    card = ModelCard(
        name=f"diffinfinite-release-{n}classes",
        classes=classes,
        colours=colours,
        conditioning="per_class",
        unet=image_spec,
        codec=codec,
        patch_size=PATCH_SIZE,
        training_data="Published DiffInfinite checkpoint (Aversa et al., NeurIPS 2023, arXiv 2306.13384): "
        "H&E lung adenocarcinoma and squamous cell carcinoma tiles, few labelled, many unlabelled (class 0).",
        licence="see the DiffInfinite release",
        description=f"DiffInfinite image model, {n} classes, SD-2 VAE latents (f = 8, latent = sample / 50); "
        "guidance ω maps to the release's scale ω + 1.",
        default_steps=50,
        default_omega=3.0,
        mask_model=mask_model,
        pixel_size_um=0.5,  # 20x, as far as the release says
        extra={"release": release, "release_sampling": {"steps": 250, "eta": 1.0, "omega": [0, 3, 6]}},
    )
    card.validate()
    return card


def _read_networks(path, classes, mask_checkpoint, mask_latent_scales, vae_dir, use_ema, resnet_block_groups):
    state, info = read_release_state(path, use_ema)
    spec = infer_release_config(state, str(path), resnet_block_groups)
    if spec["arch"] == "release_mask":
        raise ModelError(
            f"{path} holds the mask model (it has null_classes_emb); load the image model checkpoint "
            "and pass this file as mask_checkpoint"
        )
    _check_schedule(info)
    unet = _load_network(spec, state, str(path))
    mask_unet = mask_spec = mask_info = None
    if mask_checkpoint is not None:
        mstate, mask_info = read_release_state(mask_checkpoint, use_ema)
        mask_spec = infer_release_config(mstate, str(mask_checkpoint), resnet_block_groups)
        if mask_spec["arch"] != "release_mask":
            raise ModelError(f"{mask_checkpoint} is not a mask model checkpoint (no null_classes_emb)")
        _check_schedule(mask_info)
        mask_unet = _load_network(mask_spec, mstate, str(mask_checkpoint))
    card = _release_card(spec, info, classes, mask_spec, mask_info, mask_latent_scales, vae_dir)
    return card, unet, mask_unet


def load_release_checkpoint(
    path: str | Path,
    classes: list[str] | None = None,
    *,
    mask_checkpoint: str | Path | None = None,
    vae_dir: str | Path | None = None,
    mask_latent_scales=None,
    use_ema: bool = True,
    resnet_block_groups: int = RELEASE_GROUPS,
) -> Model:
    """A release ``model-N.pt`` (image model; optionally its mask model) as a :class:`Model`.

    The SD-2 VAE is found as :meth:`SD2Codec.from_card` describes (``vae_dir``, the
    ``DIFFINFINITE_VAE`` environment variable, or the Hugging Face cache; never downloaded).
    """
    from src_models.models.release.sd_vae import SD2Codec

    card, unet, mask_unet = _read_networks(
        Path(path), classes, mask_checkpoint, mask_latent_scales, vae_dir, use_ema, resnet_block_groups
    )
    codec = SD2Codec.from_card(card, Path(path).parent).eval()
    return Model(card, unet, codec, Path(path), mask_unet)


def convert_release_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    vae_dir: str | Path | None = None,
    *,
    classes: list[str] | None = None,
    mask_checkpoint: str | Path | None = None,
    mask_latent_scales=None,
    use_ema: bool = True,
    resnet_block_groups: int = RELEASE_GROUPS,
) -> Path:
    """Write a release checkpoint as a project model directory (card.json + unet.safetensors
    [+ mask_unet.safetensors]); returns the directory.  The VAE is not copied: the card records
    ``vae_dir`` (when given) as ``codec.path``; without it the VAE is looked up at load time."""
    card, unet, mask_unet = _read_networks(
        Path(src), classes, mask_checkpoint, mask_latent_scales, vae_dir, use_ema, resnet_block_groups
    )
    if vae_dir is not None and not Path(vae_dir).expanduser().exists():
        raise ModelError(f"VAE directory {vae_dir} does not exist")
    # the codec is not part of the written files (sd2: only the card's reference)
    return save_model(Model(card, unet, codec=None, path=None, mask_unet=mask_unet), out_dir)
