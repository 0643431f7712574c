"""Canvas integrity (issue 12): region state in one array with checksums, fsync'd write order,
verify and repair, damaged stores as one-line errors, the writer lock beside the store, the lazily
written mask and its pyramid, NGFF validity, canvases of the marker-file layout."""
from __future__ import annotations

import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from src_models.synthesis.canvases import new_canvas, put_mask
from src_models.store.canvas import Canvas, CanvasDamagedError, CanvasError, CanvasLockedError, lock_path
from src_models.io.masks import resize_labels
from src_models.synthesis.regions import synthesise
from src_models.synthesis.request import SynthesisRequest
from src_models.store.verify import repair, verify_canvas

DATA = Path(__file__).resolve().parent / "data"


def _mask() -> np.ndarray:
    m = np.zeros((40, 40), np.uint8)
    m[:, 20:] = 1
    m[30:] = 2
    return m


def _finished(tiny, path, size=320, region=64, chunk=64, steps=1) -> Canvas:
    """A finished canvas with two pyramid levels and one level-0 chunk per region."""
    c = Canvas.create(path, size, size, factor=1, latent_channels=3, region_size=region, classes=tiny.card.classes,
                      colours=tiny.card.colours, chunk=chunk, settings=SynthesisRequest(model="tiny-test", steps=steps, seed=2).settings())
    put_mask(c, _mask())
    for _ in synthesise(tiny, c, SynthesisRequest(model="tiny-test", steps=steps, seed=2)):
        pass
    return c


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "done.zarr"
    _finished(tiny, path).close()
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- region state
def test_region_state_is_one_array_with_checksums_not_one_file_per_region(finished):
    files = [p for p in (finished / "diffinfinite").rglob("*") if p.is_file()]
    assert not (finished / "diffinfinite" / "regions").exists()
    assert not any(p.suffix == ".done" for p in files)
    with Canvas.open(finished) as c:
        table = c.state_table()
        assert table.shape == (5, 5, 4)
        assert (table[..., 0] == 1).all()  # every region sampled
        assert (table[..., 1] != 0).all() and (table[..., 2] != 0).all()  # checksums recorded
        r = c.region(7)
        assert c.region_checksums(r) == (int(table[1, 2, 1]), int(table[1, 2, 2]))
        assert c.is_done(7) and c.done_info(7)["steps"] == 1 and c.done_info(7)["seed"] == 2
    state_files = list((finished / "diffinfinite" / "region_state").rglob("c/*/*/*"))
    assert len(state_files) == 1  # 25 regions: one chunk


def test_done_lookup_reads_one_state_chunk_not_the_whole_table(tiny, tmp_path, monkeypatch):
    c = Canvas.create(tmp_path / "big.zarr", 65536, 65536, factor=1, latent_channels=3, region_size=256,
                      classes=tiny.card.classes, colours=tiny.card.colours)
    c.close()
    c = Canvas.open(tmp_path / "big.zarr")
    assert c.state_table().shape == (256, 256, 4)
    reads = []
    real = Canvas._read

    def spy(self, name, sel):
        out = real(self, name, sel)
        reads.append((name, out.size))
        return out

    monkeypatch.setattr(Canvas, "_read", spy)
    assert not c.is_done(40_000)
    assert reads == [("diffinfinite/region_state", 4), ("diffinfinite/region_state_copy", 4)]  # and its second record


def test_write_order_data_fsynced_before_state(tiny, tmp_path, monkeypatch):
    import src_models.store.canvas as canvas_mod

    c = Canvas.create(tmp_path / "c.zarr", 512, 512, factor=1, latent_channels=3, region_size=128,
                      classes=tiny.card.classes, colours=tiny.card.colours, chunk=128)
    synced, written = [], []
    real_sync = canvas_mod._fsync_file
    monkeypatch.setattr(canvas_mod, "_fsync_file", lambda p: (synced.append(Path(p)), real_sync(p)))
    r = c.region(5)
    rgb = np.full((128, 128, 3), 77, np.uint8)
    c.write_region(r, rgb, np.ones((3, 128, 128), np.float32))
    c.mark_done(r.index, {"seed": 1})
    rel = [p.relative_to(c.path).as_posix() for p in synced]
    state = [i for i, p in enumerate(rel) if p.startswith("diffinfinite/region_state/c/")]
    data = [i for i, p in enumerate(rel) if p.startswith(("0/c/", "1/c/", "diffinfinite/latent/c/"))]
    assert state and data
    assert max(data) < min(state)  # pixels, latents and pyramid are durable before the state
    assert {p.split("/c/")[0] for p in (rel[i] for i in data)} == {"0", "1", "diffinfinite/latent"}
    c.close()


