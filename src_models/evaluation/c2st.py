"""Classifier two-sample test (C2ST): can a small CNN trained from scratch tell real tiles from
synthetic ones?  Held-out accuracy 0.5 means it cannot; 1.0 means every tile gives itself away.

The protocol is fixed here, so the figure cannot drift between runs or be tuned per experiment
(change it only with a new ``PROTOCOL`` version, and say so wherever figures are compared):

* balance: both sides are subsampled (seeded) to the same count, at most ``MAX_PER_SIDE``;
* input: the tile box-averaged to ``INPUT_PX`` (128) when larger, RGB scaled to [-1, 1];
* network: four 3x3/4x4 convolutions with stride 2 (16, 32, 64, 64 channels, BatchNorm, ReLU),
  global average pooling, one linear logit (about 70 k parameters);
* folds: ``FOLDS``-fold cross-validation, each side's tiles dealt to folds by *group* (a group is
  a spatial block of the source: overlapping tiles share a group, so no pixel is ever in both the
  training and the test part of a fold), groups in a seeded order, each to the fold with the
  fewest tiles of that side so far;
* training: per fold a new network (seeded), Adam (lr 2e-3, weight decay 1e-4), batches of 32
  with a random one of the 8 dihedral transforms per tile, binary cross-entropy, for
  ``EPOCHS`` epochs but never fewer than ``MIN_STEPS`` optimiser steps (with few tiles, 15
  epochs are a handful of steps and the network learns nothing);
* figure: accuracy on the held-out folds, pooled over all tiles (threshold 0.5 on the sigmoid).

Statistics (:func:`summarise`): the pooled accuracy is a proportion of ``2 n`` held-out calls.
Overlapping tiles are not independent calls, so the interval and p-value count
``n_effective = n × overlap`` calls a side, where ``overlap`` is the share of a tile's area that
is its own (``(stride / tile)²``, 1 without overlap).  ``ci95`` is the Wilson score interval and
``p_value`` the one-sided exact binomial probability of at least this accuracy by chance (0.5).

Power: below ``MIN_PER_SIDE`` tiles a side the test is not run at all (``accuracy`` None and a
``note``): the power study in ``benchmarks/c2st_power.py`` (table in ``docs/evaluation.md``) found
that with fewer tiles it does not reliably detect even known defects of real tissue, so a figure
near 0.5 would mean "learned nothing", not "alike".

Same tiles, same seed and the same torch thread count give the same accuracy bit for bit.
"""
from __future__ import annotations

import math

import numpy as np

PROTOCOL = "c2st/2"
FOLDS = 5
EPOCHS = 15
MIN_STEPS = 150
BATCH = 32
INPUT_PX = 128
MAX_PER_SIDE = 512
#: the fewest tiles a side at which the test is run; from the power study (docs/evaluation.md)
MIN_PER_SIDE = 96


def _network():
    from torch import nn

    layers, cin = [], 3
    for i, cout in enumerate((16, 32, 64, 64)):
        k = 4 if i == 0 else 3
        layers += [nn.Conv2d(cin, cout, k, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1)]
    return nn.Sequential(*layers)


def _prepare(tiles: list[np.ndarray]):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] > INPUT_PX:
        x = F.adaptive_avg_pool2d(x, INPUT_PX)
    return x.contiguous()


def _dihedral_batch(x, ks):
    """Each tile of ``x`` under its own one of the 8 dihedral transforms (``ks``), in place of order."""
    import torch

    out = torch.empty_like(x)
    for k in range(8):
        sel = (ks == k).nonzero()[:, 0]
        if len(sel) == 0:
            continue
        v = x[sel]
        if k >= 4:
            v = v.flip(-1)
        out[sel] = torch.rot90(v, k % 4, dims=(-2, -1))
    return out


