"""Layouts with anatomy: recipes measured on label maps, drawn back, and chosen by make-mask."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from src_models.synthesis.anatomy import (RecipeError, check_recipe, draw_recipe, measure_nests, measure_section,
                                          recipe_summary)

SECTION = {"kind": "section", "glass": 1, "surface": 2, "core": 3, "tissue_share": 0.3, "surface_border_share": 0.4,
           "surface_share": 0.6, "surface_depth_um": [12.0, 30.0, 70.0], "pieces": 2}
NESTS = {"kind": "nests", "background": 1, "nest": 2, "matrix": 3, "edge": 4, "nest_share": [0.1, 0.3],
         "nest_diameter_um": 200.0, "edge_depth_um": [50.0, 110.0], "edge_fill": 0.3, "background_share": 0.01}


def _layered(h=300, w=300):
    """A hand-drawn section: glass left, then 40 px of surface class, then core."""
    m = np.full((h, w), 1, np.uint8)
    m[:, 100:140] = 2
    m[:, 140:] = 3
    return m


def test_measure_section_reads_a_layered_map():
    r = measure_section(_layered(), 0.5, glass=1, surface=2, core=3)
    assert r["tissue_share"] == pytest.approx(200 / 300, abs=0.01)
    assert r["surface_share"] == pytest.approx(40 / 200, abs=0.01)
    assert r["surface_border_share"] == pytest.approx(1.0, abs=0.02)  # glass touches only the surface class
    assert r["surface_depth_um"][1] == pytest.approx(40 * 0.5, abs=1.0)  # the surface/core border is 40 px deep
    assert r["pieces"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_drawn_section_has_its_surface_class_on_the_surface(seed):
    lab = draw_recipe(SECTION, (256, 256), 4.0, seed=seed)
    assert set(np.unique(lab)) <= {1, 2, 3}
    tissue = lab != 1
    assert 0.3 * 0.8 - 0.03 <= tissue.mean() <= 0.3 * 1.25 + 0.03
    got = recipe_summary(lab, SECTION, 4.0)
    assert got["surface_share"] == pytest.approx(0.6, abs=0.03)
    assert got["pieces"] <= 2
    # anatomy: the surface class is a layer on the surface, not islands inside the core: nearly all
    # of it belongs to pieces that touch the glass, and it lines part of the border
    pieces, n = ndi.label(lab == 2)
    touching = np.unique(pieces[ndi.binary_dilation(lab == 1) & (pieces > 0)])
    assert np.isin(pieces[pieces > 0], touching).mean() >= 0.95
    assert 0.2 <= got["surface_border_share"] <= 0.95


def test_drawing_is_seeded():
    a, b, c = (draw_recipe(SECTION, (128, 160), 4.0, seed=s) for s in (5, 5, 6))
    assert a.shape == (128, 160)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drawn_nests_sit_in_stroma_with_infiltrate_at_their_edges(seed):
    px_um = 4.0
    lab = draw_recipe(NESTS, (256, 256), px_um, seed=seed)
    nests = lab == 2
    assert 0.1 - 0.03 <= nests.mean() <= 0.3 + 0.03
    edge = lab == 4
    assert edge.any()
    dist_um = ndi.distance_transform_edt(~nests) * px_um
    assert dist_um[edge].max() <= 110.0 + px_um  # no infiltrate farther than the measured depth
    assert (lab == 3).mean() > 0.3  # the matrix is stroma
    got = measure_nests(lab, px_um, background=1, nest=2, matrix=3, edge=4)
    assert 0.15 <= got["edge_fill"] <= 0.45


def test_measure_nests_reads_a_nest_with_a_rim():
    m = np.full((200, 200), 3, np.uint8)
    yy, xx = np.mgrid[:200, :200]
    r = np.hypot(yy - 100, xx - 100)
    m[r < 60] = 4
    m[r < 40] = 2
    got = measure_nests(m, 1.0, background=1, nest=2, matrix=3, edge=4)
    assert got["nest_share"][0] == pytest.approx(np.pi * 40 ** 2 / 200 ** 2, rel=0.05)
    assert got["nest_diameter_um"] == pytest.approx(80, rel=0.05)
    assert got["edge_depth_um"][1] <= 20.5


def test_bad_recipes_are_refused_with_the_reason():
    with pytest.raises(RecipeError, match="kind"):
        check_recipe({"kind": "spiral"}, 4)
    with pytest.raises(RecipeError, match="surface must be a class"):
        check_recipe({**SECTION, "surface": 7}, 4)
    with pytest.raises(RecipeError, match="depths"):
        check_recipe({**SECTION, "surface_depth_um": "deep"}, 4)
    with pytest.raises(RecipeError, match="no tissue"):
        measure_section(np.ones((20, 20), np.uint8), 0.5, glass=1, surface=2, core=3)


def test_layout_kinds_and_sources():
    from src_models.cli.main import LAYOUT_CHOICES
    from src_models.models.loading import find_card
    from src_models.synthesis.layouts import (ANATOMY, LAYOUT_KINDS, LEARNED, PROCEDURAL, LayoutError,
                                              layout_source)

    assert LAYOUT_CHOICES == LAYOUT_KINDS
    default, _ = find_card("default")
    assert layout_source(default) == ANATOMY
    assert layout_source(default, "learned") == LEARNED
    assert layout_source(default, "procedural") == PROCEDURAL
    tiny, _ = find_card("tiny-test")
    assert layout_source(tiny) == PROCEDURAL
    with pytest.raises(LayoutError, match="no anatomy recipe"):
        layout_source(tiny, "anatomy")
    with pytest.raises(LayoutError, match="no layout model"):
        layout_source(tiny, "learned")


def test_the_default_card_recipe_was_measured_on_training_rows_only():
    from src_models.models.loading import find_card
    from src_models.synthesis.layouts import layout_recipe

    card, _ = find_card("default")
    recipe = layout_recipe(card)
    assert recipe["kind"] == "section"
    assert all("rows 0:2048" in s for s in recipe["measured_on"])  # the held-out band stays held out


def test_make_mask_draws_a_section_for_the_default_model(tmp_path, capsys):
    from PIL import Image

    from src_models.cli.main import main

    out = tmp_path / "m.png"
    assert main(["make-mask", "--out", str(out), "--size", "512x384", "--seed", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "anatomy recipe" in info["made_by"]
    lab = np.asarray(Image.open(out))
    assert lab.shape == (384, 512)
    assert set(np.unique(lab)) <= {1, 2, 3} and (lab == 1).any() and (lab != 1).any()


def test_make_mask_refuses_a_layout_the_model_lacks_in_one_line(tmp_path, capsys):
    from src_models.cli.main import main

    assert main(["make-mask", "--out", str(tmp_path / "m.png"), "--size", "64x64", "--model", "tiny-test",
                 "--layout", "anatomy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no anatomy recipe" in err[0]
    assert not (tmp_path / "m.png").exists()
