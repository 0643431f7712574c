"""make-dataset: the CC0 slide plus its hand-drawn GeoJSON becomes a training folder that
`diffinfinite train` runs on; exclusion of the held-out band, resume, provenance, pyramid levels."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src_models.cli.main import main
from src_models.io.annotations import labels_for, rasterise, read_geojson
from src_models.data.masks_from_he import HELDOUT_FROM_ROW

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT / "data" / "cmu_small_region" / "cmu_small_region.png"
GEOJSON = ROOT / "data" / "cmu_small_region" / "cmu_small_region.geojson"
CMAP = "Glass=1,Epidermis=2,Dermis=3"
HELDOUT = f"0,{HELDOUT_FROM_ROW},2220,{2967 - HELDOUT_FROM_ROW}"
COMMON = ["--slide", str(SLIDE), "--annotations", str(GEOJSON), "--class-map", CMAP, "--tile", "128", "--mpp", "1",
          "--slide-mpp", "0.5", "--exclude-rect", HELDOUT, "--unlabelled-fraction", "0.5", "--quiet"]


def rows_of(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "cc0"
    assert main(["make-dataset", *COMMON, "--out", str(out)]) == 0
    return out


def test_make_dataset_on_the_cc0_slide(dataset, capsys):
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["complete"] and meta["kind"] == "make-dataset"
    classes = json.loads((dataset / "classes.json").read_text())
    # class names from the class map; colours from the file's QuPath classifications
    assert classes == {"classes": ["unknown", "Glass", "Epidermis", "Dermis"],
                       "colours": ["#000000", "#e8e8e8", "#6a2d8f", "#e87ab0"]}
    rows = rows_of(dataset)
    summary = meta["summary"]
    assert summary["tiles"] == len(rows) and summary["labelled"] + summary["unlabelled"] == len(rows)
    assert summary["labelled"] >= 20 and summary["unlabelled"] >= 3 and summary["excluded"] == 3 * 8
    assert summary["unlabelled_dropped"] >= 1  # --unlabelled-fraction 0.5
    slide = np.asarray(Image.open(SLIDE).convert("RGB"))
    ann = read_geojson(GEOJSON)
    labels = labels_for(ann, {"Glass": 1, "Epidermis": 2, "Dermis": 3})
    for row in rows:
        x, y, w = float(row["x"]), float(row["y"]), float(row["width"])
        assert y + w <= HELDOUT_FROM_ROW and w == 256  # nothing from the held-out band; 128 px at 1 µm/px
        img = Image.open(dataset / row["image"])
        assert img.size == (128, 128) and round(25400 / img.info["dpi"][0], 3) == 1.0  # pixel size in pHYs
        if row["labelled"] == "1":
            mask = np.asarray(Image.open(dataset / row["mask"]))
            expect, cov = rasterise(ann, labels, (128, 128), (x, y), 2.0)
            np.testing.assert_array_equal(mask, expect)
            assert float(row["annotated_fraction"]) >= 0.1
            assert [int(row[f"px_{k}"]) for k in range(4)] == np.bincount(mask.ravel(), minlength=4).tolist()
        else:
            assert row["mask"] == "" and not (dataset / "masks" / (row["name"] + ".png")).exists()
            assert float(row["tissue_fraction"]) >= 0.25 and float(row["annotated_fraction"]) < 0.1
    # one tile against the slide, box-averaged 2:1 by hand
    row = next(r for r in rows if r["labelled"] == "1")
    x, y = int(float(row["x"])), int(float(row["y"]))
    crop = slide[y : y + 256, x : x + 256].astype(np.float64)
    ref = crop.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
    got = np.asarray(Image.open(dataset / row["image"])).astype(np.float64)
    assert np.abs(got - ref).max() <= 1.0
    # the labelled tiles hold every class; glass tiles count as labelled (the class is annotated)
    pixels = summary["labelled_class_pixels"]
    assert all(pixels[c] > 0 for c in ("Glass", "Epidermis", "Dermis"))
    # provenance: code version, settings, seed, and the sources with their SHA-256
    prov = meta["provenance"]
    assert prov["code_version"].startswith("napari-diffinfinite") and prov["seeds"] == {"unlabelled_subsample": 0}
    assert prov["settings"]["exclude"] == [[0.0, 2048.0, 2220.0, 919.0]] and prov["settings"]["tile"] == 128
    by_role = {s["role"]: s for s in prov["sources"]}
    for role, path in (("slide", SLIDE), ("annotations", GEOJSON)):
        assert by_role[role]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_runs_on_the_made_dataset(dataset, tmp_path):
    from src_models.models.loading import load_model

    out = tmp_path / "model"
    args = ["train", "--data", str(dataset), "--out", str(out), "--codec", "identity", "--steps", "3", "--crop", "32",
            "--batch", "2", "--base", "8", "--mults", "1,2", "--blocks", "1", "--ckpt-every", "100", "--log-every", "1",
            "--no-progress", "--pixel-size-um", "1.0"]
    assert main(args) == 0
    model = load_model(out)
    assert model.card.classes == ["unknown", "Glass", "Epidermis", "Dermis"]
    n = len(rows_of(dataset))
    n_lab = sum(r["labelled"] == "1" for r in rows_of(dataset))
    assert model.card.extra["tiles"] == n and model.card.extra["labelled_tiles"] == n_lab


def test_interrupted_run_resumes_to_the_same_folder(dataset, tmp_path, capsys):
    from src_models.io.annotations import parse_class_map
    from src_models.data.dataset import SlideInput, make_dataset

    out = tmp_path / "part"
    calls = {"n": 0}

    def stop_after(stage, done, total):
        if stage == "tiles":
            calls["n"] += 1
            if calls["n"] == 40:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_dataset([SlideInput(SLIDE, GEOJSON)], out, parse_class_map(CMAP), tile=128, mpp=1.0, slide_mpp=0.5,
                     exclude=[(0, 2048, 2220, 919)], unlabelled_fraction=0.5, progress=stop_after)
    meta = json.loads((out / "dataset.json").read_text())
    assert not meta["complete"]
    partial = rows_of(out)
    assert 0 < len(partial) < len(rows_of(dataset))
    # a half-written row (as a kill leaves it) is dropped on resume
    with open(out / "manifest.csv", "a") as f:
        f.write("cmu_small_region_x999999_y999999,images/x.png,")
    # without --resume the folder is refused; with other settings too
    assert main(["make-dataset", *COMMON, "--out", str(out)]) == 2
    assert "pass --overwrite to replace it or --resume" in capsys.readouterr().err
    other = [a if a != "0.5" else "0.7" for a in COMMON]
    assert main(["make-dataset", *other, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "settings differ" in err and "unlabelled_fraction" in err
    assert main(["make-dataset", *COMMON, "--out", str(out), "--resume"]) == 0
    capsys.readouterr()
    key = lambda r: r["name"]
    drop = ("source",)
    a = [{k: v for k, v in r.items() if k not in drop} for r in sorted(rows_of(out), key=key)]
    b = [{k: v for k, v in r.items() if k not in drop} for r in sorted(rows_of(dataset), key=key)]
    assert a == b
    assert json.loads((out / "dataset.json").read_text())["complete"]
    for r in rows_of(out):
        assert (np.asarray(Image.open(out / r["image"])) == np.asarray(Image.open(dataset / r["image"]))).all()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", ')
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps([{"type": "Feature", "properties": {"classification": {"name": "Glass"}},
                                "geometry": {"type": "Polygon", "coordinates": [[[9000, 9000], [9100, 9000], [9100, 9100]]]}}]))
    cases = [
        (["--annotations", str(bad)], "is not valid JSON"),
        (["--annotations", str(GEOJSON), "--class-map-x"], "unrecognized arguments"),
        (["--annotations", str(far)], "every feature lies outside the slide"),
        (["--annotations", str(GEOJSON), "--class-map", "Glass=1"], "not in the class map: Epidermis, Dermis"),
        (["--annotations", str(GEOJSON), "--mpp", "1"], "does not say its pixel size; give --slide-mpp"),
        (["--annotations", str(GEOJSON), "--annotations", str(GEOJSON)], "1 --slide but 2 --annotations"),
        (["--annotations", str(GEOJSON), "--unlabelled-fraction", "2"], "must lie in [0, 1]"),
    ]
    for extra, needle in cases:
        out = tmp_path / "never"
        argv = ["make-dataset", "--slide", str(SLIDE), "--out", str(out), "--quiet", *extra]
        if "--class-map" not in extra:
            argv += ["--class-map", CMAP]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
        assert not out.exists()


def test_levels_offsets_and_pyramidal_ome_tiff(tmp_path, capsys):
    """A crop of the slide as a two-level OME-TIFF with its pixel size: --level 1 reads the second
    level, --mpp resamples, --annotation-offset moves the slide's annotations onto the crop."""
    import tifffile

    from src_models.data.dataset import open_levels

    rgb = np.asarray(Image.open(SLIDE).convert("RGB"))[1000:1512, 800:1312]
    half = rgb.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    path = tmp_path / "crop.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        meta = {"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"}
        tif.write(rgb, subifds=1, tile=(128, 128), photometric="rgb", metadata=meta)
        tif.write(half, subfiletype=1, tile=(128, 128), photometric="rgb")
    s = open_levels(path)
    assert s.downsamples == [1.0, 2.0] and s.mpp == 0.5
    s.close()
    common = ["make-dataset", "--slide", str(path), "--annotations", str(GEOJSON), "--class-map", CMAP, "--tile", "64",
              "--annotation-offset=-800,-1000", "--min-annotated", "0.01", "--quiet"]
    assert main([*common, "--level", "1", "--out", str(tmp_path / "l1")]) == 0
    capsys.readouterr()
    assert main([*common, "--mpp", "1.0", "--out", str(tmp_path / "m1")]) == 0
    capsys.readouterr()
    ann = read_geojson(GEOJSON, offset=(-800, -1000))
    labels = labels_for(ann, {"Glass": 1, "Epidermis": 2, "Dermis": 3})
    for name in ("l1", "m1"):
        rows = rows_of(tmp_path / name)
        assert len(rows) == 16 and all(float(r["width"]) == 128 for r in rows)
        assert all(r["mpp"] == "1.0" for r in rows)
        lab = [r for r in rows if r["labelled"] == "1"]
        assert lab
        for r in lab:
            mask = np.asarray(Image.open(tmp_path / name / r["mask"]))
            expect, _ = rasterise(ann, labels, (64, 64), (float(r["x"]), float(r["y"])), 2.0)
            np.testing.assert_array_equal(mask, expect)
    # --mpp 1 picks the stored level 1 (1 µm/px by the OME pixel size), read as it is
    for r in rows_of(tmp_path / "l1"):
        a = np.asarray(Image.open(tmp_path / "l1" / r["image"]))
        assert (a == np.asarray(Image.open(tmp_path / "m1" / r["image"]))).all()
        x, y = int(float(r["x"])) // 2, int(float(r["y"])) // 2
        assert (a == half[y : y + 64, x : x + 64]).all()


def test_several_slides_in_one_run(tmp_path, capsys):
    """Two slides (here the same file twice: one annotated, one without annotations): tile names
    stay apart, the second slide gives unlabelled tiles only, every source is in the provenance."""
    out = tmp_path / "two"
    argv = ["make-dataset", "--slide", str(SLIDE), "--annotations", str(GEOJSON), "--slide", str(SLIDE),
            "--annotations", "-", "--class-map", CMAP, "--tile", "512", "--exclude-rect", HELDOUT, "--quiet",
            "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = rows_of(out)
    first = [r for r in rows if r["name"].startswith("cmu_small_region_")]
    second = [r for r in rows if r["name"].startswith("cmu_small_region-2_")]
    assert len(first) + len(second) == len(rows) == summary["tiles"]
    assert any(r["labelled"] == "1" for r in first) and second and all(r["labelled"] == "0" for r in second)
    assert {r["name"].split("_x")[1] for r in second} <= {r["name"].split("_x")[1] for r in first}
    meta = json.loads((out / "dataset.json").read_text())
    assert [s["role"] for s in meta["provenance"]["sources"]] == ["slide", "annotations", "slide"]
    assert [s["annotations"] for s in meta["settings"]["slides"]] == [str(GEOJSON), None]
