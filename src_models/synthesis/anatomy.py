"""Layouts with anatomy: label maps drawn by rules whose sizes were measured on a model's own
training masks.

A model's learned layout model sees 512 px windows of a few training images; it paints the
classes' local texture but not how a section is built (one or a few pieces of tissue in glass,
epidermis as a layer on the surface; tumour nests in stroma with immune cells at their edges).
A *recipe* holds that structure in physical units, measured once from the training label maps
(:func:`measure_section`, :func:`measure_nests`) and stored in the model card as
``extra["layout_recipe"]``; :func:`draw_recipe` draws a new layout of any size from it.

Two kinds:

``section`` (skin and other surfaces): tissue is a thresholded smooth random field stretched along
one direction (a strip of a biopsy), cut to a few pieces and filled; a share of its border is the
surface, and the ``surface`` class takes the measured share of the tissue nearest to it, its depth
wandering on a shorter scale (rete ridges, spread as measured); the rest is the ``core`` class.

``nests`` (carcinoma): nests of the ``nest`` class are thresholded smooth blobs of the measured
size, in the ``matrix`` class; the ``edge`` class (immune infiltrate) fills patches of a band
around the nests as deep as measured; a little ``background`` is left as holes.

The fields are drawn at most ``FIELD_SIDE`` px large and interpolated, so a layout costs about the
same at any size; everything is seeded and deterministic.
"""
from __future__ import annotations

import numpy as np

from src_models.errors import DiffInfiniteError

RECIPE_KINDS = ("section", "nests")
FIELD_SIDE = 256  # the random fields are drawn this coarse and interpolated


class RecipeError(DiffInfiniteError, ValueError):
    """A layout recipe that cannot be drawn (unknown kind, missing or impossible values)."""


# --------------------------------------------------------------------------- fields

def _field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float | tuple[float, float],
           angle: float = 0.0) -> np.ndarray:
    """A smooth random field over ``shape``, zero mean and unit spread, correlated over
    ``sigma_px`` (one value, or (along, across) an ``angle`` in radians)."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    h, w = shape
    along, across = (sigma_px, sigma_px) if np.isscalar(sigma_px) else sigma_px
    # draw on a coarse grid whose cells are about a quarter of the shorter correlation length
    cell = max(1.0, min(along, across) / 4.0, max(h, w) / FIELD_SIDE)
    gh, gw = int(np.ceil(h / cell)) + 3, int(np.ceil(w / cell)) + 3
    # rotate by sampling a larger square field along rotated axes
    side = int(np.ceil(np.hypot(gh, gw))) + 2
    base = gaussian_filter(rng.standard_normal((side, side)), (across / cell, along / cell), mode="wrap")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / cell
    yy -= gh / 2
    xx -= gw / 2
    c, s = np.cos(angle), np.sin(angle)
    rows = side / 2 + (-s * xx + c * yy)
    cols = side / 2 + (c * xx + s * yy)
    out = map_coordinates(base, [rows, cols], order=1, mode="wrap")
    sd = out.std()
    return (out - out.mean()) / (sd if sd > 0 else 1.0)


def _keep_pieces(mask: np.ndarray, most: int, min_share: float) -> np.ndarray:
    """The ``most`` largest connected pieces of ``mask`` that hold at least ``min_share`` of it,
    their holes filled."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1][:most]
    keep = [i + 1 for i in order if sizes[i] >= min_share * sizes.sum()]
    return ndi.binary_fill_holes(np.isin(lab, keep))


def _quantile_threshold(values: np.ndarray, share: float) -> float:
    """The value above which ``share`` of ``values`` lie."""
    return float(np.quantile(values, 1.0 - float(np.clip(share, 0.0, 1.0))))


# --------------------------------------------------------------------------- measuring

def _pct(v: np.ndarray, q) -> list[float]:
    return [round(float(x), 1) for x in np.percentile(v, q)] if v.size else [0.0] * len(q)


