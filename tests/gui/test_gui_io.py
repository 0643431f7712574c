"""Reader (the default for canvases), writer (canvas layers only, nothing left behind on refusal),
sample data (one reused cache folder); refreshing never shows stale pixels and reads only what changed."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from gui_helpers import PLUGIN, make_canvas

from napari_diffinfinite._reader import DISTINCT, META, get_reader, refresh_image, refresh_region, set_mask_mode


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
    from src_models.store.canvas import Canvas

    with Canvas.open(path) as canvas:
        np.testing.assert_array_equal(mask.data, canvas.mask[:])
    assert tuple(mask.scale) == (1.0, 1.0)
    assert mask.features["class"].tolist() == tiny_card.classes
    # shown in colours far from H&E by default; the card's colours, or contours, on request
    def rgb(hex_colour):
        return [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]

    np.testing.assert_allclose(mask.colormap.map(np.array([2]))[0][:3], rgb(DISTINCT[1]), atol=1 / 255)
    set_mask_mode(mask, "class colours")
    np.testing.assert_allclose(mask.colormap.map(np.array([2]))[0][:3], rgb(tiny_card.colours[2]), atol=1 / 255)
    assert mask.contour == 0
    set_mask_mode(mask, "contours")
    assert mask.contour > 0 and mask.opacity == 1.0
    assert mask.colormap.map(np.array([0]))[0][3] == 0  # unknown stays transparent
    np.testing.assert_allclose(mask.colormap.map(np.array([7]))[0], [1, 0, 1, 1])  # not a class: magenta


def test_mask_layer_of_a_big_latent_grid_is_scaled_over_the_image(tiny_card, tmp_path):
    from napari_diffinfinite._reader import MAX_MASK_SIDE, canvas_layer_data

    make_canvas(tiny_card, tmp_path / "big.zarr", size=MAX_MASK_SIDE + 512, region=1024, mask=False)
    (_, image_meta, _), (mask, mask_meta, _) = canvas_layer_data(tmp_path / "big.zarr")
    step = image_meta["metadata"][META]["mask_step"]
    assert step == 2 and mask.shape == ((MAX_MASK_SIDE + 512) // 2,) * 2
    assert mask_meta["scale"] == (2.0, 2.0) and mask_meta["translate"] == (0.5, 0.5)


def test_a_canvas_opens_with_this_reader_by_default(viewer, tiny_card, tmp_path):
    """Opening a canvas with no plugin named (File > Open, ``viewer.open(path, plugin=None)``) gives the
    pyramid and the mask, not napari's reader chooser; other zarr stores still reach napari's own
    reader.  (napari's ``viewer.open(path)`` names its built-in reader unless told otherwise.)"""
    from napari.settings import get_settings

    from napari_diffinfinite._reader import prefer_this_reader

    path = make_canvas(tiny_card, tmp_path / "c.zarr", size=512, region=128)
    assert "*.zarr" not in get_settings().plugins.extension2reader  # napari would ask which reader
    assert prefer_this_reader()  # what the first use of the plugin does (its npe2 on_activate hook)
    assert get_settings().plugins.extension2reader["*.zarr"] == PLUGIN
    image, mask = viewer.open(path, plugin=None)
    assert image.multiscale and image.metadata[META]["role"] == "image"
    assert mask.metadata[META]["role"] == "mask" and mask.data.shape == (512, 512)
    viewer.layers.clear()
    viewer.window._qt_viewer._qt_open([path], stack=False)  # File > Open
    assert [layer.metadata[META]["role"] for layer in viewer.layers][:2] == ["image", "mask"]
    # a choice the user made already is kept
    kept = dict(get_settings().plugins.extension2reader)
    get_settings().plugins.extension2reader = {"*.zarr/": "napari"}
    assert not prefer_this_reader() and get_settings().plugins.extension2reader == {"*.zarr/": "napari"}
    get_settings().plugins.extension2reader = kept
    # a plain zarr array (not a canvas, not NGFF) goes on to napari's own reader
    import zarr

    arr = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(20, 30), dtype="uint8", fill_value=7)
    arr[:] = 7
    (plain,) = viewer.open(str(tmp_path / "plain.zarr"), plugin=None)
    assert plain.data.shape == (20, 30) and int(np.asarray(plain.data).max()) == 7


