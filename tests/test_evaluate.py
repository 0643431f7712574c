"""`diffinfinite evaluate`: the metrics, the fixed C2ST protocol, the sanity checks on the CC0
slide (real vs another part of itself reads as alike, real vs a blurred copy as different), the
report and one-line errors for bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from src_models.cli.main import main
from src_models.evaluation import EvaluationError, evaluate
from src_models.evaluation.c2st import c2st
from src_models.evaluation.metrics import (authenticity, ct_score, frechet_distance, precision_recall, seam_score,
                                           standardise)
from src_models.evaluation.sources import open_images

SLIDE = Path(__file__).resolve().parents[1] / "data" / "cmu_small_region" / "cmu_small_region.png"


@pytest.fixture(scope="module")
def slide_sets(tmp_path_factory):
    """The CC0 slide cut into 128 px tiles dealt like a chessboard into two disjoint halves, and a
    copy of the first half blurred with a Gaussian of σ = 2 px (the issue's sanity pair)."""
    root = tmp_path_factory.mktemp("slide_sets")
    img = np.asarray(Image.open(SLIDE).convert("RGB"))
    blur = np.stack([gaussian_filter(img[..., c].astype(np.float32), 2.0) for c in range(3)], -1)
    blur = np.clip(np.rint(blur), 0, 255).astype(np.uint8)
    for d in ("a", "b", "blur"):
        (root / d).mkdir()
    t = 128
    for iy in range(img.shape[0] // t):
        for ix in range(img.shape[1] // t):
            cell = (slice(iy * t, (iy + 1) * t), slice(ix * t, (ix + 1) * t))
            side = "a" if (iy + ix) % 2 == 0 else "b"
            Image.fromarray(img[cell]).save(root / side / f"{iy:02d}_{ix:02d}.png")
            if side == "a":
                Image.fromarray(blur[cell]).save(root / "blur" / f"{iy:02d}_{ix:02d}.png")
    return root


@pytest.fixture(scope="module")
def real_vs_real(slide_sets):
    return evaluate([slide_sets / "a"], [slide_sets / "b"], real_mpp=0.499, synthetic_mpp=0.499, seed=0)[0]


@pytest.fixture(scope="module")
def real_vs_blur(slide_sets):
    return evaluate([slide_sets / "a"], [slide_sets / "blur"], real_mpp=0.499, synthetic_mpp=0.499, seed=0)[0]


def test_real_against_another_part_of_itself_reads_as_alike(real_vs_real):
    r = real_vs_real
    assert r["n_real"] > 50 and r["n_synthetic"] > 50
    assert abs(r["c2st_accuracy"] - 0.5) <= 0.15, r["c2st"]
    assert r["precision"] > 0.7 and r["recall"] > 0.7
    nr, ns = r["nuclei_per_mm2"]["real"], r["nuclei_per_mm2"]["synthetic"]
    assert abs(nr - ns) / nr < 0.2


def test_real_against_a_blurred_copy_reads_as_different(real_vs_real, real_vs_blur):
    assert real_vs_blur["c2st_accuracy"] >= 0.9, real_vs_blur["c2st"]
    assert real_vs_blur["fd"] > 3 * real_vs_real["fd"]
    assert real_vs_blur["recall"] < real_vs_real["recall"]
    # blurring merges and fades nuclei: fewer are counted
    assert real_vs_blur["nuclei_per_mm2"]["synthetic"] < 0.8 * real_vs_blur["nuclei_per_mm2"]["real"]


def test_c2st_is_deterministic_for_a_seed_and_balanced():
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(12)]
    b = [np.clip(x.astype(int) + 40, 0, 255).astype(np.uint8) for x in a] + a[:3]
    r1, r2 = c2st(a, b, seed=3), c2st(a, b, seed=3)
    assert r1 == r2
    assert r1["n_per_side"] == 12 and len(r1["fold_accuracy"]) == 5
    assert c2st(a[:3], b, seed=0)["accuracy"] is None  # too few tiles for five folds: no figure


def test_distribution_metrics_on_known_cases():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5))
    y = rng.normal(size=(300, 5))
    far = rng.normal(size=(300, 5)) + 3.0
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, y) < 0.5 < 10 < frechet_distance(x, far)
    p, r = precision_recall(x, y)
    assert p > 0.8 and r > 0.8
    p, r = precision_recall(x, far)
    assert p < 0.1 and r < 0.1
    copies = x[:100] + 1e-6
    assert authenticity(x, copies) == 0.0
    assert 0.3 < authenticity(x, y) <= 1.0
    xs, ys, cs = standardise(x, y, copies)
    assert ct_score(xs[:200], ys[:200], cs[:100] * 0 + xs[:100]) < -3  # copies of training data
    assert abs(ct_score(xs[:200], ys[:150], ys[150:])) < 3  # fresh draws: no copying


def test_seam_score_sees_steps_on_border_lines_only():
    rng = np.random.default_rng(2)
    img = gaussian_filter(rng.normal(size=(256, 256)), 1.5) * 40 + 128
    borders = np.array([64, 128, 192])
    assert seam_score(img, 4, borders, borders) == pytest.approx(1.0, abs=0.15)
    seamed = img.copy()
    for b in borders:
        seamed[:, b:] += 6.0
        seamed[b:, :] += 6.0
    assert seam_score(seamed, 4, borders, borders) > 1.5