def measure_section(labels: list[np.ndarray] | np.ndarray, mpp: float, *, glass: int, surface: int,
                    core: int) -> dict:
    """A ``section`` recipe measured on label maps at ``mpp`` µm/px: the tissue's share of the
    image, the surface class's share of the tissue border and of the tissue, and its thickness
    (the distance from glass of the surface/core border, µm: 25th, 50th, 75th percentiles)."""
    from scipy import ndimage as ndi

    maps = [labels] if isinstance(labels, np.ndarray) else list(labels)
    tissue_share, border_share, surface_share, depth, pieces = [], [], [], [], []
    for m in maps:
        g = m == glass
        t = (m == surface) | (m == core)
        if not t.any():
            continue
        tissue_share.append(t.mean())
        border = t & ndi.binary_dilation(g)
        border_share.append((border & (m == surface)).sum() / max(1, border.sum()))
        surface_share.append((m == surface).sum() / t.sum())
        dist = ndi.distance_transform_edt(~g) * mpp
        inner = (m == core) & ndi.binary_dilation(m == surface)
        depth.append(dist[inner])
        lab, n = ndi.label(t)
        sizes = np.bincount(lab.ravel())[1:]
        pieces.append(int((sizes >= 0.02 * sizes.sum()).sum()))
    if not tissue_share:
        raise RecipeError("no tissue in the label maps to measure a section from")
    d = np.concatenate(depth)
    return {"kind": "section", "glass": glass, "surface": surface, "core": core,
            "tissue_share": round(float(np.mean(tissue_share)), 3),
            "surface_border_share": round(float(np.mean(border_share)), 3),
            "surface_share": round(float(np.mean(surface_share)), 3),
            "surface_depth_um": _pct(d, [25, 50, 75]), "pieces": max(1, int(np.max(pieces)))}


def measure_nests(labels: list[np.ndarray] | np.ndarray, mpp: float, *, background: int, nest: int, matrix: int,
                  edge: int) -> dict:
    """A ``nests`` recipe measured on label maps at ``mpp`` µm/px: the nests' share of the tissue
    (smallest and largest over the maps), their equivalent diameter (µm, median), the infiltrate's
    depth from the nest border (µm: 50th and 90th percentiles), how much of a band that deep it
    fills, and the background's share."""
    from scipy import ndimage as ndi

    maps = [labels] if isinstance(labels, np.ndarray) else list(labels)
    nest_share, diam, depth, fill, bg = [], [], [], [], []
    for m in maps:
        known = m != 0
        if not known.any():
            continue
        n_mask = m == nest
        nest_share.append(n_mask.sum() / known.sum())
        bg.append((m == background).sum() / known.sum())
        lab, n = ndi.label(n_mask)
        if n:
            sizes = np.bincount(lab.ravel())[1:]
            sizes = sizes[sizes * mpp * mpp >= 400]  # nests of at least a few cells
            diam.extend(2 * np.sqrt(sizes * mpp * mpp / np.pi))
            e = m == edge
            dist = ndi.distance_transform_edt(~n_mask) * mpp
            depth.append(dist[e & (dist > 0)])
    if not nest_share:
        raise RecipeError("no labelled tissue in the label maps to measure nests from")
    d = np.concatenate(depth) if depth else np.zeros(0)
    d50, d90 = (_pct(d, [50, 90]) if d.size else [30.0, 60.0])
    for m in maps:
        n_mask = m == nest
        if n_mask.any():
            dist = ndi.distance_transform_edt(~n_mask) * mpp
            band = (dist > 0) & (dist <= d90) & (m != background) & (m != 0)
            if band.any():
                fill.append(((m == edge) & band).sum() / band.sum())
    return {"kind": "nests", "background": background, "nest": nest, "matrix": matrix, "edge": edge,
            "nest_share": [round(float(min(nest_share)), 3), round(float(max(nest_share)), 3)],
            "nest_diameter_um": round(float(np.median(diam)), 1) if diam else 150.0,
            "edge_depth_um": [d50, d90], "edge_fill": round(float(np.mean(fill)), 3) if fill else 0.3,
            "background_share": round(float(np.mean(bg)), 3)}


# --------------------------------------------------------------------------- drawing

def check_recipe(recipe: dict, num_classes: int) -> dict:
    """The recipe, checked: a known kind, its classes within the model's, its sizes positive."""
    if not isinstance(recipe, dict) or recipe.get("kind") not in RECIPE_KINDS:
        raise RecipeError(f"layout recipe kind must be one of {', '.join(RECIPE_KINDS)}, got {recipe!r:.80}")
    keys = ("glass", "surface", "core") if recipe["kind"] == "section" else ("background", "nest", "matrix", "edge")
    for k in keys:
        v = recipe.get(k)
        if not isinstance(v, int) or not 0 < v < num_classes:
            raise RecipeError(f"layout recipe: {k} must be a class of the model (1..{num_classes - 1}), got {v!r}")
    sizes = recipe.get("surface_depth_um") if recipe["kind"] == "section" else recipe.get("edge_depth_um")
    if not (isinstance(sizes, list) and sizes and all(isinstance(v, (int, float)) and v >= 0 for v in sizes)):
        raise RecipeError(f"layout recipe: depths must be a list of µm values, got {sizes!r}")
    return recipe