def test_the_writer_refuses_layers_that_are_not_a_canvas_and_leaves_nothing(viewer, tiny_card, tmp_path):
    from napari_diffinfinite._writer import WriterError, write_layers

    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), rgb=True, name="tissue")
    viewer.add_labels(rng.integers(0, 3, (150, 200)).astype(np.uint8), name="classes")
    out = tmp_path / "saved.zarr"
    with pytest.raises(WriterError, match="canvas layers only.*'tissue', 'classes'.*nothing was written"):
        viewer.layers.save(str(out), plugin=PLUGIN)
    assert not out.exists()
    viewer.add_image(np.zeros((8, 8), np.uint8), name="another")  # two images: still our message, not napari's
    with pytest.raises(WriterError, match="'another'"):
        viewer.layers.save(str(out), plugin=PLUGIN)
    assert not out.exists()
    viewer.layers.remove("another")
    # a canvas image beside a stranger: refused as well, before anything is written
    path = make_canvas(tiny_card, tmp_path / "c.zarr", size=256, region=128)
    image, mask = viewer.open(path, plugin=PLUGIN)
    viewer.layers.selection = {image, viewer.layers["classes"]}
    with pytest.raises(WriterError, match="'classes' is not"):
        viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    assert not out.exists()
    # a write that fails half-way (here: the disk fills after the first level) removes what it wrote
    import napari_diffinfinite._writer as writer

    original, calls = writer._copy, []

    def copy_then_fail(src, dst, channel_last):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full")
        original(src, dst, channel_last)

    monkey = pytest.MonkeyPatch()
    monkey.setattr(writer, "_copy", copy_then_fail)
    try:
        with pytest.raises(OSError, match="disk full"):
            write_layers(str(out), [layer.as_layer_data_tuple() for layer in (image, mask)])
    finally:
        monkey.undo()
    assert len(calls) == 2 and not out.exists()


def test_writer_copies_a_canvas_pyramid_and_never_replaces_a_canvas(viewer, tiny_card, tmp_path):
    path = make_canvas(tiny_card, tmp_path / "c.zarr", size=512, region=128)
    from src_models.store.canvas import Canvas

    with Canvas.open(path, "r+") as canvas:
        canvas.write_pixels(0, 0, np.full((100, 200, 3), 200, np.uint8))
    image, mask = viewer.open(path, plugin=PLUGIN)
    with pytest.raises(FileExistsError, match="canvas"):
        viewer.layers.save(path, plugin=PLUGIN)
    from napari_diffinfinite._overlay import show_overlay

    show_overlay(viewer, image)  # "save all" with the region overlay shown: the overlay is left out
    assert len(viewer.layers) == 3
    out = viewer.layers.save(str(tmp_path / "copy.zarr"), plugin=PLUGIN)
    assert out == [str(tmp_path / "copy.zarr")]
    viewer.layers.clear()
    image2, mask2 = viewer.open(out[0], plugin=PLUGIN)  # one image, one labels layer: no overlay copied
    assert len(image2.data) == len(image.data)
    for a, b in zip(image2.data, image.data):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(mask2.data, mask.data)
    assert mask2.features["class"].tolist() == tiny_card.classes


def test_sample_data_is_a_canvas_with_a_ready_mask_in_one_reused_folder(viewer, tmp_path):
    from napari_diffinfinite._sample_data import cache_dir
    from napari_diffinfinite._worker import BUSY

    layers = viewer.open_sample(PLUGIN, "demo")
    image, mask = layers
    info = image.metadata[META]
    assert info["role"] == "image" and image.multiscale
    assert info["settings"]["model"] in ("default", "tiny-test")
    present = set(np.unique(mask.data).tolist())
    assert present >= set(range(1, len(info["classes"]))), present  # every tissue class is in the layout
    assert painted_zero(image)
    assert info["region_size"] == 256 and info["width"] // 256 >= 2  # a run shows the fill region by region
    demo = cache_dir() / "demo" / "demo.zarr"
    assert info["path"] == str(demo.resolve()) and str(cache_dir()).startswith(str(tmp_path))
    viewer.layers.clear()
    again = viewer.open_sample(PLUGIN, "demo")  # the same folder and store, made afresh
    assert again[0].metadata[META]["path"] == str(demo.resolve())
    assert sorted(p.name for p in demo.parent.iterdir()) == ["demo.zarr"]
    BUSY.add(str(demo.resolve()))  # a run writes the first demo: the next one goes beside it
    try:
        third = viewer.open_sample(PLUGIN, "demo")
    finally:
        BUSY.discard(str(demo.resolve()))
    assert third[0].metadata[META]["path"] == str((demo.parent / "demo-2.zarr").resolve())


