"""``evaluate``: how far synthetic tissue is from real tissue, as one JSON-ready dict.

Both sides are tiled at one physical scale (:mod:`.sources`), described by features
(:mod:`.features`, or :mod:`.deep` when the user brings network weights), and compared with the
distribution metrics of :mod:`.metrics`, the classifier two-sample test of :mod:`.c2st`, nuclei
statistics and, for canvases, the seam score.  ``write_report`` adds the PNG sheet and plots.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import c2st as c2st_mod
from .features import handmade_batch, handmade_names, nuclei_summary, segment_nuclei
from .metrics import (authenticity, ct_score, frechet_distance, kernel_inception_distance, precision_recall,
                      seam_score, standardise)
from .sources import EvaluationError, TileStats, common_mpp, cut_tiles, open_images

FORMAT = "diffinfinite-evaluate/2"
MIN_CLASS_SHARE = 0.6


@dataclass
class Side:
    """The tiles of one side of the comparison and what was skipped."""

    name: str
    tiles: list = field(default_factory=list)
    stats: TileStats = field(default_factory=TileStats)
    features: np.ndarray | None = None
    nuclei: list = field(default_factory=list)

    def rgb(self, idx=None):
        ts = self.tiles if idx is None else [self.tiles[i] for i in idx]
        return [t.rgb for t in ts]

    def groups(self, idx=None):
        ts = self.tiles if idx is None else [self.tiles[i] for i in idx]
        return [t.group for t in ts]


def _collect(name: str, images, tile: int, mpp: float, classes, min_tissue: float, max_tiles: int,
             rng: np.random.Generator, stride: int | None = None) -> Side:
    side = Side(name)
    side.tiles = list(cut_tiles(images, tile, mpp, classes, min_tissue, MIN_CLASS_SHARE, side.stats, stride=stride))
    if not side.tiles:
        s = side.stats
        why = f"{s.grid} grid tiles: {s.background} mostly background/glass"
        if classes is not None:
            why += f", {s.other_classes} not mostly classes {classes}"
        if s.unfinished:
            why += f", {s.unfinished} in unfinished canvas regions"
        raise EvaluationError(f"no {name} tiles left after filtering ({why}); try --min-tissue or other --classes")
    if len(side.tiles) > max_tiles:
        keep = np.sort(rng.permutation(len(side.tiles))[:max_tiles])
        side.tiles = [side.tiles[i] for i in keep]
    return side


def _featurise(side: Side, mpp: float, extractor, progress) -> None:
    def step(done, total):
        if progress is not None:
            progress(f"features ({side.name})", done, total)

    feats, side.nuclei = handmade_batch(side.rgb(), mpp, step)
    side.features = feats if extractor is None else extractor(side.rgb())


def _distribution(real: np.ndarray, syn: np.ndarray, seed: int = 0, overlap: float = 1.0) -> dict:
    """Distribution metrics; ``overlap`` (the share of a tile no other tile covers) widens KID's
    error: overlapping tiles are not independent draws, so the jackknife over tiles is optimistic by
    about 1/sqrt(overlap)."""
    r, s = standardise(real, syn)
    p, rc = precision_recall(r, s)
    kid, kid_se = kernel_inception_distance(r, s)
    kid_se = kid_se / np.sqrt(min(1.0, overlap))
    return {"fd": _num(frechet_distance(r, s)), "fd_real_halves": _num(_fd_floor(r, seed)),
            "kid": _num(kid, 5), "kid_stderr": _num(kid_se, 5),
            "precision": _num(p), "recall": _num(rc), "authenticity": _num(authenticity(r, s))}


def _fd_floor(real: np.ndarray, seed: int) -> float:
    """FD between two random halves of the real set: what FD reads for *no* difference at this
    sample size (FD is biased upward when the sets are small against the feature dimension)."""
    if len(real) < 8:
        return float("nan")
    order = np.random.default_rng(seed + 7).permutation(len(real))
    half = len(real) // 2
    return frechet_distance(real[order[:half]], real[order[half : 2 * half]])


def _num(v, nd: int = 4):
    if v is None or not np.isfinite(v):
        return None
    return round(float(v), nd)


def _card_of(canvas):
    """The card of the model that made a canvas, or None when it cannot be found."""
    from ..models.card import BUILTIN_DIRS, ModelCard

    name = str(canvas.settings.get("model") or "")
    try:
        if name == "tiny-test":
            from ..models.tiny import tiny_test_card

            return tiny_test_card()
        return ModelCard.load(BUILTIN_DIRS.get(name, Path(name)))
    except Exception:  # an unknown or moved model
        return None


def _window_px(canvas) -> int | None:
    """The sampling window of the model that made a canvas (from its card), if it can be found."""
    card = _card_of(canvas)
    return int(card.patch_px) if card is not None else None


def canvas_seam_score(canvas, max_side: int = 4096) -> tuple[float | None, dict]:
    """Seam score over the finished part of a canvas (a central crop of at most ``max_side`` px)."""
    f, region_px = canvas.factor, canvas.region_size
    done = canvas.done_map()
    if not done.any():
        return None, {"note": "no finished region"}
    ys, xs = np.nonzero(done)
    y0, y1, x0, x1 = ys.min() * f, (ys.max() + 1) * f, xs.min() * f, (xs.max() + 1) * f
    if y1 - y0 > max_side:
        y0 = (y0 + y1 - max_side) // 2 // region_px * region_px
        y1 = y0 + max_side
    if x1 - x0 > max_side:
        x0 = (x0 + x1 - max_side) // 2 // region_px * region_px
        x1 = x0 + max_side
    grey = canvas.read_rgb(y0, y1, x0, x1).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    window = _window_px(canvas)
    steps = [region_px] + ([window] if window else [])

    def lines(a, b):
        pos = set()
        for s in steps:
            pos.update(range((a // s + 1) * s, b, s))
        return np.array(sorted(p - a for p in pos), int)

    score = seam_score(grey, f, lines(y0, y1), lines(x0, x1))
    return score, {"region_px": region_px, "window_px": window, "crop": [int(y0), int(y1), int(x0), int(x1)]}


def _c2st(real: Side, syn: Side, ri, si, seed: int, overlap: float, progress, stage: str) -> dict:
    """The C2ST of some tiles of each side, folds split by spatial block (see :mod:`.c2st`)."""
    def step(done, total):
        if progress is not None:
            progress(stage, done, total)

    return c2st_mod.c2st(real.rgb(ri), syn.rgb(si), seed=seed, progress=step, real_groups=real.groups(ri),
                         synthetic_groups=syn.groups(si), overlap=overlap)


def _per_class(real: Side, syn: Side, tile: int, mpp: float, names: list[str] | None, seed: int,
               run_c2st: bool, overlap: float, progress) -> dict:
    """Figures for the tiles whose mask is mostly one class, for every class both sides have."""
    def by_class(side):
        out = {}
        for i, t in enumerate(side.tiles):
            if t.mask is None:
                continue
            counts = np.bincount(t.mask.ravel(), minlength=256)
            c = int(counts.argmax())
            if counts[c] >= MIN_CLASS_SHARE * t.mask.size:
                out.setdefault(c, []).append(i)
        return out

    rc, sc = by_class(real), by_class(syn)
    result = {}
    for c in sorted(set(rc) & set(sc)):
        if c == 0:
            continue
        ri, si = rc[c], sc[c]
        label = names[c] if names and c < len(names) else str(c)
        entry = {"n_real": len(ri), "n_synthetic": len(si)}
        if len(ri) >= 2 and len(si) >= 2:
            entry.update(_distribution(real.features[ri], syn.features[si], seed, overlap))
        entry["real"] = nuclei_summary([real.nuclei[i] for i in ri], tile, mpp)
        entry["synthetic"] = nuclei_summary([syn.nuclei[i] for i in si], tile, mpp)
        if run_c2st:
            res = _c2st(real, syn, ri, si, seed, overlap, progress, f"c2st ({label})")
            entry["c2st_accuracy"] = res["accuracy"]
            entry["c2st"] = res
        result[label] = entry
    return result


def _power_note(what: str, res: dict, tile: int, stride: int) -> str:
    more = [f"--stride {tile // 2} (overlapping tiles, about 2.25x as many)" if stride == tile else None,
            f"a smaller --tile (e.g. {tile // 2})" if tile >= 64 else None]
    return (f"{what}: C2ST not run, {res['n_per_side']} tiles a side and it needs {res['min_per_side']} to detect "
            f"known defects reliably; use a bigger canvas or more images, "
            + ", ".join(m for m in more if m) + " (docs/evaluation.md)")


def _training_overlap(real: Side, images, card) -> str | None:
    """A warning when real tiles come from the image rows the canvas's model trained on.  The card's
    ``extra.training_regions`` lists {"source": file stem, "shape": [height, width], "rows": [first,
    end]}; an input counts as that source when its stem and size (in its own pixels) both match."""
    regions = (card.extra or {}).get("training_regions") if card is not None else None
    if not regions:
        return None
    rows_of = {}
    for img in images:
        for r in regions:
            if Path(img.name).stem == r.get("source") and [img.height, img.width] == list(r.get("shape", [])):
                rows_of[img.name] = r["rows"]
    hits = sum(1 for t in real.tiles if t.source in rows_of
               and t.y < rows_of[t.source][1] and t.y + t.span > rows_of[t.source][0])
    if not hits:
        return None
    r = regions[0]
    return (f"{hits} of {len(real.tiles)} real tiles lie in rows the model trained on ({r['source']} rows "
            f"{r['rows'][0]}-{r['rows'][1] - 1}): compare with held-out tissue, or the figures flatter the model")


# Over 80 lines on purpose: 17 of them are the keyword-only signature and the docstring; the body is
# one straight pass (read, tile, features, FD/KID, C2ST, per class, nuclei, warnings) over tile sets
# that every stage shares, and cutting it up would pass a dozen locals between helpers.
def evaluate(
    real: list[str | Path],
    synthetic: list[str | Path],
    *,
    real_test: list[str | Path] | None = None,
    tile: int = 128,
    stride: int | None = None,
    classes: list[int] | None = None,
    features: str = "handmade",
    seed: int = 0,
    real_mpp: float | None = None,
    synthetic_mpp: float | None = None,
    min_tissue: float = 0.5,
    max_tiles: int = 1024,
    run_c2st: bool = True,
    progress=None,
) -> tuple[dict, dict]:
    """Compare real and synthetic tissue; returns ``(result, extras)``.

    ``result`` is the JSON object the CLI prints.  ``extras`` holds the tiles and features for
    :func:`write_report`.  ``progress(stage, done, total)`` reports long steps.  ``stride``: tiles
    every ``stride`` px (default ``tile``); between ``tile // 2`` and ``tile``.
    """
    if tile < 16:
        raise EvaluationError(f"--tile must be at least 16 px, got {tile}")
    stride = tile if stride is None else int(stride)
    if not tile // 2 <= stride <= tile:
        raise EvaluationError(f"--stride must lie between half the tile and the tile ({tile // 2}-{tile} px), got {stride}")
    if real_mpp is not None and real_mpp <= 0 or synthetic_mpp is not None and synthetic_mpp <= 0:
        raise EvaluationError("pixel sizes must be positive")
    from .deep import make_extractor  # fails early on a bad --features spec, before any tiling

    extractor = make_extractor(features)
    opened = []
    try:
        real_imgs = [i for p in real for i in _opened(open_images(p, real_mpp), opened)]
        syn_imgs = [i for p in synthetic for i in _opened(open_images(p, synthetic_mpp), opened)]
        test_imgs = [i for p in (real_test or []) for i in _opened(open_images(p, real_mpp), opened)]
        mpp, notes = common_mpp(real_imgs + test_imgs, syn_imgs)
        warnings = [n for n in notes]
        stated = {side: sorted({round(i.mpp, 3) for i in imgs}) for side, imgs in (("real", real_imgs), ("synthetic", syn_imgs))}
        if max(stated["real"] + stated["synthetic"]) > 1.05 * min(stated["real"] + stated["synthetic"]):
            warnings.append(f"the sides differ in scale (real {stated['real']}, synthetic {stated['synthetic']} µm/px): "
                            f"the finer was box-averaged to {mpp:g} µm/px, which also softens it")
        rng = np.random.default_rng(seed)
        r = _collect("real", real_imgs, tile, mpp, classes, min_tissue, max_tiles, rng, stride)
        s = _collect("synthetic", syn_imgs, tile, mpp, classes, min_tissue, max_tiles, rng, stride)
        rt = _collect("real-test", test_imgs, tile, mpp, classes, min_tissue, max_tiles, rng, stride) if test_imgs else None
        for side in (r, s) + ((rt,) if rt else ()):
            _featurise(side, mpp, extractor, progress)
        seam, seam_info = None, None
        canvases = [i for i in syn_imgs if getattr(i, "canvas", None) is not None]
        if canvases:
            seam, seam_info = canvas_seam_score(canvases[0].canvas)
        class_names = canvases[0].canvas.classes if canvases else None
        card = _card_of(canvases[0].canvas) if canvases else None
    finally:
        for img in opened:
            img.close()
    overlap = (stride / tile) ** 2
    leak = _training_overlap(r, real_imgs, card)
    if leak:
        warnings.append(leak)

    result = {
        "format": FORMAT,
        "n_real": len(r.tiles),
        "n_synthetic": len(s.tiles),
        "n_real_test": len(rt.tiles) if rt else None,
        "tile_px": tile,
        "stride_px": stride,
        "mpp": round(mpp, 4),
        "features": features if extractor is None else extractor.name,
        "feature_dims": int(r.features.shape[1]),
        **_distribution(r.features, s.features, seed, (stride / tile) ** 2),
        "ct": None,
        "c2st_accuracy": None,
        "nuclei_per_mm2": None,
        "nuclear_area_um2": None,
        "nuclei_counted": None,
        "seam_score": _num(seam),
        "skipped": {side.name: {"grid": side.stats.grid, "background": side.stats.background,
                                "other_classes": side.stats.other_classes, "unfinished": side.stats.unfinished}
                    for side in (r, s) + ((rt,) if rt else ())},
        "classes": classes,
        "seed": seed,
    }
    for key, src in (("nuclei_per_mm2", "nuclei_per_mm2"), ("nuclear_area_um2", "nuclear_area_um2"), ("nuclei_counted", "nuclei")):
        result[key] = {"real": nuclei_summary(r.nuclei, tile, mpp)[src], "synthetic": nuclei_summary(s.nuclei, tile, mpp)[src]}
    if rt is not None:
        tr, te, sy = standardise(r.features, rt.features, s.features)
        result["ct"] = _num(ct_score(tr, te, sy, seed=seed))
    if seam_info is not None:
        result["seam"] = seam_info
    if run_c2st:
        res = _c2st(r, s, None, None, seed, overlap, progress, "c2st")
        result["c2st_accuracy"] = res["accuracy"]
        result["c2st"] = res
        if res["accuracy"] is None:
            warnings.append(_power_note("all tissue", res, tile, stride))
        elif res.get("note"):
            warnings.append(f"all tissue: {res['note']}")
    result["per_class"] = _per_class(r, s, tile, mpp, class_names, seed, run_c2st, overlap, progress)
    for label, entry in result["per_class"].items():
        if run_c2st and entry["c2st_accuracy"] is None:
            warnings.append(_power_note(f"class {label}", entry["c2st"], tile, stride))
    if result["fd"] is not None and result["fd_real_halves"] is not None:
        notes.append(f"FD is biased upward with few tiles: two halves of the real set read {result['fd_real_halves']} "
                     f"here; compare FD only at equal n, or use KID ({result['kid']} ± {result['kid_stderr']}), "
                     "which is unbiased")
    result["warnings"] = warnings
    result["notes"] = warnings + [n for n in notes if n not in warnings]
    return result, {"real": r, "synthetic": s, "mpp": mpp, "feature_names": handmade_names() if extractor is None else None}


def _opened(images, registry: list):
    registry.extend(images)
    return images


__all__ = ["evaluate", "EvaluationError", "segment_nuclei", "canvas_seam_score"]
