"""Per-tile features for comparing real and synthetic H&E: hand-made pathology features that
work offline, and deep features from a network whose weights the user supplies.

Hand-made features (``handmade``), all computed at the comparison's common scale with sizes
given in µm, so they mean the same thing at any µm/px:

* **Stains.** Colour deconvolution (``skimage.color.rgb2hed``, Ruifrok & Johnston) into
  haematoxylin (H) and eosin (E) optical densities: mean, standard deviation and the 10th, 50th
  and 90th percentiles of each, plus the mean summed optical density.
* **Nuclei.** :func:`segment_nuclei`: H blurred with σ = 0.5 µm and thresholded at a *fixed*
  density (0.075; fixed, not per tile, so pale or missing nuclei are not invented where there
  are none), holes filled, touching nuclei split by a watershed on the distance transform
  (seeds at least 3 µm apart), objects kept between 8 and 250 µm².  Features: nuclei per mm²
  of tile, mean and median nuclear area (µm²), mean eccentricity, mean solidity, mean H inside
  nuclei, and the mean distance to the nearest other nucleus (µm).
* **Texture.** Grey-level co-occurrence matrices (32 grey levels; offsets of 1, 2 and 4 µm;
  0°, 45°, 90°, 135° averaged): contrast, homogeneity, energy and correlation at each offset.
  Sharpness: mean gradient magnitude and the variance of the Laplacian, both on grey levels.

The vector is standardised on the real set by the caller.  Deep features live in
:mod:`.deep`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUCLEUS_H_THRESHOLD = 0.075
NUCLEUS_MIN_UM2 = 8.0
NUCLEUS_MAX_UM2 = 250.0
GLCM_OFFSETS_UM = (1.0, 2.0, 4.0)


@dataclass
class Nuclei:
    count: int
    areas_um2: np.ndarray
    eccentricity: np.ndarray
    solidity: np.ndarray
    h_inside: np.ndarray
    centroids_um: np.ndarray  # (n, 2)


def stains(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, E) optical densities of an RGB uint8 tile, clipped at 0."""
    from skimage.color import rgb2hed

    hed = rgb2hed(rgb)
    return np.clip(hed[..., 0], 0, None).astype(np.float32), np.clip(hed[..., 1], 0, None).astype(np.float32)


