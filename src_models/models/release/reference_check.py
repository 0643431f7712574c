"""Conformance check against a vectors file in the format of the release's
``reference_vectors.safetensors``.

The file holds random weights (``image_unet.*``, ``mask_unet.*``), inputs (``in.*``), outputs
of the release's own code (``out.*``) and optionally ``schedule.alphas_cumprod``; its metadata
entry ``meta`` (JSON) gives the model configs.  Every recorded output is recomputed with this
project's networks, guidance and DDIM step, and compared by the relative error

    max |ours - reference| / max |reference|      (over the whole tensor)

Outputs understood (anything else under ``out.`` is reported as unrecognised and fails):

``out.image_unet_mask_<m>``
    image UNet on ``in.x, in.t`` and the mask ``in.mask_<m>`` (e.g. ``latent``, ``full``)
``out.image_unet_guided_scale<s>``
    null + (cond - null)·s with the whole ``in.mask_latent`` as condition, null = all-zero mask
``out.ddim_multimask_<t>_<t_next>_eta<η>_scale<s>``
    one DDIM step (η must be 0: the release's noise is not recorded) of ``in.x`` from t to t_next
    for every row, ε from the per-class guidance with ω = s - 1 for every class and ``in.mask_latent``
``out.mask_unet_cond`` / ``out.mask_unet_null``
    mask UNet on ``in.x, in.t, in.mask_classes`` with condition dropout 0 / 1

Image UNet outputs are computed with each attention path (``linear_exact`` and ``softmax``); an
output's error is the worst of them.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from src_models.models.card import ModelError
from src_models.sampling.guidance import guided_eps
from src_models.models.base import check_state_dict
from src_models.models.release.unet import ATTENTION_MODES, ImageUNet, MaskUNet
from src_models.sampling.schedule import cosine_alphas_cumprod
from src_models.sampling.solvers import make_solver

TOLERANCE = 1e-5
REL_ERR_DEFINITION = "max|ours - reference| / max|reference| over the whole tensor"

_MASK_OUT = re.compile(r"^out\.image_unet_mask_(?P<mask>\w+)$")
_GUIDED = re.compile(r"^out\.image_unet_guided_scale(?P<scale>\d+(?:\.\d+)?)$")
_DDIM = re.compile(
    r"^out\.ddim_multimask_(?P<t>-?\d+)_(?P<tn>-?\d+)_eta(?P<eta>\d+(?:\.\d+)?)_scale(?P<scale>\d+(?:\.\d+)?)$"
)
_MASK_UNET = re.compile(r"^out\.mask_unet_(?P<which>cond|null)$")


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|ours - ref| / max|ref|; infinite when the shapes differ."""
    if tuple(ours.shape) != tuple(ref.shape):
        return float("inf")
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    if denom == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / denom


