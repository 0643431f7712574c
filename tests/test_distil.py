"""Guidance distillation (src_models/training/distil.py): the student learns the guided ε, is
written as a new model directory beside an untouched source, and runs one pass per window where a
run asks for the ω it was distilled at."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import src_models.training.distil as D
import src_models.training.train as T
from src_models.models.card import ModelCard, ModelError
from src_models.models.loading import guided_network, load_model
from src_models.synthesis.canvases import new_canvas, put_mask
from src_models.synthesis.regions import synthesise
from src_models.synthesis.request import RequestError, SynthesisRequest, card_settings
from tests.test_train import _write_folder


def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A small native model (identity codec, trained 2 steps, the card's ω 2 with class 1 at 0) and
    its student after 40 distillation steps."""
    root = tmp_path_factory.mktemp("distil")
    data = _write_folder(root / "d", n_labelled=3, n_unlabelled=0, size=32)
    teacher = root / "teacher"
    assert T.main(["--data", str(data), "--out", str(teacher), "--codec", "identity", "--steps", "2", "--crop", "16",
                   "--batch", "2", "--base", "8", "--mults", "1,2", "--blocks", "1", "--no-progress",
                   "--ckpt-every", "1"]) == 0
    card = json.loads((teacher / "card.json").read_text())
    card.update(default_omega=2.0, default_omega_per_class={"1": 0.0})
    (teacher / "card.json").write_text(json.dumps(card))
    before = _digest(teacher)
    student = root / "student"
    argv = ["--model", str(teacher), "--data", str(data), "--out", str(student), "--steps", "40", "--batch", "4",
            "--lr", "3e-3", "--ema", "0.5", "--no-progress", "--ckpt-every", "20", "--device", "cpu"]
    assert D.main(argv) == 0
    return {"data": data, "teacher": teacher, "student": student, "argv": argv, "before": before}


def test_the_student_learns_the_guidance_and_the_source_is_untouched(distilled, capsys):
    student, teacher = distilled["student"], distilled["teacher"]
    assert _digest(teacher) == distilled["before"]  # nothing of the source model changed
    card = ModelCard.load(student)
    g = card.guided_unet
    assert g["omega"] == 2.0 and g["omega_per_class"] == {"1": 0.0} and g["parts"] == "cond" and g["steps"] == 40
    # the residual of the guidance on the fixed probe: 1 before (the student is the teacher), less after
    assert g["residual_before"] == pytest.approx(1.0, abs=1e-3)
    assert g["residual_after"] < 0.8 * g["residual_before"]
    # only the condition branch is written, and the rest of the network is the teacher's
    from safetensors.torch import load_file

    tensors = load_file(str(student / D.GUIDED_FILE))
    assert tensors and all(D.cond_branch(k) for k in tensors)
    for name in ("unet.safetensors", "codec.safetensors"):
        if (teacher / name).exists():
            assert (student / name).read_bytes() == (teacher / name).read_bytes()
    # a second run onto the same directory refuses and changes nothing
    kept = _digest(student)
    capsys.readouterr()
    assert D.main(distilled["argv"]) == 2
    assert "exists" in capsys.readouterr().err and _digest(student) == kept


def test_the_student_runs_one_pass_per_window_at_its_omega_only(distilled, tmp_path):
    model = load_model(distilled["student"])
    mask = np.full((64, 64), 2, np.uint8)
    mask[:, :20] = 1

    def run(name, **kw):
        c = new_canvas(model.card, tmp_path / f"{name}.zarr", 64, 64, 32)
        put_mask(c, mask)
        req = SynthesisRequest(model=str(distilled["student"]), steps=3, seed=1, **kw)
        calls = sum(ev.forwards for ev in synthesise(model, c, req))
        return calls, np.asarray(c.image(0)[:]).astype(int), c.settings

    one, img_one, settings = run("default")
    two, img_two, settings_two = run("two", distilled=False)
    assert settings.get("distilled") is True and "distilled" not in settings_two
    assert 2 * one > two and one < two  # the guided windows lose their null pass
    assert not np.array_equal(img_one, img_two)  # and the student paints with its own weights
    # another ω is not what the student learned: the teacher's two passes (class 1 guided too now), and
    # asking for the student refuses
    other, _, s_other = run("other", omega=2.0, omega_per_class={1: 0.5})
    assert other > two and "distilled" not in s_other
    with pytest.raises(RequestError, match="distilled at ω 2"):
        SynthesisRequest(model="x", omega=1.0, distilled=True).resolved(model.card)
    with pytest.raises(RequestError, match="no distilled student"):
        SynthesisRequest(model="x", distilled=True).resolved(load_model(distilled["teacher"]).card)
    # a new canvas records that its card's defaults run on the student; the teacher's records nothing
    assert card_settings(model.card, "s")["distilled"] is True
    assert "distilled" not in card_settings(load_model(distilled["teacher"]).card, "t")
    # the student is the teacher with the condition branch replaced
    net = guided_network(model)
    assert torch.equal(net.init_conv.weight, model.unet.init_conv.weight)
    assert not torch.equal(net.class_emb, model.unet.class_emb)
    # napari's cancel stops the student within a level as it does the UNet
    from src_models.synthesis.cancel import stop_on_cancel

    stop_on_cancel(model)
    assert getattr(net, "_diffinfinite_cancel_hook", False) and len(net._forward_pre_hooks) == 1
    fresh = load_model(distilled["student"])  # hooked before the student exists: the copy carries the hook
    stop_on_cancel(fresh)
    assert len(guided_network(fresh)._forward_pre_hooks) == 1


