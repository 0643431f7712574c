"""Guidance distillation: teach a whole-label-map UNet to give, in one pass, the guided ε that
classifier-free guidance makes from two (Meng et al., "On distillation of guided diffusion models",
CVPR 2023, the first of its two stages).

The teacher is a trained model's UNet, frozen; the target for a noised training latent is what
:func:`~src_models.sampling.guidance.guided_eps` makes from it at the card's default ω (per class
too).  The student starts as a copy of the teacher.  With ``parts="cond"`` only the condition branch
learns (the class embedding, ``cond_in`` and every block's ``cond`` convolution, about 15 % of the
weights): the file it writes holds only those tensors, so a model ships the student for a few MB
beside its teacher.  The sampler runs the student with ω 0, one pass per window instead of two,
where a run asks for the ω it was distilled at (``src_models/synthesis/run.py``).

    diffinfinite distil --model default --data DIR --out NEW_MODEL_DIR [--steps N] [--resume]

writes a new model directory: the source model's files and card, plus ``unet_guided.safetensors``
and the card's ``guided_unet`` entry.  Nothing of the source model is changed.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from src_models.training.train import LatentCrops, StepLoss, TrainError, load_training_set, run_loop

GUIDED_FILE = "unet_guided.safetensors"
PARTS = ("cond", "all")


def cond_branch(name: str) -> bool:
    """Whether a UNet tensor belongs to the condition branch (what ``parts="cond"`` trains)."""
    return name == "class_emb" or name.startswith("cond_in.") or ".cond." in name


def trainable_names(unet, parts: str) -> list[str]:
    if parts not in PARTS:
        raise TrainError(f"parts must be one of {', '.join(PARTS)}, got {parts!r}")
    names = [n for n, _ in unet.named_parameters()]
    return names if parts == "all" else [n for n in names if cond_branch(n)]


def guided_target(teacher, xt, t, mask, omega, max_batch: int = 64) -> torch.Tensor:
    """The teacher's guided ε for noised latents ``xt`` at steps ``t`` under label maps ``mask``."""
    from src_models.sampling.guidance import guided_eps

    with torch.no_grad():
        return guided_eps(teacher, xt, t, mask, omega, max_batch=max_batch)


def residual_ratio(student, teacher, batch, omega) -> float:
    """How much of the guidance the student has not learned: E|student − guided|² over
    E|cond − guided|² (the teacher's plain conditional pass) on ``batch`` = (xt, t, mask).
    1: no better than running the teacher unguided; 0: the guided ε exactly."""
    dev = next(teacher.parameters()).device
    xt, t, mask = (v.to(dev) for v in batch)
    with torch.no_grad():
        target = guided_target(teacher, xt, t, mask, omega)
        cond = teacher(xt, t, mask).float()
        own = student(xt, t, mask).float()
    gap = (cond - target).pow(2).mean()
    return float((own - target).pow(2).mean() / gap.clamp(min=1e-20))


