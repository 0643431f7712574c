"""Masks made for other models: the DiffInfinite release's grey-coded PNGs and its 5- and 10-class
label maps, brought into a model's classes through a class map.  numpy only (no torch, no Qt).

The release writes generated masks as grey images: label ``l`` of an ``n``-label scheme becomes the
grey value ``l * 255 / (n - 1)`` (truncated to an integer when saved: 0, 63, 127, 191, 255 for five
labels).  Its example patches carry plain label maps (uint16 PNG, one class per pixel) in the 5-class
scheme (0 Unknown, 1 Carcinoma, 2 Necrosis, 3 Tumor stroma, 4 Others) or the 10-class one.

A mask whose labels already fit the model is left alone.  Otherwise :func:`interpret` says what it
is (grey-coded or a label map, which scheme, which class names) and :func:`apply_class_map` sends
source labels to the model's labels (``{1: 2, 4: 3}``, written ``1=2,4=3`` on the command line).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from src_models.io.masks import JPEG_SUFFIXES, MaskError, check_labels, load_mask


def _jpeg_note(path) -> str:
    if str(path).lower().endswith(JPEG_SUFFIXES):
        return "; JPEG compression changes label values: save label masks as PNG, TIFF or NPY"
    return ""

# the release's class names, by number of labels (index = label)
RELEASE_CLASSES: dict[int, list[str]] = {
    5: ["Unknown", "Carcinoma", "Necrosis", "Tumor stroma", "Others"],
    10: ["Unknown", "Alveole", "Artery", "Artifacts", "Carcinoma", "Cartilage", "Connective tissue", "Necrosis",
         "Tumor stroma", "Others"],
}
LARGEST_LABEL = 9  # label maps of the release never go above this; grey codes always do (255)


@dataclass
class ForeignMask:
    """A mask read for a model: its labels (grey codes already decoded) and what they were."""

    labels: np.ndarray  # (H, W) uint8, in the source scheme
    kind: str  # "model" (fits the model as is), "grey" (grey-coded PNG), "labels" (label map of another scheme)
    scheme: int | None = None  # number of labels of the release scheme (5 or 10), None when unknown
    schemes: list[int] = field(default_factory=list)  # every release scheme the values fit (the first is used)
    grey_values: list[int] = field(default_factory=list)  # the grey values found (grey-coded masks only)

    @property
    def present(self) -> list[int]:
        return [int(v) for v in np.unique(self.labels)]

    @property
    def source_classes(self) -> list[str] | None:
        return RELEASE_CLASSES.get(self.scheme) if self.scheme else None

    def source_name(self, label: int) -> str:
        names = self.source_classes
        return names[label] if names and 0 <= label < len(names) else f"label {label}"

    def describe(self) -> str:
        if self.kind == "grey":
            return (f"grey-coded {self.scheme}-class mask of the DiffInfinite release "
                    f"(grey values {', '.join(map(str, self.grey_values))} = labels "
                    f"{', '.join(map(str, self.present))})")
        if self.kind == "labels" and self.scheme:  # plain labels carry no scheme: it is a guess, said as one
            return (f"label map with labels {', '.join(map(str, self.present))} (perhaps in the DiffInfinite "
                    f"release's {self.scheme}-class scheme)")
        if self.kind == "labels":
            return f"label map with labels {', '.join(map(str, self.present))}"
        return f"label map in the model's classes (labels {', '.join(map(str, self.present))})"


def grey_levels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The grey value of each label of an ``n``-label scheme, truncated and rounded (either is accepted)."""
    exact = np.arange(n) * 255.0 / (n - 1)
    return np.floor(exact).astype(np.int64), np.rint(exact).astype(np.int64)


def grey_schemes(values) -> list[int]:
    """The release schemes (5, 10) whose grey codes hold every value in ``values``; empty when the
    values look like plain labels (none above :data:`LARGEST_LABEL`)."""
    values = np.unique(np.asarray(values))
    if values.size == 0 or values.max() <= LARGEST_LABEL:
        return []
    fits = []
    for n in sorted(RELEASE_CLASSES):
        floor, rint = grey_levels(n)
        if np.isin(values, np.union1d(floor, rint)).all():
            fits.append(n)
    return fits


def decode_grey(grey: np.ndarray, n: int) -> np.ndarray:
    """Grey values of an ``n``-label grey-coded mask -> labels 0..n-1."""
    return np.clip(np.rint(np.asarray(grey, dtype=np.float64) * (n - 1) / 255.0), 0, n - 1).astype(np.uint8)


def interpret(labels: np.ndarray, num_classes: int, scheme: int | None = None) -> ForeignMask:
    """What a label image is, for a model of ``num_classes`` classes.

    ``scheme`` (5 or 10) forces the release scheme to read it in (for a grey-coded mask whose values
    fit both, or a label map whose labels fit both); by default the model's own class count is
    preferred where it fits, then the smaller scheme.
    """
    labels = np.asarray(labels)
    values = np.unique(labels)
    fits = grey_schemes(values)
    if fits:
        n = scheme if scheme in fits else (num_classes if num_classes in fits else fits[0])
        return ForeignMask(decode_grey(labels, n), "grey", n, fits, [int(v) for v in values])
    top = int(values.max()) if values.size else 0
    if top < num_classes and scheme is None:
        return ForeignMask(labels.astype(np.uint8), "model")
    fits = [n for n in sorted(RELEASE_CLASSES) if top < n]
    if not fits:
        return ForeignMask(labels.astype(np.uint8), "labels")
    n = scheme if scheme in fits else (num_classes if num_classes in fits else fits[0])
    return ForeignMask(labels.astype(np.uint8), "labels", n, fits)


