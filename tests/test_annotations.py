"""QuPath GeoJSON in and out: reading, class maps, the overlap rule, rasterising against a
brute-force reference, the pixel-exact vectoriser, and one-line CLI errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from src_models.cli.main import main
from src_models.io.annotations import (
    AnnotationError,
    labels_for,
    mask_polygons,
    mask_to_geojson,
    paint_order,
    parse_class_map,
    parse_geojson,
    rasterise,
    read_geojson,
    transformed,
)

ROOT = Path(__file__).resolve().parents[1]
CC0_GEOJSON = ROOT / "data" / "cmu_small_region" / "cmu_small_region.geojson"
CMAP = {"Glass": 1, "Epidermis": 2, "Dermis": 3}


def feature(geometry, name=None, how="classification", colour=None):
    props = {}
    if name is not None and how == "classification":
        props["classification"] = {"name": name, **({"color": colour} if colour else {})}
    elif name is not None:
        props["name"] = name
    return {"type": "Feature", "geometry": geometry, "properties": props}


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def write(tmp_path, data, name="a.geojson"):
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def brute_force(rings_per_poly, shape, origin=(0.0, 0.0), pixel_size=1.0):
    """Even-odd test of every pixel centre against every ring of each polygon (union of polygons)."""
    h, w = shape
    yc, xc = np.mgrid[0:h, 0:w] + 0.5
    X, Y = origin[0] + xc * pixel_size, origin[1] + yc * pixel_size
    out = np.zeros(shape, bool)
    for rings in rings_per_poly:
        inside = np.zeros(shape, bool)
        for r in rings:
            r = np.asarray(r, float)
            for (x1, y1), (x2, y2) in zip(r, np.roll(r, -1, axis=0)):
                if y1 == y2:
                    continue
                cross = (y1 > Y) != (y2 > Y)
                xi = x1 + (Y - y1) * (x2 - x1) / (y2 - y1)
                inside ^= cross & (X < xi)
        out |= inside
    return out


# ------------------------------------------------------------------------------------ reading
def test_reads_collections_lists_features_and_names(tmp_path):
    geoms = [{"type": "Polygon", "coordinates": [square(0, 0, 4, 4)]}] * 3
    coll = {"type": "FeatureCollection", "features": [feature(geoms[0], "Tumor", colour=[200, 0, 0]),
                                                      feature(geoms[1], "Stroma", how="name"),
                                                      feature(geoms[2])]}
    for data in (coll, coll["features"]):
        ann = read_geojson(write(tmp_path, data))
        assert [f.name for f in ann.features] == ["Tumor", "Stroma", "Unclassified"]
        assert ann.colours() == {"Tumor": (200, 0, 0)}
    one = read_geojson(write(tmp_path, feature(geoms[0], "Tumor")))
    assert one.names() == {"Tumor": 1}
    # QuPath 0.2/0.3 colour (packed signed ARGB); points and lines are skipped, not refused
    packed = feature(geoms[0], "Necrosis")
    packed["properties"]["classification"]["colorRGB"] = -16744448  # 0xFF008000
    pts = feature({"type": "MultiPoint", "coordinates": [[1, 1], [2, 2]]}, "Cells")
    line = feature({"type": "LineString", "coordinates": [[1, 1], [9, 9]]}, "Ruler")
    ann = read_geojson(write(tmp_path, [packed, pts, line]))
    assert ann.colours() == {"Necrosis": (0, 128, 0)} and ann.skipped == {"MultiPoint": 1, "LineString": 1}
    assert len(ann) == 1


def test_offset_and_downsample_map_to_level0(tmp_path):
    p = write(tmp_path, [feature({"type": "Polygon", "coordinates": [square(1, 2, 3, 4)]}, "A")])
    ann = read_geojson(p, offset=(10, 20), downsample=4)
    assert ann.features[0].bbox == (14.0, 28.0, 22.0, 36.0)
    assert transformed(read_geojson(p), (10, 20), 4).features[0].bbox == (14.0, 28.0, 22.0, 36.0)


@pytest.mark.parametrize("text, needle", [
    ('{"type": "FeatureCollection", "features": [', "not valid JSON"),
    ("", "is empty"),
    ('{"type": "FeatureCollection", "features": []}', "holds no polygon annotations (an empty collection)"),
    ("[]", "holds no polygon annotations"),
    ('{"type": "Topology"}', "not GeoJSON annotations"),
    ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}}]', "at least 3"),
    ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, "a"], [2, 2]]]}}]', "coordinates"),
    ('[{"type": "Feature", "geometry": {"type": "Circle", "coordinates": []}}]', "unknown geometry type"),
    ('[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}}]', "skipped: 1 Point"),
])
def test_bad_files_are_one_line_errors(tmp_path, text, needle):
    with pytest.raises(AnnotationError) as e:
        read_geojson(write(tmp_path, text))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_class_map_parsing_and_unknown_names(tmp_path):
    assert parse_class_map("Tumor=1, Stroma=2,Necrosis=3") == {"Tumor": 1, "Stroma": 2, "Necrosis": 3}
    assert parse_class_map("Tumor: Positive=4") == {"Tumor: Positive": 4}
    for bad, needle in (("Tumor", "NAME=LABEL"), ("Tumor=x", "integer"), ("Tumor=256", "0..255"),
                        ("Tumor=1,tumor=2", "twice"), ("", "empty")):
        with pytest.raises(AnnotationError, match=needle):
            parse_class_map(bad)
    geom = {"type": "Polygon", "coordinates": [square(0, 0, 4, 4)]}
    ann = read_geojson(write(tmp_path, [feature(geom, "Tumor"), feature(geom, "Fat"), feature(geom, "Fat"),
                                        feature(geom)]))
    with pytest.raises(AnnotationError) as e:
        labels_for(ann, {"tumor": 1})  # names match without regard to case
    msg = str(e.value)
    assert "not in the class map: Fat, Unclassified" in msg and "Tumor (1), Fat (2), Unclassified (1)" in msg
    assert labels_for(ann, {"TUMOR": 1, "fat": 2, "Unclassified": 0}) == [1, 2, 2, 0]


# ------------------------------------------------------------------------------------ rasterising
def test_holes_multipolygons_and_pixel_centres(tmp_path):
    donut = {"type": "Polygon", "coordinates": [square(2, 2, 12, 12), square(5, 5, 9, 9)]}
    two = {"type": "MultiPolygon", "coordinates": [[square(14, 0, 16, 3)], [square(14, 10, 16, 16)]]}
    ann = read_geojson(write(tmp_path, [feature(donut, "A"), feature(two, "B")]))
    out, cov = rasterise(ann, labels_for(ann, {"A": 1, "B": 2}), (16, 16))
    expect = np.zeros((16, 16), np.uint8)
    expect[2:12, 2:12] = 1
    expect[5:9, 5:9] = 0  # the hole
    expect[0:3, 14:16] = 2
    expect[10:16, 14:16] = 2
    np.testing.assert_array_equal(out, expect)
    np.testing.assert_array_equal(cov, expect > 0)
    # a grid of 2 level-0 px per pixel, shifted: a pixel takes the polygon under its centre
    out2, _ = rasterise(ann, [1, 2], (8, 8), origin=(1.0, 1.0), pixel_size=2.0)
    assert out2[0, 0] == 0 and out2[1, 1] == 1 and out2[2, 2] == 0 and out2[3, 3] == 0 and out2[4, 4] == 1


def test_overlap_rule_later_features_win_or_class_map_order(tmp_path):
    big = {"type": "Polygon", "coordinates": [square(0, 0, 10, 10)]}
    small = {"type": "Polygon", "coordinates": [square(3, 3, 6, 6)]}
    # the file lists the small Tumor first, then the large Stroma over it
    ann = read_geojson(write(tmp_path, [feature(small, "Tumor"), feature(big, "Stroma")]))
    cmap = {"Stroma": 2, "Tumor": 1}
    labels = labels_for(ann, cmap)
    last, _ = rasterise(ann, labels, (10, 10), order=paint_order(ann, cmap, "last"))
    assert (last == 2).all()  # later features win: Stroma covers Tumor
    ranked, _ = rasterise(ann, labels, (10, 10), order=paint_order(ann, cmap, "class-map"))
    assert (ranked[3:6, 3:6] == 1).all() and (ranked == 2).sum() == 100 - 9  # Tumor is listed later in the map
    # a hole shows what lies below (it is "not this annotation", not "background")
    holed = {"type": "Polygon", "coordinates": [square(0, 0, 10, 10), square(2, 2, 8, 8)]}
    ann = read_geojson(write(tmp_path, [feature(big, "Stroma"), feature(holed, "Tumor")]))
    out, _ = rasterise(ann, labels_for(ann, cmap), (10, 10))
    assert (out[2:8, 2:8] == 2).all() and (out[:2] == 1).all()


def test_rasteriser_matches_a_brute_force_even_odd_test():
    rng = np.random.default_rng(7)
    for trial in range(25):
        n_rings = 1 + trial % 3
        rings = [rng.uniform(-5, 45, (int(rng.integers(3, 12)), 2)) for _ in range(n_rings)]  # self-intersecting too
        data = feature({"type": "Polygon", "coordinates": [r.tolist() + [r[0].tolist()] for r in rings]}, "A")
        ann = parse_geojson(data)
        origin, ps = (rng.uniform(-3, 3), rng.uniform(-3, 3)), float(rng.choice([0.5, 1.0, 1.7]))
        out, cov = rasterise(ann, [1], (30, 33), origin, ps)
        ref = brute_force([rings], (30, 33), origin, ps)
        np.testing.assert_array_equal(cov, ref, err_msg=f"trial {trial}")


def test_coordinates_outside_the_grid_are_clipped(tmp_path):
    ann = read_geojson(write(tmp_path, [feature({"type": "Polygon", "coordinates": [square(-50, -50, 5, 5)]}, "A"),
                                        feature({"type": "Polygon", "coordinates": [square(100, 100, 200, 200)]}, "A")]))
    out, cov = rasterise(ann, [1, 1], (8, 8))
    assert cov[:5, :5].all() and cov.sum() == 25
    wholly, partly = ann.outside(8, 8)
    assert [f.index for f in wholly] == [1] and [f.index for f in partly] == [0]


# ------------------------------------------------------------------------------------ writing
def test_vectoriser_round_trips_masks_exactly():
    rng = np.random.default_rng(3)
    # diagonal touches, a hole with an island inside it, a ring touching itself at a corner
    m = np.zeros((12, 12), np.uint8)
    m[1, 1] = m[2, 2] = 1  # two pixels touching only at a corner: two polygons
    m[4:11, 4:11] = 2
    m[6:9, 6:9] = 0
    m[7, 7] = 3  # an island in the hole
    m[0:3, 6:9] = 1
    m[1, 7] = 0
    m[0, 7] = 0  # a U open at the top
    masks = [m] + [ndimage.median_filter(rng.integers(0, 4, (int(rng.integers(5, 40)), int(rng.integers(5, 40)))), 3)
                   .astype(np.uint8) for _ in range(30)]
    for k, mask in enumerate(masks):
        for ps, origin in ((1, (0, 0)), (4, (8, 12)), (2.5, (0.5, 0))):
            fc = mask_to_geojson(mask, ["unknown", "a", "b", "c"], ["#000000", "#ff0000", "#00ff00", "#0000ff"],
                                 pixel_size=ps, origin=origin)
            ann = parse_geojson(json.loads(json.dumps(fc)))
            back, _ = rasterise(ann, labels_for(ann, {"a": 1, "b": 2, "c": 3}), mask.shape, origin, ps)
            np.testing.assert_array_equal(back, mask, err_msg=f"mask {k}, pixel size {ps}")
    polys = mask_polygons(m == 1)
    assert len(polys) == 3  # (1,1), (2,2) and the U
    donut = mask_polygons(m == 2)
    assert len(donut) == 1 and len(donut[0]) == 2  # outline + one hole
    area = lambda r: 0.5 * float((r[:, 0] * np.roll(r[:, 1], -1) - np.roll(r[:, 0], -1) * r[:, 1]).sum())
    assert area(donut[0][0]) == 49 and area(donut[0][1]) == -9  # outline anticlockwise (y up), hole the other way
    fc = mask_to_geojson(m, ["unknown", "a", "b", "c"])
    assert [f["properties"]["classification"]["name"] for f in fc["features"]] == ["a", "b", "c"]
    assert fc["features"][0]["geometry"]["coordinates"][0][0][0] == fc["features"][0]["geometry"]["coordinates"][0][0][-1]


def test_cc0_annotations_match_the_slide():
    """The shipped hand-drawn file: its classes, a hole and MultiPolygons, nothing in the held-out band."""
    from src_models.data.masks_from_he import HELDOUT_FROM_ROW

    ann = read_geojson(CC0_GEOJSON)
    assert ann.names() == {"Glass": 4, "Epidermis": 3, "Dermis": 2}
    assert sum(len(p) > 1 for f in ann.features for p in f.polygons) == 1  # one polygon with a hole
    assert sum(len(f.polygons) > 1 for f in ann.features) == 2  # two MultiPolygons
    assert ann.bbox[3] < HELDOUT_FROM_ROW
    wholly, partly = ann.outside(2220, 2967)
    assert not wholly and not partly
    out, cov = rasterise(ann, labels_for(ann, CMAP), (2967, 2220))
    # spot checks by eye on the slide: glass left of the tissue, dermis band, epidermis, the flake in the hole
    assert out[500, 400] == 1 and out[1500, 880] == 3 and out[1400, 1210] == 2 and out[1045, 500] == 3
    assert out[610, 2085] == 0 and out[610, 1990] == 1


# ------------------------------------------------------------------------------------ CLI
def test_annotations_to_mask_and_one_line_cli_errors(tmp_path, capsys):
    out = tmp_path / "m.png"
    args = ["annotations-to-mask", str(CC0_GEOJSON), "--class-map", "Glass=1,Epidermis=2,Dermis=3", "--size", "2220x2967",
            "--downsample", "4", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    from PIL import Image

    mask = np.asarray(Image.open(out))
    assert mask.shape == (741, 555) and result["size"] == [555, 741]
    assert set(np.unique(mask)) == {0, 1, 2, 3} and mask[125, 100] == 1

    bad = write(tmp_path, '{"type": "FeatureCollection", "features": [', "bad.geojson")
    empty = write(tmp_path, '{"type": "FeatureCollection", "features": []}', "empty.geojson")
    far = write(tmp_path, [feature({"type": "Polygon", "coordinates": [square(5000, 5000, 5100, 5100)]}, "Glass")], "far.geojson")
    cases = [
        ([str(bad)], "is not valid JSON"),
        ([str(empty)], "holds no polygon annotations"),
        ([str(tmp_path / "missing.geojson")], "does not exist"),
        ([str(CC0_GEOJSON), "--class-map", "Glass=1"], "not in the class map: Epidermis, Dermis"),
        ([str(far)], "every feature lies outside"),
        ([str(CC0_GEOJSON), "--class-map", "Glass=one"], "integer"),
    ]
    for extra, needle in cases:
        argv = ["annotations-to-mask", *extra]
        if "--class-map" not in extra:
            argv += ["--class-map", "Glass=1,Epidermis=2,Dermis=3"]
        argv += ["--size", "2220x2967", "--out", str(tmp_path / "x.png")]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and err.startswith("diffinfinite: error:"), err
        assert not (tmp_path / "x.png").exists()
    assert main(["annotations-to-mask", str(CC0_GEOJSON), "--out", "x.png"]) == 2  # usage error: one line too
    err = capsys.readouterr().err.strip()
    assert "required" in err and "\n" not in err
