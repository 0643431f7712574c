"""Sample data: a small demo canvas with a ready mask, made fresh in a temporary folder.

The canvas is made for the shipped ``default`` model when its weights are installed, else for
``tiny-test``; its mask is a procedural layout of the model's tissue classes
(``src_models.maskio.procedural_mask``).  Nothing is sampled: open the Synthesis widget and Run.
"""
from __future__ import annotations

import tempfile
from pathlib import Path


def demo_side(factor: int) -> int:
    """A square side of about 256 latent pixels, between 512 and 2048 px, on the model's grid."""
    grid = factor * 8
    side = min(2048, max(512, 256 * factor))
    return max(grid, side // grid * grid)


def make_demo_canvas(folder=None, seed: int = 0) -> Path:
    from src_models.api import new_canvas, put_mask
    from src_models.maskio import procedural_mask

    from ._worker import default_model_spec, model_card

    spec = default_model_spec()
    card = model_card(spec)
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="napari-diffinfinite-demo-"))
    path = folder / "demo.zarr"
    side = demo_side(card.factor)
    settings = {"model": spec, "steps": int(card.default_steps), "omega": float(card.default_omega)}
    with new_canvas(card, path, side, side, overwrite=True, settings=settings) as canvas:
        lh, lw = canvas.latent_shape
        put_mask(canvas, procedural_mask(lh, lw, list(range(1, card.num_classes)), seed=seed))
    return path


def demo_canvas() -> list[tuple]:
    """npe2 sample-data hook: the demo canvas's image and mask layers."""
    from ._reader import canvas_layer_data

    return canvas_layer_data(make_demo_canvas(), name="demo")