def assign_folds(groups: list, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each tile: whole groups to the fold with the fewest tiles so far, groups in a seeded
    order (ties to the lowest fold), so folds are balanced and no group is split."""
    keys = list(dict.fromkeys(groups))
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    fold_of = np.empty(len(groups), int)
    sizes = np.zeros(folds, int)
    for j in rng.permutation(len(keys)):
        f = int(sizes.argmin())
        idx = members[keys[j]]
        fold_of[idx] = f
        sizes[f] += len(idx)
    return fold_of


def summarise(correct: int, n_per_side: int, overlap: float = 1.0) -> dict:
    """Accuracy with its Wilson 95 % interval, binomial standard error and one-sided p-value
    against chance, counting ``n_per_side × overlap`` independent calls a side."""
    from scipy.stats import binom

    total = 2 * n_per_side
    acc = correct / total
    n_eff = max(1.0, total * min(1.0, overlap))
    k_eff = acc * n_eff
    z = 1.959963984540054
    centre = (acc + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = z * math.sqrt(acc * (1 - acc) / n_eff + z * z / (4 * n_eff * n_eff)) / (1 + z * z / n_eff)
    # P(X >= k) for X ~ Binomial(n_eff, 0.5), continuous in k through the regularised beta function
    p = float(binom.sf(math.ceil(k_eff) - 1, round(n_eff), 0.5)) if n_eff >= 1 else 1.0
    stderr = math.sqrt(max(acc * (1 - acc), 0.25 / n_eff) / n_eff)
    return {"accuracy": round(acc, 4), "stderr": round(stderr, 4),
            "ci95": [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)],
            "p_value": float(f"{min(1.0, p):.3g}"), "n_effective": round(n_eff / 2, 1)}


def c2st(real: list[np.ndarray], synthetic: list[np.ndarray], seed: int = 0, progress=None,
         real_groups: list | None = None, synthetic_groups: list | None = None, overlap: float = 1.0,
         min_per_side: int | None = None) -> dict:
    """Run the fixed protocol; returns ``{"accuracy", "stderr", "ci95", "p_value", "n_per_side",
    "n_effective", "fold_accuracy", "protocol", "cpu_capability", "torch_threads"}`` (``accuracy`` None
    with a ``note`` when a side has fewer than ``min_per_side`` tiles, by default :data:`MIN_PER_SIDE`).
    Compare accuracies only between runs with the same ``cpu_capability`` and ``torch_threads``.

    ``real_groups`` / ``synthetic_groups``: a hashable per tile; tiles that share pixels must share
    a group (they then always fall in one fold).  Default: every tile its own group.  ``overlap``:
    the share of a tile's area that no other tile covers (for the statistics).
    ``progress(done, total)`` is called after every epoch of every fold.
    """
    import torch
    import torch.nn.functional as F

    floor = MIN_PER_SIDE if min_per_side is None else min_per_side
    rng = np.random.default_rng(seed)
    n = min(len(real), len(synthetic), MAX_PER_SIDE)
    base = {"protocol": PROTOCOL, "n_per_side": n, "min_per_side": floor, "fold_accuracy": []}
    if n < max(floor, FOLDS):
        return {**base, "accuracy": None, "stderr": None, "ci95": None, "p_value": None,
                "note": f"{n} tiles a side; the test needs at least {max(floor, FOLDS)} to detect known defects "
                        "reliably (docs/evaluation.md), so it was not run"}
    r_idx, s_idx = rng.permutation(len(real))[:n], rng.permutation(len(synthetic))[:n]
    x = _prepare([real[i] for i in r_idx] + [synthetic[i] for i in s_idx])
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    rg = [real_groups[i] for i in r_idx] if real_groups is not None else list(range(n))
    sg = [synthetic_groups[i] for i in s_idx] if synthetic_groups is not None else list(range(n))
    fold_of = np.concatenate([assign_folds(rg, FOLDS, rng), assign_folds(sg, FOLDS, rng)])
    correct, fold_acc, predicted_real = 0, [], 0
    for fold in range(FOLDS):
        test = torch.from_numpy(np.nonzero(fold_of == fold)[0])
        train = torch.from_numpy(np.nonzero(fold_of != fold)[0])
        torch.manual_seed(seed * 1000 + fold)
        gen = torch.Generator().manual_seed(seed * 1000 + fold)
        net = _network()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        per_epoch = max(1, len(train) // BATCH)
        epochs = max(EPOCHS, -(-MIN_STEPS // per_epoch))
        for epoch in range(epochs):
            net.train()
            order = train[torch.randperm(len(train), generator=gen)]
            for b in range(0, per_epoch * BATCH, BATCH):
                idx = order[b : b + BATCH]
                ks = torch.randint(0, 8, (len(idx),), generator=gen)
                loss = F.binary_cross_entropy_with_logits(net(_dihedral_batch(x[idx], ks))[:, 0], y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if progress is not None:
                progress(fold * epochs + epoch + 1, FOLDS * epochs)
        net.eval()
        with torch.no_grad():
            pred = (net(x[test])[:, 0] > 0).float()
        hits = int((pred == y[test]).sum())
        correct += hits
        predicted_real += int(pred.sum())
        fold_acc.append(round(hits / max(1, len(test)), 4))
    # the accuracy is bit for bit the same only on the same kind of CPU and thread count: the classifier
    # trains from scratch, and AVX2 and AVX-512 kernels round differently (up to 0.22 a seed on canvases
    # whose KID and FD agree to four digits, docs/evaluation.md "Stop 9"), so the figure names both
    out = {**base, **summarise(correct, n, overlap), "fold_accuracy": fold_acc,
           "cpu_capability": str(torch.backends.cpu.get_cpu_capability()), "torch_threads": torch.get_num_threads(),
           "predicted_real_share": round(predicted_real / (2 * n), 4)}
    if predicted_real in (0, 2 * n):
        out["note"] = "the classifier called every tile one side: it learned nothing from these tiles"
    return out