def draw_recipe(recipe: dict, shape: tuple[int, int], px_um: float, seed: int = 0) -> np.ndarray:
    """A layout of ``shape`` (rows, cols) at ``px_um`` µm per layout pixel drawn from ``recipe``."""
    if recipe.get("kind") == "section":
        return _draw_section(recipe, shape, px_um, np.random.default_rng(seed))
    if recipe.get("kind") == "nests":
        return _draw_nests(recipe, shape, px_um, np.random.default_rng(seed))
    raise RecipeError(f"unknown layout recipe kind {recipe.get('kind')!r}")


def _draw_section(r: dict, shape: tuple[int, int], px_um: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage as ndi

    h, w = shape
    side = max(h, w)
    out = np.full(shape, r["glass"], np.uint8)
    # the tissue: a strip-like blob, its outline roughened on a shorter scale
    angle = rng.uniform(0, np.pi)
    body = _field(rng, shape, (0.35 * side, 0.12 * side), angle) + 0.35 * _field(rng, shape, 0.03 * side)
    share = float(np.clip(r["tissue_share"] * rng.uniform(0.8, 1.25), 0.05, 0.95))
    tissue = body > _quantile_threshold(body, share)
    tissue = _keep_pieces(tissue, int(r.get("pieces", 2)), 0.03)
    if not tissue.any():
        return out
    glass = ~tissue
    # the surface: glass beside a share of the border (a smooth choice along the outline)
    pick = _field(rng, shape, 0.2 * side)
    border = tissue & ndi.binary_dilation(glass)
    cut = _quantile_threshold(pick[border], float(r["surface_border_share"]))
    surface_glass = glass & (pick > cut)
    to_surface = ndi.distance_transform_edt(~surface_glass)
    to_cut = ndi.distance_transform_edt(~(glass & ~surface_glass))  # the sides that are cut, not surface
    p25, p50, p75 = (list(r["surface_depth_um"]) + [None] * 3)[:3]
    p25, p75 = p25 or p50, p75 or p50
    spread = min(0.5, np.log(max(p75, 1e-3) / max(p25, 1e-3)) / 1.35)  # from the quartiles, bounded
    ridges = _field(rng, shape, max(2.0, 60.0 / px_um))  # rete ridges: about 60 µm apart
    # depth across the tissue from the surface (0) to the cut side (1), wandering with the ridges;
    # the surface class takes the measured share of the tissue nearest the surface
    reach = to_surface / (to_surface + to_cut + 1e-6) * np.exp(-spread * np.clip(ridges, -2.5, 2.5))
    share_s = float(r.get("surface_share", 0.3))
    surface = tissue & (reach <= -_quantile_threshold(-reach[tissue], share_s))
    out[tissue] = r["core"]
    out[surface] = r["surface"]
    return out


def _draw_nests(r: dict, shape: tuple[int, int], px_um: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage as ndi

    out = np.full(shape, r["matrix"], np.uint8)
    lo, hi = (list(r["nest_share"]) * 2)[:2]
    share = float(rng.uniform(min(lo, hi), max(lo, hi)))
    diam_px = max(2.0, float(r["nest_diameter_um"]) / px_um)
    blobs = _field(rng, shape, 0.6 * diam_px) + 0.25 * _field(rng, shape, 0.12 * diam_px)
    nests = blobs > _quantile_threshold(blobs, share) if share > 0 else np.zeros(shape, bool)
    d50, d90 = (list(r["edge_depth_um"]) * 2)[:2]
    if nests.any():
        dist_um = ndi.distance_transform_edt(~nests) * px_um
        patch = _field(rng, shape, max(2.0, d50 / px_um))
        band = (dist_um > 0) & (dist_um <= d90)
        # denser close to the nest: the threshold rises with the distance
        score = patch - 1.5 * dist_um / max(d90, 1e-3)
        if band.any():
            edge = band & (score > _quantile_threshold(score[band], float(r["edge_fill"])))
            out[edge] = r["edge"]
    out[nests] = r["nest"]
    bg_share = float(r.get("background_share", 0.0))
    if bg_share > 0:
        holes = _field(rng, shape, max(2.0, 40.0 / px_um))
        out[(holes > _quantile_threshold(holes, bg_share)) & ~nests] = r["background"]
    return out


def recipe_summary(labels: np.ndarray, recipe: dict, px_um: float) -> dict:
    """The same measures taken on a drawn layout (to compare with the recipe it came from)."""
    if recipe["kind"] == "section":
        return measure_section(labels, px_um, glass=recipe["glass"], surface=recipe["surface"], core=recipe["core"])
    return measure_nests(labels, px_um, background=recipe["background"], nest=recipe["nest"], matrix=recipe["matrix"],
                         edge=recipe["edge"])