# ----------------------------------------------------------------------------- verify and repair
@pytest.mark.parametrize("what", ["level-0 chunk", "latent chunk"])
def test_deleted_chunk_is_found_and_the_region_generated_again(tiny, finished, tmp_path, what):
    path = _copy(finished, tmp_path / "c.zarr")
    chunk = path / ("0/c/0/1/2" if what == "level-0 chunk" else "diffinfinite/latent/c/0/1/2")
    chunk.unlink()  # region 7 (row 1, column 2) loses its pixels or latents
    with Canvas.open(path) as c:
        report = verify_canvas(c)
        assert set(report.damaged) == {7} and not report.pyramid_only
        assert any("missing chunk" in p for p in report.damaged[7])
        assert any("differ from what was written" in p for p in report.damaged[7])
        quick = verify_canvas(c, deep=False)  # the quick check sees the missing file too
        assert set(quick.damaged) == {7} and not quick.pyramid_only
    with Canvas.open(path, "r+") as c:
        rebuilt, forgotten = repair(c, report)
        assert (rebuilt, forgotten) == ([], [7]) and not c.is_done(7)
        for _ in synthesise(tiny, c, SynthesisRequest(model="tiny-test", steps=1, seed=2)):
            pass
        assert c.is_done(7) and verify_canvas(c).ok
        assert c.read_rgb(64, 128, 128, 192).any() and np.abs(c.read_latent(64, 128, 128, 192)).sum() > 0


def test_truncated_chunk_is_damage_not_a_traceback(finished, tmp_path):
    from src_models.synthesis.canvases import save_preview

    path = _copy(finished, tmp_path / "c.zarr")
    chunk = path / "0" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    with Canvas.open(path) as c:
        with pytest.raises(CanvasDamagedError, match="a chunk of 0 cannot be read"):
            save_preview(c, tmp_path / "p.png")
        report = verify_canvas(c)
        assert set(report.damaged) == {0}
        assert "level-0 pixels cannot be read (damaged chunk)" in report.damaged[0]


def test_damaged_pyramid_tile_is_rebuilt_from_level_0(finished, tmp_path):
    path = _copy(finished, tmp_path / "c.zarr")
    with Canvas.open(path) as c:
        before = np.asarray(c.image(1)[:])
    (path / "1" / "c" / "0" / "0" / "0").unlink()  # level 1 tile over regions 0, 1, 5, 6
    with Canvas.open(path, "r+") as c:
        report = verify_canvas(c)
        assert set(report.damaged) == {0, 1, 5, 6} and report.pyramid_only == {0, 1, 5, 6}
        quick = verify_canvas(c, deep=False)
        assert quick.damaged == {i: ["missing chunk 1/c/0/0/0"] for i in (0, 1, 5, 6)} and quick.pyramid_only == {0, 1, 5, 6}
        assert repair(c, report) == ([0, 1, 5, 6], [])
        assert np.array_equal(np.asarray(c.image(1)[:]), before) and verify_canvas(c).ok
        assert c.done_indices() == set(range(25))


