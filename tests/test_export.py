"""Canvases out: export-tiles and export-annotations round-trip a canvas (tiles equal to its
pixels and mask, GeoJSON back to the same mask), a pyramidal OME-TIFF, and provenance."""
from __future__ import annotations

import csv
import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image
from skimage import io

from src_models.cli.main import main
from src_models.io.annotations import labels_for, rasterise, read_geojson
from src_models.store.canvas import Canvas
from src_models.io.masks import procedural_mask
from src_models.store.provenance import card_sha256


def rows_of(folder):
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def class_map(canvas):
    return {name: k for k, name in enumerate(canvas.classes) if k}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A tiny-test canvas made by `diffinfinite generate` from a mask with holes and islands."""
    d = tmp_path_factory.mktemp("gen")
    mask = procedural_mask(64, 64, [1, 2, 3], seed=4)
    mask[20:40, 20:40] = 2
    mask[26:34, 26:34] = 0  # a hole of unknown
    mask[29:31, 29:31] = 3  # an island in it
    io.imsave(d / "m.png", mask, check_contrast=False)
    out = d / "g.zarr"
    assert main(["generate", "--mask", str(d / "m.png"), "--out", str(out), "--model", "tiny-test", "--device", "cpu",
                 "--size", "256x256", "--region-size", "64", "--steps", "2", "--seed", "5"]) == 0
    return out, d / "m.png"


def test_generated_canvas_records_provenance(generated):
    from src_models.models.tiny import tiny_test_card

    path, mask_png = generated
    with Canvas.open(path) as c:
        prov = c.info["provenance"]
        assert prov["model_card_sha256"] == card_sha256(tiny_test_card()) and prov["model"] == "tiny-test"
        assert prov["code_version"].startswith("napari-diffinfinite")
        assert prov["settings"]["seed"] == 5 and prov["settings"]["steps"] == 2
        (src,) = prov["sources"]
        assert src["role"] == "mask" and src["sha256"] == hashlib.sha256(mask_png.read_bytes()).hexdigest()


def test_export_tiles_and_annotations_round_trip_a_canvas(generated, tmp_path, capsys):
    path, _ = generated
    out = tmp_path / "tiles"
    assert main(["export-tiles", str(path), "--out", str(out), "--tile", "64", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["tiles"] == 16
    geo = tmp_path / "g.geojson"
    assert main(["export-annotations", str(path), "--out", str(geo)]) == 0
    assert json.loads(capsys.readouterr().out)["features"] == 3
    with Canvas.open(path) as c:
        rgb = c.read_rgb(0, 256, 0, 256)
        mask = c.read_mask()
        assert (np.bincount(mask.ravel()) > 0).all()
        # tiles: the canvas's pixels and its mask, pixel for pixel
        rows = rows_of(out)
        assert len(rows) == 16
        for r in rows:
            x, y = int(r["x"]), int(r["y"])
            np.testing.assert_array_equal(np.asarray(Image.open(out / r["image"])), rgb[y : y + 64, x : x + 64])
            np.testing.assert_array_equal(np.asarray(Image.open(out / r["mask"])), mask[y : y + 64, x : x + 64])
            assert r["labelled"] == "1" and r["source"] == str(path)
        classes = json.loads((out / "classes.json").read_text())
        assert classes == {"classes": c.classes, "colours": c.colours}
        # the GeoJSON rasterises back to the same mask
        ann = read_geojson(geo)
        back, _ = rasterise(ann, labels_for(ann, class_map(c)), mask.shape, (0, 0), c.factor)
        np.testing.assert_array_equal(back, mask)
        # provenance of the export: the canvas's card hash, seed, settings and region-state hash
        meta = json.loads((out / "dataset.json").read_text())
        prov = meta["provenance"]
        assert prov["model_card_sha256"] == c.info["provenance"]["model_card_sha256"]
        assert prov["seeds"] == {str(path): 5}
        (src,) = prov["sources"]
        assert src["role"] == "canvas" and src["finished_regions"] == 16
        state = np.ascontiguousarray(c.state_table())
        assert src["region_state_sha256"] == hashlib.sha256(state.tobytes()).hexdigest()
    # the export folder is a training/evaluation folder: evaluate reads it with its masks
    from src_models.evaluation.sources import open_images

    images = open_images(out)
    assert len(images) == 16 and images[0].mask is not None and images[0].mpp is None
    # a second export into the same folder is refused; --overwrite replaces it
    assert main(["export-tiles", str(path), "--out", str(out), "--tile", "64", "--quiet"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["export-annotations", str(path), "--out", str(geo)]) == 2
    assert "exists" in capsys.readouterr().err


def _factor4_canvas(path, done_regions):
    """A canvas of a factor-4 model (no model needed): random pixels, a mask with holes."""
    c = Canvas.create(path, 512, 384, factor=4, latent_channels=4, region_size=128,
                      classes=["unknown", "tumour", "stroma", "necrosis"],
                      colours=["#000000", "#c1121f", "#e87ab0", "#6d597a"], pixel_size_um=0.5)
    rng = np.random.default_rng(1)
    mask = procedural_mask(128, 96, [1, 2, 3], seed=2)
    mask[40:80, 30:70] = 1
    mask[50:70, 40:60] = 0
    c.write_mask(mask)
    rgb = rng.integers(0, 256, (512, 384, 3), dtype=np.uint8)
    for r in c.regions():
        if r.index in done_regions:
            y0, y1, x0, x1 = r.px(4)
            c.write_region(r, rgb[y0:y1, x0:x1])
            c.mark_done(r.index)
    c.close()
    return rgb, mask


def test_factor4_canvas_levels_classes_and_unfinished_regions(tmp_path, capsys):
    path = tmp_path / "f4.zarr"
    rgb, mask = _factor4_canvas(path, done_regions=set(range(12)) - {5})
    out = tmp_path / "t"
    assert main(["export-tiles", str(path), "--out", str(out), "--tile", "128", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tiles"] == 11 and summary["unfinished"] == 1  # region 5 is not finished
    full = mask.repeat(4, 0).repeat(4, 1)
    for r in rows_of(out):
        x, y = int(r["x"]), int(r["y"])
        np.testing.assert_array_equal(np.asarray(Image.open(out / r["mask"])), full[y : y + 128, x : x + 128])
        np.testing.assert_array_equal(np.asarray(Image.open(out / r["image"])), rgb[y : y + 128, x : x + 128])
        assert r["mpp"] == "0.5"
    # level 1: 64-px tiles covering 128 canvas px, mask under each pixel's centre
    assert main(["export-tiles", str(path), "--out", str(tmp_path / "l1"), "--tile", "64", "--level", "1", "--quiet"]) == 0
    capsys.readouterr()
    for r in rows_of(tmp_path / "l1"):
        x, y = int(r["x"]), int(r["y"])
        assert int(r["width"]) == 128 and r["mpp"] == "1.0"
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "l1" / r["mask"])), full[y + 1 : y + 128 : 2, x + 1 : x + 128 : 2])
    # --classes keeps tiles at least half of those classes
    assert main(["export-tiles", str(path), "--out", str(tmp_path / "c1"), "--tile", "128", "--classes", "1",
                 "--quiet"]) == 0
    capsys.readouterr()
    kept = rows_of(tmp_path / "c1")
    assert kept and all(int(r["px_1"]) >= 128 * 128 / 2 for r in kept)
    assert len(kept) < 11
    # the GeoJSON round trip at factor 4 (coordinates in canvas px)
    geo = tmp_path / "f4.geojson"
    assert main(["export-annotations", str(path), "--out", str(geo)]) == 0
    capsys.readouterr()
    ann = read_geojson(geo)
    back, _ = rasterise(ann, labels_for(ann, {"tumour": 1, "stroma": 2, "necrosis": 3}), (128, 96), (0, 0), 4)
    np.testing.assert_array_equal(back, mask)
    assert ann.bbox == (0.0, 0.0, 384.0, 512.0)
    # errors: one line, exit 2
    for argv, needle in ((["export-tiles", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "x")], "does not exist"),
                         (["export-tiles", str(path), "--out", str(tmp_path / "x"), "--classes", "7"], "classes 0..3"),
                         (["export-tiles", str(path), "--out", str(tmp_path / "x"), "--level", "9"], "levels 0..")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err


def test_ome_tiff_is_pyramidal_tiled_and_carries_scale_and_provenance(tmp_path, capsys):
    import tifffile

    path = tmp_path / "f4.zarr"
    rgb, _ = _factor4_canvas(path, done_regions=set(range(12)))
    out = tmp_path / "f4.ome.tif"
    assert main(["export-ome-tiff", str(path), "--out", str(out), "--tile", "128", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["levels"] == 2
    with tifffile.TiffFile(out) as tf, Canvas.open(path) as c:
        assert tf.is_ome
        series = tf.series[0]
        assert [lv.shape for lv in series.levels] == [(512, 384, 3), (256, 192, 3)]
        assert tf.pages[0].is_tiled and tf.pages[0].tilewidth == 128
        np.testing.assert_array_equal(series.levels[0].asarray(), rgb)
        np.testing.assert_array_equal(series.levels[1].asarray(), c.read_rgb(0, 256, 0, 192, level=1))
        xml = tf.ome_metadata
        assert 'PhysicalSizeX="0.5"' in xml
        desc = re.search(r"<Description>(.*?)</Description>", xml, re.S).group(1)
        import html

        prov = json.loads(html.unescape(desc))["provenance"]
        assert prov["sources"][0]["role"] == "canvas" and prov["settings"]["compression"] == "deflate"
    assert main(["export-ome-tiff", str(path), "--out", str(out), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    # it reads back as a slide: make-dataset and evaluate take it like an SVS
    from src_models.data.dataset import open_levels

    s = open_levels(out)
    assert s.mpp == 0.5 and s.downsamples == [1.0, 2.0]
    s.close()
