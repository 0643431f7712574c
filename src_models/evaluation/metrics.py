"""Distribution metrics over feature vectors (numpy + scipy), and the canvas seam score.

* ``frechet_distance``: FD between Gaussians fitted to the two sets (the FID formula on any
  features).
* ``kernel_inception_distance``: KID (Bińkowski et al., 2018), the unbiased estimate of the
  squared maximum mean discrepancy under the cubic polynomial kernel (x·y/d + 1)³, with a
  jackknife standard error; unlike FD it has no small-sample bias (its expectation is 0 for two
  samples of one distribution at any n), so it can be compared across sample sizes.
* ``precision_recall``: improved precision and recall (Kynkäänniemi et al., 2019): each set's
  manifold is the union of balls reaching each sample's k-th nearest neighbour (k = 3);
  precision is the share of synthetic samples inside the real manifold, recall the share of real
  samples inside the synthetic one.
* ``authenticity``: (Alaa et al., 2022) a synthetic sample is *unauthentic* when it lies closer
  to its nearest real sample than that real sample's own nearest real neighbour does (a likely
  copy); authenticity is the share of authentic synthetic samples.  Independent draws from the
  real distribution score about 0.5 in the high-dimensional limit, copies score 0.
* ``ct_score``: the data-copying statistic C_T (Meehan et al., 2020): the training-side real
  set is cut into cells by k-means; in each cell a Mann-Whitney U test compares the distances to
  the nearest training sample of held-out real samples and of synthetic samples, as a z-score;
  C_T is the z-scores' average weighted by the held-out share of each cell.  Near 0: like new
  real data; strongly negative: copying; strongly positive: far from the training data.
* ``seam_score``: mean absolute grey step across region borders and window-grid lines over the
  same at the other latent-pixel borders of a canvas (1.0 = borders invisible).
"""
from __future__ import annotations

import warnings

import numpy as np

PR_K = 3


