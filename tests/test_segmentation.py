"""`diffinfinite evaluate-segmentation`: a segmenter trained on tile folders, tested on real tiles.
The measure must fail where it should: trained on the same tiles with their masks shuffled between
tiles, it must score far below the segmenter trained on the true masks."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src_models.cli.main import main
from src_models.evaluation.segmentation import SegmentationError, evaluate_segmentation, load_tiles, scores
from src_models.data.masks_from_he import HELDOUT_FROM_ROW, derive_mask, write_training_folder

SLIDE = Path(__file__).resolve().parents[1] / "data" / "cmu_small_region" / "cmu_small_region.png"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Training rows and the held-out band of the CC0 slide as tile folders with every mask, at half
    the slide's resolution (1 µm/px, 128 px tiles: the same tissue as 256 px tiles at full resolution,
    a quarter of the pixels, so the three trainings below stay cheap)."""
    root = tmp_path_factory.mktemp("seg")
    img = Image.open(SLIDE).convert("RGB")
    rgb = np.asarray(img.resize((img.width // 2, img.height // 2), Image.BOX))
    band = HELDOUT_FROM_ROW // 2
    for name, part in (("train", rgb[:band]), ("test", rgb[band:])):
        write_training_folder(part, derive_mask(part, pixel_um=0.998), root / name, tile=128, unlabelled_every=0)
    return root


def test_true_masks_beat_shuffled_masks_by_far(folders):
    real, _ = evaluate_segmentation([folders / "train"], folders / "test", epochs=3, seed=0)
    shuffled, _ = evaluate_segmentation([folders / "train"], folders / "test", epochs=3, seed=0, shuffle_masks=True)
    assert real["n_test"] >= 20 and set(real["per_class_iou"]) == {"glass", "epidermis", "dermis"}
    assert real["mean_iou"] >= 0.5, real
    assert real["mean_iou"] >= shuffled["mean_iou"] + 0.3, (real, shuffled)
    assert 0 <= real["mean_dice"] <= 1 and real["mean_dice"] >= real["mean_iou"]  # Dice >= IoU always
    # the same inputs and seed give the same figures
    again, _ = evaluate_segmentation([folders / "train"], folders / "test", epochs=3, seed=0)
    assert again["per_class_iou"] == real["per_class_iou"]


def test_scores_on_known_maps():
    truth = [np.array([[1, 1, 2, 2], [0, 0, 2, 2]])]
    pred = [np.array([[1, 2, 2, 2], [2, 2, 2, 1]])]
    s = scores(truth, pred, ["unknown", "a", "b"])
    # label 0 is not scored: a has TP 1, FN 1; b has TP 3, FP 1, FN 1
    assert s["per_class_iou"] == {"a": pytest.approx(1 / 3, abs=1e-4), "b": pytest.approx(3 / 5, abs=1e-4)}
    assert s["per_class_dice"]["b"] == pytest.approx(6 / 8, abs=1e-4)
    assert s["pixels_scored"] == 6 and s["pixel_accuracy"] == pytest.approx(4 / 6, abs=1e-4)


def test_cli_prints_json_and_writes_the_sheet(folders, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["evaluate-segmentation", "--train", str(folders / "train"), "--test", str(folders / "test"),
                 "--epochs", "1", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    for key in ("n_train", "n_test", "per_class_iou", "mean_iou", "per_class_dice"):
        assert key in result
    assert (out / "segmentation.png").is_file()
    assert json.loads((out / "segmentation.json").read_text()) == result


def test_bad_folders_end_with_one_line(tmp_path, folders, capsys):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "empty" / "images" / "a.png")
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "masks").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(other / "images" / "a.png")
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(other / "masks" / "a.png")
    cases = [
        (["--train", str(tmp_path / "nowhere"), "--test", str(folders / "test")], "no images/ folder"),
        (["--train", str(tmp_path / "empty"), "--test", str(folders / "test")], "has a mask"),
        (["--train", str(other), "--test", str(folders / "test")], "other classes"),
        (["--train", str(folders / "train"), "--test", str(folders / "test"), "--epochs", "0"], "at least 1"),
    ]
    for args, expected in cases:
        assert main(["evaluate-segmentation", *args, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    with pytest.raises(SegmentationError, match="label 7"):
        (other / "classes.json").write_text(json.dumps({"classes": ["unknown", "a"]}))
        load_tiles(other)
