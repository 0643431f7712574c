"""The run request: one check per option, defaults per model and solver, old canvases' settings,
and registries that a GUI can read without importing torch."""
import subprocess
import sys

import pytest

from src_models.models.card import ModelCard
from src_models.synthesis.request import PLANS, SOLVERS, RequestError, SynthesisRequest, default_plan, normalise_settings


def _card(arch: str, steps: int = 50) -> ModelCard:
    return ModelCard(name="m", classes=["unknown", "a"], colours=["#000000", "#ffffff"], conditioning="per_class",
                     unet={"arch": arch, "config": {}}, codec={"factor": 8}, patch_size=64, default_steps=steps)


def test_defaults_come_from_the_model_and_the_solver():
    release, own = _card("release_image"), _card("native", steps=30)
    assert default_plan(release) == "release" and default_plan(own) == "grid"
    r = SynthesisRequest().resolved(release)
    assert (r.plan, r.solver, r.steps, r.eta) == ("release", "ddim", 50, 1.0)
    r = SynthesisRequest(solver="dpmpp-2m").resolved(own)
    assert (r.plan, r.steps, r.eta) == ("grid", 20, 0.0)
    r = SynthesisRequest(plan="sequential", steps=7, eta=0.0).resolved(own)
    assert (r.plan, r.steps, r.eta) == ("sequential", 7, 0.0)
    assert r.settings()["plan"] == "sequential" and r.settings()["sweep"] is False


def test_a_card_that_names_its_solver_gives_steps_and_eta_with_it_and_only_with_it():
    from dataclasses import replace

    from src_models.models.card import ModelError, _check_fields
    from src_models.synthesis.request import sampling_defaults

    card = replace(_card("native", steps=20), default_solver="dpmpp-2m", default_omega=0.5)
    r = SynthesisRequest().resolved(card)
    assert (r.solver, r.steps, r.eta, r.omega) == ("dpmpp-2m", 20, 0.0, 0.5)
    # another solver brings its own steps and eta, not the card's
    r = SynthesisRequest(solver="ddim").resolved(card)
    assert (r.solver, r.steps, r.eta, r.omega) == ("ddim", 50, 1.0, 0.5)
    # the card's DDIM eta is used with DDIM only
    ddim0 = replace(_card("native", steps=40), default_eta=0.0)
    assert sampling_defaults(ddim0) == {"solver": "ddim", "steps": 40, "eta": 0.0, "omega": 3.0, "omega_per_class": {},
                                       "guidance_below": 1000}
    assert sampling_defaults(ddim0, "dpmpp-2m")["eta"] == 0.0 and sampling_defaults(ddim0, "dpmpp-2m")["steps"] == 20
    # a canvas whose settings left the solver open reads as the card resolves it
    assert normalise_settings({"solver": None, "steps": None, "eta": None}, card)["solver"] == "dpmpp-2m"
    # resample needs DDIM: judged on the solver the card gives when none is named
    with pytest.raises(ValueError, match="resample needs the ddim solver"):
        SynthesisRequest(resample=2).check(card)
    SynthesisRequest(resample=2).check(ddim0)
    for bad in ({"default_solver": "euler"}, {"default_solver": "dpmpp-2m", "default_eta": 1.0},
                {"default_eta": 2.0}, {"default_eta": "1"}):
        with pytest.raises(ModelError, match="default_"):
            _check_fields(replace(_card("native"), **bad))


