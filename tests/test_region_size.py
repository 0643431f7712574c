"""Regions sized for the device (``api.region_size_for_device``): small on the CPU so the first region
shows soon, from the batch budget on a GPU."""
from __future__ import annotations

from src_models.synthesis.canvases import default_region_size, region_size_for_device
from src_models.models.card import BUILTIN_DIRS, ModelCard


def _card(patch_size: int, factor: int) -> ModelCard:
    card = ModelCard.load(BUILTIN_DIRS["default"])
    card.patch_size = patch_size
    card.codec = {**card.codec, "factor": factor}
    return card


def test_cpu_regions_are_256_px_or_one_window():
    default = ModelCard.load(BUILTIN_DIRS["default"])  # 32-latent windows, factor 4: 128 px windows
    assert region_size_for_device(default, "cpu") == 256
    assert region_size_for_device(default, "mps") == 256
    release = _card(64, 8)  # the published models: 512 px windows
    assert region_size_for_device(release, "cpu") == 512
    odd = _card(10, 3)  # a 30 px window on a 24 px grid: 256 rounds up to the grid
    assert region_size_for_device(odd, "cpu") == 264


def test_gpu_regions_follow_the_batch_budget():
    release = _card(64, 8)
    assert region_size_for_device(release, "cuda") == default_region_size(release)  # no budget known
    assert region_size_for_device(release, "cuda", batch_rows=12) == 2 * 512  # at least 2 windows a side
    assert region_size_for_device(release, "cuda", batch_rows=3 * 25) == 4 * 512  # 5 x 5 windows: 4 + halo
    assert region_size_for_device(release, "cuda", batch_rows=512) == 8 * 512  # at most 8
    sizes = [region_size_for_device(release, "cuda", batch_rows=r) for r in (12, 48, 75, 147, 243, 512)]
    assert sizes == sorted(sizes)  # more memory, larger regions
