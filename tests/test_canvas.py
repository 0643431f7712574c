import subprocess
import sys

import numpy as np
import pytest

from src_models.store.canvas import Canvas, CanvasError, CanvasLockedError, downsample2, pyramid_shapes

CLASSES = ["Unknown", "A", "B"]
COLOURS = ["#000000", "#ff0000", "#00ff00"]


def _make(path, h=1024, w=768, factor=4, region=256, **kw):
    return Canvas.create(path, h, w, factor=factor, latent_channels=4, region_size=region, classes=CLASSES,
                         colours=COLOURS, **kw)


def test_huge_canvas_is_created_without_allocation(tmp_path):
    # (how long it takes is measured in benchmarks/bench_huge_canvas.py, not asserted here)
    c = _make(tmp_path / "big.zarr", 65536, 65536, factor=8, region=2048)
    c.close()
    files = [p for p in (tmp_path / "big.zarr").rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    assert size < 1_000_000  # metadata only
    assert not any("/c/" in p.as_posix() for p in files)  # not one chunk
    assert c.image(0).shape == (3, 65536, 65536) and c.levels == len(pyramid_shapes(65536, 65536))
    assert c.mask.shape == (8192, 8192) and c.latent.shape == (4, 8192, 8192)
    assert len(c.regions()) == 32 * 32


def test_region_round_trip_pyramid_and_markers(tmp_path):
    path = tmp_path / "c.zarr"
    c = _make(path)
    regions = c.regions()
    assert len(regions) == 4 * 3
    r = regions[4]  # row 1, column 1
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    lat = rng.standard_normal((4, 64, 64)).astype(np.float32)
    c.write_region(r, rgb, lat)
    c.mark_done(r.index, {"seed": 1})
    c.close()

    c = Canvas.open(path)
    y0, y1, x0, x1 = r.px(4)
    assert np.array_equal(c.read_rgb(y0, y1, x0, x1), rgb)
    assert np.array_equal(np.asarray(c.latent[:, r.y0 : r.y1, r.x0 : r.x1]), lat)
    level1 = c.read_rgb(y0 // 2, y1 // 2, x0 // 2, x1 // 2, level=1)
    assert np.array_equal(level1, np.moveaxis(downsample2(np.moveaxis(rgb, -1, 0)), 0, -1))
    assert c.done_indices() == {r.index}
    assert c.done_map()[r.y0 : r.y1, r.x0 : r.x1].all() and c.done_map().sum() == 64 * 64
    with pytest.raises(CanvasError, match="read-only"):
        c.mark_done(0)


def test_ome_zarr_reader_sees_a_multiscale_image(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    _make(tmp_path / "c.zarr").close()
    nodes = list(Reader(parse_url(str(tmp_path / "c.zarr")))())
    image = nodes[0]
    assert [d.shape for d in image.data] == [(3, 1024, 768), (3, 512, 384), (3, 256, 192)]
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "y", "x"]


def test_second_writer_is_refused_also_from_another_process(tmp_path):
    path = tmp_path / "c.zarr"
    c = _make(path)
    with pytest.raises(CanvasLockedError, match="another process"):
        Canvas.open(path, "r+")
    code = f"from src_models.store.canvas import Canvas\nCanvas.open({str(path)!r}, 'r+')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "being written by another process" in proc.stderr
    Canvas.open(path).close()  # readers are fine
    c.close()
    Canvas.open(path, "r+").close()  # and the lock goes with the writer


def test_refusals(tmp_path):
    _make(tmp_path / "c.zarr").close()
    with pytest.raises(CanvasError, match="already exists"):
        _make(tmp_path / "c.zarr")
    _make(tmp_path / "c.zarr", overwrite=True).close()
    with pytest.raises(CanvasError, match="multiple of the model's factor"):
        _make(tmp_path / "d.zarr", 1022, 768)
    with pytest.raises(CanvasError, match="not a canvas"):
        Canvas.open(tmp_path)
    c = Canvas.open(tmp_path / "c.zarr", "r+")
    with pytest.raises(CanvasError, match="label 5"):
        c.write_mask(np.full((10, 10), 5, np.uint8))
    c.close()


def test_downsample_odd_edges():
    a = np.arange(15, dtype=np.uint8).reshape(1, 3, 5)
    d = downsample2(a)
    assert d.shape == (1, 2, 3)
    assert d[0, 1, 2] == a[0, 2, 4]  # a lone corner pixel keeps its value
