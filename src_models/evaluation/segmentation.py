"""Downstream utility: does a segmentation network trained on these tiles work on real tissue?

The question ML users ask first of a synthetic data set (the paper's downstream table): train one
small segmenter on the training folders (real tiles, synthetic tiles, or both), test it on held-out
real tiles, and report per-class IoU and Dice.  Everything about the segmenter is fixed here
(``PROTOCOL``), so two runs differ only in their training data:

* data: tile folders as ``make-dataset`` and ``export-tiles`` write them (``images/``, ``masks/``
  with the same names, ``classes.json``); tiles without a mask are left out; label 0 ("unknown")
  is neither trained on nor scored, so the network predicts classes 1..K-1;
* network: a three-level UNet (16, 32, 64 channels; two 3x3 convolutions with BatchNorm and ReLU
  per level; max-pool down, bilinear up, skip concatenation; about 0.1 M parameters);
* training: random ``CROP`` px crops, a random one of the 8 dihedral transforms and a mild colour
  jitter (brightness x U(0.9, 1.1), each channel x U(0.95, 1.05)), batches of ``BATCH``, Adam
  (lr 2e-3, cosine to 5 %), cross-entropy; an *epoch* is as many crops as cover the labelled
  training pixels once; ``epochs`` epochs but never fewer than ``MIN_STEPS`` steps;
* test: every test tile whole (reflect-padded to a multiple of 4), arg-max class; the confusion
  matrix over pixels whose truth is not 0.

Same folders, seed and torch thread count give the same JSON.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src_models.errors import DiffInfiniteError

PROTOCOL = "seg/1"
CROP = 96
BATCH = 8
MIN_STEPS = 50
DEFAULT_EPOCHS = 8
WIDTHS = (16, 32, 64)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_EXTS = (".png", ".tif", ".tiff", ".npy")


class SegmentationError(DiffInfiniteError, ValueError):
    """A tile folder that cannot be used (the message says which and why)."""


@dataclass
class TileSet:
    images: list[np.ndarray]
    masks: list[np.ndarray]
    names: list[str]
    classes: list[str]
    colours: list[str]
    unlabelled: int  # tiles without a mask, left out


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except Exception as e:  # unreadable image: one line naming it
        raise SegmentationError(f"cannot read image {path}: {e}") from None


def _read_labels(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as e:
        raise SegmentationError(f"cannot read mask {path}: {e}") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2 or arr.dtype.kind not in "ui":
        raise SegmentationError(f"mask {path} is not a 2-D integer label map (shape {arr.shape}, {arr.dtype})")
    return arr.astype(np.int64)


def load_tiles(folder: str | Path) -> TileSet:
    """Image tiles with their label masks from one folder (``images/``, ``masks/``, ``classes.json``)."""
    folder = Path(folder)
    img_dir, mask_dir = folder / "images", folder / "masks"
    if not img_dir.is_dir():
        raise SegmentationError(f"{folder}: no images/ folder (a tile folder as make-dataset or export-tiles write)")
    classes, colours = [], []
    if (folder / "classes.json").is_file():
        try:
            meta = json.loads((folder / "classes.json").read_text())
            classes, colours = list(meta.get("classes", [])), list(meta.get("colours", []))
        except (OSError, ValueError, AttributeError) as e:
            raise SegmentationError(f"{folder / 'classes.json'}: {e}") from None
    images, masks, names, unlabelled = [], [], [], 0
    for f in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        m = next((mask_dir / (f.stem + e) for e in MASK_EXTS if (mask_dir / (f.stem + e)).is_file()), None)
        if m is None:
            unlabelled += 1
            continue
        rgb, lab = _read_rgb(f), _read_labels(m)
        if lab.shape != rgb.shape[:2]:
            raise SegmentationError(f"mask {m} is {lab.shape}, its image {rgb.shape[:2]}")
        if min(lab.shape) < 16:
            continue
        images.append(rgb)
        masks.append(lab)
        names.append(f.name)
    if not images:
        raise SegmentationError(f"{folder}: no image in images/ has a mask in masks/")
    top = max(int(m.max()) for m in masks)
    if not classes:
        classes = ["unknown"] + [f"class_{i}" for i in range(1, top + 1)]
    if top >= len(classes):
        raise SegmentationError(f"{folder}: masks hold label {top}, classes.json names only {len(classes)} classes")
    return TileSet(images, masks, names, classes, colours, unlabelled)


def _merge(sets: list[TileSet], what: str) -> TileSet:
    first = sets[0]
    for s in sets[1:]:
        if s.classes != first.classes:
            raise SegmentationError(f"{what}: the folders name different classes ({first.classes} vs {s.classes})")
    return TileSet([i for s in sets for i in s.images], [m for s in sets for m in s.masks],
                   [n for s in sets for n in s.names], first.classes, first.colours, sum(s.unlabelled for s in sets))


def network(num_out: int):
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class SmallUNet(nn.Module):
        def __init__(self):
            super().__init__()
            a, b, c = WIDTHS
            self.e1, self.e2, self.e3 = block(3, a), block(a, b), block(b, c)
            self.d2, self.d1 = block(c + b, b), block(b + a, a)
            self.head = nn.Conv2d(a, num_out, 1)

        def forward(self, x):
            import torch.nn.functional as F

            x1 = self.e1(x)
            x2 = self.e2(F.max_pool2d(x1, 2))
            x3 = self.e3(F.max_pool2d(x2, 2))
            y2 = self.d2(torch.cat([F.interpolate(x3, scale_factor=2, mode="bilinear", align_corners=False), x2], 1))
            y1 = self.d1(torch.cat([F.interpolate(y2, scale_factor=2, mode="bilinear", align_corners=False), x1], 1))
            return self.head(y1)

    return SmallUNet()


def _dihedral(t, k: int):
    import torch

    if k >= 4:
        t = t.flip(-1)
    return torch.rot90(t, k % 4, dims=(-2, -1))


def _pad(a: np.ndarray, side: int, mode: str):
    """Pad (reflect for images, 0 for masks) so both sides are at least ``side`` and multiples of 4."""
    h, w = a.shape[:2]
    th, tw = max(side, -(-h // 4) * 4), max(side, -(-w // 4) * 4)
    pad = ((0, th - h), (0, tw - w)) + ((0, 0),) * (a.ndim - 2)
    if mode == "reflect" and (th - h >= h or tw - w >= w):
        mode = "symmetric"
    return np.pad(a, pad, mode=mode) if (th, tw) != (h, w) else a


def train_segmenter(data: TileSet, epochs: int = DEFAULT_EPOCHS, seed: int = 0, progress=None):
    """Train the fixed segmenter on ``data``; returns ``(network, info)``."""
    import torch
    import torch.nn.functional as F

    k = len(data.classes) - 1
    if k < 1:
        raise SegmentationError("the classes name nothing but 'unknown': nothing to segment")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    imgs = [torch.from_numpy(np.ascontiguousarray(_pad(i, CROP, "reflect"))).permute(2, 0, 1) for i in data.images]
    masks = [torch.from_numpy(np.ascontiguousarray(_pad(m, CROP, "constant"))) for m in data.masks]
    labelled = sum(int((m > 0).sum()) for m in data.masks)
    if labelled == 0:
        raise SegmentationError("every training mask is all 0 (unknown): nothing to learn")
    per_epoch = max(1, math.ceil(labelled / (BATCH * CROP * CROP)))
    steps = max(MIN_STEPS, epochs * per_epoch)
    weights = torch.tensor([float((m > 0).sum()) + 1.0 for m in data.masks], dtype=torch.float64)
    net = network(k)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    net.train()
    last = float("nan")
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        xs, ys = [], []
        for i in torch.multinomial(weights, BATCH, replacement=True, generator=gen).tolist():
            im, m = imgs[i], masks[i]
            y = int(torch.randint(0, im.shape[1] - CROP + 1, (1,), generator=gen))
            x = int(torch.randint(0, im.shape[2] - CROP + 1, (1,), generator=gen))
            d = int(torch.randint(0, 8, (1,), generator=gen))
            jitter = (0.9 + 0.2 * torch.rand(1, generator=gen)) * (0.95 + 0.1 * torch.rand(3, 1, 1, generator=gen))
            xs.append(_dihedral(im[:, y : y + CROP, x : x + CROP].float() / 255.0 * jitter, d))
            ys.append(_dihedral(m[y : y + CROP, x : x + CROP], d))
        xb = torch.stack(xs).clamp(0, 1) * 2 - 1
        yb = torch.stack(ys) - 1  # label 0 becomes -1: ignored
        loss = F.cross_entropy(net(xb), yb, ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = float(loss.detach())
        if progress is not None:
            progress(step + 1, steps)
    net.eval()
    return net, {"steps": steps, "epochs": epochs, "final_loss": round(last, 4),
                 "train_seconds": round(time.perf_counter() - t0, 1)}


def predict(net, rgb: np.ndarray) -> np.ndarray:
    """Labels 1..K-1 for one image (whole, padded to a multiple of 4)."""
    import torch

    h, w = rgb.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(_pad(rgb, 4, "reflect"))).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        out = net(x)[0, :, :h, :w].argmax(0).numpy()
    return out.astype(np.int64) + 1


def scores(truth: list[np.ndarray], pred: list[np.ndarray], classes: list[str]) -> dict:
    """Per-class IoU and Dice over the pixels whose truth is not 0, for the classes the truth holds."""
    k = len(classes)
    conf = np.zeros((k, k), np.int64)
    for t, p in zip(truth, pred):
        sel = t > 0
        conf += np.bincount(t[sel] * k + p[sel], minlength=k * k).reshape(k, k)
    present = [c for c in range(1, k) if conf[c].sum() > 0]
    iou, dice = {}, {}
    for c in present:
        tp = conf[c, c]
        fp, fn = conf[:, c].sum() - tp, conf[c].sum() - tp
        iou[classes[c]] = round(float(tp / (tp + fp + fn)), 4)
        dice[classes[c]] = round(float(2 * tp / (2 * tp + fp + fn)), 4)
    total = conf.sum()
    return {"per_class_iou": iou, "mean_iou": round(float(np.mean(list(iou.values()))), 4) if iou else None,
            "per_class_dice": dice, "mean_dice": round(float(np.mean(list(dice.values()))), 4) if dice else None,
            "pixel_accuracy": round(float(np.trace(conf) / total), 4) if total else None,
            "pixels_scored": int(total), "truth_pixels": {classes[c]: int(conf[c].sum()) for c in present}}


def evaluate_segmentation(train: list[str | Path], test: str | Path, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
                          progress=None, shuffle_masks: bool = False) -> tuple[dict, dict]:
    """Train on the ``train`` folders, test on ``test``; returns ``(result, extras)`` (``extras``:
    the test tiles and predictions for :func:`sheet`).  ``shuffle_masks`` pairs every training
    image with another tile's mask (seeded): the control a useful measure must fail."""
    if epochs < 1:
        raise SegmentationError(f"--epochs must be at least 1, got {epochs}")
    tr = _merge([load_tiles(f) for f in train], "--train")
    te = load_tiles(test)
    if te.classes != tr.classes:
        raise SegmentationError(f"--test names other classes ({te.classes}) than --train ({tr.classes})")
    if shuffle_masks:
        order = np.random.default_rng(seed + 99).permutation(len(tr.masks))
        fitted = []
        for img, j in zip(tr.images, order):
            m = tr.masks[j]
            reps = (-(-img.shape[0] // m.shape[0]), -(-img.shape[1] // m.shape[1]))
            fitted.append(np.tile(m, reps)[: img.shape[0], : img.shape[1]])
        tr = TileSet(tr.images, fitted, tr.names, tr.classes, tr.colours, tr.unlabelled)
    net, info = train_segmenter(tr, epochs=epochs, seed=seed, progress=progress)
    preds = [predict(net, img) for img in te.images]
    result = {"protocol": PROTOCOL, "n_train": len(tr.images), "n_test": len(te.images),
              "n_train_unlabelled_skipped": tr.unlabelled, "classes": tr.classes[1:],
              **scores(te.masks, preds, tr.classes), **info, "seed": seed, "shuffled_masks": shuffle_masks}
    return result, {"test": te, "pred": preds}


def _colour_table(classes: list[str], colours: list[str]) -> np.ndarray:
    fallback = [(0, 0, 0), (232, 232, 232), (106, 45, 143), (232, 122, 176), (244, 163, 0), (42, 157, 143),
                (193, 18, 31), (58, 134, 255), (138, 201, 38), (109, 89, 122)]
    table = np.zeros((256, 3), np.uint8)
    for i in range(len(classes)):
        c = colours[i] if i < len(colours) else None
        try:
            table[i] = [int(c[j : j + 2], 16) for j in (1, 3, 5)] if c else fallback[i % len(fallback)]
        except (TypeError, ValueError):
            table[i] = fallback[i % len(fallback)]
    return table


def sheet(extras: dict, n: int = 6, seed: int = 0) -> np.ndarray:
    """Rows of test tiles: image | truth | prediction (class colours), up to ``n`` tiles."""
    te, preds = extras["test"], extras["pred"]
    table = _colour_table(te.classes, te.colours)
    idx = sorted(np.random.default_rng(seed).permutation(len(te.images))[:n].tolist())
    side = 192
    rows = []
    from PIL import Image

    def fit(a, nearest=False):
        im = Image.fromarray(a)
        return np.asarray(im.resize((side, side), Image.Resampling.NEAREST if nearest else Image.Resampling.BOX))

    for i in idx:
        cells = [fit(te.images[i]), fit(table[te.masks[i].clip(0, 255)], True), fit(table[preds[i].clip(0, 255)], True)]
        rows.append(np.concatenate([np.pad(c, ((3, 3), (3, 3), (0, 0)), constant_values=255) for c in cells], 1))
    return np.concatenate(rows, 0)


def write_outputs(out: str | Path, result: dict, extras: dict) -> list[Path]:
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "segmentation.json").write_text(json.dumps(result, indent=2) + "\n")
    Image.fromarray(sheet(extras, seed=result["seed"])).save(out / "segmentation.png")
    return [out / "segmentation.json", out / "segmentation.png"]