def painted_zero(image) -> bool:
    return int(np.asarray(image.data[-1]).max()) == 0  # nothing sampled yet


def test_refresh_shows_rewritten_pixels(viewer, tiny_card, tmp_path):
    """A chunk rewritten under a shown layer appears after refresh_image (no stale cache, no stale thumbnail)."""
    path = make_canvas(tiny_card, tmp_path / "c.zarr", size=512, region=128)
    image, _ = viewer.open(path, plugin=PLUGIN)
    viewer.reset_view()
    before = image.thumbnail.copy()
    np.asarray(image.data[-1])  # read once through the layer's arrays
    from src_models.store.canvas import Canvas

    with Canvas.open(path, "r+") as canvas:
        canvas.write_pixels(0, 0, np.full((512, 512, 3), 255, np.uint8))
    refresh_image(image)
    assert np.asarray(image.data[-1]).min() == 255
    assert image.thumbnail[..., :3].mean() > before[..., :3].mean() + 100


def test_refresh_region_reads_only_the_chunks_of_that_region(viewer, tiny_card, tmp_path):
    from napari_diffinfinite._reader import CHUNKS

    path = make_canvas(tiny_card, tmp_path / "big.zarr", size=2048, region=256)
    image, _ = viewer.open(path, plugin=PLUGIN)
    viewer.reset_view()
    image.data_level = 0  # the finest level: 16 chunks of 512 px in view
    image.refresh()
    np.asarray(image.data[0])  # every chunk of level 0 read once (and cached)
    from src_models.store.canvas import Canvas

    with Canvas.open(path, "r+") as canvas:
        canvas.write_pixels(0, 0, np.full((256, 256, 3), 200, np.uint8))
    before = CHUNKS.reads
    assert np.asarray(image.data[0][:256, :256]).max() == 0  # cached: not seen yet
    dropped = refresh_region(image, (0, 256, 0, 256))
    assert dropped >= 1
    np.testing.assert_array_equal(np.asarray(image.data[0][:256, :256]), 200)  # the change is shown
    np.asarray(image.data[0])
    # the refresh read the region's chunk on each level it touches, not the canvas
    assert CHUNKS.reads - before <= len(image.data)


def test_a_canvas_opens_from_its_zarr_json_and_the_view_is_framed(viewer, qtbot, tiny_card, tmp_path):
    """File > Open File(s) cannot pick a folder: picking the canvas's zarr.json opens the canvas
    (this plugin is the only reader of that name, so no preference is needed), framed in the view."""
    from napari_diffinfinite._common import camera
    from napari_diffinfinite._dock import DiffInfiniteWidget  # noqa: F401 - the dock is what users have open

    from gui_helpers import dock

    dock(viewer, "DiffInfinite")
    path = make_canvas(tiny_card, tmp_path / "c.zarr", size=512, region=128)
    camera(viewer).center = (5000.0, -3000.0)  # looking elsewhere
    viewer.window._qt_viewer._qt_open([str(tmp_path / "c.zarr" / "zarr.json")], stack=False)
    roles = [layer.metadata.get(META, {}).get("role") for layer in viewer.layers]
    assert "image" in roles and "mask" in roles
    image = next(layer for layer in viewer.layers if layer.metadata.get(META, {}).get("role") == "image")
    assert image.multiscale
    qtbot.waitUntil(lambda: abs(camera(viewer).center[-1] - 256) < 64 and abs(camera(viewer).center[-2] - 256) < 64,
                    timeout=5_000)
    # a zarr.json of a store that is no canvas is not taken
    import zarr

    zarr.create_array(str(tmp_path / "plain.zarr"), shape=(4, 4), dtype="uint8")
    assert get_reader(str(tmp_path / "plain.zarr" / "zarr.json")) is None
