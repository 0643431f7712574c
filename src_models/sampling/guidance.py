"""Classifier-free guidance as a wrapper around a denoiser.

A *denoiser* is any callable ``denoiser(x, t, mask) -> eps`` with
``x`` (B, C, h, w) float, ``t`` (B,) long and ``mask`` (B, 1, H, W) long class labels (H, W a
multiple of h, w).  Class 0 means "unknown": an all-zero mask is the null condition.

Two schemes, picked by the denoiser's ``conditioning`` attribute:

``"per_class"`` (the published models, which saw one class per training tile)
    one conditional pass per label present in a window, fed the binary mask of that label times
    the label, plus one shared null pass; ε = null + Σ_l [mask = l]·(ω_l + 1)·(cond_l − null).
``"label_map"`` (the project's own models, trained on whole label maps)
    one conditional pass with the whole label map plus one null pass;
    ε = null + (ω_{mask} + 1)·(cond − null), per pixel.  Where every class of a window has ω = 0 that
    is the conditional ε itself, so the window runs no null pass (:func:`free_labels`): with ω = 0 for
    every class, half the network calls.

All passes of all windows handed in are run through the network together, in chunks of at most
``max_batch``.

No host-device synchronisation: everything that decides the passes is planned on the CPU, and the
index tensors reach an accelerator by non-blocking copies from pinned memory
(:func:`host_to_device`).  Nothing reads a device tensor back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PER_CLASS = "per_class"
LABEL_MAP = "label_map"


@dataclass(frozen=True)
class Pass:
    window: int  # index of the window in the batch
    label: int  # -1 for the null pass, 0 for a whole-label-map pass, else the class


def host_to_device(a, device: torch.device | str) -> torch.Tensor:
    """A host array (numpy, list or CPU tensor) on ``device`` without synchronising with it.

    On CUDA a plain ``.to(device)`` of pageable memory waits for the whole stream to drain; a copy
    from pinned memory with ``non_blocking=True`` is queued behind the work already launched (the
    pinned block is not reused before the copy has run).  On the ``meta`` device (used to check
    that a sampler never reads device data) the copy is marked non-blocking too, so that a test
    can tell these copies from blocking ones.  Elsewhere this is ``torch.as_tensor`` and ``.to``.
    """
    device = torch.device(device)
    t = torch.as_tensor(a)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, non_blocking=device.type == "meta")


def window_labels(mask: torch.Tensor) -> list[list[int]]:
    """Non-zero labels present in each window of a (N, 1, H, W) mask, computed on the CPU."""
    m = mask.detach().cpu().reshape(mask.shape[0], -1)
    return [sorted(int(v) for v in torch.unique(row) if v != 0) for row in m]


def plan_passes(labels: list[list[int]], conditioning: str, free: frozenset[int] = frozenset()) -> list[Pass]:
    """The network passes a batch of windows needs (null pass first for each window).

    ``free`` holds the classes whose ω is 0 (see :func:`free_labels`): with a whole label map, a
    window whose labels are all free runs its map pass alone, since its guided ε is that pass."""
    passes: list[Pass] = []
    for i, present in enumerate(labels):
        if conditioning == LABEL_MAP and present and free.issuperset(present):
            passes.append(Pass(i, 0))
            continue
        passes.append(Pass(i, -1))
        if not present:
            continue
        if conditioning == PER_CLASS:
            passes.extend(Pass(i, lab) for lab in present)
        elif conditioning == LABEL_MAP:
            passes.append(Pass(i, 0))
        else:
            raise ValueError(f"unknown conditioning scheme {conditioning!r}")
    return passes


def count_forwards(labels: list[list[int]], conditioning: str, free: frozenset[int] = frozenset()) -> int:
    """Network passes for windows with ``labels`` (``free``: as :func:`plan_passes`)."""
    return len(plan_passes(labels, conditioning, free))


def _to_latent_grid(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    fy, fx = mask.shape[-2] // h, mask.shape[-1] // w
    return mask[..., ::fy, ::fx] if (fy > 1 or fx > 1) else mask


ALL_LABELS = frozenset(range(256))  # masks are uint8


def free_labels(omega, conditioning: str) -> frozenset[int]:
    """The classes whose ω is 0, for a whole-label-map model (else none): a window that holds only
    these classes needs no null pass, since its guided ε, null + 1·(cond − null), is its conditional
    ε (up to rounding: at most 1 grey level, in about 2 values per 100,000 of a canvas).  ``omega``
    is ω per class, or one ω for all.  Decided on the host: a ω not held on the CPU frees nothing
    (reading it would wait for the device)."""
    if conditioning != LABEL_MAP:
        return frozenset()
    w = omega if isinstance(omega, torch.Tensor) else torch.as_tensor(omega, dtype=torch.float32)
    if w.device.type != "cpu":
        return frozenset()
    if w.dim() == 0:
        return ALL_LABELS if float(w) == 0 else frozenset()
    return frozenset(int(k) for k in torch.nonzero(w == 0).flatten().tolist())


def guided_eps(
    denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    mask: torch.Tensor,
    omega: torch.Tensor,
    conditioning: str | None = None,
    max_batch: int = 32,
    labels: list[list[int]] | None = None,
    free: frozenset[int] | None = None,
) -> torch.Tensor:
    """Guided ε for a batch of windows ``x`` (N, C, h, w) with class masks ``mask`` (N, 1, H, W).

    ``omega`` holds ω per class (index = label); the guidance scale of class l is ω_l + 1.
    ``labels`` may pass the labels per window when the caller planned them ahead (no device sync).
    ``free`` (default: :func:`free_labels` of ``omega``) are the classes with ω 0: a window holding
    only these runs no null pass; ``frozenset()`` runs the null pass for every window.
    """
    conditioning = conditioning or getattr(denoiser, "conditioning", PER_CLASS)
    if free is None:
        free = free_labels(omega, conditioning)
    if labels is None:
        labels = window_labels(mask)
    passes = plan_passes(labels, conditioning, free)
    n = x.shape[0]
    dev = x.device
    t = torch.as_tensor(t, dtype=torch.long, device=dev).expand(n) if torch.as_tensor(t).dim() == 0 else t
    # the pass table, built on the CPU and copied without a sync
    pass_win = [p.window for p in passes]
    pass_lab = [p.label for p in passes]
    # each window's base row: its null pass, or its one map pass where it needs no null pass; the
    # conditional passes of windows with a null pass are added to it, scaled
    base_rows = [-1] * n
    for k, p in enumerate(passes):
        if p.label < 0 or base_rows[p.window] < 0:
            base_rows[p.window] = k
    cond = [k for k, p in enumerate(passes) if p.label >= 0 and passes[base_rows[p.window]].label < 0]
    table = host_to_device(torch.tensor([pass_win, pass_lab], dtype=torch.long), dev)
    idx, lab = table[0], table[1].view(-1, 1, 1, 1)
    src = mask[idx]
    # null pass (label -1): zeros; label pass: binary mask times label (= the label where the mask
    # holds it); whole-map pass (label 0): the map.  Labels are >= 0, so -1 never matches.
    pmask = src.where((src == lab) | (lab == 0), 0)
    xs, ts = x[idx], t[idx]
    step = max(1, int(max_batch))
    outs = [
        denoiser(xs[s : s + step], ts[s : s + step], pmask[s : s + step]).float() for s in range(0, len(passes), step)
    ]
    out = torch.cat(outs) if len(outs) > 1 else outs[0]

    h, w = x.shape[-2:]
    lat_mask = _to_latent_grid(mask, h, w)
    omega = torch.as_tensor(omega, dtype=torch.float32, device=dev)
    null_row = host_to_device(torch.tensor(base_rows, dtype=torch.long), dev)
    eps = out[null_row].clone()  # one base row per window, in window order
    if not cond:
        return eps
    rows, win = host_to_device(torch.tensor([cond, [pass_win[k] for k in cond]], dtype=torch.long), dev)
    diff = out[rows] - out[null_row[win]]
    lm = lat_mask[win]
    plab = lab[rows]
    # whole-map passes scale each pixel by its own class; per-class passes only their label
    per_pixel = omega[lm.clamp(max=omega.numel() - 1)] + 1.0
    per_label = (lm == plab).float() * (omega[plab.clamp(min=0)] + 1.0)
    scale = torch.where(plab == 0, per_pixel, per_label)
    return eps.index_add_(0, win, scale * diff)


def omega_vector(num_classes: int, omega: float, per_class: dict[int, float] | None = None) -> torch.Tensor:
    """ω for every class: ``omega`` everywhere, overridden per class; class 0 is never guided."""
    w = torch.full((num_classes,), float(omega))
    for k, v in (per_class or {}).items():
        if not 0 <= int(k) < num_classes:
            raise ValueError(f"ω given for class {k}, but the model has classes 0..{num_classes - 1}")
        w[int(k)] = float(v)
    w[0] = 0.0
    return w