def test_a_cards_per_class_omega_is_a_default_the_users_own_omega_replaces():
    from dataclasses import replace

    from src_models.models.card import ModelError
    from src_models.synthesis.request import card_settings

    three = ModelCard(name="m", classes=["unknown", "glass", "epidermis", "dermis"], colours=["#000000"] * 4,
                      conditioning="label_map", unet={"arch": "native", "config": {}}, codec={"factor": 4},
                      patch_size=32, default_omega=1.0, default_omega_per_class={"3": 0.0})
    ModelCard.from_dict(three.to_dict())  # a valid card, saved and read back
    assert three.omega_per_class == {3: 0.0}
    r = SynthesisRequest().resolved(three)
    assert (r.omega, r.omega_per_class) == (1.0, {3: 0.0})
    # the user's per-class ω wins, class by class
    r = SynthesisRequest(omega_per_class={2: 4.0, 3: 0.5}).resolved(three)
    assert (r.omega, r.omega_per_class) == (1.0, {2: 4.0, 3: 0.5})
    r = SynthesisRequest(omega=2.0).resolved(three)  # a global ω replaces the card's whole choice
    assert (r.omega, r.omega_per_class) == (2.0, {})
    # a canvas that left ω open reads as the card resolves it; one that stored ω keeps it
    assert normalise_settings({"omega": None}, three)["omega_per_class"] == {"3": 0.0}
    assert normalise_settings({"omega": 1.0, "omega_per_class": {}}, three)["omega_per_class"] == {}
    assert card_settings(three, "own") == {"model": "own", "steps": 50, "omega": 1.0, "omega_per_class": {"3": 0.0}}
    for bad, field in (({"0": 1.0}, "key"), ({"4": 1.0}, "key"), ({"x": 1.0}, "key"), ({"2": -1.0}, "2"),
                       ({"2": "1"}, "2"), ([0.0], "an object")):
        with pytest.raises(ModelError, match=f"default_omega_per_class.*{field}"):
            ModelCard.from_dict(replace(three, default_omega_per_class=bad).to_dict())


@pytest.mark.parametrize("kw,match", [
    ({"plan": "parallel"}, "unknown plan 'parallel'"),
    ({"solver": "heun"}, "unknown solver 'heun'"),
    ({"solver": "dpmpp-2m", "eta": 0.5}, "deterministic"),
    ({"eta": -0.1}, "eta must be a number >= 0"),
    ({"steps": 0}, "steps must be between 1 and 1000, got 0"),
    ({"steps": 1001}, "steps must be between 1 and 1000"),
])
def test_bad_options_are_refused_with_one_line(kw, match):
    with pytest.raises(ValueError, match=match):
        SynthesisRequest(**kw).check()


def test_settings_of_a_canvas_made_before_plans_and_solvers():
    old = {"model": "default", "steps": 50, "eta": 1.0, "seed": 0, "schedule": "parallel", "halo": None}
    new = normalise_settings(old)
    assert new["plan"] == "grid" and new["solver"] == "ddim" and new["sweep"] is False and "schedule" not in new
    assert normalise_settings({**old, "schedule": "sequential"})["plan"] == "sequential"
    current = SynthesisRequest(steps=50, plan="grid", eta=1.0).settings()
    # guidance at every level is stored by leaving it out, and named when normalised (so that a limit on
    # either side of a comparison shows)
    assert normalise_settings(current) == {**current, "guidance_below": 1000}
    limited = SynthesisRequest(steps=50, plan="grid", eta=1.0, guidance_below=500).settings()
    assert limited["guidance_below"] == 500 and normalise_settings(limited) == limited


