"""Edge blending (issue 19, item 5): written pixels meet kept ones without a step, kept pixels and
latents are never touched, and a canvas with no kept content next to what is written is unchanged."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from src_models.synthesis.blend import edge_blend, neighbours
from src_models.synthesis.editing import import_slide, prepare_inpaint
from src_models.synthesis.regions import synthesise
from src_models.synthesis.request import SynthesisRequest


def _texture(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(90, 160, size=(*shape, 3)).astype(np.uint8)


def _edge_step(img, y0, y1, x0, x1):
    """Mean absolute step across the four edges of the rectangle, channels averaged."""
    g = img.astype(float).mean(-1)
    steps = [np.abs(g[y0, x0:x1] - g[y0 - 1, x0:x1]), np.abs(g[y1, x0:x1] - g[y1 - 1, x0:x1]),
             np.abs(g[y0:y1, x0] - g[y0:y1, x0 - 1]), np.abs(g[y0:y1, x1] - g[y0:y1, x1 - 1])]
    return float(np.concatenate(steps).mean())


def test_an_offset_square_loses_its_step_and_nothing_else_changes():
    """The decode of the box (square and context) came out 60 grey levels brighter than what is kept:
    the square follows the kept pixels, not its own decode's level."""
    kept_rgb = np.full((96, 96, 3), 120, np.uint8)
    decoded = np.full((96, 96, 3), 180, np.uint8)
    decoded[:, :16] = 0  # away from the square: must not leak in
    write = np.zeros((96, 96), bool)
    write[32:64, 32:64] = True
    out = edge_blend(decoded, kept_rgb, write, ~write, band=64)
    assert np.array_equal(out[~write], decoded[~write])  # only written pixels change
    plain = np.where(write[..., None], decoded, kept_rgb)
    assert _edge_step(plain, 32, 64, 32, 64) == 60
    out = np.where(write[..., None], out, kept_rgb)
    assert _edge_step(out, 32, 64, 32, 64) < 1  # a flat offset is a harmonic function: removed entirely
    assert np.abs(out[32:64, 32:64].astype(int) - 120).max() <= 1


def test_fine_detail_inside_is_kept_and_the_correction_stops_at_the_band():
    kept_rgb = np.full((160, 160, 3), 100, np.uint8)
    decoded = _texture((160, 160), 0)
    write = np.zeros((160, 160), bool)
    write[16:144, 16:144] = True
    out = edge_blend(decoded, kept_rgb, write, ~write, band=16)
    plain = np.where(write[..., None], decoded, kept_rgb)
    assert _edge_step(np.where(write[..., None], out, kept_rgb), 16, 144, 16, 144) < 0.5 * _edge_step(plain, 16, 144, 16, 144)
    deep = np.zeros_like(write)
    deep[40:120, 40:120] = True  # more than 16 px from every kept pixel
    assert np.array_equal(out[deep], decoded[deep])
    # texture survives: the corrected pixels differ from their neighbours about as the decode's do
    inner = out[20:140, 20:140].astype(float).mean(-1)
    raw = decoded[20:140, 20:140].astype(float).mean(-1)
    assert 0.8 < np.abs(np.diff(inner, axis=1)).mean() / np.abs(np.diff(raw, axis=1)).mean() < 1.2


def test_pixels_neither_kept_nor_written_do_not_pull():
    """Only the top edge touches kept pixels; the rest borders not-yet-sampled pixels (free)."""
    kept_rgb = np.zeros((64, 64, 3), np.uint8)
    kept_rgb[:16] = 200
    decoded = np.full((64, 64, 3), 100, np.uint8)
    write = np.zeros((64, 64), bool)
    write[16:48, 16:48] = True
    kept = np.zeros_like(write)
    kept[:16] = True
    out = edge_blend(decoded, kept_rgb, write, kept)
    # the flat offset is carried everywhere (zero flux at the free edges): the square takes the kept value
    assert np.abs(out[16:48, 16:48].astype(int) - 200).max() <= 1
    # with nothing kept beside it the square is left as decoded
    alone = edge_blend(decoded, kept_rgb, write, np.zeros_like(write))
    assert np.array_equal(alone, decoded)


def test_neighbours_are_4_adjacent_and_exclude_the_mask():
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    n = neighbours(m)
    assert n.sum() == 4 and n[1, 2] and n[3, 2] and n[2, 1] and n[2, 3] and not n[2, 2]


def test_bad_shapes_say_what_differs():
    with pytest.raises(ValueError, match="shapes differ"):
        edge_blend(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8), np.zeros((4, 4), bool),
                   np.zeros((4, 4), bool))