def segment_nuclei(rgb: np.ndarray, mpp: float, h: np.ndarray | None = None) -> tuple[np.ndarray, Nuclei]:
    """Label image of the nuclei of an H&E tile at ``mpp`` µm/px, and their measurements."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.measure import regionprops
    from skimage.segmentation import watershed

    if h is None:
        h, _ = stains(rgb)
    hs = ndi.gaussian_filter(h, 0.5 / mpp)
    fg = ndi.binary_fill_holes(hs > NUCLEUS_H_THRESHOLD)
    px_area = mpp * mpp
    fg = _remove_small(fg, int(round(NUCLEUS_MIN_UM2 / px_area / 2)))
    dist = ndi.distance_transform_edt(fg)
    seeds_lab, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=max(1, int(round(3.0 / mpp))), labels=seeds_lab, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=fg) if len(peaks) else seeds_lab
    props = [p for p in regionprops(labels, intensity_image=h)
             if NUCLEUS_MIN_UM2 <= p.area * px_area <= NUCLEUS_MAX_UM2]
    keep = np.zeros(int(labels.max()) + 1, bool)
    for p in props:
        keep[p.label] = True
    labels = np.where(keep[labels], labels, 0)
    nuc = Nuclei(
        len(props),
        np.array([p.area * px_area for p in props], np.float64),
        np.array([p.eccentricity for p in props], np.float64),
        np.array([p.solidity for p in props], np.float64),
        np.array([p.intensity_mean for p in props], np.float64),
        np.array([p.centroid for p in props], np.float64).reshape(-1, 2) * mpp,
    )
    return labels, nuc


def _remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    ok = sizes >= max(1, min_px)
    ok[0] = False
    return ok[lab]


def _nn_distance(points: np.ndarray) -> float:
    if len(points) < 2:
        return float("nan")
    from scipy.spatial import cKDTree

    d, _ = cKDTree(points).query(points, k=2)
    return float(d[:, 1].mean())


def _glcm(grey: np.ndarray, mpp: float) -> list[float]:
    from skimage.feature import graycomatrix, graycoprops

    q = (grey.astype(np.float32) / 256.0 * 32).astype(np.uint8)
    dists = [max(1, int(round(d / mpp))) for d in GLCM_OFFSETS_UM]
    m = graycomatrix(q, dists, [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, symmetric=True, normed=True)
    out = []
    for prop in ("contrast", "homogeneity", "energy", "correlation"):
        v = graycoprops(m, prop).mean(axis=1)  # average over angles, one per offset
        out.extend(float(x) for x in np.nan_to_num(v, nan=1.0))
    return out


def handmade_names() -> list[str]:
    names = []
    for s in ("h", "e"):
        names += [f"{s}_mean", f"{s}_std", f"{s}_p10", f"{s}_p50", f"{s}_p90"]
    names += ["od_mean", "nuclei_per_mm2", "nuclear_area_mean_um2", "nuclear_area_median_um2",
              "nuclear_eccentricity", "nuclear_solidity", "nuclear_h_mean", "nuclear_spacing_um"]
    for prop in ("contrast", "homogeneity", "energy", "correlation"):
        names += [f"glcm_{prop}_{d:g}um" for d in GLCM_OFFSETS_UM]
    names += ["gradient_mean", "laplacian_var"]
    return names


def handmade(rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, Nuclei]:
    """The hand-made feature vector of one tile (order of :func:`handmade_names`) and its nuclei."""
    from scipy import ndimage as ndi

    h, e = stains(rgb)
    feats = []
    for ch in (h, e):
        p10, p50, p90 = np.percentile(ch, [10, 50, 90])
        feats += [float(ch.mean()), float(ch.std()), float(p10), float(p50), float(p90)]
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0).sum(-1)
    feats.append(float(od.mean()))
    _, nuc = segment_nuclei(rgb, mpp, h)
    tile_mm2 = rgb.shape[0] * rgb.shape[1] * mpp * mpp / 1e6
    if nuc.count:
        feats += [nuc.count / tile_mm2, float(nuc.areas_um2.mean()), float(np.median(nuc.areas_um2)),
                  float(nuc.eccentricity.mean()), float(nuc.solidity.mean()), float(nuc.h_inside.mean())]
    else:  # no nuclei: zero count, and neutral values that do not dominate the distance
        feats += [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    spacing = _nn_distance(nuc.centroids_um)
    feats.append(spacing if np.isfinite(spacing) else rgb.shape[0] * mpp)
    grey = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).clip(0, 255)
    feats += _glcm(grey.astype(np.uint8), mpp)
    gy, gx = np.gradient(grey)
    feats += [float(np.hypot(gx, gy).mean()), float(ndi.laplace(grey).var())]
    return np.asarray(feats, np.float64), nuc


def handmade_batch(tiles: list[np.ndarray], mpp: float, progress=None) -> tuple[np.ndarray, list[Nuclei]]:
    """Features (N, D) and nuclei of many tiles; ``progress(done, total)`` after each."""
    rows, nuclei = [], []
    for i, t in enumerate(tiles):
        f, n = handmade(t, mpp)
        rows.append(f)
        nuclei.append(n)
        if progress is not None:
            progress(i + 1, len(tiles))
    d = len(handmade_names())
    return (np.stack(rows) if rows else np.zeros((0, d))), nuclei


def nuclei_summary(nuclei: list[Nuclei], tile_px: int, mpp: float) -> dict:
    """Nuclei per mm² over all tiles and the median nuclear area (µm²) over all nuclei."""
    area_mm2 = len(nuclei) * tile_px * tile_px * mpp * mpp / 1e6
    areas = np.concatenate([n.areas_um2 for n in nuclei]) if nuclei else np.zeros(0)
    count = int(sum(n.count for n in nuclei))
    return {
        "nuclei": count,
        "nuclei_per_mm2": round(count / area_mm2, 1) if area_mm2 else None,
        "nuclear_area_um2": round(float(np.median(areas)), 2) if len(areas) else None,
    }