def test_the_registries_need_no_torch():
    code = ("import sys; from src_models.synthesis.request import PLANS, SOLVERS, SynthesisRequest; "
            "SynthesisRequest(plan='release', solver='dpmpp-2m').check(); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(','.join(PLANS), ','.join(SOLVERS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [",".join(PLANS), ",".join(SOLVERS)] == ["grid,release,sequential,tiled,average", "ddim,dpmpp-2m"]


def test_guidance_below_comes_from_the_card_and_is_checked():
    from dataclasses import replace

    from src_models.models.card import ModelError, _check_fields
    from src_models.synthesis.request import RequestError, card_settings, settings_diff

    plain, limited = _card("native"), replace(_card("native"), default_guidance_below=500)
    assert SynthesisRequest().resolved(plain).guidance_below == 1000  # cards without it guide every level
    r = SynthesisRequest().resolved(limited)
    assert r.guidance_below == 500 and r.settings()["guidance_below"] == 500
    assert SynthesisRequest(guidance_below=1000).resolved(limited).settings().get("guidance_below") is None
    assert SynthesisRequest(guidance_below=0).resolved(plain).guidance_below == 0
    for bad in (-1, 1001, 2.5, True):
        with pytest.raises(RequestError, match="guidance_below must be a whole number from 0 to 1000"):
            SynthesisRequest(guidance_below=bad).check()
    with pytest.raises(RequestError, match="--guidance-below must be"):
        SynthesisRequest(guidance_below=5000).check(option=lambda f: "--" + f.replace("_", "-"))
    with pytest.raises(ModelError, match="default_guidance_below"):
        _check_fields(replace(plain, default_guidance_below=1500))
    # a new canvas records the card's limit; a canvas a run made before the option existed guided every level
    assert card_settings(limited, "m")["guidance_below"] == 500
    old_run = {k: v for k, v in r.settings().items() if k != "guidance_below"}
    assert settings_diff(old_run, r.settings(), limited) == {"guidance_below": (1000, 500)}
    unrun = {k: v for k, v in old_run.items() if k != "seed"}
    assert "guidance_below" not in settings_diff(unrun, r.settings(), limited)  # no run yet: the card's


def test_the_distilled_student_runs_the_guided_levels_only():
    from dataclasses import replace

    from src_models.synthesis.request import card_settings, normalise_settings

    card = replace(_card("native"), default_omega=1.0, default_guidance_below=500,
                   guided_unet={"file": "s.safetensors", "omega": 1.0, "by_default": False})
    r = SynthesisRequest(distilled=True).resolved(card)  # the student at the card's guided levels
    assert r.distilled and r.guidance_below == 500 and r.settings()["guidance_below"] == 500
    assert r.settings()["distilled"] is True and r.resolved(card) == r
    r = SynthesisRequest(distilled=True, guidance_below=250).resolved(card)  # a limit of the user's
    assert r.distilled and r.guidance_below == 250
    r = SynthesisRequest(distilled=True, guidance_below=1000).resolved(card)  # the student at every level
    assert r.distilled and r.guidance_below == 1000 and "guidance_below" not in r.settings()
    # a canvas the student sampled before the limit existed: every level, as it was made
    old = {k: v for k, v in SynthesisRequest(distilled=True, seed=3).resolved(card).settings().items()
           if k != "guidance_below"}
    assert normalise_settings(old, card)["guidance_below"] == 1000
    by_default = replace(card, guided_unet={**card.guided_unet, "by_default": True})
    assert SynthesisRequest().resolved(by_default).distilled
    assert card_settings(by_default, "m")["distilled"] and card_settings(by_default, "m")["guidance_below"] == 500
    r = SynthesisRequest(guidance_below=250).resolved(by_default)  # a limit of the user's keeps the student
    assert r.distilled and r.guidance_below == 250
    assert not SynthesisRequest(distilled=False).resolved(by_default).distilled


def test_a_student_distilled_for_the_cleaner_levels_never_runs_the_others():
    from dataclasses import replace

    from src_models.synthesis.request import card_settings, normalise_settings, student_t_below

    card = replace(_card("native"), default_omega=1.0, default_guidance_below=250,
                   guided_unet={"file": "s.safetensors", "omega": 1.0, "by_default": True, "t_below": 250})
    assert student_t_below(card) == 250 and student_t_below(_card("native")) == 1000
    assert SynthesisRequest().resolved(card).distilled  # the card's limit: the student's own levels
    assert SynthesisRequest(guidance_below=100).resolved(card).distilled  # fewer of them
    # guided above its levels, a run left open takes the teacher's two passes, and one that asks is refused
    r = SynthesisRequest(guidance_below=500).resolved(card)
    assert not r.distilled and r.guidance_below == 500
    with pytest.raises(RequestError, match="below t 250 only.*guidance_below 250 or lower"):
        SynthesisRequest(distilled=True, guidance_below=1000).resolved(card)
    assert card_settings(card, "m")["distilled"]
    # a canvas of this model recorded at every level, before its runs were limited, resumes with two passes
    old = {k: v for k, v in SynthesisRequest(seed=3, guidance_below=1000).resolved(card).settings().items()}
    assert normalise_settings(old, card)["distilled"] is False


def test_a_cards_student_limit_is_checked():
    from dataclasses import replace

    from src_models.models.card import ModelError

    for bad in (0, 1001, 2.5, True, "250"):
        card = replace(_card("native"), guided_unet={"file": "s.safetensors", "omega": 1.0, "parts": "cond",
                                                      "t_below": bad})
        with pytest.raises(ModelError, match="t_below"):
            card.validate()
