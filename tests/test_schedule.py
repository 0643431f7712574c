import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_ddim import ddim_step
from src_models.sampling.schedule import cosine_alphas_cumprod, ddim_time_pairs, q_sample

REF = Path(__file__).resolve().parent / "data" / "reference_vectors.safetensors"  # see tests/data/README.md


def test_cosine_schedule_shape_and_monotone():
    a = cosine_alphas_cumprod()
    assert a.shape == (1000,) and a.dtype == torch.float32
    assert (a[1:] < a[:-1]).all()
    assert 0.99 < a[0] < 1 and a[-1] < 1e-3


@pytest.mark.conformance
def test_schedule_and_time_pairs_match_release():
    from safetensors import safe_open

    with safe_open(str(REF), "pt") as f:
        ref = f.get_tensor("schedule.alphas_cumprod")
        meta = json.loads(f.metadata()["meta"])
    assert torch.equal(cosine_alphas_cumprod(), ref)
    assert [list(p) for p in ddim_time_pairs(50)] == meta["ddim_time_pairs_50_steps"]


def test_time_pairs_release_convention():
    pairs = ddim_time_pairs(250)
    assert len(pairs) == 250
    assert pairs[0] == (999, 995) and pairs[1] == (995, 991)
    assert pairs[-1] == (3, -1)  # the last step, to x0, is included (the release skips it)
    assert ddim_time_pairs(1) == [(999, -1)]
    with pytest.raises(ValueError):
        ddim_time_pairs(0)


def test_time_pairs_are_the_release_float32_ones():
    """The release computes the pairs with torch.linspace in float32; float64 differs by one
    timestep for 139 step counts between 1 and 1000, the first at S = 26 (498 here, 499 in
    float64).  Pinned so a change of either side shows."""
    changed = []
    for steps in range(1, 1001):
        pairs = ddim_time_pairs(steps)
        times = [t for t, _ in pairs] + [pairs[-1][1]]
        assert len(pairs) == steps and times[0] == 999 and times[-1] == -1
        assert all(a > b for a, b in zip(times, times[1:]))
        float64 = [int(v) for v in np.linspace(-1, 999, steps + 1)[::-1]]
        if times != float64:
            changed.append(steps)
    assert len(changed) == 139 and changed[:4] == [26, 38, 52, 60]
    assert (537, 498) in ddim_time_pairs(26) and (498, 460) in ddim_time_pairs(26)


def test_ddim_step_by_hand():
    a = cosine_alphas_cumprod()
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3)
    eps = torch.randn(2, 4, 3, 3)
    z = torch.randn(2, 4, 3, 3)
    t, tn, eta = 500, 400, 0.7
    at, an = a[t].double(), a[tn].double()
    x0 = ((x.double() - (1 - at).sqrt() * eps.double()) / at.sqrt()).clamp(-1, 1)
    sigma = eta * ((1 - at / an) * (1 - an) / (1 - at)).sqrt()
    want = an.sqrt() * x0 + (1 - an - sigma**2).sqrt() * eps.double() + sigma * z.double()
    got, got_x0 = ddim_step(x, eps, t, tn, a, eta=eta, noise=z)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert torch.allclose(got_x0.double(), x0, atol=1e-5)
    # η = 0 ignores the noise; the last step returns the clamped x0
    assert torch.equal(ddim_step(x, eps, t, tn, a, eta=0.0, noise=z)[0], ddim_step(x, eps, t, tn, a, eta=0.0)[0])
    last, x0_last = ddim_step(x, eps, 3, -1, a, eta=1.0, noise=z)
    assert torch.equal(last, x0_last) and last.abs().max() <= 1


def test_q_sample_endpoints():
    a = cosine_alphas_cumprod()
    x0 = torch.rand(1, 3, 4, 4)
    n = torch.randn_like(x0)
    assert torch.equal(q_sample(x0, -1, a, n), x0)
    assert torch.allclose(q_sample(x0, 999, a, n), n, atol=0.05)
