"""Classifier two-sample test (C2ST): can a small CNN trained from scratch tell real tiles from
synthetic ones?  Held-out accuracy 0.5 means it cannot; 1.0 means every tile gives itself away.

The protocol is fixed here, so the figure cannot drift between runs or be tuned per experiment
(change it only with a new ``PROTOCOL`` version, and say so wherever figures are compared):

* balance: both sides are subsampled (seeded) to the same count, at most ``MAX_PER_SIDE``;
* input: the tile box-averaged to ``INPUT_PX`` (128) when larger, RGB scaled to [-1, 1];
* network: four 3x3/4x4 convolutions with stride 2 (16, 32, 64, 64 channels, BatchNorm, ReLU),
  global average pooling, one linear logit (about 70 k parameters);
* training: ``FOLDS``-fold cross-validation with both classes split evenly over the folds;
  per fold a new network (seeded), Adam (lr 2e-3, weight decay 1e-4), ``EPOCHS`` epochs of
  batches of 32 with a random one of the 8 dihedral transforms per tile, binary cross-entropy;
* figure: accuracy on the held-out folds, pooled over all tiles (threshold 0.5 on the sigmoid),
  with its binomial standard error (``stderr``): with few tiles, chance alone moves the figure.

Same tiles, same seed and the same torch thread count give the same accuracy bit for bit.
"""
from __future__ import annotations

import numpy as np

PROTOCOL = "c2st/1"
FOLDS = 5
EPOCHS = 15
BATCH = 32
INPUT_PX = 128
MAX_PER_SIDE = 256


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


def _dihedral(x, k: int):
    import torch

    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def c2st(real: list[np.ndarray], synthetic: list[np.ndarray], seed: int = 0, progress=None) -> dict:
    """Run the fixed protocol; returns ``{"accuracy", "fold_accuracy", "n_per_side", "protocol"}``.

    ``progress(done, total)`` is called after every epoch of every fold.
    """
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    n = min(len(real), len(synthetic), MAX_PER_SIDE)
    if n < FOLDS:
        return {"accuracy": None, "fold_accuracy": [], "n_per_side": n, "protocol": PROTOCOL,
                "note": f"too few tiles for {FOLDS}-fold C2ST ({n} per side)"}
    r_idx, s_idx = rng.permutation(len(real))[:n], rng.permutation(len(synthetic))[:n]
    x = _prepare([real[i] for i in r_idx] + [synthetic[i] for i in s_idx])
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    # folds: each class's tiles dealt round-robin in a seeded order, so every fold is balanced
    fold_of = np.empty(2 * n, int)
    fold_of[:n] = rng.permutation(n) % FOLDS
    fold_of[n:] = rng.permutation(n) % FOLDS
    correct, fold_acc, total_epochs = 0, [], FOLDS * EPOCHS
    for fold in range(FOLDS):
        test = torch.from_numpy(np.nonzero(fold_of == fold)[0])
        train = torch.from_numpy(np.nonzero(fold_of != fold)[0])
        torch.manual_seed(seed * 1000 + fold)
        gen = torch.Generator().manual_seed(seed * 1000 + fold)
        net = _network()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        for epoch in range(EPOCHS):
            net.train()
            order = train[torch.randperm(len(train), generator=gen)]
            for b in range(0, len(order), BATCH):
                idx = order[b : b + BATCH]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                ks = torch.randint(0, 8, (len(idx),), generator=gen)
                xb = torch.stack([_dihedral(x[i], int(k)) for i, k in zip(idx.tolist(), ks.tolist())])
                loss = F.binary_cross_entropy_with_logits(net(xb)[:, 0], y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if progress is not None:
                progress(fold * EPOCHS + epoch + 1, total_epochs)
        net.eval()
        with torch.no_grad():
            pred = (net(x[test])[:, 0] > 0).float()
        hits = int((pred == y[test]).sum())
        correct += hits
        fold_acc.append(round(hits / len(test), 4))
    acc = correct / (2 * n)
    # binomial standard error of the pooled accuracy: how far chance alone moves it with this many tiles
    stderr = float(np.sqrt(max(acc * (1 - acc), 0.25 / n) / (2 * n)))
    return {"accuracy": round(acc, 4), "stderr": round(stderr, 4), "fold_accuracy": fold_acc, "n_per_side": n,
            "protocol": PROTOCOL}