def test_the_student_can_run_the_guided_levels_alone(distilled, tmp_path):
    """With guidance limited to t < T the student gives the guided ε at those levels and the teacher's
    conditional pass does the noisier ones: one pass per window at every level."""
    from src_models.sampling.schedule import ddim_time_pairs

    model = load_model(distilled["student"])
    student = guided_network(model)  # built before the hooks: the copy carries none of the teacher's
    seen = {"teacher": set(), "student": set()}
    model.unet.register_forward_pre_hook(lambda m, a: seen["teacher"].update(a[1].tolist()))
    student.register_forward_pre_hook(lambda m, a: seen["student"].update(a[1].tolist()))
    mask = np.full((64, 64), 2, np.uint8)
    mask[:, :20] = 1

    def run(name, **kw):
        for v in seen.values():
            v.clear()
        c = new_canvas(model.card, tmp_path / f"{name}.zarr", 64, 64, 32)
        put_mask(c, mask)
        req = SynthesisRequest(model=str(distilled["student"]), steps=4, seed=1, **kw)
        calls = sum(ev.forwards for ev in synthesise(model, c, req))
        return calls, np.asarray(c.image(0)[:]).astype(int), c.settings, {k: set(v) for k, v in seen.items()}

    ts = [t for t, _ in ddim_time_pairs(4)]
    limit = sorted(ts)[2]
    calls, img, settings, used = run("hybrid", distilled=True, guidance_below=limit)
    assert used == {"teacher": {t for t in ts if t >= limit}, "student": {t for t in ts if t < limit}}
    assert settings["distilled"] is True and settings["guidance_below"] == limit
    all_calls, img_all, settings_all, used_all = run("student", distilled=True, guidance_below=1000)
    assert used_all == {"teacher": set(), "student": set(ts)} and "guidance_below" not in settings_all
    assert calls == all_calls  # one pass per window either way
    two, img_two, _, _ = run("teacher", distilled=False, guidance_below=limit)
    assert two > calls
    assert not np.array_equal(img, img_all) and not np.array_equal(img, img_two)


def test_a_card_naming_a_student_file_outside_its_directory_or_missing_is_refused(distilled, tmp_path):
    card = json.loads((distilled["student"] / "card.json").read_text())
    for bad in ("../unet.safetensors", "/etc/x.safetensors", "student.pt"):
        d = dict(card, guided_unet=dict(card["guided_unet"], file=bad))
        with pytest.raises(ModelError, match="guided_unet.file"):
            ModelCard.from_dict(d)
    moved = tmp_path / "m"
    moved.mkdir()
    for p in distilled["student"].iterdir():
        if p.name != D.GUIDED_FILE:
            (moved / p.name).write_bytes(p.read_bytes())
    with pytest.raises(ModelError, match="not in"):
        guided_network(load_model(moved))


def test_distillation_refuses_a_model_without_guidance(distilled, tmp_path, capsys):
    card = json.loads((distilled["teacher"] / "card.json").read_text())
    unguided = tmp_path / "unguided"
    unguided.mkdir()
    for p in distilled["teacher"].iterdir():
        (unguided / p.name).write_bytes(p.read_bytes())
    (unguided / "card.json").write_text(json.dumps(dict(card, default_omega=0.0, default_omega_per_class={})))
    assert D.main(["--model", str(unguided), "--data", str(distilled["data"]), "--out", str(tmp_path / "s"),
                   "--steps", "2", "--no-progress"]) == 2
    assert "nothing to distil" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_a_student_goes_on_from_the_last_one_at_the_cleaner_levels_only(distilled, tmp_path, capsys):
    """``--from-student --t-below T``: the run starts from the model's own student (its residual on the
    probe is already below 1), trains and probes at t < T only, and the card records T; a model
    without a student, or a bad T, is refused with one line and nothing written."""
    out = tmp_path / "focused"
    assert D.main(["--model", str(distilled["student"]), "--data", str(distilled["data"]), "--out", str(out),
                   "--steps", "6", "--batch", "4", "--lr", "3e-3", "--ema", "0.5", "--no-progress",
                   "--ckpt-every", "3", "--device", "cpu", "--from-student", "--t-below", "100"]) == 0
    g = ModelCard.load(out).guided_unet
    assert g["t_below"] == 100 and g["steps"] == 6
    assert g["residual_before"] < 0.9  # the source's student, not a copy of the teacher
    before = load_model(distilled["student"])
    again = load_model(out)
    # the source's student is where it started: its weights moved from there, the teacher's did not
    moved = [k for k, v in guided_network(again).state_dict().items()
             if not torch.equal(v, guided_network(before).state_dict()[k])]
    assert moved and all(D.cond_branch(k) for k in moved)
    for bad, why in ((["--t-below", "0"], "--t-below must be from 1 to 1000"),
                     (["--t-below", "1001"], "--t-below must be from 1 to 1000"),
                     (["--from-student"], "no distilled student")):
        capsys.readouterr()
        assert D.main(["--model", str(distilled["teacher"]), "--data", str(distilled["data"]), "--out",
                       str(tmp_path / "x"), "--steps", "2", "--no-progress", *bad]) == 2
        assert why in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert not (tmp_path / "x.train").exists()  # refused before anything is made


