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


def _blocks(img: np.ndarray, root: Path, block: int, row0: int = 0):
    """Blocks of ``block`` px dealt like a chessboard into ``root/a`` and ``root/b`` (one image each)."""
    for d in ("a", "b"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for iy in range(img.shape[0] // block):
        for ix in range(img.shape[1] // block):
            cell = img[iy * block : (iy + 1) * block, ix * block : (ix + 1) * block]
            side = "a" if (iy + ix) % 2 == 0 else "b"
            Image.fromarray(cell).save(root / side / f"{row0 + iy * block:05d}_{ix * block:05d}.png")


@pytest.fixture(scope="module")
def slide_sets(tmp_path_factory):
    """The CC0 slide in 256 px blocks dealt like a chessboard into two disjoint halves, a copy of the
    second half blurred with a Gaussian of σ = 1 px (the power study's pair), and the held-out band
    (rows >= 2048, never trained on) in 128 px blocks dealt the same way."""
    from src_models.evaluation.perturb import blur

    root = tmp_path_factory.mktemp("slide_sets")
    img = np.asarray(Image.open(SLIDE).convert("RGB"))
    _blocks(img, root / "slide", 256)
    _blocks(blur(img, 1.0), root / "blurred", 256)
    _blocks(img[2048:], root / "band", 128, row0=2048)
    return root


@pytest.fixture(scope="module")
def real_vs_real(slide_sets):
    # halves of the held-out band: 64 px tiles every 32 px give each half enough tiles for the C2ST
    return evaluate([slide_sets / "band" / "a"], [slide_sets / "band" / "b"], real_mpp=0.499, synthetic_mpp=0.499,
                    tile=64, stride=32, seed=0)[0]


@pytest.fixture(scope="module")
def real_vs_blur(slide_sets):
    return evaluate([slide_sets / "slide" / "a"], [slide_sets / "blurred" / "b"], real_mpp=0.499, synthetic_mpp=0.499,
                    stride=64, seed=0)[0]


def test_real_against_another_part_of_itself_reads_as_alike(real_vs_real):
    from src_models.evaluation.c2st import MIN_PER_SIDE

    r = real_vs_real
    assert r["n_real"] >= MIN_PER_SIDE and r["n_synthetic"] >= MIN_PER_SIDE
    lo, hi = r["c2st"]["ci95"]
    assert lo <= 0.5 <= hi, r["c2st"]  # the interval includes chance
    assert r["c2st"]["p_value"] > 0.05
    assert r["precision"] > 0.7 and r["recall"] > 0.7
    assert abs(r["kid"]) < 3 * r["kid_stderr"] + 1e-3  # KID: no difference beyond its error
    nr, ns = r["nuclei_per_mm2"]["real"], r["nuclei_per_mm2"]["synthetic"]
    assert abs(nr - ns) / nr < 0.2


def test_real_against_a_blurred_copy_reads_as_different(real_vs_real, real_vs_blur):
    from src_models.evaluation.c2st import MIN_PER_SIDE

    r = real_vs_blur
    # a sigma = 1 px blur is detected at the tile count the power study names (docs/evaluation.md)
    assert r["c2st"]["n_per_side"] >= MIN_PER_SIDE
    assert r["c2st_accuracy"] >= 0.8 and r["c2st"]["p_value"] < 1e-3, r["c2st"]
    assert r["kid"] > 3 * r["kid_stderr"]
    assert r["recall"] < real_vs_real["recall"]
    # blurring merges and fades nuclei: fewer are counted
    assert r["nuclei_per_mm2"]["synthetic"] < 0.95 * r["nuclei_per_mm2"]["real"]  # sigma 1: about 10 % fewer
    assert r["warnings"] == []


def test_c2st_is_deterministic_for_a_seed_and_balanced():
    rng = np.random.default_rng(0)
    # 32 px tiles: the protocol's minimum of 150 steps a fold makes larger tiles slow, and nothing
    # here depends on the tile size
    a = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(12)]
    b = [np.clip(x.astype(int) + 40, 0, 255).astype(np.uint8) for x in a] + a[:3]
    r1, r2 = c2st(a, b, seed=3, min_per_side=0), c2st(a, b, seed=3, min_per_side=0)
    assert r1 == r2
    assert r1["n_per_side"] == 12 and len(r1["fold_accuracy"]) == 5
    import torch  # the figure names the kind of CPU and the threads it was made with (it differs between them)
    assert r1["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert r1["torch_threads"] == torch.get_num_threads()
    lo, hi = r1["ci95"]
    assert lo <= r1["accuracy"] <= hi
    assert c2st(a[:3], b, seed=0, min_per_side=0)["accuracy"] is None  # too few tiles for five folds: no figure


def test_c2st_is_not_run_below_the_power_floor_and_says_why():
    from src_models.evaluation.c2st import MIN_PER_SIDE

    rng = np.random.default_rng(0)
    a = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(MIN_PER_SIDE - 1)]
    r = c2st(a, a)
    assert r["accuracy"] is None and r["ci95"] is None and r["p_value"] is None
    assert r["n_per_side"] == MIN_PER_SIDE - 1 and str(MIN_PER_SIDE) in r["note"]


def test_c2st_statistics_wilson_interval_and_binomial_p():
    from src_models.evaluation.c2st import summarise

    s = summarise(80, 50)  # 80 of 100 calls right
    assert s["accuracy"] == 0.8
    assert s["ci95"] == pytest.approx([0.7112, 0.8666], abs=2e-4)  # Wilson score interval
    assert s["p_value"] == pytest.approx(5.58e-10, rel=0.02)  # P(X >= 80 | Binomial(100, 0.5))
    chance = summarise(50, 50)
    assert chance["ci95"][0] < 0.5 < chance["ci95"][1] and chance["p_value"] > 0.4
    # overlapping tiles count as fewer independent calls: a wider interval, a larger p
    shared = summarise(80, 50, overlap=0.25)
    assert shared["n_effective"] == 12.5
    assert shared["ci95"][1] - shared["ci95"][0] > s["ci95"][1] - s["ci95"][0] and shared["p_value"] > s["p_value"]


def test_c2st_that_learns_nothing_says_so():
    # identical sides: whatever the net calls, it cannot beat chance; a constant call is named
    rng = np.random.default_rng(1)
    a = [np.full((32, 32, 3), 128, np.uint8) for _ in range(10)]
    r = c2st(a, list(a), min_per_side=0)
    assert r["accuracy"] <= 0.6
    if r["predicted_real_share"] in (0.0, 1.0):
        assert "learned nothing" in r["note"]


def test_folds_keep_groups_whole_and_balanced():
    from src_models.evaluation.c2st import assign_folds

    groups = [i // 9 for i in range(90)]  # ten blocks of nine overlapping tiles
    folds = assign_folds(groups, 5, np.random.default_rng(0))
    for g in set(groups):
        assert len({folds[i] for i in range(90) if groups[i] == g}) == 1  # a block never straddles folds
    assert sorted(np.bincount(folds, minlength=5).tolist()) == [18] * 5


def test_tiles_with_stride_stay_inside_blocks_and_overlapping_tiles_share_a_group():
    from src_models.evaluation.sources import tile_corners

    plain = tile_corners(512, 384, 128, 128)
    assert sorted((y, x) for y, x, _, _ in plain) == [(y, x) for y in range(0, 512, 128) for x in range(0, 384, 128)]
    dense = tile_corners(512, 384, 128, 64)
    assert len(dense) == 2 * len(plain)  # 3 x 3 tiles in each full 256 px block, 3 x 1 in the half-width ones
    for i, (y, x, by, bx) in enumerate(dense):
        assert by * 256 <= y and y + 128 <= (by + 1) * 256 and bx * 256 <= x and x + 128 <= (bx + 1) * 256
        for y2, x2, by2, bx2 in dense[i + 1 :]:
            if abs(y - y2) < 128 and abs(x - x2) < 128:  # they share pixels
                assert (by, bx) == (by2, bx2)


def test_kid_is_unbiased_and_its_error_covers_the_spread():
    from src_models.evaluation.metrics import kernel_inception_distance

    rng = np.random.default_rng(4)
    same = [kernel_inception_distance(rng.normal(size=(40, 16)), rng.normal(size=(40, 16))) for _ in range(40)]
    values = np.array([k for k, _ in same])
    assert abs(values.mean()) < 3 * values.std() / np.sqrt(len(values))  # no bias at n = 40
    assert np.mean([se for _, se in same]) >= 0.8 * values.std()  # the jackknife error is not optimistic
    shifted, se = kernel_inception_distance(rng.normal(size=(40, 16)), rng.normal(size=(40, 16)) + 0.5)
    assert shifted > 3 * se


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
    for name in ("report.html", "report.json", "tiles.png", "nuclei.png", "histograms.png"):
        assert (out / name).is_file()
    assert json.loads((out / "report.json").read_text()) == result
    # 16 tiles a side: no C2ST figure at all, and the first thing the JSON and the page say is why
    assert result["c2st_accuracy"] is None and result["c2st"]["n_per_side"] == 16
    power = [w for w in result["warnings"] if "C2ST not run" in w]
    assert len(power) == 1 and "--stride 32" in power[0] and "16 tiles a side" in power[0]
    assert any("states no pixel size" in w for w in result["warnings"])  # an assumed scale is a warning too
    assert result["notes"][: len(result["warnings"])] == result["warnings"]
    page = (out / "report.html").read_text()
    assert page.index("Read these first") < page.index("C2ST accuracy") and "C2ST not run" in page
    for key in ("kid", "kid_stderr", "fd_real_halves", "stride_px"):
        assert key in result


def test_classes_select_tiles_by_mask(tmp_path, tiny_canvas, capsys):
    args = ["evaluate", "--real", str(tiny_canvas), "--synthetic", str(tiny_canvas), "--tile", "32", "--no-c2st", "--quiet"]
    assert main(args + ["--classes", "2"]) == 0
    only2 = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    both = json.loads(capsys.readouterr().out)
    assert only2["n_real"] == 32 and both["n_real"] == 64 and both["fd"] == pytest.approx(0.0, abs=1e-6)
    assert set(both["per_class"]) == {"epidermis", "dermis"} or set(both["per_class"]) == {"2", "3"}


def test_real_tiles_from_the_models_training_rows_are_named(tmp_path, capsys):
    """The default model's card says it trained on rows 0-2047 of the CC0 slide: real tiles from
    there make the report say so at the top."""
    from src_models.synthesis.canvases import new_canvas, put_mask
    from src_models.models.loading import load_model
    from src_models.synthesis.regions import SynthesisRequest, synthesise

    model = load_model("default", "cpu")
    c = new_canvas(model.card, tmp_path / "d.zarr", 256, 256)
    put_mask(c, np.full(c.latent_shape, 3, np.uint8))
    list(synthesise(model, c, SynthesisRequest(steps=2, seed=0)))
    c.close()
    base = ["evaluate", "--synthetic", str(tmp_path / "d.zarr"), "--no-c2st", "--quiet", "--min-tissue", "0"]
    assert main(base + ["--real", str(SLIDE)]) == 0
    leaked = json.loads(capsys.readouterr().out)
    assert "rows the model trained on" in leaked["warnings"][0]
    assert leaked["notes"][0] == leaked["warnings"][0]
    # the held-out band cut out of the slide is another image: nothing to warn about
    band = tmp_path / "band.png"
    Image.fromarray(np.asarray(Image.open(SLIDE).convert("RGB"))[2048:]).save(band)
    assert main(base + ["--real", str(band)]) == 0
    assert not any("trained on" in w for w in json.loads(capsys.readouterr().out)["warnings"])


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
