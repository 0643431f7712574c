"""Solvers: DDIM as the release's update, DPM-Solver++(2M) by hand and by its order of accuracy on
a case with a known answer (Gaussian data, exact ε), and the option checks."""
import math

import pytest
import torch

from reference_ddim import ddim_step
from src_models.sampling.schedule import cosine_alphas_cumprod, ddim_time_pairs
from src_models.sampling.solvers import SOLVERS, check_solver, make_solver

A = cosine_alphas_cumprod()


def test_ddim_solver_is_the_release_update():
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 4, 6, 6, generator=g) for _ in range(3))
    pairs = ddim_time_pairs(10)
    for eta in (0.0, 1.0, 0.3):
        solver = make_solver("ddim", A, pairs, eta)
        for t, t_next in pairs[:2] + pairs[-1:]:
            want, want_x0 = ddim_step(x, eps, t, t_next, A, eta=eta, noise=z)
            got, got_x0, state = solver.step(x, eps, t, t_next, {}, z if solver.needs_noise(t_next) else None)
            # from t = 999 with η > 0, c = √(1 - ᾱ_next - σ²) cancels almost to 0: in float32 (the
            # release, ddim_step) it is good to about 3e-4, with host floats to 1e-8
            atol = 1e-3 if (t == 999 and eta > 0) else 1e-5
            assert torch.allclose(got, want, atol=atol, rtol=1e-5) and torch.allclose(got_x0, want_x0, atol=1e-6)
            assert state == {}
    assert make_solver("ddim", A, pairs).eta == 1.0  # the release's η by default
    assert not make_solver("ddim", A, pairs, 0.0).needs_noise(500) and not make_solver("ddim", A, pairs).needs_noise(-1)
    with pytest.raises(ValueError, match="needs noise"):
        make_solver("ddim", A, pairs, 1.0).step(x, eps, 999, 899, {}, None)


def test_dpmpp_2m_by_hand():
    g = torch.Generator().manual_seed(1)
    x, eps, x0_prev = (torch.randn(3, 5, 5, generator=g) * 0.3 for _ in range(3))
    pairs = ddim_time_pairs(20)
    solver = make_solver("dpmpp-2m", A, pairs)
    (t0, t1), (_, t2) = pairs[0], pairs[1]

    def lam(t):
        return 0.5 * math.log(float(A[t]) / (1 - float(A[t])))

    # first level: first order, which for an unclamped x0 is DDIM with η = 0
    a0 = float(A[t0])
    eps0 = (x - math.sqrt(a0) * x0_prev) / math.sqrt(1 - a0)  # an ε whose x0 is x0_prev, inside [-1, 1]
    state = solver.init(x)
    got, x0, state = solver.step(x, eps0, t0, t1, state, None)
    ddim, _ = ddim_step(x, eps0, t0, t1, A, eta=0.0)
    assert torch.allclose(x0, x0_prev, atol=1e-2) and torch.allclose(got, ddim, atol=1e-4)
    assert torch.equal(state["x0"], x0)
    # second level: the multistep update with the previous level's x0
    got, x0, _ = solver.step(x, eps, t1, t2, {"x0": x0_prev}, None)
    a1, a2 = float(A[t1]), float(A[t2])
    h, h_prev = lam(t2) - lam(t1), lam(t1) - lam(t0)
    r = h_prev / h
    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    want = math.sqrt((1 - a2) / (1 - a1)) * x - math.sqrt(a2) * (math.exp(-h) - 1) * d
    assert torch.allclose(got, want, atol=1e-5)
    last, x0_last, _ = solver.step(x, eps, pairs[-1][0], -1, {"x0": x0_prev}, None)
    assert torch.equal(last, x0_last)  # the chain ends on x0


def _solve(name: str, steps: int, x_T: torch.Tensor, s: float) -> torch.Tensor:
    """Run a solver with the exact ε of data ~ N(0, s²): E[ε | x_t] = √(1-ᾱ) x_t / (ᾱ s² + 1 - ᾱ)."""
    pairs = ddim_time_pairs(steps)
    solver = make_solver(name, A, pairs, 0.0)
    x, state = x_T.clone(), solver.init(x_T)
    for t, t_next in pairs:
        a = float(A[t])
        x, _, state = solver.step(x, math.sqrt(1 - a) * x / (a * s * s + 1 - a), t, t_next, state, None)
    return x


def test_dpmpp_2m_is_second_order_where_ddim_is_first():
    """Along the probability-flow ODE of Gaussian data x_t / std_t is constant, so the clean end of
    the chain is known exactly.  DPM-Solver++(2M) converges about twice as fast in the number of
    steps as DDIM (η = 0) and is far closer at 20 steps."""
    s = 0.25  # |x0| < 1: the clamp stays out of the way
    x_T = torch.randn(4096, generator=torch.Generator().manual_seed(0)).clamp(-3, 3)
    a_T = float(A[999])
    exact = x_T * s / math.sqrt(a_T * s * s + 1 - a_T)

    def err(name, steps):
        return (_solve(name, steps, x_T, s) - exact).abs().max().item()

    assert err("dpmpp-2m", 20) < 0.5 * err("ddim", 20)
    assert err("dpmpp-2m", 25) / err("dpmpp-2m", 50) > 6  # second order: about 2² or more per halving
    assert err("ddim", 25) / err("ddim", 50) < 2.5  # first order: about 2


def test_option_checks():
    assert set(SOLVERS) == {"ddim", "dpmpp-2m"}
    assert check_solver("ddim") == 1.0 and check_solver("ddim", 0.5) == 0.5 and check_solver("dpmpp-2m") == 0.0
    assert SOLVERS["dpmpp-2m"].default_steps == 20 and SOLVERS["ddim"].default_steps is None
    for name, eta, match in (("euler", None, "unknown solver 'euler'"), ("ddim", -1, ">= 0"),
                             ("ddim", float("nan"), ">= 0"), ("dpmpp-2m", 1.0, "deterministic")):
        with pytest.raises(ValueError, match=match):
            check_solver(name, eta)