@pytest.mark.parametrize("damage,expected", [
    ("corrupt array zarr.json", "cannot read diffinfinite/latent/zarr.json"),
    ("missing latent array", "the array diffinfinite/latent is missing"),
    ("corrupt state zarr.json", "cannot read diffinfinite/zarr.json"),
    ("corrupt root zarr.json", "cannot read its zarr.json"),
])
def test_damaged_metadata_is_one_clear_error(finished, tmp_path, damage, expected):
    path = _copy(finished, tmp_path / "c.zarr")
    if damage == "corrupt array zarr.json":
        (path / "diffinfinite" / "latent" / "zarr.json").write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "missing latent array":
        shutil.rmtree(path / "diffinfinite" / "latent")
    elif damage == "corrupt state zarr.json":
        (path / "diffinfinite" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"jobs": ')
    else:
        (path / "zarr.json").write_bytes(b"\xff" * 40)
    for how in ("writer", "check"):  # a writer meets it at open; a reader at its first read or check()
        with pytest.raises(CanvasDamagedError) as e:
            Canvas.open(path, "r+").close() if how == "writer" else Canvas.open(path).check()
        assert expected in str(e.value) and "\n" not in str(e.value)


def test_reader_warns_on_a_damaged_canvas(finished, tmp_path):
    from napari_diffinfinite._reader import canvas_layer_data

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        canvas_layer_data(finished)  # an intact canvas: no warning
    path = _copy(finished, tmp_path / "c.zarr")
    (path / "0" / "c" / "0" / "2" / "3").unlink()
    with pytest.warns(UserWarning, match=r"1 of 25 finished regions damaged \(13\).*diffinfinite verify"):
        canvas_layer_data(path)


# ----------------------------------------------------------------------------- lock
def test_lock_lives_beside_the_store_and_zarr_listings_stay_quiet(tiny, tmp_path):
    path = tmp_path / "c.zarr"
    c = Canvas.create(path, 64, 64, factor=1, latent_channels=3, region_size=32, classes=tiny.card.classes,
                      colours=tiny.card.colours)
    assert lock_path(path) == tmp_path / "c.zarr.lock" and lock_path(path).exists()
    assert not any(p.name.endswith(".lock") for p in path.rglob("*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr warns about any file it does not know
        members = dict(zarr.open_group(str(path), mode="r").members(max_depth=None))
    assert {"0", "labels/mask/0", "diffinfinite/latent", "diffinfinite/region_state"} <= set(members)
    c.close()
    assert not lock_path(path).exists()  # nothing left beside the canvas either


def test_overwrite_takes_the_lock_before_deleting_anything(tiny, finished, tmp_path):
    path = _copy(finished, tmp_path / "c.zarr")
    with Canvas.open(path, "r+"):
        with pytest.raises(CanvasLockedError, match="being written by another process"):
            Canvas.create(path, 64, 64, factor=1, latent_channels=3, region_size=32, classes=tiny.card.classes,
                          colours=tiny.card.colours, overwrite=True)
        with Canvas.open(path) as c:  # untouched
            assert c.done_indices() == set(range(25)) and verify_canvas(c).ok


# ----------------------------------------------------------------------------- the mask
def test_a_huge_canvas_gets_its_mask_without_writing_it(tiny, tmp_path):
    path = tmp_path / "huge.zarr"
    c = new_canvas(tiny.card, path, 100_000 - 100_000 % 8, 100_000 - 100_000 % 8, 512)
    mask = _mask()
    put_mask(c, mask)
    written = [p for p in (path / "labels").rglob("c/*/*") if p.is_file()]
    assert written == []  # not one of the 38,000 level-0 mask chunks
    lh, lw = c.latent_shape
    # any pixel reads as the mask stretched (nearest) over the canvas
    ys, xs = np.array([0, 1, 12_499, 12_500, lh - 1]), np.array([0, 12_499, 12_500, lw - 1])
    got = np.array([[c.mask[int(y), int(x)] for x in xs] for y in ys])
    want = mask[((ys + 0.5) * 40 / lh).astype(int)][:, ((xs + 0.5) * 40 / lw).astype(int)]
    assert np.array_equal(got, want)
    # writing a region writes its mask chunk (where it holds labels), and only that
    for index in (0, 150):  # class 0 (nothing to write: the fill value) and class 1
        c.write_region(c.region(index), np.zeros((512, 512, 3), np.uint8), np.zeros((3, 512, 512), np.float32))
    written = sorted(p.relative_to(path).as_posix() for p in (path / "labels" / "mask" / "0").rglob("c/*/*"))
    assert written == ["labels/mask/0/c/0/150"]
    stored = np.asarray(c.mask_level(0)[:512, 150 * 512 : 151 * 512])
    assert (stored == 1).all() and np.array_equal(stored, c.read_mask(0, 512, 150 * 512, 151 * 512))
    assert c._mask_written()[0, :151].sum() == 2
    # the reader's grid comes from the source, not from 38,000 chunk reads
    grid = c.mask_grid(16)
    assert grid.shape == (-(-lh // 16), -(-lw // 16)) and set(np.unique(grid)) == {0, 1, 2}
    c.close()


def test_lazy_mask_reads_and_edits_equal_an_eagerly_written_one(tiny, tmp_path):
    mask = _mask()
    lazy = new_canvas(tiny.card, tmp_path / "lazy.zarr", 1024, 1024, 256)
    put_mask(lazy, mask)
    eager = new_canvas(tiny.card, tmp_path / "eager.zarr", 1024, 1024, 256)
    put_mask(eager, resize_labels(mask, (1024, 1024)))  # the latent grid's size: written as it is
    assert np.array_equal(np.asarray(lazy.mask[:]), np.asarray(eager.mask[:]))
    for c in (lazy, eager):  # a stroke across two chunks, then every pyramid level
        c.write_mask(np.full((20, 700), 2, np.uint8), 500, 100)
    assert np.array_equal(np.asarray(lazy.mask[:]), np.asarray(eager.mask[:]))
    assert np.array_equal(lazy.mask[::3, ::5], np.asarray(eager.mask[:])[::3, ::5])
    for level in range(lazy.mask_levels):
        assert np.array_equal(lazy.read_mask(level=level), np.asarray(eager.mask[:])[:: 2**level, :: 2**level])
        assert np.array_equal(eager.read_mask(level=level), np.asarray(eager.mask[:])[:: 2**level, :: 2**level])
    lazy.close()
    eager.close()


def test_canvas_is_valid_ngff_with_a_label_pyramid_and_the_cards_pixel_size(tiny, tmp_path):
    from ome_zarr_models.v05.image import Image

    from src_models.models.loading import load_model

    c = new_canvas(tiny.card, tmp_path / "t.zarr", 1024, 768, 256)
    put_mask(c, _mask())
    c.close()
    image = Image.from_zarr(zarr.open_group(str(tmp_path / "t.zarr"), mode="r"))
    assert len(image.ome_attributes.multiscales[0].datasets) == 3
    labels = image.labels.get_image_labels_group("mask")
    assert len(labels.ome_attributes.multiscales[0].datasets) == 3
    axes = json.loads((tmp_path / "t.zarr" / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["axes"]
    assert "unit" not in axes[1]  # tiny-test has no physical pixel size: none is claimed

    card = load_model("default", "cpu").card
    c = new_canvas(card, tmp_path / "d.zarr", 1024, 1024)
    c.close()
    attrs = json.loads((tmp_path / "d.zarr" / "zarr.json").read_text())["attributes"]
    ms = attrs["ome"]["multiscales"][0]
    assert ms["axes"][1]["unit"] == "micrometer"
    px = float(card.pixel_size_um)  # the card's µm per image pixel
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, px, px]
    assert attrs["diffinfinite"]["pixel_size_um"] == px
    Image.from_zarr(zarr.open_group(str(tmp_path / "d.zarr"), mode="r"))

    with Canvas.open(tmp_path / "t.zarr", "r+") as c:  # an imported slide's own pixel size
        c.set_pixel_size(0.25)
    attrs = json.loads((tmp_path / "t.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["ome"]["multiscales"][0]["datasets"][2]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    mask_attrs = json.loads((tmp_path / "t.zarr" / "labels" / "mask" / "zarr.json").read_text())["attributes"]
    assert mask_attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.25, 0.25]
    Image.from_zarr(zarr.open_group(str(tmp_path / "t.zarr"), mode="r"))


# ----------------------------------------------------------------------------- old canvases
def test_a_canvas_with_marker_files_opens_and_is_migrated(tmp_path):
    with zipfile.ZipFile(DATA / "legacy_canvas.zip") as z:
        z.extractall(tmp_path)
    path = tmp_path / "legacy.zarr"
    with Canvas.open(path) as c:  # read-only: read as it is
        assert c.legacy and c.done_indices() == {0, 1, 2}
        assert c.done_info(0)["seed"] == 100 and c.done_info(2) == {"source": "slide"}
        assert c.jobs() == {3: [[32, 48, 32, 64]]}
        pixels, mask = c.read_rgb(0, 64, 0, 64), np.asarray(c.mask[:])
        assert verify_canvas(c).ok and verify_canvas(c, deep=False).ok  # no checksums yet: chunks only
    with Canvas.open(path, "r+") as c:  # for writing: moved to the current layout
        assert not c.legacy
        assert c.done_indices() == {0, 1, 2} and c.jobs() == {3: [[32, 48, 32, 64]]}
        assert c.done_info(2) == {"source": "copied"} and c.done_info(0)["steps"] == 2
        assert verify_canvas(c).ok
    assert not (path / "diffinfinite" / "regions").exists() and not (path / "diffinfinite" / "jobs.json").exists()
    assert not (path / ".diffinfinite.lock").exists()
    with Canvas.open(path) as c:
        assert np.array_equal(c.read_rgb(0, 64, 0, 64), pixels) and np.array_equal(np.asarray(c.mask[:]), mask)
        assert c.done_indices() == {0, 1, 2}


def test_a_corrupt_jobs_file_of_an_old_canvas_is_one_clear_error(tmp_path):
    with zipfile.ZipFile(DATA / "legacy_canvas.zip") as z:
        z.extractall(tmp_path)
    (tmp_path / "legacy.zarr" / "diffinfinite" / "jobs.json").write_text("{not json")
    with pytest.raises(CanvasDamagedError, match="jobs.json is not valid JSON"):
        Canvas.open(tmp_path / "legacy.zarr").jobs()
    with pytest.raises(CanvasDamagedError, match="jobs.json is not valid JSON"):
        Canvas.open(tmp_path / "legacy.zarr", "r+")


def test_refused_creation_leaves_nothing(tiny, tmp_path):
    with pytest.raises(CanvasError):
        Canvas.create(tmp_path / "c.zarr", 63, 64, factor=2, latent_channels=3, region_size=32,
                      classes=tiny.card.classes, colours=tiny.card.colours)
    assert list(tmp_path.iterdir()) == []
