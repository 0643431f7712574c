"""Check a trained model by eye: sample images under a few mask layouts and lay them out as a
sheet (mask beside image).  Used for ``docs/sample_sheet.png`` and by the training checks.

``sample_window`` is a deliberately plain DDIM loop over whole windows (no patch plan), built from
the DDIM solver (:class:`src_models.sampling.solvers.DDIM`) and :func:`src_models.sampling.guidance.guided_eps`, for one window of
the model's patch size.  ``sample_image`` runs the project's sampler (random patch diffusion,
grid plan) over a larger image; the sheet uses it.

    python -m src_models.evaluation.sample_sheet --model default --out docs/sample_sheet.png
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def _omega(card, omega: float | None) -> tuple[float, dict[int, float]]:
    """ω and per-class ω: the card's (:func:`sampling_defaults`) where ``omega`` is None, else ``omega``
    for every class."""
    from src_models.synthesis.request import sampling_defaults

    if omega is not None:
        return omega, {}
    d = sampling_defaults(card)
    return d["omega"], d["omega_per_class"]


@torch.no_grad()
def sample_window(model, mask: torch.Tensor, steps: int = 50, omega: float | None = None, seed: int = 0, eta: float = 1.0,
                  max_batch: int = 16) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] for label masks ``mask`` (B, 1, H, W) long at pixel size.

    H and W must be multiples of the codec factor times the network's size multiple.
    """
    from src_models.sampling.guidance import guided_eps
    from src_models.sampling.setup import sampling_setup
    from src_models.sampling.solvers import make_solver

    card, net, codec = model.card, model.unet, model.codec
    device = next(net.parameters()).device
    if mask.dim() == 3:
        mask = mask[:, None]
    mask = mask.long().to(device)
    f = card.factor
    b, _, H, W = mask.shape
    if H % f or W % f:
        raise ValueError(f"mask size {H}x{W} is not a multiple of the codec factor {f}")
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(b, codec.channels, H // f, W // f, generator=gen).to(device)
    setup = sampling_setup(steps, card.num_classes, *_omega(card, omega))
    ddim = make_solver("ddim", setup.alphas, setup.pairs, eta)
    om = setup.omega.to(device)
    for t, t_next in setup.pairs:
        tt = torch.full((b,), t, dtype=torch.long, device=device)
        eps = guided_eps(net, x, tt, mask, om, conditioning=card.conditioning, max_batch=max_batch)
        noise = torch.randn(x.shape, generator=gen).to(device) if eta > 0 else None
        x, _, _ = ddim.step(x, eps, t, t_next, {}, noise if ddim.needs_noise(t_next) else None)
    return codec.decode(x.float()).clamp(0, 1).cpu()


@torch.no_grad()
def sample_image(model, mask: torch.Tensor, steps: int = 50, omega: float | None = None, seed: int = 0, eta: float = 1.0,
                 plan: str = "grid") -> torch.Tensor:
    """Image (3, H, W) in [0, 1] for one label mask (H, W) or (1, H, W) at pixel size, through
    :func:`src_models.sampling.sampler.sample_area` with windows of the card's patch size."""
    from src_models.sampling.sampler import sample_area
    from src_models.sampling.setup import sampling_setup

    card, net, codec = model.card, model.unet, model.codec
    device = next(net.parameters()).device
    mask = mask.reshape(1, *mask.shape[-2:]).long()
    f = card.factor
    H, W = mask.shape[-2] // f, mask.shape[-1] // f
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(codec.channels, H, W, generator=gen).to(device)
    setup = sampling_setup(steps, card.num_classes, *_omega(card, omega))
    z = sample_area(net, noise, mask.to(device), setup.alphas, setup.pairs, setup.omega,
                    window=min(card.patch_size, H, W), plan=plan,
                    eta=eta, generator=gen, rng=np.random.default_rng(seed), conditioning=card.conditioning)
    return codec.decode(z[None].float()).clamp(0, 1)[0].cpu()


def layouts(size: int) -> dict[str, np.ndarray]:
    """Four mask layouts (uint8, size x size) over the default model's classes
    (0 unknown, 1 glass, 2 epidermis, 3 dermis)."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = {}
    out["dermis"] = np.full((size, size), 3, np.uint8)
    out["epidermis"] = np.full((size, size), 2, np.uint8)
    m = np.full((size, size), 3, np.uint8)  # skin section: glass, epidermis band, dermis
    edge = size * 0.22 + size * 0.06 * np.sin(xx / size * 2 * np.pi)
    m[yy < edge] = 1
    m[(yy >= edge) & (yy < edge + size * 0.28)] = 2
    out["glass / epidermis / dermis"] = m
    q = np.zeros((size, size), np.uint8)  # quadrants: unknown, glass, epidermis, dermis
    q[: size // 2, size // 2 :] = 1
    q[size // 2 :, : size // 2] = 2
    q[size // 2 :, size // 2 :] = 3
    out["unknown | glass / epidermis | dermis"] = q
    return out


def make_sheet(model, size: int = 256, steps: int = 50, omega: float | None = None, seeds=(0, 1), eta: float = 1.0) -> np.ndarray:
    """RGB sheet: one row per layout, the coloured mask then one image per seed."""
    from PIL import Image, ImageDraw

    from src_models.data.masks_from_he import colourise

    card = model.card
    rows = []
    for title, m in layouts(size).items():
        m = np.clip(m, 0, card.num_classes - 1)
        mask = torch.from_numpy(m.astype(np.int64))
        imgs = [sample_image(model, mask, steps=steps, omega=omega, seed=s, eta=eta) for s in seeds]
        tiles = [colourise(m, card.colours)] + [(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in imgs]
        pad = np.full((size, 8, 3), 255, np.uint8)
        row = np.concatenate(sum(([t, pad] for t in tiles), [])[:-1], axis=1)
        head = Image.new("RGB", (row.shape[1], 18), "white")
        ImageDraw.Draw(head).text((4, 3), title, fill=(0, 0, 0))
        rows += [np.asarray(head), row, np.full((8, row.shape[1], 3), 255, np.uint8)]
    legend = Image.new("RGB", (rows[1].shape[1], 40), "white")
    d = ImageDraw.Draw(legend)
    x = 4
    for name, col in zip(card.classes, card.colours):
        d.rectangle([x, 5, x + 12, 17], fill=col, outline=(0, 0, 0))
        d.text((x + 16, 5), name, fill=(0, 0, 0))
        x += 26 + 7 * len(name)
    om, per_class = _omega(card, omega)
    omega = f"{om:g}" + "".join(f", {card.classes[k]} {v:g}" for k, v in sorted(per_class.items()))
    d.text((4, 24), f"model {card.name}: {steps} DDIM steps, eta {eta}, omega {omega}, seeds {list(seeds)}, "
                    f"{card.patch_px} px windows", fill=(0, 0, 0))
    return np.concatenate([np.asarray(legend)] + rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from src_models.models.loading import load_model

    p = argparse.ArgumentParser(prog="python -m src_models.evaluation.sample_sheet", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=256, help="image side in px")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--omega", type=float, default=None, help="guidance ω (default: the model card's)")
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    model = load_model(a.model, device=a.device)
    sheet = make_sheet(model, a.size, a.steps, a.omega, tuple(int(s) for s in a.seeds.split(",")), a.eta)
    Image.fromarray(sheet).save(a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