def standardise(real: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Centre and scale every set by the real set's per-feature mean and std (constant features dropped)."""
    mu, sd = real.mean(0), real.std(0)
    keep = sd > 1e-12
    return [((x - mu) / np.where(keep, sd, 1.0))[:, keep] for x in (real, *others)]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    off = np.eye(len(s1)) * 1e-6  # keeps the product's square root defined for degenerate sets
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = covmean.real
    return float(max(0.0, ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(KID, standard error): unbiased MMD² under k(x, y) = (x·y/d + 1)³ between the rows of
    ``a`` and ``b``, and the delete-one jackknife standard error over both samples (computed from
    the kernel sums, so it costs no more than the estimate).  NaN when a side has fewer than 3 rows."""
    m, n = len(a), len(b)
    if m < 3 or n < 3:
        return float("nan"), float("nan")
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = a.shape[1]
    kaa = (a @ a.T / d + 1.0) ** 3
    kbb = (b @ b.T / d + 1.0) ** 3
    kab = (a @ b.T / d + 1.0) ** 3
    np.fill_diagonal(kaa, 0.0)
    np.fill_diagonal(kbb, 0.0)
    saa, sbb, sab = kaa.sum(), kbb.sum(), kab.sum()
    kid = saa / (m * (m - 1)) + sbb / (n * (n - 1)) - 2.0 * sab / (m * n)
    # leave out one row of a (then one of b): its kernel row leaves the sums
    ra, rb = kaa.sum(1), kbb.sum(1)
    loo_a = (saa - 2 * ra) / ((m - 1) * (m - 2)) + sbb / (n * (n - 1)) - 2.0 * (sab - kab.sum(1)) / ((m - 1) * n)
    loo_b = saa / (m * (m - 1)) + (sbb - 2 * rb) / ((n - 1) * (n - 2)) - 2.0 * (sab - kab.sum(0)) / (m * (n - 1))
    var = (m - 1) / m * ((loo_a - loo_a.mean()) ** 2).sum() + (n - 1) / n * ((loo_b - loo_b.mean()) ** 2).sum()
    return float(kid), float(np.sqrt(var))


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(d, 0, None))


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = _pairwise(x, x)
    np.fill_diagonal(d, np.inf)
    k = min(k, len(x) - 1)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def precision_recall(real: np.ndarray, synthetic: np.ndarray, k: int = PR_K) -> tuple[float, float]:
    if len(real) <= 1 or len(synthetic) <= 1:
        return float("nan"), float("nan")
    r_real, r_syn = _kth_radius(real, k), _kth_radius(synthetic, k)
    d = _pairwise(synthetic, real)  # (S, R)
    precision = float((d <= r_real[None, :]).any(1).mean())
    recall = float((d.T <= r_syn[None, :]).any(1).mean())
    return precision, recall


def authenticity(real: np.ndarray, synthetic: np.ndarray) -> float:
    if len(real) < 2 or len(synthetic) == 0:
        return float("nan")
    d_rr = _pairwise(real, real)
    np.fill_diagonal(d_rr, np.inf)
    nn_real = d_rr.min(1)
    d = _pairwise(synthetic, real)
    nearest = d.argmin(1)
    return float((d[np.arange(len(d)), nearest] > nn_real[nearest]).mean())


def _kmeans(x: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """Cluster centres by Lloyd's algorithm from a k-means++ start (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = _pairwise(x, np.stack(centres)).min(1) ** 2
        p = d / d.sum() if d.sum() > 0 else None
        centres.append(x[rng.choice(len(x), p=p)])
    c = np.stack(centres)
    for _ in range(iters):
        lab = _pairwise(x, c).argmin(1)
        new = np.stack([x[lab == j].mean(0) if (lab == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


def _mann_whitney_z(gen: np.ndarray, test: np.ndarray) -> float:
    """z-score of U = #(gen distance > test distance) (+ half the ties); negative when gen is closer."""
    from scipy.stats import rankdata

    m, n = len(gen), len(test)
    ranks = rankdata(np.concatenate([gen, test]))
    u = ranks[:m].sum() - m * (m + 1) / 2
    return float((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))


def ct_score(train: np.ndarray, test: np.ndarray, synthetic: np.ndarray, seed: int = 0,
             cells: int | None = None, min_per_cell: int = 5) -> float | None:
    """C_T of Meehan et al.; None when too few samples fall in any cell to test."""
    if len(train) < 4 or len(test) < min_per_cell or len(synthetic) < min_per_cell:
        return None
    k = cells or int(np.clip(len(test) // 20, 1, 5))
    centres = _kmeans(train, k, seed)
    cell = {name: _pairwise(x, centres).argmin(1) for name, x in (("test", test), ("gen", synthetic))}
    d_test = _pairwise(test, train).min(1)
    d_gen = _pairwise(synthetic, train).min(1)
    zs, weights = [], []
    for j in range(k):
        t, g = d_test[cell["test"] == j], d_gen[cell["gen"] == j]
        if len(t) >= min_per_cell and len(g) >= min_per_cell:
            zs.append(_mann_whitney_z(g, t))
            weights.append(len(t))
    if not zs:
        return None
    return float(np.average(zs, weights=weights))


def _line_steps(grey: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """|grey[p] - grey[p-1]| across the lines at ``positions`` along ``axis``."""
    if len(positions) == 0:
        return np.zeros(0)
    a = np.take(grey, positions, axis=axis)
    b = np.take(grey, positions - 1, axis=axis)
    return np.abs(a - b).ravel()


def seam_score(grey: np.ndarray, factor: int, borders_y: np.ndarray, borders_x: np.ndarray) -> float | None:
    """Mean step across the given border lines over the mean step across every other line on the
    latent-pixel grid (multiples of ``factor``), both directions together."""
    h, w = grey.shape
    grey = grey.astype(np.float32)
    steps_b, steps_o = [], []
    for axis, n, borders in ((0, h, borders_y), (1, w, borders_x)):
        grid = np.arange(factor, n, factor)
        borders = np.intersect1d(np.asarray(borders, int), grid)
        other = np.setdiff1d(grid, borders)
        steps_b.append(_line_steps(grey, borders, axis))
        steps_o.append(_line_steps(grey, other, axis))
    b, o = np.concatenate(steps_b), np.concatenate(steps_o)
    if b.size == 0 or o.size == 0 or o.mean() <= 0:
        return None
    return float(b.mean() / o.mean())


def border_darkness(rgb: np.ndarray, labels: np.ndarray, band_px: int, glass=(1,), tissue=(2, 3)) -> dict:
    """Mean optical density in the band of ``band_px`` pixels on each side of every glass/tissue
    border of a labelled image: ``inner`` on the tissue side, ``outer`` on the glass side.

    A model that rims its tissue with a dark line (or leaves dark specks in the glass next to it)
    reads darker there than real tissue under the same labels."""
    from scipy import ndimage as ndi

    is_glass = np.isin(labels, glass)
    is_tissue = np.isin(labels, tissue)
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0).sum(-1)
    out = {}
    for name, inside, other in (("inner", is_tissue, is_glass), ("outer", is_glass, is_tissue)):
        if not other.any() or not inside.any():
            out[name] = None
            continue
        dist = ndi.distance_transform_edt(~other)
        band = inside & (dist <= band_px)
        out[name] = float(od[band].mean()) if band.any() else None
        out[f"{name}_px"] = int(band.sum())
    return out
