"""A blinded real-or-synthetic review (the paper's pathologist survey, as a tool): the plan of
tiles, the answers file and the summary.  numpy + the evaluation's tile sources; no torch, no Qt.

* :func:`plan_review` cuts tissue tiles from a real and a synthetic source at one physical
  scale, takes ``per_side`` of each (seeded) and shuffles them together.  The order depends
  only on the sources, the tile size, ``per_side`` and the seed, so a session can be resumed by
  planning again.
* :class:`ReviewLog` appends one CSV row per answer to ``<folder>/review-<reviewer>.csv``: the
  reviewer's name, the tile's source, position and truth are written there and nowhere else
  (the reviewer sees only the pixels).  ``answered()`` says where to resume.
* :func:`summarise` gives the accuracy (overall, per truth, per class) and the mean ratings.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .sources import EvaluationError, TileStats, common_mpp, cut_tiles, open_images

FIELDS = ["reviewer", "time", "index", "truth", "answer", "correct", "rating", "note", "class", "source", "y", "x",
          "tile_px", "mpp", "seed"]


@dataclass
class ReviewItem:
    index: int
    rgb: np.ndarray
    truth: str  # "real" | "synthetic"
    source: str
    y: int
    x: int
    label: str  # dominant class name where the source has a mask, else ""


def _dominant(mask, names) -> str:
    if mask is None:
        return ""
    counts = np.bincount(mask.ravel(), minlength=1)
    c = int(counts.argmax())
    if counts[c] < 0.6 * mask.size:
        return "mixed"
    return names[c] if names and c < len(names) else str(c)


def plan_review(real, synthetic, tile: int = 256, per_side: int = 25, seed: int = 0) -> tuple[list[ReviewItem], float]:
    """Shuffled tiles from both sides (``per_side`` each, fewer if a side has fewer); and the µm/px."""
    if per_side < 1:
        raise EvaluationError("tiles per side must be at least 1")
    opened = []
    try:
        r_imgs = [i for p in _paths(real) for i in open_images(p)]
        opened += r_imgs
        s_imgs = [i for p in _paths(synthetic) for i in open_images(p)]
        opened += s_imgs
        mpp, _ = common_mpp(r_imgs, s_imgs)
        rng = np.random.default_rng(seed)
        items = []
        for truth, imgs in (("real", r_imgs), ("synthetic", s_imgs)):
            names = getattr(getattr(imgs[0], "canvas", None), "classes", None)
            tiles = list(cut_tiles(imgs, tile, mpp, stats=TileStats()))
            if not tiles:
                raise EvaluationError(f"the {truth} source has no tissue tiles of {tile} px")
            for k in sorted(rng.permutation(len(tiles))[:per_side].tolist()):
                t = tiles[k]
                items.append(ReviewItem(0, t.rgb, truth, t.source, t.y, t.x, _dominant(t.mask, names)))
    finally:
        for img in opened:
            img.close()
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    for i, it in enumerate(items):
        it.index = i
    return items, mpp


def _paths(p):
    return [p] if isinstance(p, (str, Path)) else list(p)


def _safe_name(reviewer: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", reviewer.strip())
    if not name:
        raise EvaluationError("a reviewer name is needed (it names the answers file)")
    return name


class ReviewLog:
    """The answers file of one reviewer in ``folder`` (appended to, never rewritten)."""

    def __init__(self, folder: str | Path, reviewer: str):
        self.folder = Path(folder)
        self.reviewer = reviewer.strip()
        self.path = self.folder / f"review-{_safe_name(reviewer)}.csv"

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as fh:
            return list(csv.DictReader(fh))

    def answered(self, items: list[ReviewItem]) -> int:
        """How many leading items of this plan the file already answers (where to resume).

        Raises when the file's answers do not match the plan (other sources or settings)."""
        rows = self.rows()
        for row, it in zip(rows, items):
            if (row["source"], int(row["y"]), int(row["x"]), row["truth"]) != (it.source, it.y, it.x, it.truth):
                raise EvaluationError(
                    f"{self.path} holds answers for other tiles (row {row['index']}); "
                    "pick the same sources, tile size and seed, or another folder or name"
                )
        return min(len(rows), len(items))

    def append(self, item: ReviewItem, answer: str, rating: int, note: str, tile_px: int, mpp: float, seed: int) -> dict:
        if answer not in ("real", "synthetic"):
            raise EvaluationError(f"answer must be real or synthetic, got {answer!r}")
        if not 1 <= int(rating) <= 5:
            raise EvaluationError(f"rating must be 1..5, got {rating}")
        self.folder.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file()
        row = {
            "reviewer": self.reviewer, "time": _dt.datetime.now().isoformat(timespec="seconds"), "index": item.index,
            "truth": item.truth, "answer": answer, "correct": int(answer == item.truth), "rating": int(rating),
            "note": " ".join(str(note).split()), "class": item.label, "source": item.source, "y": item.y,
            "x": item.x, "tile_px": tile_px, "mpp": round(float(mpp), 4), "seed": seed,
        }
        with self.path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)
            fh.flush()
        return row


def summarise(rows: list[dict]) -> dict:
    """Accuracy overall, per truth and per class; mean plausibility rating per truth."""
    if not rows:
        return {"answers": 0}

    def acc(rs):
        return round(sum(int(r["correct"]) for r in rs) / len(rs), 3) if rs else None

    def mean_rating(rs):
        return round(float(np.mean([int(r["rating"]) for r in rs])), 2) if rs else None

    by_truth = {t: [r for r in rows if r["truth"] == t] for t in ("real", "synthetic")}
    classes = sorted({r["class"] for r in rows if r["class"]})
    return {
        "answers": len(rows),
        "accuracy": acc(rows),
        "real_called_real": acc(by_truth["real"]),
        "synthetic_called_synthetic": acc(by_truth["synthetic"]),
        "rating_real": mean_rating(by_truth["real"]),
        "rating_synthetic": mean_rating(by_truth["synthetic"]),
        "per_class": {c: {"answers": len(rs), "accuracy": acc(rs)}
                      for c in classes for rs in [[r for r in rows if r["class"] == c]]},
    }


def write_summary(log: ReviewLog) -> Path:
    path = log.path.with_name(log.path.stem + "-summary.json")
    path.write_text(json.dumps(summarise(log.rows()), indent=2) + "\n")
    return path