def test_pixel_size_from_png_metadata_and_common_scale(tmp_path):
    img = np.asarray(Image.open(SLIDE).convert("RGB"))[:512, :512]
    Image.fromarray(img).save(tmp_path / "fine.png", dpi=(25400 / 0.5, 25400 / 0.5))
    half = Image.fromarray(img).resize((256, 256), Image.Resampling.BOX)
    half.save(tmp_path / "coarse.png", dpi=(25400 / 1.0, 25400 / 1.0))
    assert open_images(tmp_path / "fine.png")[0].mpp == pytest.approx(0.5)
    r, _ = evaluate([tmp_path / "fine.png"], [tmp_path / "coarse.png"], tile=64, min_tissue=0.0, run_c2st=False)
    assert r["mpp"] == pytest.approx(1.0)  # the finer side is brought to the coarser
    assert r["n_real"] == r["n_synthetic"] == 16
    assert r["fd"] < 1.0  # the same tissue at the same scale


@pytest.fixture(scope="module")
def tiny_canvas(tmp_path_factory):
    from src_models.synthesis.canvases import new_canvas, put_mask
    from src_models.models.loading import load_model
    from src_models.synthesis.regions import synthesise
    from src_models.synthesis.request import SynthesisRequest

    model = load_model("tiny-test", "cpu")
    path = tmp_path_factory.mktemp("canvas") / "c.zarr"
    c = new_canvas(model.card, path, 256, 256, 64)
    m = np.full(c.latent_shape, 2, np.uint8)
    m[:, : c.latent_shape[1] // 2] = 3
    put_mask(c, m)
    list(synthesise(model, c, SynthesisRequest(model="tiny-test", steps=2, seed=0)))
    c.close()
    return path


def test_cli_prints_one_json_object_and_writes_the_report(tmp_path, tiny_canvas, capsys):
    out = tmp_path / "r"
    code = main(["evaluate", "--real", str(SLIDE), "--synthetic", str(tiny_canvas), "--tile", "64",
                 "--min-tissue", "0", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    for key in ("n_real", "n_synthetic", "tile_px", "features", "fd", "precision", "recall", "authenticity", "ct",
                "c2st_accuracy", "nuclei_per_mm2", "nuclear_area_um2", "seam_score", "mpp", "per_class"):
        assert key in result
    assert result["ct"] is None and result["n_synthetic"] == 16
    assert result["seam_score"] is not None and result["seam"]["region_px"] == 64
    assert set(result["per_class"]) == set()  # the real PNG has no mask: no per-class split
    # tiny-test claims no pixel size: its canvas is assumed to share the PNG's 0.499 µm/px, and the JSON says so
    assert result["mpp"] == pytest.approx(0.499)
    assert any("states no pixel size" in n for n in result["notes"])
    for name in ("report.json", "tiles.png", "nuclei.png", "histograms.png"):
        assert (out / name).is_file()
    assert json.loads((out / "report.json").read_text()) == result


def test_classes_select_tiles_by_mask(tmp_path, tiny_canvas, capsys):
    args = ["evaluate", "--real", str(tiny_canvas), "--synthetic", str(tiny_canvas), "--tile", "32", "--no-c2st", "--quiet"]
    assert main(args + ["--classes", "2"]) == 0
    only2 = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    both = json.loads(capsys.readouterr().out)
    assert only2["n_real"] == 32 and both["n_real"] == 64 and both["fd"] == pytest.approx(0.0, abs=1e-6)
    assert set(both["per_class"]) == {"epidermis", "dermis"} or set(both["per_class"]) == {"2", "3"}


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_inputs_end_with_one_line(tmp_path, capsys):
    white = tmp_path / "white.png"
    Image.fromarray(np.full((256, 256, 3), 245, np.uint8)).save(white)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(small)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    cases = [
        (["--real", str(tmp_path / "nope.png"), "--synthetic", str(white)], "does not exist"),
        (["--real", str(white), "--synthetic", str(white)], "no real tiles left after filtering"),
        (["--real", str(small), "--synthetic", str(small)], "do not fit"),
        (["--real", str(junk), "--synthetic", str(white)], "cannot read image"),
        (["--real", str(white), "--synthetic", str(white), "--classes", "2"], "needs a label mask"),
        (["--real", str(white), "--synthetic", str(white), "--features", "inception"], "local weights file"),
    ]
    for args, expected in cases:
        assert main(["evaluate", *args, "--quiet"]) == 2
        assert expected in _err(capsys)


def test_deep_features_load_local_weights_only(tmp_path):
    from safetensors.torch import save_file

    from src_models.evaluation.deep import Inception3, make_extractor

    net = Inception3()
    save_file({k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("fc.")}, str(tmp_path / "inc.safetensors"))
    ex = make_extractor(f"inception:{tmp_path / 'inc.safetensors'}")
    rng = np.random.default_rng(0)
    feats = ex([rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) for _ in range(2)])
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    # a pickle that would run code is refused, and so is a file for another network
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(EvaluationError, match="cannot read weights"):
        make_extractor(f"resnet50:{tmp_path / 'evil.pt'}")
    with pytest.raises(EvaluationError, match="does not match resnet50"):
        make_extractor(f"resnet50:{tmp_path / 'inc.safetensors'}")
