"""Sample data: a small demo canvas with a ready mask, made afresh in the plugin's cache folder.

The canvas is made for the shipped ``default`` model when its weights are installed, else for
``tiny-test``; its mask is a procedural layout of the model's tissue classes
(``src_models.io.masks.procedural_mask``) and its regions are 256 px, so a Run shows the canvas
filling region by region.  Nothing is sampled: press Run.

Every demo canvas lives in one folder, ``<cache>/demo/`` (``$NAPARI_DIFFINFINITE_CACHE``, else
``$XDG_CACHE_HOME/napari-diffinfinite``, else ``~/.cache/napari-diffinfinite``), and is reused:
opening the sample again rewrites ``demo.zarr`` unless a run is writing it (then ``demo-2.zarr``,
and so on).
"""
from __future__ import annotations

from pathlib import Path

DEMO_REGION_PX = 256
MAX_DEMOS = 8


def cache_dir() -> Path:
    from ._paths import user_dir

    return user_dir("cache")


def demo_side(factor: int) -> int:
    """A square side of about 256 latent pixels, between 512 and 2048 px, on the model's grid."""
    grid = factor * 8
    side = min(2048, max(512, 256 * factor))
    return max(grid, side // grid * grid)


def _in_use(path: Path) -> bool:
    """Whether a run (of this process or another) is writing the canvas at ``path``."""
    from src_models.store.canvas import Canvas, CanvasLockedError

    from ._worker import BUSY

    if str(path.resolve()) in BUSY:
        return True
    if not path.exists():
        return False
    try:
        Canvas.open(path, "r+").close()
    except CanvasLockedError:
        return True
    except Exception:  # a damaged store: free to be replaced
        return False
    return False


def demo_path(folder=None) -> Path:
    folder = Path(folder) if folder is not None else cache_dir() / "demo"
    for n in range(1, MAX_DEMOS + 1):
        path = folder / ("demo.zarr" if n == 1 else f"demo-{n}.zarr")
        if not _in_use(path):
            return path
    raise RuntimeError(f"every demo canvas in {folder} is being written by a run; wait for one to finish")


def make_demo_canvas(folder=None, seed: int = 0) -> Path:
    from src_models.synthesis.canvases import new_canvas, put_mask
    from src_models.io.masks import procedural_mask
    from src_models.synthesis.request import card_settings

    from ._worker import default_model_spec, model_card

    spec = default_model_spec()
    card = model_card(spec)
    path = demo_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = demo_side(card.factor)
    region = max(DEMO_REGION_PX, card.patch_px)
    settings = card_settings(card, spec)
    with new_canvas(card, path, side, side, region_size=region, overwrite=True, settings=settings) as canvas:
        lh, lw = canvas.latent_shape
        put_mask(canvas, procedural_mask(lh, lw, list(range(1, card.num_classes)), seed=seed))
    return path


def demo_canvas() -> list[tuple]:
    """npe2 sample-data hook: the demo canvas's image and mask layers."""
    from ._reader import canvas_layer_data, prefer_this_reader

    prefer_this_reader()
    return canvas_layer_data(make_demo_canvas(), name="demo")
