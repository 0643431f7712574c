"""Training module v1: train the latent codec and the label-map-conditioned image UNet from a
folder of RGB tiles with optional label masks.  Headless (torch + numpy + PIL/tifffile).

Data folder::

    DATA/images/<name>.png|.tif|.tiff|.jpg   RGB tiles of any size (a whole slide is fine:
                                             it is sampled as random crops)
    DATA/masks/<name>.png|.tif|.tiff|.npy    optional uint8 label map of the same size
    DATA/classes.json                         optional {"classes": [...], "colours": ["#rrggbb", ...]}

(``images/`` may be omitted: then the image files sit in DATA itself.)  A tile without a mask is
*unlabelled* and trains as class 0 everywhere, the release's semi-supervised scheme: class 0
("unknown") is also the null condition of classifier-free guidance.  Labelled crops additionally
lose their mask (become all 0) with probability ``p_uncond``, so the null pass also learns from
labelled tissue.

Stages (one command runs both; each resumes from its last checkpoint):

1. codec: the :class:`~src_models.models.native.autoencoder.NativeAutoencoder` with L1 + gradient (finite
   difference) loss and a little latent noise; then the latent shift/scale are fitted on the data.
   Skipped with ``--codec identity`` or ``--codec MODEL_DIR`` (reuse a trained model's codec).
2. unet: every tile is encoded once in its 8 dihedral orientations (deterministic encode, so the
   cache is exact), and the :class:`~src_models.models.native.unet.NativeUNet` learns ε-prediction (L2) on random
   latent crops under the cosine schedule.  An EMA copy of the weights is kept; it is what the
   model directory holds.

Work directory (``--work``, default ``OUT.train``): ``checkpoints/<stage>/step_XXXXXXX/``
(``model.safetensors``, ``ema.safetensors``, ``optim.pt`` holding only tensors and plain
containers, loaded with ``weights_only=True``, and ``state.json``), ``logs/<stage>.csv`` with
``step,loss,lr,seconds``, and ``codec_final/``.  The model directory ``OUT`` is written at the end
with :func:`src_models.models.loading.save_model`.

Under ``torchrun`` the same command trains data-parallel (:mod:`src_models.training.distributed`): ``--batch``
and ``--codec-batch`` are global batches, each process trains its shard (in micro-batches of
``--micro-batch`` with gradient accumulation), and rank 0 alone writes logs, checkpoints and the
model; checkpoints resume exactly with any number of processes.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from src_models.models.card import ModelCard
from src_models.durable import atomic_dir
from src_models.io.images import IMAGE_EXTS, read_rgb
from src_models.io.masks import MASK_EXTS
from src_models.errors import DiffInfiniteError

DEFAULT_COLOURS = ["#000000", "#e8e8e8", "#6a2d8f", "#e87ab0", "#f4a300", "#2a9d8f", "#c1121f", "#3a86ff", "#8ac926", "#6d597a"]
DEFAULT_UNET = {"base": 32, "mults": [1, 2, 3], "blocks": 2, "cond_dim": 32, "heads": 4, "groups": 8, "mid_attention": True}
DEFAULT_CODEC = {"widths": [32, 64, 96], "latent_channels": 4, "mid_blocks": 2}


class TrainError(DiffInfiniteError, ValueError):
    """Bad training input (message says what and where)."""


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class Tile:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) uint8 labels, or None when unlabelled

    @property
    def labelled(self) -> bool:
        return self.mask is not None


@dataclass
class TrainingSet:
    tiles: list[Tile]
    classes: list[str]
    colours: list[str]
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _read_mask(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(str(path)))
    else:
        from PIL import Image

        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise TrainError(f"{path}: a mask must be a single-channel label image, not mode {im.mode}")
            arr = np.asarray(im)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise TrainError(f"{path}: a mask must be a 2-D label image, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > 255:
        raise TrainError(f"{path}: labels must lie in 0..255")
    return arr.astype(np.uint8)


def find_pairs(data_dir: str | Path) -> list[tuple[Path, Path | None]]:
    """(image, mask or None) for every image file of a training folder, sorted by name."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TrainError(f"training data folder {data_dir} does not exist")
    img_dir = data_dir / "images" if (data_dir / "images").is_dir() else data_dir
    mask_dir = data_dir / "masks"
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise TrainError(f"no images ({', '.join(IMAGE_EXTS)}) in {img_dir}")
    pairs = []
    for p in images:
        mask = None
        if mask_dir.is_dir():
            for ext in MASK_EXTS:
                cand = mask_dir / (p.stem + ext)
                if cand.is_file():
                    mask = cand
                    break
        pairs.append((p, mask))
    return pairs


def load_training_set(data_dir: str | Path, classes: list[str] | None = None, colours: list[str] | None = None) -> TrainingSet:
    """Read a training folder into memory and check its masks against the classes."""
    data_dir = Path(data_dir)
    tiles = []
    for img_path, mask_path in find_pairs(data_dir):
        img = read_rgb(img_path)
        mask = None
        if mask_path is not None:
            mask = _read_mask(mask_path)
            if mask.shape != img.shape[:2]:
                raise TrainError(f"{mask_path}: mask is {mask.shape[::-1]} px but its image is {img.shape[1::-1]} px")
        tiles.append(Tile(img_path.name, img, mask))
    meta = data_dir / "classes.json"
    if classes is None and meta.is_file():
        info = json.loads(meta.read_text())
        classes, colours = info.get("classes"), colours or info.get("colours")
    max_label = max((int(t.mask.max()) for t in tiles if t.mask is not None), default=1)
    if classes is None:
        classes = ["unknown"] + [f"class_{k}" for k in range(1, max(max_label, 1) + 1)]
    if colours is None:
        colours = [DEFAULT_COLOURS[k % len(DEFAULT_COLOURS)] for k in range(len(classes))]
    if len(colours) != len(classes):
        raise TrainError(f"{len(classes)} classes but {len(colours)} colours")
    if max_label >= len(classes):
        bad = [t.name for t in tiles if t.mask is not None and t.mask.max() >= len(classes)]
        raise TrainError(f"masks hold label {max_label} but there are only classes 0..{len(classes) - 1} (e.g. {bad[0]})")
    return TrainingSet(tiles, list(classes), list(colours), source=str(data_dir))


