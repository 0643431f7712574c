"""Class colours: the model card's ``"#rrggbb"`` strings, parsed in one place for the canvas's NGFF
label colours, colour-coded mask files, GeoJSON classes, previews and napari's label colours."""
from __future__ import annotations

import numpy as np


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` (the ``#`` optional) -> (r, g, b), 0..255."""
    c = str(colour).strip().lstrip("#")
    if len(c) != 6:
        raise ValueError(f"a colour is written #rrggbb, got {colour!r}")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def hex_rgba(colour: str, alpha: int = 255) -> list[int]:
    """``"#rrggbb"`` -> [r, g, b, alpha], 0..255 (NGFF ``image-label`` colours)."""
    return [*hex_rgb(colour), int(alpha)]


def colour_lut(colours: list[str]) -> np.ndarray:
    """(K, 3) uint8 RGB, one row per class."""
    return np.array([hex_rgb(c) for c in colours], dtype=np.uint8)


def labels_rgb(labels: np.ndarray, colours: list[str]) -> np.ndarray:
    """A label image in its classes' colours, (H, W, 3) uint8."""
    return colour_lut(colours)[labels]
