"""Region borders of a canvas made region by region with the shipped default model: no hard seam.

What this guards is the machinery: a region sampled with its finished neighbours as context, never decoded
beside them blind (that gave a border ratio of 2.0).  The faint seams the model itself still leaves under
the default request (ratios 1.08 to 1.44 over six seeds, ranked first of 16 line offsets in most; issue 19's
open target) are measured by ``benchmarks/seam_sweep.py``, not here."""
import numpy as np
import pytest

from src_models.synthesis.canvases import new_canvas, put_mask
from src_models.synthesis.regions import synthesise
from src_models.synthesis.request import SynthesisRequest


def seam_ratio(img: np.ndarray, region: int, factor: int, shift: int = 0) -> float:
    """Mean gradient magnitude across region borders over that across the other latent-pixel
    borders (the codec's upsampling gives every f-th pixel step its own statistics, so borders
    are compared with steps of the same phase).  With ``shift`` (px, a multiple of ``factor``) the
    same figure for the lines ``shift`` px after the borders, which are not borders."""
    grey = img.astype(np.float32).mean(-1)
    dx = np.abs(np.diff(grey, axis=1)).mean(0)  # step between column x and x + 1
    dy = np.abs(np.diff(grey, axis=0)).mean(1)
    steps = (dx + dy) / 2
    idx = np.arange(len(steps))
    grid = idx[(idx + 1) % factor == 0]
    border = grid[(grid + 1 - shift) % region == 0]
    interior = np.setdiff1d(grid, border)
    return float(steps[border].mean() / steps[interior].mean())


@pytest.fixture(scope="module")
def default_model():
    from src_models.models.loading import load_model

    return load_model("default", "cpu")


def test_region_borders_are_seamless(default_model, tmp_path):
    size, region = 256, 64
    c = new_canvas(default_model.card, tmp_path / "c.zarr", size, size, region)
    put_mask(c, np.full(c.latent_shape, 3, np.uint8))  # dermis: textured tissue everywhere
    # the default request (50 DDIM steps).  With fewer steps the sampled latents themselves show the
    # region borders with this model (20 steps: ratio 1.24 for this seed, 1.37 with DPM++(2M)); a
    # second pass per level (resample=2) or the sweep removes them (README, "Measured figures")
    events = list(synthesise(default_model, c, SynthesisRequest(steps=50, seed=1)))
    assert len(events) == 16
    img = np.moveaxis(np.asarray(c.image(0)[:]), 0, -1)
    f = default_model.card.factor
    ratio = seam_ratio(img, region, f)
    # the same statistic on the other 15 line offsets, none of them a border: its own spread (about
    # 0.8 to 1.3 on this small canvas, depending on the seed).  The seams this test was written against
    # (neighbours decoded before the region) gave 2.0.  With the 5,000-step UNet this seed's borders sat
    # inside the offsets' spread (0.93); with the longer-trained UNet shipped since stop 6 they are 1.13
    # against offsets up to 1.08, the faint seam the module docstring describes, so the bound is the
    # hard seam's, not the offsets'.
    others = [seam_ratio(img, region, f, shift) for shift in range(f, region, f)]
    assert ratio < 1.3, (ratio, min(others), max(others))
    assert ratio < 1.25 * max(others), (ratio, min(others), max(others))