@contextmanager
def _strict_float32():
    """TF32 off for the duration (matters on CUDA only)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _read(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except FileNotFoundError:
        raise ModelError(f"vectors file {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path} is not a readable safetensors file ({e})") from None
    if "meta" not in metadata:
        raise ModelError(f"{path} has no 'meta' metadata entry (the model configs)")
    try:
        meta = json.loads(metadata["meta"])
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: the 'meta' metadata entry is not JSON ({e})") from None
    return tensors, meta


def _build(cls, config: dict, tensors: dict, prefix: str, device) -> torch.nn.Module:
    try:
        net = cls(**config)
    except TypeError as e:
        raise ModelError(f"{prefix} config {config} is not understood: {e}") from None
    state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    check_state_dict(net, state, f"the {prefix}.* weights")
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def _need(tensors: dict, key: str, out_key: str) -> torch.Tensor:
    if key not in tensors:
        raise ModelError(f"{out_key} needs input {key}, which the file lacks")
    return tensors[key]


def _from_meta(cls, meta: dict, tensors: dict, name: str, device):
    """The network ``name`` of the file, built from the config its metadata records."""
    cfg = meta.get(f"{name}_config")
    if cfg is None:
        raise ModelError(f"meta has no {name}_config")
    return _build(cls, cfg, tensors, name, device)


def check_reference(
    path: str | Path,
    tolerance: float = TOLERANCE,
    device: str | torch.device = "cpu",
    attention: tuple[str, ...] = ATTENTION_MODES,
) -> dict:
    """Recompute every ``out.*`` tensor of a vectors file; see the module docstring."""
    path = Path(path)
    start = time.perf_counter()
    tensors, meta = _read(path)
    device = torch.device(device)
    report: dict = {
        "file": str(path),
        "relative_error": REL_ERR_DEFINITION,
        "tolerance": tolerance,
        "device": str(device),
        "outputs": {},
        "attention_paths": {mode: {} for mode in attention},
        "unrecognised": [],
        "errors": [],
    }
    outputs = report["outputs"]

    def record(key, err, mode=None):
        if mode is not None:
            report["attention_paths"][mode][key] = err
        outputs[key] = max(outputs.get(key, 0.0), err)

    ours_ac = cosine_alphas_cumprod()
    if "schedule.alphas_cumprod" in tensors:
        record("schedule.alphas_cumprod", relative_error(ours_ac, tensors["schedule.alphas_cumprod"]))

    out_keys = sorted(k for k in tensors if k.startswith("out."))
    image_keys = [k for k in out_keys if _MASK_OUT.match(k) or _GUIDED.match(k) or _DDIM.match(k)]
    mask_keys = [k for k in out_keys if _MASK_UNET.match(k)]
    report["unrecognised"] = [k for k in out_keys if k not in image_keys and k not in mask_keys]
    if not out_keys:
        report["errors"].append("the file holds no out.* tensors")

    with _strict_float32(), torch.no_grad():
        if image_keys:
            try:
                unet = _from_meta(ImageUNet, meta, tensors, "image_unet", device)
                for key in image_keys:
                    for mode in attention:
                        unet.attention = mode
                        ours = _image_output(unet, key, tensors, ours_ac, device)
                        record(key, relative_error(ours, tensors[key]), mode)
            except (ModelError, ValueError, RuntimeError) as e:
                report["errors"].append(f"image UNet: {e}")
        if mask_keys:
            try:
                net = _from_meta(MaskUNet, meta, tensors, "mask_unet", device)
                for key in mask_keys:
                    x, t, classes = (_need(tensors, n, key).to(device) for n in ("in.x", "in.t", "in.mask_classes"))
                    drop = 0.0 if _MASK_UNET.match(key)["which"] == "cond" else 1.0
                    record(key, relative_error(net(x, t, classes, cond_drop_prob=drop), tensors[key]))
            except (ModelError, ValueError, RuntimeError) as e:
                report["errors"].append(f"mask UNet: {e}")

    missing = [k for k in out_keys if k not in outputs and k not in report["unrecognised"]]
    if missing:
        report["errors"].append(f"not computed: {', '.join(missing)}")
    report["max_relative_error"] = max(outputs.values(), default=float("inf"))
    report["ok"] = bool(
        outputs
        and all(err < tolerance for err in outputs.values())
        and not report["unrecognised"]
        and not report["errors"]
    )
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report


def _image_output(unet: ImageUNet, key: str, tensors: dict, alphas_cumprod, device) -> torch.Tensor:
    x = _need(tensors, "in.x", key).to(device)
    if m := _MASK_OUT.match(key):
        t = _need(tensors, "in.t", key).to(device)
        mask = _need(tensors, f"in.mask_{m['mask']}", key).to(device)
        return unet(x, t, mask)
    if m := _GUIDED.match(key):
        t = _need(tensors, "in.t", key).to(device)
        mask = _need(tensors, "in.mask_latent", key).to(device)
        scale = float(m["scale"])
        null = unet(x, t, torch.zeros_like(mask))
        cond = unet(x, t, mask)
        return null + (cond - null) * scale
    m = _DDIM.match(key)
    if float(m["eta"]) != 0.0:
        raise ModelError(f"{key}: only η = 0 steps can be checked (the reference noise is not recorded)")
    mask = _need(tensors, "in.mask_latent", key).to(device).round().long()
    t, t_next, scale = int(m["t"]), int(m["tn"]), float(m["scale"])
    omega = torch.full((unet.num_classes,), scale - 1.0)
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
    eps = guided_eps(unet, x, tt, mask, omega, conditioning="per_class")
    x_next, _, _ = make_solver("ddim", alphas_cumprod, [(t, t_next)], 0.0).step(x, eps, t, t_next, {})
    return x_next


def _finite(obj):
    """JSON has no infinity: write non-finite errors as strings."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not (obj == obj and abs(obj) != float("inf")):
        return str(obj)
    return obj


def main(argv: list[str] | None = None) -> int:
    """``check-reference FILE``: print one JSON object; exit 0 only when every error < tolerance."""
    parser = argparse.ArgumentParser(
        prog="diffinfinite check-reference",
        description="Recompute every output of a reference vectors file and report relative errors.",
    )
    parser.add_argument("file", help="vectors file (.safetensors) in the reference format")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="maximum relative error (default 1e-5)")
    parser.add_argument("--device", default="cpu", help="torch device (float32, TF32 off; default cpu)")
    args = parser.parse_args(argv)
    try:
        report = check_reference(args.file, tolerance=args.tolerance, device=args.device)
    except ModelError as e:
        print(json.dumps({"file": args.file, "ok": False, "errors": [str(e)]}))
        return 2
    print(json.dumps(_finite(report), indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