def test_the_probe_draws_only_the_levels_asked_for():
    from src_models.sampling.schedule import cosine_alphas_cumprod

    class Crops:
        gen = torch.Generator().manual_seed(0)

        def sample(self, n):
            return torch.zeros(n, 4, 8, 8), torch.zeros(n, 1, 8, 8, dtype=torch.long), None

    crops = Crops()
    keep = crops.gen
    _, t, _ = D._probe(crops, cosine_alphas_cumprod(), 200, 1, 250)
    assert int(t.max()) < 250 and int(t.min()) >= 0 and crops.gen is keep
    _, t, _ = D._probe(crops, cosine_alphas_cumprod(), 200, 1, 1000)
    assert int(t.max()) >= 250


def test_resume_goes_on_as_the_canvas_was_made(distilled, tmp_path, capsys):
    """A canvas made with two passes resumes with two passes when the user leaves the choice open (the
    default would otherwise pick the student and refuse the canvas as made with other settings);
    asking for the student on it is refused, naming the setting."""
    from PIL import Image

    from src_models.cli.main import main as cli
    from src_models.store.canvas import Canvas
    from src_models.synthesis.request import normalise_settings

    mask = np.full((64, 64), 2, np.uint8)
    mask[:, :20] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = tmp_path / "c.zarr"
    base = ["generate", "--mask", str(tmp_path / "m.png"), "--out", str(out), "--model", str(distilled["student"]),
            "--steps", "2", "--region-size", "32", "--device", "cpu"]
    assert cli(base + ["--no-distilled"]) == 0
    card = ModelCard.load(distilled["student"])
    with Canvas.open(out, "r") as c:
        assert normalise_settings(c.settings, card)["distilled"] is False
    capsys.readouterr()
    assert cli(base + ["--resume"]) == 0
    assert cli(base + ["--resume", "--distilled"]) == 2
    assert "distilled" in capsys.readouterr().err
    # generate-many resumes it the same way, and makes a new canvas with the student
    from src_models.cli.many import build_jobs, build_parser

    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "c.png")
    table = ["--jobs", str(tmp_path / "masks"), "--model", str(distilled["student"]), "--steps", "2",
             "--region-size", "32", "--device", "cpu"]
    jobs = build_jobs(build_parser().parse_args(table + ["--out", str(tmp_path)]))
    assert [j.request["distilled"] for j in jobs] == [False]
    jobs = build_jobs(build_parser().parse_args(table + ["--out", str(tmp_path / "new")]))
    assert [j.request["distilled"] for j in jobs] == [True]
    # settings left open follow the card: its student
    assert normalise_settings({"model": "m"}, card)["distilled"] is True
    assert normalise_settings({"model": "m", "omega": 2.0, "omega_per_class": {"1": 0.0}}, card)["distilled"] is False


def test_an_opt_in_student_runs_only_when_asked_for(distilled):
    """A card whose student has ``by_default`` false (the shipped skin model's: measured further from real
    tissue than its teacher) runs two passes unless the request asks for the student."""
    from src_models.synthesis.request import normalise_settings

    card = ModelCard.load(distilled["student"])
    card.guided_unet = dict(card.guided_unet, by_default=False)
    card.validate()
    assert SynthesisRequest(model="s").resolved(card).distilled is False
    assert SynthesisRequest(model="s", distilled=True).resolved(card).distilled is True
    assert "distilled" not in card_settings(card, "s")
    assert normalise_settings({"model": "s"}, card)["distilled"] is False
    bad = dict(card.to_dict(), guided_unet=dict(card.guided_unet, by_default="no"))
    with pytest.raises(ModelError, match="by_default"):
        ModelCard.from_dict(bad)


def test_the_default_model_ships_its_student_opt_in():
    """The shipped skin model carries a float16 condition-branch student at its card's ω; runs leave it
    out unless asked for (it measured further from real tissue than the two passes: docs/cpu_speed.md)."""
    from src_models.models.card import BUILTIN_DIRS

    model = load_model("default")
    g = model.card.guided_unet
    assert g["by_default"] is False and g["parts"] == "cond" and g["stored"] == "float16"
    assert (BUILTIN_DIRS["default"] / g["file"]).stat().st_size < 2e6
    assert SynthesisRequest().resolved(model.card).distilled is False
    assert SynthesisRequest(distilled=True).resolved(model.card).distilled is True
    net = guided_network(model)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, dict(model.unet.named_parameters())[n])}
    assert changed and all(D.cond_branch(n) for n in changed)
