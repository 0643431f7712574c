"""Every part of a canvas is covered by verify, and a repair never destroys finished work on
metadata it cannot trust (issue 20): all pyramid levels, the mask against its signatures, the
metadata field by field, the region state's second record, and the reader's unreadable chunks."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from src_models.cli.main import main
from src_models.store.canvas import Canvas, CanvasDamagedError
from src_models.store.verify import verify_canvas
from src_models.synthesis.canvases import new_canvas, repair_finished, store_mask
from src_models.synthesis.regions import synthesise
from src_models.synthesis.request import SynthesisRequest

REQUEST = SynthesisRequest(model="tiny-test", steps=1, seed=2)


def _mask() -> np.ndarray:
    m = np.zeros((40, 40), np.uint8)
    m[:, 20:] = 1
    m[30:] = 2
    return m


@pytest.fixture(scope="module")
def clean(tiny, tmp_path_factory):
    """A finished 640² canvas (three pyramid levels, 25 regions of 128 px, chunks of 64 px)."""
    path = tmp_path_factory.mktemp("store") / "clean.zarr"
    c = Canvas.create(path, 640, 640, factor=1, latent_channels=3, region_size=128, classes=tiny.card.classes,
                      colours=tiny.card.colours, chunk=64, settings=REQUEST.settings())
    store_mask(c, _mask())
    for _ in synthesise(tiny, c, REQUEST):
        pass
    c.close()
    return path


def _copy(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "c.zarr"))


def _all(path):
    with Canvas.open(path) as c:
        return [np.asarray(c.image(level)[:]) for level in range(c.levels)] + [np.asarray(c.latent[:])]


def _resume(tiny, path, notes=None):
    """What --resume does: open for writing, repair, sample what is pending; returns regions sampled."""
    with Canvas.open(path, "r+") as c:
        repair_finished(c, notice=(notes.append if notes is not None else None))
        return sum(1 for _ in synthesise(tiny, c, REQUEST))


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def _verify_cli(path, capsys, *extra):
    code = main(["verify", str(path), *extra])
    return code, capsys.readouterr().out


# ------------------------------------------------------------------------------ pyramid levels
def test_wrong_values_in_a_level_2_tile_are_found_and_rebuilt(tiny, clean, tmp_path, capsys):
    path = _copy(clean, tmp_path)
    with Canvas.open(path) as c:
        assert c.levels == 3
    arr = zarr.open_array(str(path / "2"), mode="r+")
    arr[:, 10:30, 10:30] = 255 - np.asarray(arr[:, 10:30, 10:30])  # decodes fine, values wrong
    code, out = _verify_cli(path, capsys)
    assert code == 1 and "pyramid level 2 differs from level 0" in out
    with Canvas.open(path) as c:
        report = verify_canvas(c)
        assert report.damaged and set(report.damaged) == report.pyramid_only
    assert _resume(tiny, path) == 0  # nothing sampled again: level 2 rebuilt from level 0
    assert _same(_all(path), _all(clean))
    assert _verify_cli(path, capsys)[0] == 0


# ------------------------------------------------------------------------------ the mask
def test_a_mask_changed_behind_the_tools_back_is_named_and_never_guessed(tiny, clean, tmp_path, capsys):
    path = _copy(clean, tmp_path)
    m = zarr.open_array(str(path / "labels" / "mask" / "0"), mode="r+")
    m[100:200, 100:200] = 3 - np.asarray(m[100:200, 100:200]) % 3  # a valid rewrite of 100x100 labels
    code, out = _verify_cli(path, capsys)
    assert code == 1 and "differ from the mask that was stored" in out and "--accept-mask" in out
    before = _all(path)
    with pytest.raises(CanvasDamagedError, match="cannot know the labels you meant.*--accept-mask"):
        _resume(tiny, path)
    assert _same(_all(path), before)  # nothing deleted or resampled
    assert main(["verify", "--accept-mask", str(path)]) == 0  # the user says the change is theirs
    capsys.readouterr()
    assert _resume(tiny, path) == 0


def test_an_unreadable_mask_chunk_is_damage_in_verify(clean, tmp_path, capsys):
    path = _copy(clean, tmp_path)
    chunk = next(p for p in sorted((path / "labels" / "mask" / "0" / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(b"\x00garbage" * 10)
    code, out = _verify_cli(path, capsys)
    assert code == 1 and "mask chunk(s) cannot be read" in out


def test_lost_mask_written_flags_are_restored_from_the_signatures(tiny, clean, tmp_path, capsys):
    path = _copy(clean, tmp_path)
    w = zarr.open_array(str(path / "diffinfinite" / "mask_written"), mode="r+")
    w[...] = 0
    code, out = _verify_cli(path, capsys)
    assert code == 1 and "not marked written" in out
    assert _resume(tiny, path) == 0
    assert np.asarray(zarr.open_array(str(path / "diffinfinite" / "mask_written"))[...]).all()
    assert _verify_cli(path, capsys)[0] == 0


# ------------------------------------------------------------------------------ metadata
@pytest.mark.parametrize("field,value,words", [
    ("settings", "garbage", "diffinfinite.settings) is 'garbage'"),
    ("region_size", 0, "diffinfinite.region_size) is 0, expected a positive multiple"),
    ("classes", 7, "diffinfinite.classes"),
    ("height", -1, "diffinfinite.height"),
])
def test_damaged_metadata_is_one_line_everywhere_and_nothing_is_deleted(tiny, clean, tmp_path, capsys, mask_png_64,
                                                                         field, value, words):
    path = _copy(clean, tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["diffinfinite"][field] = value
    (path / "zarr.json").write_text(json.dumps(meta))
    files = sorted(p for p in path.rglob("*") if p.is_file())
    with pytest.raises(CanvasDamagedError, match="restore zarr.json from a backup"):
        Canvas.open(path)
    for quick in ([], ["--quick"]):
        code, out = _verify_cli(path, capsys, *quick)
        assert code == 1 and words in out, out
    assert main(["generate", "--mask", str(mask_png_64), "--out", str(path), "--model", "tiny-test", "--resume",
                 "--steps", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    from napari_diffinfinite._reader import canvas_layer_data

    with pytest.raises(CanvasDamagedError, match="restore zarr.json"):  # the reader: one line, no traceback
        canvas_layer_data(path)
    assert sorted(p for p in path.rglob("*") if p.is_file()) == files


def test_a_wrong_data_type_is_refused_and_no_finished_chunk_is_deleted(tiny, clean, tmp_path, capsys):
    path = _copy(clean, tmp_path)
    meta_path = path / "0" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["data_type"] = "uint16"
    meta_path.write_text(json.dumps(meta))
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for quick in ([], ["--quick"]):
        code, out = _verify_cli(path, capsys, *quick)
        assert code == 1 and "0/zarr.json says uint16" in out and "restore 0/zarr.json" in out
    with pytest.raises(CanvasDamagedError, match="0/zarr.json says uint16"):
        _resume(tiny, path)
    assert sorted(p for p in path.rglob("*") if p.is_file()) == files


# ------------------------------------------------------------------------------ region state
@pytest.mark.parametrize("how", ["deleted", "zeroed", "chunk deleted", "copy zeroed"])
def test_lost_region_state_is_restored_from_its_second_record(tiny, clean, tmp_path, capsys, how):
    path = _copy(clean, tmp_path)
    name = "region_state_copy" if how == "copy zeroed" else "region_state"
    target = path / "diffinfinite" / name
    if how == "deleted":
        shutil.rmtree(target)
    elif how == "chunk deleted":
        for p in (target / "c").rglob("*"):
            if p.is_file():
                p.unlink()
    else:
        arr = zarr.open_array(str(target), mode="r+")
        arr[...] = 0
    for quick in ([], ["--quick"]):
        code, out = _verify_cli(path, capsys, *quick)
        assert code == 1 and "region state:" in out, out
        if how != "copy zeroed":
            assert "25 of 25 regions finished" in out  # not "0 finished": the other record tells
    notes = []
    assert _resume(tiny, path, notes) == 0  # nothing sampled again
    assert any("region state" in n for n in notes)
    assert _same(_all(path), _all(clean))
    assert _verify_cli(path, capsys)[0] == 0


def test_both_records_lost_is_one_line_not_nothing_finished(clean, tmp_path, capsys):
    path = _copy(clean, tmp_path)
    shutil.rmtree(path / "diffinfinite" / "region_state")
    shutil.rmtree(path / "diffinfinite" / "region_state_copy")
    code, out = _verify_cli(path, capsys)
    assert code == 1 and "finished regions cannot be known" in out


# ------------------------------------------------------------------------------ unreadable chunks
@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_unreadable_level_0_chunks_are_damage_for_verify_and_the_reader(clean, tmp_path, capsys, damage):
    path = _copy(clean, tmp_path)
    chunk = path / "0" / "c" / "0" / "2" / "3"  # region 6 (row 1, column 1 of 128 px regions)
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    code, out = _verify_cli(path, capsys)
    assert code == 1 and "region 6" in out
    if damage == "emptied":
        code, out = _verify_cli(path, capsys, "--quick")
        assert code == 1 and "empty chunk 0/c/0/2/3" in out
    from napari_diffinfinite._reader import CHUNKS, canvas_layer_data

    CHUNKS.unreadable.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        layers = canvas_layer_data(path)
        image = layers[0][0][0]
        np.asarray(image[128:192, 192:256])
    said = [str(w.message) for w in seen if "cannot be read" in str(w.message)]
    assert said and "region(s) 6" in said[0], [str(w.message) for w in seen]


@pytest.fixture
def mask_png_64(tmp_path):
    from skimage import io

    p = tmp_path / "m64.png"
    io.imsave(p, _mask(), check_contrast=False)
    return p
