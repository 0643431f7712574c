"""Untrusted input is bounded before any work (issue 20): GeoJSON vertices, features and
coordinates, rasterising memory, mask files in bytes as well as pixels, and model cards checked
field by field (and their networks sized on the meta device) before anything is built."""
from __future__ import annotations

import json
import shutil
import tracemalloc

import numpy as np
import pytest

from canvas_helpers import one_line as _one_line
from src_models.cli.main import main
from src_models.io import annotations as A


def _poly(n, size=4096.0, seed=0):
    """A star-shaped ring of ``n`` vertices zigzagging over the whole grid (worst case for a fill)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.where(np.arange(n) % 2, 0.05, 0.49) * size
    return np.stack([size / 2 + r * np.cos(t), size / 2 + r * np.sin(t)], 1).tolist()


def _fc(rings):
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [r]}} for r in rings]}


def test_rasterising_memory_is_bounded_by_the_output(monkeypatch):
    ann = A.parse_geojson(_fc([_poly(20_000, 1024.0)]))
    tracemalloc.start()
    out, cov = A.rasterise(ann, [1], (1024, 1024))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # a 1 MB output; the crossings (20,000 edges x up to 500 rows: ~5 M) are made in batches
    assert peak < 80 * 2**20, peak
    assert 0.02 < cov.mean() < 0.9
    # the batches give the same pixels as one batch
    monkeypatch.setattr(A, "CROSSINGS_PER_BATCH", 1 << 30)
    again, _ = A.rasterise(ann, [1], (1024, 1024))
    assert np.array_equal(out, again)


@pytest.mark.parametrize("what,words", [
    ("vertices", "more than 50,000 vertices"),
    ("features", "more than the 1,000 one file may hold"),
    ("huge coordinate", "a coordinate is beyond 1e+09 px"),
    ("400 digits", "a coordinate is beyond 1e+09 px"),
    ("5000 digits", "is not usable JSON"),
])
def test_geojson_limits_are_one_line(tmp_path, capsys, monkeypatch, what, words):
    path = tmp_path / "a.geojson"
    if what == "vertices":
        monkeypatch.setattr(A, "MAX_VERTICES", 50_000)  # (5,000,000 by default; smaller here to stay fast)
        ring = _poly(1000)
        path.write_text(json.dumps(_fc([ring] * 51)))
    elif what == "features":
        monkeypatch.setattr(A, "MAX_FEATURES", 1_000)
        feats = '{"type":"Feature","properties":{},"geometry":null}'
        path.write_text('{"type":"FeatureCollection","features":[' + ",".join([feats] * 1_001) + "]}")
    else:
        big = {"huge coordinate": "1e12", "400 digits": "9" * 400, "5000 digits": "9" * 5000}[what]
        path.write_text('{"type":"Polygon","coordinates":[[[0,0],[10,0],[' + big + ',10],[0,0]]]}')
    code = main(["annotations-to-mask", str(path), "--out", str(tmp_path / "m.png"), "--size", "4096x4096",
                 "--class-map", "Tumor=1"])
    assert code == 2
    _one_line(capsys, words)


def test_a_mask_is_bounded_in_bytes_as_well_as_pixels(tmp_path, capsys, monkeypatch):
    from src_models.io import masks

    monkeypatch.setattr(masks, "MAX_MASK_BYTES", 1 << 20)  # 1 MiB, so the test stays small
    np.save(tmp_path / "wide.npy", np.zeros((400, 400), np.uint64))  # 160 k px, 1.2 MiB
    np.save(tmp_path / "ok.npy", np.zeros((400, 400), np.uint8))
    with pytest.raises(masks.MaskError, match=r"decodes to 1 MiB .*8 bytes.*save the labels as 8-bit"):
        masks.load_mask(tmp_path / "wide.npy")
    assert masks.load_mask(tmp_path / "ok.npy").shape == (400, 400)
    import tifffile

    tifffile.imwrite(tmp_path / "wide.tif", np.zeros((400, 400), np.uint64))
    with pytest.raises(masks.MaskError, match="8 bytes"):
        masks.load_mask(tmp_path / "wide.tif")


# ------------------------------------------------------------------------------ model cards
DEFAULT = None


def _card_dir(tmp_path, change):
    from src_models.models.card import BUILTIN_DIRS

    d = tmp_path / "model"
    shutil.copytree(BUILTIN_DIRS["default"], d)
    card = json.loads((d / "card.json").read_text())
    change(card)
    (d / "card.json").write_text(json.dumps(card))
    return d


def _set(path, value):
    def change(card):
        node = card
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return change


@pytest.mark.parametrize("change,words", [
    (_set(["codec", "channels"], 10**9), "codec.channels is 1000000000"),
    (_set(["codec", "config", "latent_channels"], 10**9), "codec.config.latent_channels"),
    (_set(["unet", "config", "base"], 10**7), "GiB of weights"),
    (_set(["codec", "factor"], 0), "codec.factor is 0"),
    (_set(["colours", 1], "#zzzzzz"), "colours[1] is '#zzzzzz'"),
    (_set(["pixel_size_um"], "abc"), "pixel_size_um is 'abc'"),
    (_set(["patch_size"], "32"), "patch_size is '32'"),
    (_set(["unet", "config", "mults"], "x"), "unet config does not build a network"),
    (_set(["classes"], ["unknown"] * 300), "classes"),
])
def test_a_hostile_model_card_is_one_line_before_anything_is_built(tmp_path, capsys, change, words):
    from skimage import io

    d = _card_dir(tmp_path, change)
    io.imsave(tmp_path / "m.png", np.ones((32, 32), np.uint8), check_contrast=False)
    assert main(["generate", "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "o.zarr"), "--model", str(d),
                 "--steps", "1", "--device", "cpu"]) == 2
    _one_line(capsys, words)
    assert not (tmp_path / "o.zarr").exists()


def test_a_card_nested_100000_deep_is_one_line(tmp_path, capsys):
    from src_models.models.card import BUILTIN_DIRS

    d = tmp_path / "model"
    shutil.copytree(BUILTIN_DIRS["default"], d)
    (d / "card.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["make-mask", "--out", str(tmp_path / "m.png"), "--size", "64x64", "--model", str(d)]) == 2
    _one_line(capsys, "nested too deeply")


# ------------------------------------------------------------------------------ advice
def test_a_refused_mask_lists_its_labels_and_the_models_classes_and_guesses_only_well(tmp_path, capsys):
    from skimage import io

    from src_models.io.foreign_masks import guess_class_map, interpret

    m = np.zeros((20, 20), np.uint16)
    m[:, 5:] = 1
    m[:, 12:] = 3
    m[15:, :] = 4
    io.imsave(tmp_path / "plain.png", m, check_contrast=False)
    assert main(["generate", "--mask", str(tmp_path / "plain.png"), "--out", str(tmp_path / "o.zarr"),
                 "--model", "default", "--steps", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "(0: 75 px, 1: 105 px, 3: 120 px, 4: 100 px)" in err and "0=unknown, 1=glass, 2=epidermis, 3=dermis" in err
    assert "perhaps in the DiffInfinite release's 5-class scheme" in err  # a guess, said as one
    assert "--class-map 0=0" not in err and "SOURCE=TARGET" in err  # no all-to-unknown map
    # a model with classes of the release's names: the map by name is suggested
    found = interpret(m, 4)
    assert guess_class_map(found, ["unknown", "carcinoma", "tumor stroma", "others"]) == {0: 0, 1: 1, 3: 2, 4: 3}
    assert guess_class_map(found, ["unknown", "glass", "epidermis", "dermis"]) is None
