"""Reader, writer and sample data; refreshing never shows stale pixels."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from gui_helpers import PLUGIN, make_canvas

from napari_diffinfinite._reader import META, get_reader, refresh_image


def test_reader_opens_a_canvas_as_multiscale_dask_plus_mask(viewer, tiny_card, tmp_path):
    path = make_canvas(tiny_card, tmp_path / "c.zarr", size=512, region=128)
    assert get_reader(str(tmp_path)) is None  # not a canvas
    assert get_reader(path) is not None
    layers = viewer.open(path, plugin=PLUGIN)
    image, mask = layers
    assert image.multiscale and image.rgb
    assert len(image.data) >= 2 and all(isinstance(d, da.Array) for d in image.data)
    assert image.data[0].shape == (512, 512, 3)
    info = image.metadata[META]
    assert info["role"] == "image" and info["classes"] == tiny_card.classes
    from src_models.canvas import Canvas

    with Canvas.open(path) as canvas:
        np.testing.assert_array_equal(mask.data, canvas.mask[:])
    assert tuple(mask.scale) == (1.0, 1.0)
    assert mask.features["class"].tolist() == tiny_card.classes
    colour = mask.colormap.map(np.array([2]))[0]
    expected = [int(tiny_card.colours[2][i : i + 2], 16) / 255 for i in (1, 3, 5)]
    np.testing.assert_allclose(colour[:3], expected, atol=1 / 255)


def test_mask_layer_of_a_big_latent_grid_is_scaled_over_the_image(tiny_card, tmp_path):
    from napari_diffinfinite._reader import MAX_MASK_SIDE, canvas_layer_data

    make_canvas(tiny_card, tmp_path / "big.zarr", size=MAX_MASK_SIDE + 512, region=1024, mask=False)
    (_, image_meta, _), (mask, mask_meta, _) = canvas_layer_data(tmp_path / "big.zarr")
    step = image_meta["metadata"][META]["mask_step"]
    assert step == 2 and mask.shape == ((MAX_MASK_SIDE + 512) // 2,) * 2
    assert mask_meta["scale"] == (2.0, 2.0) and mask_meta["translate"] == (0.5, 0.5)


def test_writer_round_trip(viewer, tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (150, 200)).astype(np.uint8)
    viewer.add_image(rgb, rgb=True, name="tissue")
    viewer.add_labels(labels, name="classes", scale=(2, 2), translate=(0.5, 0.5),
                      features={"index": [0, 1, 2], "class": ["unknown", "tumour", "stroma"]})
    out = viewer.layers.save(str(tmp_path / "saved.zarr"), plugin=PLUGIN)
    assert out == [str(tmp_path / "saved.zarr")]
    viewer.layers.clear()
    image, back = viewer.open(out[0], plugin=PLUGIN)
    np.testing.assert_array_equal(np.asarray(image.data), rgb)
    np.testing.assert_array_equal(back.data, labels)
    assert tuple(back.scale) == (2, 2) and tuple(back.translate) == (0.5, 0.5)
    assert back.features["class"].tolist() == ["unknown", "tumour", "stroma"]


def test_writer_copies_a_canvas_pyramid_and_never_replaces_a_canvas(viewer, tiny_card, tmp_path):
    path = make_canvas(tiny_card, tmp_path / "c.zarr", size=512, region=128)
    from src_models.canvas import Canvas

    with Canvas.open(path, "r+") as canvas:
        canvas.write_pixels(0, 0, np.full((100, 200, 3), 200, np.uint8))
    image, mask = viewer.open(path, plugin=PLUGIN)
    with pytest.raises(FileExistsError, match="canvas"):
        viewer.layers.save(path, plugin=PLUGIN)
    out = viewer.layers.save(str(tmp_path / "copy.zarr"), plugin=PLUGIN)
    viewer.layers.clear()
    image2, mask2 = viewer.open(out[0], plugin=PLUGIN)
    assert len(image2.data) == len(image.data)
    for a, b in zip(image2.data, image.data):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(mask2.data, mask.data)
    assert mask2.features["class"].tolist() == tiny_card.classes


def test_sample_data_is_a_canvas_with_a_ready_mask(viewer):
    layers = viewer.open_sample(PLUGIN, "demo")
    image, mask = layers
    info = image.metadata[META]
    assert info["role"] == "image" and image.multiscale
    assert info["settings"]["model"] in ("default", "tiny-test")
    present = set(np.unique(mask.data).tolist())
    assert present >= set(range(1, len(info["classes"]))), present  # every tissue class is in the layout
    assert painted_zero(image)


def painted_zero(image) -> bool:
    return int(np.asarray(image.data[-1]).max()) == 0  # nothing sampled yet


def test_refresh_shows_rewritten_pixels(viewer, tiny_card, tmp_path):
    """A chunk rewritten under a shown layer appears after refresh_image (no stale cache, no stale thumbnail)."""
    path = make_canvas(tiny_card, tmp_path / "c.zarr", size=512, region=128)
    image, _ = viewer.open(path, plugin=PLUGIN)
    viewer.reset_view()
    before = image.thumbnail.copy()
    np.asarray(image.data[-1])  # read once through the layer's arrays
    from src_models.canvas import Canvas

    with Canvas.open(path, "r+") as canvas:
        canvas.write_pixels(0, 0, np.full((512, 512, 3), 255, np.uint8))
    refresh_image(image)
    assert np.asarray(image.data[-1]).min() == 255
    assert image.thumbnail[..., :3].mean() > before[..., :3].mean() + 100