def parse_class_map(text: str) -> dict[int, int]:
    """``"1=2,4=3"`` -> ``{1: 2, 4: 3}`` (source label = model label, comma separated)."""
    mapping: dict[int, int] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            src, dst = (int(v) for v in part.split("="))
        except ValueError:
            raise MaskError(f"--class-map takes SOURCE=TARGET pairs separated by commas, e.g. 1=2,4=3; "
                            f"got {part!r}") from None
        if not (0 <= src <= 255 and 0 <= dst <= 255):
            raise MaskError(f"--class-map labels must lie in 0..255, got {part!r}")
        if src in mapping and mapping[src] != dst:
            raise MaskError(f"--class-map sends label {src} to both {mapping[src]} and {dst}")
        mapping[src] = dst
    if not mapping:
        raise MaskError("--class-map is empty; give SOURCE=TARGET pairs, e.g. 1=2,4=3")
    return mapping


def format_class_map(mapping: dict[int, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(mapping.items()))


def apply_class_map(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Labels with every source label in ``mapping`` replaced by its target; other labels stay."""
    labels = np.asarray(labels)
    if not mapping:
        return labels.astype(np.uint8)
    lut = np.arange(256, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[int(src)] = int(dst)
    return lut[labels.astype(np.uint8)]


def default_class_map(mask: ForeignMask, model_classes: list[str]) -> dict[int, int]:
    """A first guess for every label present: the model class of the same name, else the same
    label when the source scheme is unknown and the label exists in the model, else 0 (unknown)."""
    by_name = {name.strip().lower(): i for i, name in enumerate(model_classes)}
    mapping = {}
    for label in mask.present:
        names = mask.source_classes
        if names and label < len(names) and names[label].strip().lower() in by_name:
            mapping[label] = by_name[names[label].strip().lower()]
        elif label == 0:
            mapping[label] = 0
        elif names is None and label < len(model_classes):
            mapping[label] = label
        else:
            mapping[label] = 0
    return mapping


def guess_class_map(mask: ForeignMask, model_classes: list[str]) -> dict[int, int] | None:
    """A class map worth suggesting, or None: only when every tissue label present has a model class
    of the same name (a map that sends tissue to "unknown" is no suggestion)."""
    if not mask.source_classes:
        return None
    by_name = {name.strip().lower(): i for i, name in enumerate(model_classes)}
    mapping = {}
    for label in mask.present:
        if label == 0:
            mapping[0] = 0
            continue
        names = mask.source_classes
        target = by_name.get(names[label].strip().lower()) if label < len(names) else None
        if not target:
            return None
        mapping[label] = target
    return mapping if any(mapping.values()) else None


def refusal(path, labels: np.ndarray, mask: ForeignMask, model_classes: list[str]) -> str:
    """Why a mask does not fit a model, with its labels and their pixel counts, the model's classes by
    name, and a class map only where one can be guessed well."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    shown = ", ".join(f"{int(v)}: {int(c):,} px" for v, c in list(zip(values, counts))[:12])
    shown += " ..." if len(values) > 12 else ""
    classes = ", ".join(f"{i}={n}" for i, n in enumerate(model_classes))
    text = (f"{path} has labels the model does not know ({shown}); the model's classes are {classes}; "
            f"the file is a {mask.describe()}")
    guess = guess_class_map(mask, model_classes)
    if guess:
        return f"{text}; map its labels by class name with --class-map {format_class_map(guess)}"
    return (f"{text}; say which model class each label is with --class-map SOURCE=TARGET,... "
            f"(label {int(values[-1])} to one of 1..{len(model_classes) - 1}, 0 only for unknown tissue)")


def check_class_map(mapping: dict[int, int], model_classes: list[str]) -> None:
    bad = sorted(dst for dst in mapping.values() if dst >= len(model_classes))
    if bad:
        raise MaskError(f"the class map sends labels to {bad}, but the model knows classes 0..{len(model_classes) - 1} "
                        f"({', '.join(f'{i}={n}' for i, n in enumerate(model_classes))})")


def load_for_model(path, colours: list[str], classes: list[str], class_map: dict[int, int] | None = None,
                   scheme: int | None = None) -> tuple[np.ndarray, ForeignMask]:
    """Read a mask file for a model: decode the release's grey codes, apply ``class_map``, and check
    that every label is one of the model's classes.  Returns the labels and what the file was."""
    raw = load_mask(path, colours)
    found = interpret(raw, len(classes), scheme)
    labels = found.labels
    if class_map:
        check_class_map(class_map, classes)
        labels = apply_class_map(labels, class_map)
    try:
        check_labels(labels, classes, name=str(path))
    except MaskError as e:
        if found.kind == "model":
            raise
        if class_map:  # the map given leaves labels the model lacks: name them
            raise MaskError(f"{e}; the class map {format_class_map(class_map)} leaves them unmapped") from None
        raise MaskError(refusal(path, labels, found, classes) + _jpeg_note(path)) from None
    return labels, found