@pytest.mark.parametrize("sweep", [False, True], ids=["region-by-region", "sweep"])
def test_an_inpainted_square_in_an_imported_image_meets_it_without_a_step(tiny, tmp_path, monkeypatch, sweep):
    """A square sampled again in an imported image, with a codec whose decode comes out 40 grey levels
    brighter than what was imported (the tiny model's codec is the identity, which has no step to
    remove): with blending the square's edge step is a fraction of the plain decode's; the pixels
    outside it and every latent are as without blending."""
    import src_models.synthesis.blend as blend
    import src_models.synthesis.regions as regions
    import src_models.synthesis.sweep as sweeping

    decode = regions.decode_latent
    src = tmp_path / "slide.png"
    Image.fromarray(_texture((128, 128), 1)).save(src)
    results = {}
    for name in ("plain", "blended"):
        monkeypatch.undo()
        brighter = lambda codec, z, *a: np.clip(decode(codec, z, *a).astype(int) + 40, 0, 255).astype(np.uint8)  # noqa: E731
        monkeypatch.setattr(regions, "decode_latent", brighter)
        monkeypatch.setattr(sweeping, "decode_latent", brighter)
        if name == "plain":
            monkeypatch.setattr(blend, "edge_blend", lambda decoded, *a, **k: np.asarray(decoded).copy())
        canvas, _ = import_slide(src, tiny, tmp_path / f"{name}.zarr", region_size=64)
        before = canvas.read_rgb(0, 128, 0, 128).copy()
        rect = prepare_inpaint(canvas, (40, 88, 40, 88), label=1)
        list(synthesise(tiny, canvas, SynthesisRequest(model="tiny-test", steps=2, seed=5, area=rect, sweep=sweep)))
        results[name] = (canvas.read_rgb(0, 128, 0, 128).copy(), np.asarray(canvas.latent[:]).copy(), before, rect)
        canvas.close()
    (plain, lat_p, before, rect), (blended, lat_b, _, _) = results["plain"], results["blended"]
    y0, y1, x0, x1 = rect
    inside = np.zeros((128, 128), bool)
    inside[y0:y1, x0:x1] = True
    assert np.array_equal(lat_p, lat_b)
    assert np.array_equal(blended[~inside], before[~inside]) and np.array_equal(plain[~inside], before[~inside])
    assert not np.array_equal(blended[inside], plain[inside])
    assert _edge_step(blended, y0, y1, x0, x1) < 0.7 * _edge_step(plain, y0, y1, x0, x1)


def test_regions_outpainted_beside_an_imported_image_follow_it(tiny, tmp_path, monkeypatch):
    """Whole regions sampled next to imported content (outpaint), with a codec that decodes 40 grey levels
    too bright: blended, the new pixels along the imported ones are what a codec without that offset
    gives; the imported pixels stay as they were; between two new regions nothing is blended (their shared
    border is rewritten from one decode by refresh_borders, as on any generated canvas)."""
    import src_models.synthesis.blend as blend
    import src_models.synthesis.regions as regions
    from src_models.synthesis.editing import outpaint

    decode = regions.decode_latent
    src = tmp_path / "slide.png"
    Image.fromarray(_texture((128, 128), 2)).save(src)
    imported, _ = import_slide(src, tiny, tmp_path / "src.zarr", region_size=64)
    imported.close()
    shipped, calls, results = blend.edge_blend, [], {}

    def spy(decoded, kept_rgb, write, kept, **k):
        calls.append((write.copy(), kept.copy()))
        return shipped(decoded, kept_rgb, write, kept, **k)

    for name in ("true", "plain", "blended"):
        monkeypatch.undo()
        if name != "true":
            monkeypatch.setattr(regions, "decode_latent",
                                lambda codec, z, *a: np.clip(decode(codec, z, *a).astype(int) + 40, 0, 255).astype(np.uint8))
        monkeypatch.setattr(blend, "edge_blend", spy if name == "blended" else (lambda d, *a, **k: np.asarray(d).copy()))
        canvas = outpaint(tmp_path / "src.zarr", tiny, tmp_path / f"{name}.zarr", (0, 64, 0, 0), label=1)
        list(synthesise(tiny, canvas, SynthesisRequest(model="tiny-test", steps=2, seed=3)))
        results[name] = canvas.read_rgb(0, 128, 0, 192).astype(int)
        canvas.close()
    original = np.asarray(Image.open(src).convert("RGB"))
    for name in results:
        assert np.array_equal(results[name][:, :128], original)
    near = (slice(None), slice(128, 136))  # the new pixels next to the imported ones
    unsaturated = (results["true"][near] > 0) & (results["true"][near] < 215)
    off_plain = np.abs(results["plain"][near] - results["true"][near])[unsaturated].mean()
    off_blended = np.abs(results["blended"][near] - results["true"][near])[unsaturated].mean()
    assert off_plain > 35 and off_blended < 5
    assert len(calls) == 2  # one per new region, each against the imported pixels only
    for write, kept in calls:  # each box starts 8 px (the halo) left of the new column: only that part is kept
        assert kept[:, :8].all() and not kept[:, 8:].any() and not (kept & write).any()
