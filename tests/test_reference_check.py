"""The conformance check against the release's reference vectors (issue 4, item 5)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from src_models.models.release.reference_check import check_reference, main, relative_error


# the release's reference vectors, shipped with the tests (origin: tests/data/README.md)
REFERENCE = Path(__file__).resolve().parent / "data" / "reference_vectors.safetensors"
needs_reference = pytest.mark.conformance


def _load(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        return load_file(str(path)), f.metadata()


@pytest.fixture(scope="module")
def shipped_report():
    return check_reference(REFERENCE)


@needs_reference
def test_shipped_vectors_pass(shipped_report):
    tensors, _ = _load(REFERENCE)
    out_keys = {k for k in tensors if k.startswith("out.")}
    assert out_keys <= set(shipped_report["outputs"]), "every recorded output must be recomputed"
    assert shipped_report["ok"], shipped_report
    assert all(err < 1e-5 for err in shipped_report["outputs"].values())
    # both attention paths of the image UNet were run and both match
    image_keys = {k for k in out_keys if not k.startswith("out.mask_unet")}
    for mode in ("linear_exact", "softmax"):
        assert set(shipped_report["attention_paths"][mode]) == image_keys
        assert max(shipped_report["attention_paths"][mode].values()) < 1e-5


@needs_reference
def test_main_prints_one_json_object_and_exits_0(capsys):
    assert main([str(REFERENCE)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert "max|ours - reference| / max|reference|" in report["relative_error"]


@needs_reference
def test_perturbed_outputs_fail_each_on_its_own(tmp_path, capsys):
    """Every output is really compared: bump one element of each by its own relative amount."""
    tensors, metadata = _load(REFERENCE)
    bumps = {
        "out.image_unet_mask_latent": 2e-5,
        "out.image_unet_mask_full": 4e-5,
        "out.image_unet_guided_scale4": 8e-5,
        "out.ddim_multimask_999_979_eta0_scale4": 1.6e-4,
        "out.mask_unet_cond": 3.2e-4,
        "out.mask_unet_null": 6.4e-4,
    }
    assert set(bumps) == {k for k in tensors if k.startswith("out.")}
    for key, rel in bumps.items():
        bumped = tensors[key].clone()
        bumped.view(-1)[7] += rel * bumped.abs().max()
        tensors[key] = bumped
    path = tmp_path / "perturbed.safetensors"
    save_file(tensors, str(path), metadata=metadata)

    report = check_reference(path)
    assert not report["ok"]
    for key, rel in bumps.items():
        assert rel * 0.8 < report["outputs"][key] < rel * 1.2, key
    assert main([str(path)]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False

    # one output just over the tolerance is enough to fail
    tensors, _ = _load(REFERENCE)
    tensors["out.mask_unet_null"].view(-1)[0] += 1.5e-5 * tensors["out.mask_unet_null"].abs().max()
    save_file(tensors, str(path), metadata=metadata)
    report = check_reference(path)
    assert not report["ok"] and report["outputs"]["out.mask_unet_null"] > 1e-5


@needs_reference
def test_resaved_copy_with_other_key_order_passes(tmp_path, shipped_report):
    tensors, metadata = _load(REFERENCE)
    reordered = {k: tensors[k] for k in sorted(tensors, reverse=True)}
    path = tmp_path / "reordered.safetensors"
    save_file(reordered, str(path), metadata=metadata)
    report = check_reference(path)
    assert report["ok"]
    assert report["outputs"] == shipped_report["outputs"]


@needs_reference
def test_unknown_output_and_broken_weights_fail(tmp_path):
    tensors, metadata = _load(REFERENCE)
    extra = dict(tensors)
    extra["out.something_new"] = torch.zeros(2)
    path = tmp_path / "extra.safetensors"
    save_file(extra, str(path), metadata=metadata)
    report = check_reference(path)
    assert not report["ok"] and report["unrecognised"] == ["out.something_new"]

    broken = {k: v for k, v in tensors.items() if k != "image_unet.final_conv.bias"}
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path), metadata=metadata)
    report = check_reference(path)
    assert not report["ok"]
    assert any("final_conv.bias" in e for e in report["errors"])


def test_missing_file_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope.safetensors")]) == 2
    assert "does not exist" in json.loads(capsys.readouterr().out)["errors"][0]


def test_relative_error_definition():
    ref = torch.tensor([1.0, -4.0, 2.0])
    assert relative_error(ref + torch.tensor([0.0, 0.0, 0.4]), ref) == pytest.approx(0.1)
    assert relative_error(ref[:2], ref) == float("inf")


def test_configs_times_and_scales_come_from_the_file(tmp_path):
    """A file of another config (dim 8, 10 classes, mask UNet with 3 subtypes, other times and
    scales).  Its outputs are made with this project's own modules, so passing shows only that
    configs, times and scales are read from the file; the renamed-key half shows that they matter."""
    from src_models.sampling.guidance import guided_eps
    from src_models.models.release.unet import ImageUNet, MaskUNet
    from reference_ddim import ddim_step
    from src_models.sampling.schedule import cosine_alphas_cumprod

    torch.manual_seed(3)
    img_cfg = {"dim": 8, "num_classes": 10, "dim_mults": [1, 2], "channels": 4, "resnet_block_groups": 2,
               "block_per_layer": 1}
    msk_cfg = {"dim": 8, "num_classes": 3, "dim_mults": [1, 2], "channels": 4, "resnet_block_groups": 4,
               "block_per_layer": 2}
    img, msk = ImageUNet(**img_cfg).eval(), MaskUNet(**msk_cfg).eval()
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([5, 250, 900])
    mask = torch.randint(0, 10, (3, 1, 8, 8)).float()
    mask[2] = 0.0
    ac = cosine_alphas_cumprod()
    tensors = {f"image_unet.{k}": v for k, v in img.state_dict().items()}
    tensors |= {f"mask_unet.{k}": v for k, v in msk.state_dict().items()}
    tensors |= {"in.x": x, "in.t": t, "in.mask_latent": mask, "in.mask_classes": torch.tensor([2, 0, 1]),
                "schedule.alphas_cumprod": ac}
    with torch.no_grad():
        tensors["out.image_unet_mask_latent"] = img(x, t, mask)
        null, cond = img(x, t, torch.zeros_like(mask)), img(x, t, mask)
        tensors["out.image_unet_guided_scale7"] = null + (cond - null) * 7
        for t0, t1, scale in ((500, 480, 2), (19, -1, 7)):
            eps = guided_eps(img, x, torch.full((3,), t0), mask.long(), torch.full((10,), scale - 1.0))
            tensors[f"out.ddim_multimask_{t0}_{t1}_eta0_scale{scale}"] = ddim_step(x, eps, t0, t1, ac, eta=0)[0]
        tensors["out.mask_unet_cond"] = msk(x, t, tensors["in.mask_classes"])
    meta = {"meta": json.dumps({"image_unet_config": img_cfg, "mask_unet_config": msk_cfg})}
    path = tmp_path / "other.safetensors"
    save_file(tensors, str(path), metadata=meta)
    report = check_reference(path)
    assert report["ok"], report
    assert len(report["outputs"]) == 6  # schedule + 5 outputs

    # the same tensor under another time pair or scale no longer matches
    for bad in ("out.ddim_multimask_520_500_eta0_scale2", "out.ddim_multimask_500_480_eta0_scale3"):
        wrong = dict(tensors)
        wrong[bad] = wrong.pop("out.ddim_multimask_500_480_eta0_scale2")
        save_file(wrong, str(path), metadata=meta)
        report = check_reference(path)
        assert not report["ok"] and report["outputs"][bad] > 1e-3