def dihedral(a: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 dihedral transforms of the last two dims (k in 0..7)."""
    if k >= 4:
        a = a.flip(-1)
    return torch.rot90(a, k % 4, dims=(-2, -1))


def _pad_to(img: np.ndarray, mask: np.ndarray | None, size: int, multiple: int):
    """Reflect-pad so both sides are >= size, then crop to a multiple of ``multiple``."""
    h, w = img.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "wrap"
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)
        if mask is not None:
            mask = np.pad(mask, ((0, ph), (0, pw)), mode=mode)
    h, w = img.shape[0] // multiple * multiple, img.shape[1] // multiple * multiple
    return img[:h, :w], (mask[:h, :w] if mask is not None else None)


class PixelCrops:
    """Random crops (with a random dihedral transform) of the tiles, in pixel space."""

    def __init__(self, tiles: list[Tile], crop: int, generator: torch.Generator):
        self.crop, self.gen = crop, generator
        self.images, self.masks = [], []
        for t in tiles:
            img, mask = _pad_to(t.image, t.mask, crop, 1)
            self.images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous())
            self.masks.append(torch.from_numpy(mask.astype(np.int64))[None] if mask is not None else None)
        w = torch.tensor([(i.shape[1] - crop + 1) * (i.shape[2] - crop + 1) for i in self.images], dtype=torch.float64)
        self.weights = w / w.sum()

    def sample(self, n: int, keep: tuple[int, int] | None = None):
        """(img (n,3,c,c) float in [0,1], mask (n,1,c,c) long, labelled (n,) bool).

        ``keep=(lo, hi)``: the random numbers of all ``n`` crops are drawn (the stream does not
        depend on the part kept), but only crops lo..hi are cut and returned (a rank's shard)."""
        c = self.crop
        lo, hi = keep if keep is not None else (0, n)
        idx = torch.multinomial(self.weights, n, replacement=True, generator=self.gen)
        imgs, masks, lab = [], [], []
        for j, i in enumerate(idx.tolist()):
            im = self.images[i]
            y = int(torch.randint(0, im.shape[1] - c + 1, (1,), generator=self.gen))
            x = int(torch.randint(0, im.shape[2] - c + 1, (1,), generator=self.gen))
            k = int(torch.randint(0, 8, (1,), generator=self.gen))
            if not lo <= j < hi:
                continue
            imgs.append(dihedral(im[:, y : y + c, x : x + c], k))
            m = self.masks[i]
            masks.append(dihedral(m[:, y : y + c, x : x + c], k) if m is not None else torch.zeros(1, c, c, dtype=torch.long))
            lab.append(m is not None)
        return torch.stack(imgs).float() / 255.0, torch.stack(masks), torch.tensor(lab)


@torch.no_grad()
def encode_large(codec, img: torch.Tensor, tile: int = 512, margin: int = 64, device="cpu", raw: bool = False) -> torch.Tensor:
    """Encode a (3, H, W) image in [0, 1] (sides multiples of the codec factor) tile by tile.

    The native codec is local (no normalisation over space), so tiles with ``margin`` px of
    context stitch into the encoding of the whole image.
    """
    f = codec.factor
    enc = codec.encode_raw if raw else codec.encode
    _, H, W = img.shape
    tile, margin = max(f, tile // f * f), max(0, margin // f * f)
    out = None
    for y0 in range(0, H, tile):
        for x0 in range(0, W, tile):
            y1, x1 = min(H, y0 + tile), min(W, x0 + tile)
            ya, xa = max(0, y0 - margin), max(0, x0 - margin)
            yb, xb = min(H, y1 + margin), min(W, x1 + margin)
            z = enc(img[None, :, ya:yb, xa:xb].to(device)).float().cpu()[0]
            if out is None:
                out = torch.empty(z.shape[0], H // f, W // f)
            out[:, y0 // f : y1 // f, x0 // f : x1 // f] = z[:, (y0 - ya) // f : (y1 - ya) // f, (x0 - xa) // f : (x1 - xa) // f]
    return out


def class_balance(tiles: list[Tile], beta: float) -> list[float]:
    """A sampling weight per tile that favours tiles of rare classes: the mean over the tile's pixels
    of f_c ** -beta, where f_c is class c's share of all labelled pixels (beta 0: every pixel alike,
    beta 1: every class alike; 0.5 is square-root balancing).  Unlabelled tiles get the mean weight
    of a labelled pixel, so they keep their share of the crops."""
    masks = [t.mask for t in tiles if t.mask is not None]
    if beta == 0 or not masks:
        return [1.0] * len(tiles)
    counts = sum(np.bincount(m.ravel(), minlength=256).astype(np.float64) for m in masks)
    share = counts / counts.sum()
    per_class = np.where(share > 0, np.maximum(share, 1e-6) ** -beta, 0.0)
    neutral = float((share * per_class).sum())
    out = []
    for t in tiles:
        if t.mask is None:
            out.append(neutral)
        else:
            h = np.bincount(t.mask.ravel(), minlength=256).astype(np.float64)
            out.append(float((h / h.sum() * per_class).sum()))
    return out


class LatentCrops:
    """Random latent crops from a cache of every tile encoded in its 8 dihedral orientations.
    ``balance``: :func:`class_balance`'s beta for the choice of tile (0: by area alone)."""

    def __init__(self, tiles: list[Tile], codec, crop_px: int, generator: torch.Generator, device="cpu", progress=False,
                 balance: float = 0.0):
        from tqdm import tqdm

        f = codec.factor
        if crop_px % f:
            raise TrainError(f"crop {crop_px} px is not a multiple of the codec factor {f}")
        self.crop, self.f, self.gen = crop_px // f, f, generator
        self.latents, self.masks = [], []
        for t in tqdm(tiles, desc="encode tiles", file=sys.stderr, disable=not progress, leave=False):
            img, mask = _pad_to(t.image, t.mask, crop_px, f)
            im = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
            m = torch.from_numpy(mask.astype(np.int64))[None] if mask is not None else None
            for k in range(8):
                self.latents.append(encode_large(codec, dihedral(im, k).contiguous(), device=device).half())
                self.masks.append(dihedral(m, k).contiguous().to(torch.uint8) if m is not None else None)
        c = self.crop
        w = torch.tensor([(z.shape[1] - c + 1) * (z.shape[2] - c + 1) for z in self.latents], dtype=torch.float64)
        w = w * torch.tensor(class_balance(tiles, balance), dtype=torch.float64).repeat_interleave(8)
        self.weights = w / w.sum()

    def sample(self, n: int, keep: tuple[int, int] | None = None):
        """(latent (n,C,c,c) float, mask (n,1,c·f,c·f) long, labelled (n,) bool); ``keep`` as
        for :meth:`PixelCrops.sample`."""
        c, f = self.crop, self.f
        lo, hi = keep if keep is not None else (0, n)
        idx = torch.multinomial(self.weights, n, replacement=True, generator=self.gen)
        zs, masks, lab = [], [], []
        for j, i in enumerate(idx.tolist()):
            z = self.latents[i]
            y = int(torch.randint(0, z.shape[1] - c + 1, (1,), generator=self.gen))
            x = int(torch.randint(0, z.shape[2] - c + 1, (1,), generator=self.gen))
            if not lo <= j < hi:
                continue
            zs.append(z[:, y : y + c, x : x + c])
            m = self.masks[i]
            if m is None:
                masks.append(torch.zeros(1, c * f, c * f, dtype=torch.long))
            else:
                masks.append(m[:, y * f : (y + c) * f, x * f : (x + c) * f].long())
            lab.append(m is not None)
        return torch.stack(zs).float(), torch.stack(masks), torch.tensor(lab)


# --------------------------------------------------------------------------------------------
# the loop: checkpoints, resume, CSV log, progress
# --------------------------------------------------------------------------------------------
def lr_at(step: int, steps: int, base: float, warmup: int = 100, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor``·base at the last step."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    prog = min(1.0, step / max(1, steps))
    return base * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog)))


def _state_cpu(module) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def init_weights(module: torch.nn.Module, path: str | Path, what: str) -> dict:
    """Start ``module`` from the tensors of a safetensors file (fine-tuning or transfer).

    Tensors are matched by name.  Where only the first dimension differs (the class embedding of a
    model with another number of classes) the common rows are copied and the rest keep their fresh
    initialisation.  Refuses a file that shares too little with ``module`` to be a start for it.
    Returns counts for the card."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{what}: no weights at {path}")
    try:
        source = load_file(str(path))
    except Exception as e:  # a damaged or foreign file: one line, not a traceback
        raise TrainError(f"{what}: cannot read {path}: {e}") from None
    own = module.state_dict()
    copied, partial, skipped = 0, [], []
    with torch.no_grad():
        for name, dst in own.items():
            src = source.get(name)
            if src is None:
                skipped.append(name)
            elif src.shape == dst.shape:
                dst.copy_(src)
                copied += 1
            elif src.dim() == dst.dim() and src.shape[1:] == dst.shape[1:]:
                n = min(src.shape[0], dst.shape[0])
                dst[:n].copy_(src[:n])
                partial.append(name)
            else:
                skipped.append(name)
    if copied + len(partial) < 0.9 * len(own):
        raise TrainError(f"{what}: {path} matches only {copied + len(partial)} of {len(own)} tensors "
                         f"(other architecture or widths?), e.g. {', '.join(skipped[:3])}")
    return {"from": str(path), "copied": copied, "rows_copied": partial, "fresh": skipped}


def checkpoints(stage_dir: Path) -> list[Path]:
    """Complete checkpoints of a stage (those with a state.json), oldest first."""
    if not stage_dir.is_dir():
        return []
    return sorted(p for p in stage_dir.glob("step_*") if p.is_dir() and (p / "state.json").is_file())


def save_checkpoint(stage_dir: Path, step: int, model, ema, opt, gen: torch.Generator, state: dict, keep: int = 2) -> Path:
    """Write ``step_XXXXXXX/`` atomically: into a temporary folder, every file fsync'd, then
    renamed (so a kill at any moment leaves the previous checkpoint as the last complete one)."""
    from safetensors.torch import save_file

    final = stage_dir / f"step_{step:07d}"
    with atomic_dir(final) as tmp:
        save_file(_state_cpu(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_state_cpu(ema), str(tmp / "ema.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "data_rng": gen.get_state(), "torch_rng": torch.get_rng_state()},
                   tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    for old in checkpoints(stage_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, model, ema, opt, gen: torch.Generator) -> dict:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
    if ema is not None:
        ema.load_state_dict(load_file(str(ckpt / "ema.safetensors")), strict=True)
    extra = torch.load(ckpt / "optim.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(extra["optimizer"])
    gen.set_state(extra["data_rng"])
    torch.set_rng_state(extra["torch_rng"])
    return json.loads((ckpt / "state.json").read_text())


class CsvLog:
    HEADER = ["step", "loss", "lr", "seconds"]

    def __init__(self, path: Path, resume_step: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.is_file() and resume_step > 0:  # keep rows up to the checkpoint we resume from
            with path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        self.fh = path.open("w", newline="")
        self.w = csv.writer(self.fh)
        self.w.writerow(self.HEADER)
        for r in rows:
            self.w.writerow([r[k] for k in self.HEADER])
        self.fh.flush()

    def write(self, step: int, loss: float, lr: float, seconds: float):
        self.w.writerow([step, f"{loss:.6f}", f"{lr:.3e}", f"{seconds:.1f}"])
        self.fh.flush()

    def close(self):
        self.fh.close()


@torch.no_grad()
def ema_update(ema, model, decay: float, step: int):
    d = min(decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - d)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class StepLoss:
    """A training step's loss in two parts, so one global batch can be split over processes and
    micro-batches without changing the random stream.

    ``draw(step, lo, hi)`` draws the random numbers of the whole global batch of ``batch``
    samples (the same on every rank) and returns samples lo..hi; ``loss(data, i, j)`` is the mean
    loss over samples i..j of what ``draw`` returned.  Called as ``loss_fn(step)`` it is the
    whole batch's loss in one piece: the single-process path, as it always was.  ``sharded`` is
    set by :func:`run_loop` while it uses the split form."""

    def __init__(self, batch: int, draw, loss):
        self.batch, self.draw, self.loss = int(batch), draw, loss
        self.sharded = False

    def __call__(self, step: int):
        return self.loss(self.draw(step, 0, self.batch), 0, self.batch)


def _part(t, i: int, j: int):
    """Rows i..j of a drawn tensor (the tensor itself when that is all of it)."""
    if t is None or (i == 0 and j == t.shape[0]):
        return t
    return t[i:j]


def _resume_state(stage_dir: Path, model, ema, opt, gen, resume: bool, par) -> dict:
    """The loop's state: fresh, or (``resume``) the last checkpoint of the stage loaded into
    ``model``, ``ema``, ``opt`` and ``gen``; every process agrees on which checkpoint that is."""
    existing = checkpoints(stage_dir)
    par.agree(existing[-1].name if existing else None, f"the last checkpoint in {stage_dir}")
    if not existing:
        return {"step": 0, "seconds": 0.0, "loss": float("nan")}
    if not resume:
        raise TrainError(f"{stage_dir} already holds checkpoints: pass --resume to continue or --overwrite to start over")
    return load_checkpoint(existing[-1], model, ema, opt, gen)


def _shards(stage: str, loss_fn, batch, par, micro_batch, before: dict):
    """How a step's batch is split: (lo, hi) of this rank's shard and the micro-batch ranges inside
    it, or ranges None when the whole batch runs as one (one process, no micro-batches).  Without
    ``micro_batch`` a resumed run takes its checkpoint's (``before``)."""
    from src_models.training.distributed import micro_ranges

    if micro_batch is None and before.get("micro_batch") and batch:
        micro_batch = int(before["micro_batch"])
    lo, hi = par.shard(batch) if batch else (0, 0)
    if not (par.world > 1 or bool(batch and micro_batch and micro_batch < hi - lo)):
        return lo, hi, None
    if not isinstance(loss_fn, StepLoss):
        raise TypeError("more than one process or micro-batches need a StepLoss")
    if hi - lo < 1:
        raise TrainError(f"the batch of {batch} is smaller than the {par.world} processes: each needs at least one sample")
    if micro_batch is not None and micro_batch < 1:
        raise TrainError(f"the micro-batch must be at least 1, got {micro_batch}")
    ranges = micro_ranges(hi - lo, micro_batch)
    loss_fn.sharded = True
    if par.main and before.get("batch") not in (None, batch):
        print(f"warning: {stage} resumes with a global batch of {batch}; its checkpoint was trained with "
              f"{before['batch']} (the run goes on, but not as one uninterrupted run)", file=sys.stderr)
    return lo, hi, ranges


def _backward(loss_fn, step: int, opt, ddp, ranges, lo: int, hi: int, batch, par) -> float:
    """The gradients of one step (gradient accumulation over the micro-batches of this rank's
    shard when ``ranges`` is given); returns the step's loss over the global batch."""
    from src_models.training.distributed import no_sync

    opt.zero_grad(set_to_none=True)
    if ranges is None:
        loss = loss_fn(step)
        loss.backward()
        return float(loss.detach())
    data = loss_fn.draw(step, lo, hi)
    value = 0.0
    for k, (i, j) in enumerate(ranges):
        with no_sync(ddp, k == len(ranges) - 1):
            loss = ddp(loss_fn.loss, data, i, j) if ddp is not None else loss_fn.loss(data, i, j)
            # DDP averages over the ranks: weight each part by its share of the global batch
            (loss * ((j - i) * par.world / batch)).backward()
        value += float(loss.detach()) * (j - i) / batch
    return value


# Over 80 lines on purpose: the signature and docstring take half; the rest is the one optimisation
# loop (resume, step, EMA, log, checkpoint, stop) whose order is the checkpoint contract.
def run_loop(
    stage: str,
    model,
    loss_fn,
    work_dir: Path,
    steps: int,
    lr: float,
    gen: torch.Generator,
    ema=None,
    ema_decay: float = 0.999,
    ckpt_every: int = 500,
    log_every: int = 10,
    resume: bool = False,
    progress: bool = True,
    warmup: int = 100,
    grad_clip: float = 1.0,
    stop_at: int | None = None,
    par=None,
    micro_batch: int | None = None,
    find_unused: bool = False,
) -> dict:
    """Optimise ``loss_fn(step) -> scalar`` for ``steps`` steps with AdamW; returns the final state.

    ``stop_at`` ends the run (with a checkpoint) at that step of the ``steps``-step schedule.

    ``par`` (a :class:`~src_models.training.distributed.Parallel`) and ``micro_batch``: with more than one
    process, or micro-batches smaller than a rank's shard, ``loss_fn`` must be a
    :class:`StepLoss`; each rank trains its shard of the global batch in micro-batches of at most
    ``micro_batch`` (gradient accumulation) under DistributedDataParallel, and only rank 0 keeps
    the EMA, the log, the progress bar and the checkpoints.  A checkpoint records the world size,
    global batch and micro-batch; resuming with another world size keeps the global batch, and
    without ``micro_batch`` uses the checkpoint's, so each process holds no more samples at once
    than before (the rest is accumulated)."""
    # Long on purpose: one optimiser step is schedule, accumulation, clipping, EMA, logging and
    # checkpoint, in the order a resume relies on (a checkpoint holds exactly the steps before it);
    # the parts that stand alone are _resume_state, _shards and _backward.
    from tqdm import tqdm

    from src_models.training.distributed import Parallel

    par = par or Parallel()
    main = par.main
    stage_dir = work_dir / "checkpoints" / stage
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    state = _resume_state(stage_dir, model, ema if main else None, opt, gen, resume, par)
    start = int(state["step"])
    batch = getattr(loss_fn, "batch", None)
    lo, hi, ranges = _shards(stage, loss_fn, batch, par, micro_batch, state.get("parallel") or {})
    sharded = ranges is not None
    ddp = par.wrap(model, find_unused) if sharded else None
    log = CsvLog(work_dir / "logs" / f"{stage}.csv", start) if main else None
    seconds0, t0 = float(state.get("seconds", 0.0)), time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc=stage, file=sys.stderr, disable=not (progress and main), mininterval=2.0,
               dynamic_ncols=True)
    acc, n_acc, last = 0.0, 0, state.get("loss", float("nan"))
    model.train()
    end = min(steps, stop_at) if stop_at else steps
    try:
        for step in range(start, end):
            cur_lr = lr_at(step, steps, lr, warmup)
            for g in opt.param_groups:
                g["lr"] = cur_lr
            value = _backward(loss_fn, step, opt, ddp, ranges, lo, hi, batch, par)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            if ema is not None and main:
                ema_update(ema, model, ema_decay, step)
            acc += value
            n_acc += 1
            done = step + 1
            bar.update(1)
            if done % log_every == 0 or done == end:
                last = par.sum(acc) / n_acc  # every rank takes part; rank 0 writes
                if log is not None:
                    log.write(done, last, cur_lr, seconds0 + time.perf_counter() - t0)
                bar.set_postfix(loss=f"{last:.4f}", refresh=False)
                acc, n_acc = 0.0, 0
            if done % ckpt_every == 0 or done == end:
                state = {"step": done, "seconds": seconds0 + time.perf_counter() - t0, "loss": last, "stage": stage}
                if sharded:
                    state["parallel"] = {"world_size": par.world, "batch": batch, "micro_batch": max(j - i for i, j in ranges)}
                if main:
                    save_checkpoint(stage_dir, done, model, ema, opt, gen, state)
        par.barrier()  # the last checkpoint is on disk before any rank goes on
    finally:
        bar.close()
        if log is not None:
            log.close()
        if isinstance(loss_fn, StepLoss):
            loss_fn.sharded = False
    model.eval()
    return {"step": max(start, end), "seconds": seconds0 + time.perf_counter() - t0, "loss": last}


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------
def _image_grad(x: torch.Tensor):
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def codec_loss(rec: torch.Tensor, img: torch.Tensor, grad_weight: float = 0.5) -> torch.Tensor:
    """L1 on pixels plus L1 on horizontal/vertical finite differences (keeps edges sharp)."""
    loss = (rec - img).abs().mean()
    (rx, ry), (ix, iy) = _image_grad(rec), _image_grad(img)
    return loss + grad_weight * ((rx - ix).abs().mean() + (ry - iy).abs().mean())


def latent_grid_pattern(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The part of each image in ``x`` (B, C, H, W) that repeats with the latent grid: per channel,
    the mean over all ``factor`` x ``factor`` cells of each of the ``factor``² pixel positions, less
    the mean over the positions; (B, C, factor, factor).  It holds exactly the image's Fourier
    components at multiples of 1/factor cycles/px (each summed with its aliases).  Real tissue has
    almost none (its content has no preferred phase against the grid); a decoder that upsamples
    from the latent grid paints one (stop 9, docs/default_model.md)."""
    b, c, h, w = x.shape
    h, w = h - h % factor, w - w % factor
    cells = x[..., :h, :w].reshape(b, c, h // factor, factor, w // factor, factor).mean(dim=(2, 4))
    return cells - cells.mean(dim=(2, 3), keepdim=True)


def grid_loss(rec: torch.Tensor, img: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean absolute difference between the reconstruction's and the image's
    :func:`latent_grid_pattern`: zero when the decoder adds nothing that repeats with the grid."""
    return (latent_grid_pattern(rec, factor) - latent_grid_pattern(img, factor)).abs().mean()


class PatchCritic(torch.nn.Module):
    """A small patch discriminator (70-px receptive field class): real/fake logits per patch.

    Used only while the codec trains: an L1 decoder averages over what it cannot predict and
    paints soft texture; the critic's hinge loss pushes the decoder towards crisp nuclei and
    fibres.  No normalisation layers (batch statistics would couple the crops of a batch)."""

    def __init__(self, width: int = 64, layers: int = 3):
        super().__init__()
        mods, cin = [], 3
        for i in range(layers):
            cout = width * min(2**i, 4)
            mods += [torch.nn.Conv2d(cin, cout, 4, stride=2 if i < layers - 1 else 1, padding=1),
                     torch.nn.LeakyReLU(0.2)]
            cin = cout
        mods.append(torch.nn.Conv2d(cin, 1, 4, padding=1))
        self.net = torch.nn.Sequential(*mods)

    def forward(self, img):
        return self.net(img * 2.0 - 1.0)


class CodecWithCritic(torch.nn.Module):
    """The codec and its critic as one module, so one optimiser, one checkpoint and the exact
    resume of :func:`run_loop` cover both."""

    def __init__(self, codec, critic):
        super().__init__()
        self.codec, self.critic = codec, critic


def adversarial_terms(critic, rec: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(generator term, critic term) of the hinge GAN loss, for one backward pass.

    The generator term sees the critic through detached weights, so its gradient reaches the
    codec only; the critic term sees the reconstruction detached, so its gradient reaches the
    critic only.  Their sum can therefore be minimised with one optimiser step."""
    frozen = {k: v.detach() for k, v in critic.named_parameters()}
    g_term = -torch.func.functional_call(critic, frozen, (rec,)).mean()
    d_term = F.relu(1.0 - critic(img)).mean() + F.relu(1.0 + critic(rec.detach())).mean()
    return g_term, d_term


# Over 80 lines on purpose: a 24-line signature and its docstring, then the stage's set-up, its
# optional critic and the latent statistics fit, which must run in this order inside one resume scope.
def train_codec(
    data: TrainingSet,
    work_dir: str | Path,
    *,
    steps: int = 3000,
    config: dict | None = None,
    crop: int = 64,
    batch: int = 16,
    lr: float = 1e-3,
    latent_noise: float = 0.05,
    gan_weight: float = 0.0,
    gan_start: int = 0,
    freeze_encoder: bool = False,
    grid_weight: float = 0.0,
    stop_at: int | None = None,
    ckpt_every: int = 500,
    log_every: int = 10,
    resume: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    par=None,
    micro_batch: int | None = None,
    init: str | Path | None = None,
):
    """Train the native autoencoder; fit its latent shift/scale on the data; returns it (eval mode).

    With ``gan_weight > 0`` a :class:`PatchCritic` joins from step ``gan_start`` on (hinge loss,
    the generator term weighted by ``gan_weight``).  With ``freeze_encoder`` the encoder stops
    learning at ``gan_start``: only the decoder (and critic) train on, so the latents, and an image
    model trained on them meanwhile, stay valid; frozen from step 0 with ``init``, the starting
    codec's latent normalisation is kept as it is (a decoder-only fine-tune).  The result is also written to
    ``work_dir/codec_final`` (a finished stage is not re-run on resume).

    ``batch`` is the global batch; ``par`` and ``micro_batch`` as for :func:`run_loop`.  ``init``: a
    codec ``.safetensors`` file to start from instead of random weights (ignored on resume, where the
    checkpoint holds the weights).
    """
    # Long on purpose: the codec's draw and loss are closures over this stage's options (crop, noise,
    # critic, frozen encoder) that run_loop calls per step and per micro-batch; split apart they
    # would pass a dozen values back and forth and read worse.
    from safetensors.torch import load_file, save_file

    from src_models.models.native.autoencoder import NativeAutoencoder

    work_dir, device = Path(work_dir), torch.device(device)
    config = dict(DEFAULT_CODEC, **(config or {}))
    final = work_dir / "codec_final"
    torch.manual_seed(seed)
    codec = NativeAutoencoder(**config).to(device)
    if par is not None:
        par.agree((final / "codec.safetensors").is_file(), f"whether {final} exists")
    if (final / "codec.safetensors").is_file() and resume:
        saved = json.loads((final / "codec.json").read_text())
        if saved["config"] != config:
            raise TrainError(f"{final} was trained with config {saved['config']}, not {config}")
        codec.load_state_dict(load_file(str(final / "codec.safetensors")), strict=True)
        return codec.eval()

    if init is not None:
        init_weights(codec, init, "--codec-init")
    gen = torch.Generator().manual_seed(seed + 1)
    crops = PixelCrops(data.tiles, crop, gen)
    trained = codec
    if gan_weight > 0:
        trained = CodecWithCritic(codec, PatchCritic()).to(device)
    if device.type == "cuda":
        trained = trained.to(memory_format=torch.channels_last)

    latent_side = crop // codec.factor

    def draw(step, lo, hi):
        img, _, _ = crops.sample(batch, keep=(lo, hi))
        noise = None
        if latent_noise and loss_fn.sharded:
            # the whole global batch's noise from the global CPU generator (as every rank has it),
            # so the stream is the same for any world size and is in the checkpoint
            noise = torch.randn(batch, codec.channels, latent_side, latent_side)[lo:hi]
        return step, img, noise

    def loss(data, i, j):
        step, img, noise = data
        img = _part(img, i, j).to(device)
        with _autocast(device):
            if freeze_encoder and step >= gan_start:
                with torch.no_grad():
                    z = codec.encode_raw(img)
            else:
                z = codec.encode_raw(img)
            if latent_noise:
                z = z + latent_noise * (torch.randn_like(z) if noise is None else _part(noise, i, j).to(z))
            rec = codec.decode_raw(z)
        loss = codec_loss(rec.float(), img)
        if grid_weight > 0:
            loss = loss + grid_weight * grid_loss(rec.float(), img, codec.factor)
        if gan_weight > 0 and step >= gan_start:
            g_term, d_term = adversarial_terms(trained.critic, rec.float(), img)
            loss = loss + gan_weight * g_term + d_term
        return loss

    loss_fn = StepLoss(batch, draw, loss)
    info = run_loop("codec", trained, loss_fn, work_dir, steps, lr, gen, ckpt_every=ckpt_every,
                    log_every=log_every, resume=resume, progress=progress, warmup=min(100, steps // 10 + 1),
                    stop_at=stop_at, par=par, micro_batch=micro_batch,
                    find_unused=gan_weight > 0 or freeze_encoder)
    codec.eval()
    raw = torch.cat([encode_large(codec, torch.from_numpy(np.array(_pad_to(t.image, None, crop, codec.factor)[0])).permute(2, 0, 1).float() / 255.0,
                                  device=device, raw=True).reshape(codec.channels, -1) for t in data.tiles], dim=1)
    if freeze_encoder and gan_start == 0 and init is not None:
        # the encoder never trained: the latents are the starting codec's, and so must their
        # normalisation be (recomputing it moves the scale in its last bits, and the card's codec
        # entry, which an image model trained on that codec carries, would no longer match)
        scale, shift = float(codec.latent_scale), [float(v) for v in codec.latent_shift]
    else:
        scale, shift = codec.set_normalisation(raw[None])
    if par is None or par.main:
        final.mkdir(parents=True, exist_ok=True)
        save_file(_state_cpu(codec), str(final / "codec.safetensors"))
        normed = (raw - torch.tensor(shift)[:, None]) / scale
        stats = {"config": config, "scale": scale, "shift": shift, "latent_std": float(normed.std()),
                 "loss": info["loss"], "steps": info["step"], "schedule_steps": steps, "seconds": info["seconds"],
                 "gan_weight": gan_weight, "gan_start": gan_start if gan_weight > 0 else None,
                 "encoder_frozen_from": gan_start if freeze_encoder else None, "grid_weight": grid_weight}
        (final / "codec.json").write_text(json.dumps(stats, indent=2) + "\n")
    if par is not None:
        par.barrier()  # codec_final is on disk before any rank goes on
    return codec


def codec_card_entry(codec) -> dict:
    """The card's ``codec`` dict for a codec module."""
    from src_models.models.codec import IdentityCodec

    if isinstance(codec, IdentityCodec):
        return {"type": "identity", "factor": 1, "channels": 3, "scale": 1.0}
    return {
        "type": "native",
        "factor": int(codec.factor),
        "channels": int(codec.channels),
        "scale": float(codec.latent_scale),
        "shift": [float(v) for v in codec.latent_shift],
        "config": dict(codec.config),
    }


# Over 80 lines on purpose: a 25-line signature and its docstring; the body is set-up then one
# call of run_loop.
def train_unet(
    data: TrainingSet,
    codec,
    work_dir: str | Path,
    *,
    steps: int = 4000,
    config: dict | None = None,
    crop: int = 128,
    batch: int = 16,
    lr: float = 2e-4,
    ema_decay: float = 0.999,
    p_uncond: float = 0.15,
    ckpt_every: int = 500,
    log_every: int = 10,
    resume: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    par=None,
    stop_at: int | None = None,
    micro_batch: int | None = None,
    init: str | Path | None = None,
    snr_gamma: float | None = None,
    balance: float = 0.0,
):
    """Train the native UNet on ``codec`` latents; returns ``(ema_unet, info)`` (the EMA is
    kept on rank 0 only).  ``batch`` is the global batch; ``par`` and ``micro_batch`` as for
    :func:`run_loop`.  ``init``: a UNet ``.safetensors`` file to start from (another number of
    classes is fine: the common class rows are copied).  ``snr_gamma``: weight each sample's ε loss
    by min(SNR, γ)/SNR (min-SNR weighting, Hang et al. 2023), which takes weight off the nearly
    clean timesteps; None keeps the plain L2.  ``balance``: crops favour tiles of rare classes
    (:func:`class_balance`)."""
    # Long on purpose: as train_codec, the draw and the loss (noise, class-drop for guidance, min-SNR
    # weights) are closures over this stage's options that run_loop calls per micro-batch.
    import copy

    from src_models.sampling.schedule import TRAIN_STEPS, cosine_alphas_cumprod
    from src_models.models.native.unet import NativeUNet

    work_dir, device = Path(work_dir), torch.device(device)
    config = dict(DEFAULT_UNET, **(config or {}))
    config.update(in_channels=int(codec.channels), num_classes=data.num_classes)
    torch.manual_seed(seed)
    unet = NativeUNet(**config)
    init_info = init_weights(unet, init, "--init") if init is not None else None
    unet = unet.to(device)
    if crop % (codec.factor * unet.size_multiple):
        raise TrainError(f"crop {crop} px must be a multiple of {codec.factor * unet.size_multiple} (codec factor x UNet size multiple)")
    ema = copy.deepcopy(unet).requires_grad_(False)
    if device.type == "cuda":
        unet = unet.to(memory_format=torch.channels_last)
        ema = ema.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed + 2)
    codec = codec.to(device).eval()
    crops = LatentCrops(data.tiles, codec, crop, gen, device=device, progress=progress and (par is None or par.main),
                        balance=balance)
    alphas = cosine_alphas_cumprod().to(device)

    def draw(step, lo, hi):
        # the random numbers of the whole global batch, in the order one process always drew them
        z0, mask, labelled = crops.sample(batch, keep=(lo, hi))
        drop = _part(torch.rand(batch, generator=gen), lo, hi) < p_uncond
        mask[drop] = 0  # condition dropout; unlabelled tiles are all 0 already
        t = _part(torch.randint(0, TRAIN_STEPS, (batch,), generator=gen), lo, hi)
        noise = _part(torch.randn((batch, *z0.shape[1:]), generator=gen), lo, hi)
        return z0, mask, t, noise

    def loss(data, i, j):
        z0, mask, t, noise = (_part(v, i, j) for v in data)
        z0, mask, t, noise = z0.to(device), mask.to(device), t.to(device), noise.to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with _autocast(device):
            eps = unet(xt, t, mask)
        if snr_gamma is None:
            return F.mse_loss(eps.float(), noise)
        snr = a.view(-1) / (1 - a.view(-1))
        weight = torch.where(snr > snr_gamma, snr_gamma / snr.clamp(min=1e-12), torch.ones_like(snr))
        return (weight * (eps.float() - noise).pow(2).mean(dim=(1, 2, 3))).mean()

    info = run_loop("unet", unet, StepLoss(batch, draw, loss), work_dir, steps, lr, gen, ema=ema, ema_decay=ema_decay,
                    ckpt_every=ckpt_every, log_every=log_every, resume=resume, progress=progress,
                    warmup=min(200, steps // 10 + 1), stop_at=stop_at, par=par, micro_batch=micro_batch)
    info["config"] = config
    info["init"] = init_info
    return ema.float().eval().to(memory_format=torch.contiguous_format), info


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def build_parser(prog: str = "diffinfinite train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train the project's codec and label-map-conditioned image model from a folder of tiles "
        "(DATA/images/*.png|tif|jpg, optional DATA/masks/<same name>.png label maps; unlabelled tiles train as class 0).",
    )
    p.add_argument("--data", required=True, help="training folder (images/, optional masks/ and classes.json)")
    p.add_argument("--out", required=True, help="model directory to write (card.json + safetensors)")
    p.add_argument("--work", help="checkpoints and logs (default: OUT.train next to OUT)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoints in the work directory")
    p.add_argument("--overwrite", action="store_true", help="delete an existing work directory and model directory first")
    p.add_argument("--name", default="native", help="model name in the card")
    p.add_argument("--classes", help="comma-separated class names after 'unknown' (default: DATA/classes.json or class_1..)")
    p.add_argument("--colours", help="comma-separated #rrggbb colours, one per class including 'unknown'")
    g = p.add_argument_group("codec")
    g.add_argument("--codec", default="train", help="'train' (default), 'identity', or a model directory whose codec to reuse")
    g.add_argument("--codec-steps", type=int, default=3000)
    g.add_argument("--codec-crop", type=int, default=64, help="crop side in px")
    g.add_argument("--codec-batch", type=int, default=16, help="global batch (over all processes under torchrun)")
    g.add_argument("--codec-micro-batch", type=int, default=None,
                   help="crops per process per forward pass; the rest of its share of the batch is accumulated")
    g.add_argument("--codec-lr", type=float, default=1e-3)
    g.add_argument("--codec-widths", default="32,64,96", help="encoder widths, full resolution first (factor = 2**(n-1))")
    g.add_argument("--codec-stop-at", type=int, default=None,
                   help="finish the codec at this step of its --codec-steps schedule (learning rate as for the full run)")
    g.add_argument("--codec-gan-weight", type=float, default=0.0,
                   help="weight of the patch critic's (hinge) term in the codec loss; 0 = L1 + gradient only "
                   "(experimental: 0.1 wrecked the colours of the default model's codec within 100 steps)")
    g.add_argument("--codec-gan-start", type=int, default=0, help="codec step at which the critic joins")
    g.add_argument("--codec-grid-weight", type=float, default=0.0,
                   help="weight of a loss on the pattern the decoder paints with the latent grid's period "
                   "(0 = none; the default model's trial decoder run dec4 used 10 and was not shipped: docs/default_model.md)")
    g.add_argument("--codec-init", help="start the codec from this model directory's codec weights (same widths)")
    g.add_argument("--codec-freeze-encoder", action="store_true",
                   help="from --codec-gan-start on, train the decoder only (the latents stay fixed)")
    g = p.add_argument_group("image model")
    g.add_argument("--steps", type=int, default=4000, help="UNet optimisation steps")
    g.add_argument("--stop-at", type=int, default=None,
                   help="finish the UNet at this step of its --steps schedule (learning rate as for the full run)")
    g.add_argument("--crop", type=int, default=128, help="training crop side in px (also the card's patch size)")
    g.add_argument("--batch", type=int, default=16,
                   help="global batch: under torchrun it is shared by the processes, so it stays the same for any world size")
    g.add_argument("--micro-batch", type=int, default=None,
                   help="crops per process per forward pass (default: its whole share of the batch, or on resume what "
                   "the checkpoint used); the rest is accumulated, the step sees the whole --batch")
    g.add_argument("--lr", type=float, default=2e-4)
    g.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    g.add_argument("--p-uncond", type=float, default=0.15, help="condition dropout for labelled crops")
    g.add_argument("--base", type=int, default=32, help="UNet base width")
    g.add_argument("--mults", default="1,2,3", help="UNet width multipliers per level")
    g.add_argument("--blocks", type=int, default=2, help="ResNet blocks per level")
    g.add_argument("--init", help="start the UNet from this model directory's UNet weights (same widths; "
                   "the class rows both models have are copied, so a model with other classes can start from it)")
    g.add_argument("--snr-gamma", type=float, default=None,
                   help="min-SNR loss weighting with this gamma (5 is usual); default: plain L2 on the noise")
    g.add_argument("--balance", type=float, default=0.0,
                   help="favour crops from tiles of rare classes: weight f_c^-BALANCE per pixel of class c "
                   "(0: by area, the default; 0.5: square-root balancing; 1: every class alike)")
    g = p.add_argument_group("run")
    g.add_argument("--ckpt-every", type=int, default=500)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N "
                   "(under torchrun: each process uses GPU LOCAL_RANK with NCCL, or the CPU with gloo)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--pixel-size-um", type=float, default=None, help="µm per pixel of the training images (for the card)")
    g.add_argument("--training-data", default="", help="training data description for the card")
    g.add_argument("--licence", default="", help="licence text for the card")
    g.add_argument("--description", default="", help="free text for the card (the command is appended)")
    return p


def _weights_file(model_dir: str, part: str) -> Path:
    """``unet.safetensors`` or ``codec.safetensors`` of a model directory (built-in names allowed)."""
    from src_models.models.card import BUILTIN_DIRS

    directory = BUILTIN_DIRS.get(model_dir, Path(model_dir))
    path = directory / f"{part}.safetensors"
    if not path.is_file():
        raise TrainError(f"{model_dir}: no {part}.safetensors there (a model directory written by train)")
    return path


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise TrainError(f"expected comma-separated integers, got {s!r}") from None


def main(argv: list[str] | None = None, prog: str = "diffinfinite train") -> int:
    """The command.  Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs it with the same
    arguments; they train one model data-parallel (see :mod:`src_models.training.distributed`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser(prog).parse_args(argv)
    par = None
    try:
        par = _setup_parallel(a)
        return _main(a, argv, prog, par)
    except DiffInfiniteError as e:  # TrainError, ModelError, ParallelError, MaskError ...
        if par is None or par.main:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if par is None or par.main:
            print("interrupted: rerun the same command with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        if par is not None:
            par.close()


def _setup_parallel(a):
    """The process group under torchrun (None for a single process, which keeps the device
    handling below exactly as it was)."""
    from src_models.training.distributed import launched, setup

    if not launched():
        return None
    for name in ("batch", "codec_batch", "micro_batch", "codec_micro_batch"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be positive")
    return setup(a.device)


def _prepare(a, par, out: Path, work: Path, main: bool):
    """Before any data is read: what ``--overwrite``/``--resume`` allow with the folders as they are,
    the device, and the step and batch options; returns the torch device."""
    if par is not None:
        par.agree(((out / "card.json").is_file(), work.is_dir()), f"whether {out} and {work} exist")
    if a.overwrite:
        if main:
            shutil.rmtree(work, ignore_errors=True)
            if (out / "card.json").is_file():
                shutil.rmtree(out)
        if par is not None:
            par.barrier()
    elif (out / "card.json").is_file() and not a.resume:
        raise TrainError(f"{out} already holds a model: pass --overwrite to replace it")
    if par is not None:
        device = par.device
    elif a.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(a.device)
        except RuntimeError as e:
            raise TrainError(f"bad --device {a.device!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrainError("--device cuda given but no CUDA device is available")
    for name in ("steps", "codec_steps", "batch", "codec_batch", "ckpt_every", "log_every"):
        if getattr(a, name) < (0 if name.endswith("steps") else 1):
            raise TrainError(f"--{name.replace('_', '-')} must be positive")
    for name in ("micro_batch", "codec_micro_batch"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be positive")
    world = par.world if par is not None else 1
    for name in ("batch", "codec_batch"):
        if getattr(a, name) < world:
            raise TrainError(f"--{name.replace('_', '-')} {getattr(a, name)} is smaller than the {world} processes "
                             f"(it is the global batch: each process needs at least one sample)")
    return device


def _trained_card(a, prog: str, argv: list[str], data, codec, info: dict, codec_info: dict, n_lab: int) -> ModelCard:
    """The card of the trained model: what it knows, how it was trained and how to do it again."""
    command = " ".join([prog] + [shlex.quote(v) for v in argv])
    description = (a.description + "\n\n" if a.description else "") + f"Reproduce with: {command}"
    card = ModelCard(
        name=a.name,
        classes=data.classes,
        colours=data.colours,
        conditioning="label_map",
        unet={"arch": "native", "config": info["config"]},
        codec=codec_card_entry(codec),
        patch_size=a.crop // codec.factor,
        pixel_size_um=a.pixel_size_um,
        training_data=a.training_data or f"{len(data.tiles)} tiles from {data.source} ({n_lab} labelled)",
        licence=a.licence,
        description=description,
        extra={
            "command": command,
            "unet_steps": min(a.steps, a.stop_at) if a.stop_at else a.steps,
            "unet_schedule_steps": a.steps,
            "unet_final_loss": info["loss"],
            "unet_train_seconds": round(info["seconds"], 1),
            "codec_steps": codec_info.get("steps"),
            "codec_final_loss": codec_info.get("loss"),
            "codec_train_seconds": round(codec_info["seconds"], 1) if codec_info else None,
            "latent_std": codec_info.get("latent_std"),
            "p_uncond": a.p_uncond,
            "ema": a.ema,
            "seed": a.seed,
            "tiles": len(data.tiles),
            "labelled_tiles": n_lab,
            "init": a.init,
            "codec_init": a.codec_init,
            "snr_gamma": a.snr_gamma,
            "balance": a.balance,
        },
    )
    return card


def _main(a, argv: list[str], prog: str, par=None) -> int:
    from src_models.models.codec import IdentityCodec
    from src_models.models.base import Model, save_model
    from src_models.models.loading import load_model

    main = par is None or par.main
    out = Path(a.out)
    work = Path(a.work) if a.work else out.with_name(out.name + ".train")
    # model directories to start from: checked before any data is read or anything is written
    unet_init = _weights_file(a.init, "unet") if a.init else None
    codec_init = _weights_file(a.codec_init, "codec") if a.codec_init else None

    device = _prepare(a, par, out, work, main)
    classes = colours = None
    if a.classes:
        classes = ["unknown"] + [c.strip() for c in a.classes.split(",") if c.strip()]
    if a.colours:
        colours = [c.strip() for c in a.colours.split(",")]
    data = load_training_set(a.data, classes, colours)
    n_lab = sum(t.labelled for t in data.tiles)
    if par is not None:
        par.agree([t.name for t in data.tiles], "the training tiles")
    if main:
        where = f"device {device}" if par is None else (
            f"{par.world} processes ({par.backend}; this one {device}); global batch {a.batch}"
            + (f", {a.codec_batch} for the codec" if a.codec == "train" else ""))
        print(f"{len(data.tiles)} tiles ({n_lab} labelled, {len(data.tiles) - n_lab} unlabelled as class 0), "
              f"classes: {', '.join(data.classes)}; {where}; work dir {work}", file=sys.stderr)
    work.mkdir(parents=True, exist_ok=True)
    progress = not a.no_progress

    t_start = time.perf_counter()
    codec_info: dict = {}
    if a.codec == "identity":
        codec = IdentityCodec()
    elif a.codec == "train":
        widths = _ints(a.codec_widths)
        codec = train_codec(data, work, steps=a.codec_steps, config={"widths": widths}, crop=a.codec_crop,
                            batch=a.codec_batch, lr=a.codec_lr, gan_weight=a.codec_gan_weight,
                            gan_start=a.codec_gan_start, freeze_encoder=a.codec_freeze_encoder,
                            grid_weight=a.codec_grid_weight, stop_at=a.codec_stop_at,
                            ckpt_every=a.ckpt_every, log_every=a.log_every,
                            resume=a.resume, device=device, seed=a.seed, progress=progress,
                            par=par, micro_batch=a.codec_micro_batch,
                            init=codec_init)
        codec_info = json.loads((work / "codec_final" / "codec.json").read_text())
    else:
        codec = load_model(a.codec).codec
    unet_cfg = {"base": a.base, "mults": _ints(a.mults), "blocks": a.blocks}
    ema, info = train_unet(data, codec, work, steps=a.steps, config=unet_cfg, crop=a.crop, batch=a.batch, lr=a.lr,
                           ema_decay=a.ema, p_uncond=a.p_uncond, ckpt_every=a.ckpt_every, log_every=a.log_every,
                           resume=a.resume, device=device, seed=a.seed, progress=progress,
                           par=par, micro_batch=a.micro_batch, stop_at=a.stop_at,
                           init=unet_init, snr_gamma=a.snr_gamma,
                           balance=a.balance)
    if not main:
        par.barrier()  # wait for rank 0 to write the model directory
        return 0
    card = _trained_card(a, prog, argv, data, codec, info, codec_info, n_lab)
    if par is not None:
        card.extra["processes"] = par.world
    try:
        card.validate()
        save_model(Model(card, ema.cpu(), codec.cpu()), out)
        load_model(out)  # the directory must load as written
    finally:
        if par is not None:
            par.barrier()
    print(f"model written to {out} ({time.perf_counter() - t_start:.0f} s this run; "
          f"unet loss {info['loss']:.4f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m src_models.training.train"))