def _probe(crops: LatentCrops, alphas, n: int, seed: int, t_below: int):
    """A fixed batch of noised latents, at timesteps below ``t_below``, to score the student on (its
    own random stream)."""
    g = torch.Generator().manual_seed(seed)
    keep = crops.gen
    crops.gen = g
    try:
        z0, mask, _ = crops.sample(n)
    finally:
        crops.gen = keep
    t = torch.randint(0, t_below, (n,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    a = alphas[t].view(-1, 1, 1, 1)
    return a.sqrt() * z0.cpu() + (1 - a).sqrt() * noise, t, mask


class _Trainable(torch.nn.Module):
    """A UNet seen through the names that learn: the optimiser, the gradient clipping and the EMA
    take ``parameters()`` from here; checkpoints hold the whole network."""

    def __init__(self, net, names):
        super().__init__()
        self.net, self.names = net, frozenset(names)

    def parameters(self, recurse: bool = True):
        return (p for n, p in self.net.named_parameters() if n in self.names)


def distil_guidance(model, data, work_dir: str | Path, *, steps: int = 1500, parts: str = "cond", crop: int | None = None,
                    batch: int = 16, lr: float = 1e-4, ema_decay: float = 0.999, ckpt_every: int = 250,
                    log_every: int = 10, resume: bool = False, seed: int = 0, progress: bool = True,
                    stop_at: int | None = None, probe: int = 64, device: str | torch.device = "cpu",
                    t_below: int | None = None, from_student: bool = False):
    """Train a guidance-distilled student of ``model``'s UNet on ``data`` (a TrainingSet) at the
    card's default ω; returns ``(student_tensors, info)``: the EMA student's trained tensors and
    what the card records (ω, parts, steps, the residual ratio before and after on a fixed probe).
    ``t_below`` (default: every level) trains, and probes, at timesteps below it only: the levels a
    run with that guidance limit hands the student (``--guidance-below``).  ``from_student``: start
    from the model's own student (its card's ``guided_unet``, same ``parts``) instead of a copy of
    the teacher.  The random numbers are drawn on the CPU (the same run on any ``device``); the
    networks run on ``device``."""
    from src_models.sampling.guidance import LABEL_MAP, omega_vector
    from src_models.sampling.schedule import TRAIN_STEPS, cosine_alphas_cumprod
    from src_models.synthesis.request import sampling_defaults

    card = model.card
    if card.conditioning != LABEL_MAP:
        raise TrainError(f"guidance distillation needs a whole-label-map model; {card.name!r} is {card.conditioning}")
    if data.num_classes != card.num_classes:
        raise TrainError(f"the data has {data.num_classes} classes, model {card.name!r} {card.num_classes}")
    d = sampling_defaults(card)
    omega = omega_vector(card.num_classes, d["omega"], d["omega_per_class"])
    if not bool((omega != 0).any()):
        raise TrainError(f"model {card.name!r} samples unguided by default (ω 0): there is nothing to distil")
    t_below = TRAIN_STEPS if t_below is None else int(t_below)
    if not 1 <= t_below <= TRAIN_STEPS:
        raise TrainError(f"t_below must be from 1 to {TRAIN_STEPS}, got {t_below}")
    work_dir, device = Path(work_dir), torch.device(device)
    teacher = model.unet.float().to(device).eval().requires_grad_(False)
    if from_student:
        from src_models.models.loading import ModelError, guided_network

        own = card.guided_unet or {}
        if own.get("parts", parts) != parts:
            raise TrainError(f"model {card.name!r}'s student trained parts={own.get('parts')}, not {parts}")
        try:
            student = copy.deepcopy(guided_network(model)).float().to(device)
        except ModelError as e:
            raise TrainError(str(e)) from None
    else:
        student = copy.deepcopy(teacher)
    names = set(trainable_names(student, parts))
    for n, p in student.named_parameters():
        p.requires_grad_(n in names)
    ema = copy.deepcopy(student).requires_grad_(False)
    crop = int(crop or card.patch_px)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 2)
    crops = LatentCrops(data.tiles, model.codec.to(device).eval(), crop, gen, device=device, progress=progress)
    alphas = cosine_alphas_cumprod()
    probe_batch = _probe(crops, alphas, probe, seed + 1000, t_below)
    before = residual_ratio(student, teacher, probe_batch, omega)

    def draw(step, lo, hi):
        z0, mask, _ = crops.sample(batch)
        t = torch.randint(0, t_below, (batch,), generator=gen)
        noise = torch.randn((batch, *z0.shape[1:]), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt, t, mask = (a.sqrt() * z0.cpu() + (1 - a).sqrt() * noise).to(device), t.to(device), mask.to(device)
        return xt, t, mask, guided_target(teacher, xt, t, mask, omega)

    def loss(data, i, j):
        xt, t, mask, target = data
        return F.mse_loss(student(xt, t, mask).float(), target)

    info = run_loop("distil", _Trainable(student, names), StepLoss(batch, draw, loss), work_dir, steps, lr, gen,
                    ema=_Trainable(ema, names), ema_decay=ema_decay, ckpt_every=ckpt_every, log_every=log_every,
                    resume=resume, progress=progress, warmup=min(100, steps // 10 + 1), stop_at=stop_at)
    ema.eval()
    after = residual_ratio(ema, teacher, probe_batch, omega)
    tensors = {n: p.detach().cpu().contiguous() for n, p in ema.named_parameters() if n in names}
    entry = {"file": GUIDED_FILE, "omega": float(d["omega"]),
             "omega_per_class": {str(k): float(v) for k, v in sorted(d["omega_per_class"].items())},
             "parts": parts, "steps": int(info["step"]), "batch": int(batch), "lr": float(lr),
             "residual_before": round(before, 4), "residual_after": round(after, 4),
             "probe": int(probe), "seconds": round(float(info["seconds"]), 1)}
    if t_below < TRAIN_STEPS:
        entry["t_below"] = t_below
    return tensors, entry


def build_parser(prog: str = "diffinfinite distil") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Distil a model's guided sampling (its card's default ω) "
                                "into a student that needs one network pass per window instead of two; writes a new "
                                "model directory (the source model is not changed).")
    p.add_argument("--model", default="default", help="model to distil: a built-in name or a model directory")
    p.add_argument("--data", required=True, help="training folder (images/, masks/, classes.json) the model was trained on")
    p.add_argument("--out", required=True, help="new model directory to write (must not exist)")
    p.add_argument("--work", help="checkpoints and logs (default: OUT.train next to OUT)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the work directory")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--stop-at", type=int, default=None, help="end this run (with a checkpoint) at this step of the schedule")
    p.add_argument("--parts", choices=PARTS, default="cond",
                   help="cond (default): only the condition branch learns and is written (a few MB); all: the whole UNet")
    p.add_argument("--t-below", type=int, default=None, metavar="T",
                   help="train at the noise levels with timestep below T only (1 to 1000; default: every level): "
                   "the levels a run guided below T hands the student (--guidance-below T, the card's "
                   "default_guidance_below); the card records it, and a run never gives such a student the levels "
                   "above T")
    p.add_argument("--from-student", action="store_true",
                   help="start from the model's own student (its card's guided_unet) instead of a copy of the teacher")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def _write_model(source_dir: Path, out: Path, tensors: dict, entry: dict, argv: list[str]) -> None:
    """The source model's files and card, the student's tensors and the card's entry, put in place whole."""
    from safetensors.torch import save_file

    from src_models.durable import atomic_dir
    from src_models.models.card import ModelCard

    card = ModelCard.load(source_dir)
    card.guided_unet = {**entry, "command": "diffinfinite distil " + " ".join(argv)}
    card.validate()
    with atomic_dir(out) as tmp:
        for f in sorted(source_dir.glob("*.safetensors")):
            if f.name != GUIDED_FILE:
                shutil.copy2(f, tmp / f.name)
        save_file(tensors, str(tmp / GUIDED_FILE))
        card.save(tmp)


def main(argv: list[str] | None = None, prog: str = "diffinfinite distil") -> int:
    from src_models.models.card import BUILTIN_DIRS
    from src_models.models.device import resolve_device
    from src_models.models.loading import load_model

    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser(prog).parse_args(argv)
    out = Path(a.out)
    work = Path(a.work) if a.work else out.with_name(out.name + ".train")
    try:
        if out.exists():
            raise TrainError(f"{out} exists; distil writes a new model directory (choose another --out)")
        for name, v, low in (("--steps", a.steps, 1), ("--batch", a.batch, 1)):
            if v < low:
                raise TrainError(f"{name} must be at least {low}, got {v}")
        if a.t_below is not None and not 1 <= a.t_below <= 1000:
            raise TrainError(f"--t-below must be from 1 to 1000, got {a.t_below}")
        source = BUILTIN_DIRS.get(str(a.model), Path(a.model))
        if not (source / "card.json").is_file():
            raise TrainError(f"--model {a.model}: not a model directory with card.json")
        model = load_model(source)
        if a.from_student and not model.card.guided_unet:
            raise TrainError(f"--from-student: model {model.card.name!r} has no distilled student")
        data = load_training_set(a.data, model.card.classes, model.card.colours)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        tensors, entry = distil_guidance(model, data, work, steps=a.steps, parts=a.parts, batch=a.batch, lr=a.lr,
                                         ema_decay=a.ema, ckpt_every=a.ckpt_every, resume=a.resume, seed=a.seed,
                                         progress=not a.no_progress, stop_at=a.stop_at,
                                         device=resolve_device(a.device), t_below=a.t_below,
                                         from_student=a.from_student)
        if entry["steps"] < a.steps:
            print(f"stopped at step {entry['steps']} of {a.steps} (continue with --resume); residual "
                  f"{entry['residual_before']:.3f} -> {entry['residual_after']:.3f}", file=sys.stderr)
            (work / "partial.json").write_text(json.dumps(entry, indent=2) + "\n")
            return 0
        _write_model(source, out, tensors, entry, argv)
        load_model(out)  # the directory must load as written
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model written to {out} ({time.perf_counter() - t0:.0f} s this run; residual of the guidance "
          f"{entry['residual_before']:.3f} -> {entry['residual_after']:.3f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m src_models.training.distil"))
