"""Masks of the DiffInfinite release (grey-coded PNGs, 5/10-class label maps) brought into a model's
classes: decoding, class maps, and ``diffinfinite generate --class-map``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src_models.io.foreign_masks import (
    apply_class_map,
    decode_grey,
    default_class_map,
    grey_schemes,
    interpret,
    load_for_model,
    parse_class_map,
)
from src_models.io.masks import MaskError, load_mask

DATA = Path(__file__).resolve().parent / "data" / "release_masks"
GREY = DATA / "squamous_mask_example_grey.png"  # grey values 0, 63, 191, 255
LABEL_MAP = DATA / "synthetic_5class_label_map.png"  # uint16, labels 0 and 4
SKIN = ["unknown", "glass", "epidermis", "dermis"]
SKIN_COLOURS = ["#000000", "#f0f0f0", "#8a3c8c", "#e6a0c8"]


def test_the_release_grey_png_decodes_to_five_class_labels():
    raw = load_mask(GREY)
    assert sorted(np.unique(raw).tolist()) == [0, 63, 191, 255]
    assert grey_schemes(np.unique(raw)) == [5]  # 63 and 191 are not grey codes of 10 labels
    found = interpret(raw, len(SKIN))
    assert found.kind == "grey" and found.scheme == 5 and found.present == [0, 1, 3, 4]
    # every pixel decodes to the label whose grey code it holds
    lut = {0: 0, 63: 1, 191: 3, 255: 4}
    for value, label in lut.items():
        assert (found.labels[raw == value] == label).all()
    assert found.source_name(3) == "Tumor stroma"


def test_grey_codes_of_both_schemes_truncated_or_rounded():
    for n in (5, 10):
        exact = np.arange(n) * 255 / (n - 1)
        for grey in (np.floor(exact), np.rint(exact)):
            grey = grey.astype(np.uint8)[None]
            assert n in grey_schemes(grey)
            np.testing.assert_array_equal(decode_grey(grey, n)[0], np.arange(n))
    assert grey_schemes(np.array([0, 1, 2, 3])) == []  # plain labels are not grey codes
    assert grey_schemes(np.array([0, 100])) == []  # neither scheme has 100
    # {0, 255} fits both: the model's own count wins, else the smaller scheme
    assert interpret(np.array([[0, 255]], np.uint8), 10).scheme == 10
    assert interpret(np.array([[0, 255]], np.uint8), 4).scheme == 5
    assert interpret(np.array([[0, 255]], np.uint8), 4, scheme=10).labels.tolist() == [[0, 9]]


def test_label_maps_of_the_release_and_of_the_model():
    raw = load_mask(LABEL_MAP)
    found = interpret(raw, len(SKIN))
    assert found.kind == "labels" and found.scheme == 5 and found.present == [0, 4]
    assert found.source_name(4) == "Others"
    assert interpret(raw, 5).kind == "model"  # the release's 5-class model takes it as it is
    assert interpret(np.array([[0, 7]], np.uint8), 4).scheme == 10
    assert interpret(np.array([[0, 40]], np.uint8), 4).scheme is None


def test_class_maps_parse_apply_and_guess():
    assert parse_class_map("1=2,4=3") == {1: 2, 4: 3}
    assert parse_class_map(" 1=2 , ") == {1: 2}
    for bad in ("1:2", "a=b", "", "1=2,1=3", "1=300"):
        with pytest.raises(MaskError, match="class-map"):
            parse_class_map(bad)
    labels = np.array([[0, 1, 3, 4]], np.uint8)
    np.testing.assert_array_equal(apply_class_map(labels, {1: 2, 4: 3}), [[0, 2, 3, 3]])
    # same names map by name; unknown names go to 0 until the user says otherwise
    found = interpret(np.array([[0, 63, 191, 255]], np.uint8), 4)
    assert default_class_map(found, SKIN) == {0: 0, 1: 0, 3: 0, 4: 0}
    assert default_class_map(found, ["Unknown", "carcinoma", "x", "others"]) == {0: 0, 1: 1, 3: 0, 4: 3}


def test_load_for_model_applies_the_map_and_explains_a_missing_one():
    labels, found = load_for_model(GREY, SKIN_COLOURS, SKIN, {1: 2, 3: 3, 4: 1})
    assert found.kind == "grey" and sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]
    raw = load_mask(GREY)
    assert (labels[raw == 63] == 2).all() and (labels[raw == 255] == 1).all()
    with pytest.raises(MaskError, match=r"\(0: 843 px, 1: 3,020,147 px, 3: 3,505,845 px, 4: 26,765 px\).*"
                                        r"0=unknown, 1=glass.*grey-coded 5-class.*--class-map") as e:
        load_for_model(GREY, SKIN_COLOURS, SKIN)
    assert "0=0,1=0" not in str(e.value)  # no map that sends every label to unknown (issue 20)
    with pytest.raises(MaskError, match="0..3"):
        load_for_model(LABEL_MAP, SKIN_COLOURS, SKIN, {4: 7})


def test_generate_with_a_class_map(tmp_path, capsys):
    from src_models.cli.main import main

    out = tmp_path / "c.zarr"
    argv = ["generate", "--mask", str(LABEL_MAP), "--out", str(out), "--model", "tiny-test", "--scale", "0.125",
            "--steps", "1", "--device", "cpu"]
    assert main(argv) == 2  # label 4 (Others) is not a tiny-test class: refused with the way out
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--class-map" in err and "5-class" in err
    assert main(argv + ["--class-map", "4=3"]) == 0
    from src_models.store.canvas import Canvas

    with Canvas.open(out) as canvas:
        stored = np.asarray(canvas.mask[:])
    expected = apply_class_map(load_mask(LABEL_MAP), {4: 3})[4::8, 4::8]
    np.testing.assert_array_equal(stored, expected)
    assert main(argv[:-4] + ["--out", str(tmp_path / "d.zarr"), "--steps", "1", "--device", "cpu",
                             "--class-map", "4=x"]) == 2
    assert "SOURCE=TARGET" in capsys.readouterr().err
    # the release's grey PNG: decoded (with a warning saying so), then mapped
    grey_argv = ["generate", "--mask", str(GREY), "--out", str(tmp_path / "g.zarr"), "--model", "tiny-test",
                 "--scale", "0.025", "--steps", "1", "--device", "cpu", "--class-map", "1=2,3=3,4=1"]
    assert main(grey_argv) == 0
    err = capsys.readouterr().err
    assert "grey-coded 5-class" in err
    from src_models.io.masks import resize_labels

    expected = resize_labels(apply_class_map(decode_grey(load_mask(GREY), 5), {1: 2, 3: 3, 4: 1}), (64, 64))
    with Canvas.open(tmp_path / "g.zarr") as canvas:
        np.testing.assert_array_equal(canvas.mask[:], expected)
    assert set(np.unique(expected).tolist()) >= {1, 3}
