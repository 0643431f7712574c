import dataclasses

import numpy as np
import pytest
import torch

import src_models.sampling.plan as plan_mod
from src_models.sampling.guidance import LABEL_MAP, PER_CLASS
from src_models.sampling.plan import PLANS, grid_plan, grid_windows, release_plan, sequential_window
from src_models.sampling.sampler import Cancelled, SampleStats, sample_area
from src_models.sampling.schedule import cosine_alphas_cumprod, ddim_time_pairs
from src_models.sampling.solvers import SOLVERS

ALPHAS = cosine_alphas_cumprod()


class ConvNet(torch.nn.Module):
    """A small random conv denoiser that sees the mask (values matter, not quality)."""

    def __init__(self, conditioning=LABEL_MAP, channels=3, classes=4):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conditioning = conditioning
        self.classes = classes
        self.conv = torch.nn.Conv2d(channels + classes, channels, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.inputs = []

    def forward(self, x, t, mask):
        self.inputs.append(x.clone())
        k = mask.shape[-1] // x.shape[-1]
        m = mask[..., ::k, ::k]
        oh = torch.nn.functional.one_hot(m[:, 0], self.classes).permute(0, 3, 1, 2).float()
        return self.conv(torch.cat([x, oh], 1))


@pytest.mark.parametrize("h,w,size", [(40, 56, 16), (16, 16, 16), (33, 70, 8), (64, 64, 32)])
def test_grid_plan_tiles_exactly_once(h, w, size):
    rng = np.random.default_rng(3)
    offsets = set()
    for _ in range(20):
        plan = grid_windows(h, w, size, rng)
        cover = np.zeros((h, w), int)
        for win in plan:
            assert 0 <= win.y <= h - size and 0 <= win.x <= w - size  # never leaves the area
            assert win.y <= win.cy0 < win.cy1 <= win.y + size and win.x <= win.cx0 < win.cx1 <= win.x + size
            cover[win.cy0 : win.cy1, win.cx0 : win.cx1] += 1
        assert (cover == 1).all()
        offsets.add((plan[0].cy1, plan[0].cx1))
        if h == size and w == size:  # cells that share their window are one cell: one window, not four
            assert len(plan) == 1
    assert len(offsets) > 1 or (h, w) == (size, size)  # the grid moves between levels


def test_sequential_window_picks_lowest_count():
    counts = np.ones((20, 20), int)
    counts[15, 3] = 0
    win, level = sequential_window(counts, np.ones_like(counts, bool), 8, np.random.default_rng(0))
    assert level == 0 and (win.y, win.x) == (11, 0)  # centred on (15, 3), clamped inside


class PerRow(ConvNet):
    """The same network run one window at a time: its outputs do not depend on the batch."""

    def forward(self, x, t, mask):
        return torch.cat([ConvNet.forward(self, x[i : i + 1], t[i : i + 1], mask[i : i + 1]) for i in range(len(x))])


def _run(net, plan="grid", seed=0, steps=4, h=24, w=40, size=16, **kw):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((3, h, w), generator=g)
    mask = torch.zeros((1, h, w), dtype=torch.long)
    mask[:, :, w // 2 :] = 1
    mask[:, h // 2 :, :] = 2
    stats = SampleStats()
    out = sample_area(net, noise, mask, ALPHAS, ddim_time_pairs(steps), torch.tensor([0.0, 3.0, 3.0, 3.0]),
                      window=size, plan=plan, generator=g, rng=np.random.default_rng(seed), stats=stats, **kw)
    return out, stats


@pytest.mark.parametrize("h,w,size", [(40, 56, 16), (16, 16, 16), (33, 70, 8)])
def test_release_plan_writes_every_eligible_pixel_once_with_the_first_window_over_it(h, w, size):
    rng = np.random.default_rng(4)
    eligible = np.ones((h, w), bool)
    eligible[: h // 3, : w // 2] = False  # known content: never written, never a window centre
    for elig in (None, eligible):
        plan = release_plan(h, w, size, rng, elig)
        wy, wx = plan.starts()
        assert ((0 <= wy) & (wy <= h - size) & (0 <= wx) & (wx <= w - size)).all()
        first = np.full((h, w), -1)
        for i in range(len(plan)):
            block = first[wy[i] : wy[i] + size, wx[i] : wx[i] + size]
            block[block < 0] = i
        if elig is not None:
            first[~elig] = -1
        owner = plan.owner_in(0, h, 0, w)
        assert np.array_equal(owner, first)
        assert ((owner >= 0) == (np.ones((h, w), bool) if elig is None else elig)).all()
        assert len(np.unique(owner[owner >= 0])) == len(plan)  # every window writes something
        assert np.array_equal(plan.owner_in(3, h - 2, 5, w - 1), owner[3 : h - 2, 5 : w - 1])


def test_release_plan_places_windows_as_the_release_loop_does():
    """The batched plan's windows are the ones the counter loop of the release picks, in order."""
    h, w, size = 30, 44, 8
    eligible = np.ones((h, w), bool)
    eligible[10:20, 5:15] = False
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    counts = np.zeros((h, w), int)
    for level in range(3):
        plan = release_plan(h, w, size, rng_a, eligible)
        picked = []
        while (counts[eligible] == level).any():
            win, lowest = sequential_window(counts, eligible, size, rng_b)
            assert lowest == level
            picked.append((win.y, win.x))
            sub = (slice(win.y, win.y + size), slice(win.x, win.x + size))
            counts[sub] += (counts[sub] == level) & eligible[sub]
        assert picked == list(zip(*(a.tolist() for a in plan.starts())))


def test_grid_owner_map_matches_its_cells():
    plan = grid_plan(24, 40, 16, np.random.default_rng(2))
    owner, ly, lx = plan.owners()
    ys, xs = np.mgrid[0:24, 0:40]
    wy, wx = plan.starts()
    assert (wy[owner] + ly == ys).all() and (wx[owner] + lx == xs).all()
    for i, win in enumerate(plan.windows()):
        assert (owner[win.cy0 : win.cy1, win.cx0 : win.cx1] == i).all()
    assert np.array_equal(plan.owner_in(5, 20, 7, 33), owner[5:20, 7:33])


def test_every_pixel_written_once_per_level_from_that_level_only(monkeypatch):
    grids = []
    info = plan_mod.PLANS["grid"]

    def spy(*a, **k):
        grids.append(info.build(*a, **k))
        return grids[-1]

    monkeypatch.setitem(plan_mod.PLANS, "grid", dataclasses.replace(info, build=spy))
    net = ConvNet()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((3, 24, 40), generator=g)
    levels = []
    mask = torch.ones((1, 24, 40), dtype=torch.long)
    sample_area(net, noise.clone(), mask, ALPHAS, ddim_time_pairs(3), torch.tensor([0.0, 3.0, 3.0, 3.0]), window=16,
                generator=g, callback=lambda info: levels.append(info.x0.clone()))
    assert len(grids) == 3 and len(levels) == 3
    for grid in grids:
        cover = np.zeros((24, 40), int)
        for win in grid.windows():
            cover[win.cy0 : win.cy1, win.cx0 : win.cx1] += 1
        assert (cover == 1).all()
    # level 1: every window (cond and null rows) is a crop of the starting noise, unchanged by
    # the other windows of the level
    plan = grids[0].windows()
    first = net.inputs[0][: 2 * len(plan)]
    for i, win in enumerate(plan):
        crop = noise[:, win.y : win.y + 16, win.x : win.x + 16]
        assert torch.equal(first[2 * i], crop) and torch.equal(first[2 * i + 1], crop)


@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_same_seed_same_output(plan, solver):
    a, _ = _run(ConvNet(), plan, seed=5, solver=solver)
    b, _ = _run(ConvNet(), plan, seed=5, solver=solver)
    c, _ = _run(ConvNet(), plan, seed=6, solver=solver)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.abs().max() <= 1.0  # the last step returns the clamped x0


@pytest.mark.parametrize("solver,eta", [("ddim", 0.0), ("ddim", 1.0), ("dpmpp-2m", 0.0)])
@pytest.mark.parametrize("conditioning", [LABEL_MAP, PER_CLASS])
def test_release_plan_batched_equals_the_sequential_loop(solver, eta, conditioning):
    """The release's distribution, batched: the same latents as the one-window loop.  Exactly with
    a network whose output does not depend on the batch; within float32 round-off with one that
    does (a conv over a batch of windows, amplified at t = 999 where x0 = (x - √(1-ᾱ)ε)/√ᾱ)."""
    kw = dict(solver=solver, eta=eta, h=40, w=56, steps=5)
    rel, rel_stats = _run(PerRow(conditioning), "release", **kw)
    seq, seq_stats = _run(PerRow(conditioning), "sequential", **kw)
    assert torch.equal(rel, seq)
    assert rel_stats.windows_per_level == seq_stats.windows_per_level
    if conditioning == LABEL_MAP:
        assert rel_stats.forwards == seq_stats.forwards
    else:  # a label guides only its own pixels: the batched plan skips labels a window does not write
        assert rel_stats.forwards < seq_stats.forwards
    batched, _ = _run(ConvNet(conditioning), "release", **kw)
    assert (batched - seq).abs().max() < 2e-3
    assert not torch.equal(rel, _run(PerRow(conditioning), "release", **{**kw, "steps": 4})[0])


def test_release_equals_sequential_with_context():
    h, w = 40, 56
    known = torch.zeros(h, w, dtype=torch.bool)
    known[:, :20] = True
    context = torch.rand(3, h, w, generator=torch.Generator().manual_seed(2)) * 2 - 1
    for solver in SOLVERS:
        rel, _ = _run(PerRow(), "release", h=h, w=w, context=context, known=known, solver=solver)
        seq, _ = _run(PerRow(), "sequential", h=h, w=w, context=context, known=known, solver=solver)
        assert torch.equal(rel, seq)


def test_grid_needs_fewer_forwards_than_the_release_plan():
    # on an area of 4x4 windows; on tiny areas the shifted grid can cut more cells
    _, grid = _run(ConvNet(PER_CLASS), "grid", steps=5, h=64, w=64)
    _, rel = _run(ConvNet(PER_CLASS), "release", steps=5, h=64, w=64)
    _, seq = _run(ConvNet(PER_CLASS), "sequential", steps=5, h=64, w=64)
    assert len(grid.windows_per_level) == len(rel.windows_per_level) == len(seq.windows_per_level) == 5
    assert sum(grid.windows_per_level) < sum(rel.windows_per_level) == sum(seq.windows_per_level)
    assert grid.forwards < rel.forwards <= seq.forwards, (grid.forwards, rel.forwards, seq.forwards)


@pytest.mark.parametrize("plan", list(PLANS))
def test_context_is_kept_and_fed_renoised(plan):
    h, w = 24, 40
    known = torch.zeros(h, w, dtype=torch.bool)
    known[:, :12] = True
    context = torch.rand(3, h, w) * 2 - 1
    out, _ = _run(ConvNet(), plan, context=context, known=known)
    assert torch.equal(out[:, known], context[:, known])
    free, _ = _run(ConvNet(), plan)
    assert not torch.allclose(out[:, ~known], free[:, ~known])  # the context changed the rest


@pytest.mark.parametrize("plan", list(PLANS))
def test_cancel_raises(plan):
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        _run(ConvNet(), plan, steps=6, cancel=cancel)
    assert calls["n"] == 3


def test_unknown_plan_solver_or_eta_is_refused():
    with pytest.raises(ValueError, match="unknown plan 'parallel'"):
        _run(ConvNet(), "parallel")
    with pytest.raises(ValueError, match="unknown solver 'euler'"):
        _run(ConvNet(), solver="euler")
    with pytest.raises(ValueError, match="deterministic"):
        _run(ConvNet(), solver="dpmpp-2m", eta=1.0)


class PointNet(torch.nn.Module):
    """A pointwise denoiser (ε depends on each pixel alone): every plan, whatever its windows and
    however it fuses them, must give the same latents as denoising the whole area at once."""

    conditioning = LABEL_MAP

    def forward(self, x, t, mask):
        return torch.tanh(x) * 0.5 + (t.view(-1, 1, 1, 1).float() / 1000) * 0.1


@pytest.mark.parametrize("plan", ["grid", "release", "tiled", "average"])
def test_pointwise_denoiser_gives_the_same_latents_under_every_batched_plan(plan):
    ref, _ = _run(PointNet(), "grid", seed=3)
    out, _ = _run(PointNet(), plan, seed=3)
    assert torch.allclose(out, ref, atol=1e-6)


def test_tiled_plan_is_fixed_and_average_plan_overlaps_by_half():
    a = plan_mod.tiled_plan(40, 40, 16, np.random.default_rng(0))
    b = plan_mod.tiled_plan(40, 40, 16, np.random.default_rng(1))
    assert [(w.y, w.x) for w in a.windows()] == [(w.y, w.x) for w in b.windows()]  # no random offset
    assert (a.owner_in(0, 40, 0, 40) >= 0).all()
    av = plan_mod.average_plan(40, 40, 16, np.random.default_rng(0))
    wy, wx = av.starts()
    assert sorted(set(wy.tolist())) == [0, 8, 16, 24] and wy.max() + 16 == 40
    # a conv net (values depend on neighbours) gives different latents with mean fusion than with owners
    out_avg, _ = _run(ConvNet(), "average", seed=3)
    out_tiled, _ = _run(ConvNet(), "tiled", seed=3)
    assert not torch.allclose(out_avg, out_tiled)


def test_resampling_reruns_levels_only_where_there_is_context():
    known = torch.zeros((24, 40), dtype=torch.bool)
    known[:, :20] = True
    ctx = torch.randn((3, 24, 40), generator=torch.Generator().manual_seed(9)).clamp(-1, 1)
    once, s1 = _run(ConvNet(), "grid", seed=2, context=ctx, known=known)
    thrice, s3 = _run(ConvNet(), "grid", seed=2, context=ctx, known=known, resample=3)
    assert torch.equal(thrice[:, known], ctx[:, known])  # the context is kept
    assert not torch.allclose(once, thrice)
    # every level but the last (which ends at x0) runs three times
    assert s3.forwards == s1.forwards + 2 * sum(s1.forwards_per_level[:-1])
    # without context there is nothing to harmonise with: resampling changes nothing
    plain, p1 = _run(ConvNet(), "grid", seed=2)
    plain3, p3 = _run(ConvNet(), "grid", seed=2, resample=3)
    assert torch.equal(plain, plain3) and p1.forwards == p3.forwards


@pytest.mark.parametrize("conditioning", [LABEL_MAP, PER_CLASS])
def test_guidance_below_guides_only_the_cleaner_levels(conditioning):
    """Levels with t >= guidance_below run with ω 0 (for a whole-map model its map pass alone);
    the levels below are guided as usual.  1000 is every level, 0 none."""
    steps = 6
    pairs = ddim_time_pairs(steps)
    limit = 500
    noisy = sum(t >= limit for t, _ in pairs)
    assert 0 < noisy < steps
    guided, g_stats = _run(ConvNet(conditioning), steps=steps)
    every, e_stats = _run(ConvNet(conditioning), steps=steps, guidance_below=1000)
    assert torch.equal(guided, every) and g_stats.forwards == e_stats.forwards
    limited, l_stats = _run(ConvNet(conditioning), steps=steps, guidance_below=limit)
    none, n_stats = _run(ConvNet(conditioning), steps=steps, guidance_below=0)
    assert not torch.allclose(limited, guided) and not torch.allclose(limited, none)
    per_level = g_stats.forwards_per_level
    if conditioning == LABEL_MAP:  # one pass per window, not two, where unguided
        assert l_stats.forwards_per_level == [n // 2 if t >= limit else n for n, (t, _) in zip(per_level, pairs)]
        assert n_stats.forwards == g_stats.forwards // 2
    else:  # per-class passes: ω 0 changes the arithmetic only
        assert l_stats.forwards == g_stats.forwards
    # ω 0 everywhere is what guidance_below 0 does
    unguided = _zero_omega_run(ConvNet(conditioning), steps=steps)
    assert torch.allclose(none, unguided, atol=1e-6)


class _TimedNet(ConvNet):
    """ConvNet that records the timesteps it is called at; ``seed`` gives it weights of its own."""

    def __init__(self, conditioning, seed):
        super().__init__(conditioning)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.ts = set()

    def forward(self, x, t, mask):
        self.ts.update(t.tolist())
        return super().forward(x, t, mask)


@pytest.mark.parametrize("conditioning", [LABEL_MAP, PER_CLASS])
def test_a_student_runs_the_guided_levels_in_one_pass_and_the_teacher_the_rest(conditioning):
    steps, limit = 6, 500
    pairs = ddim_time_pairs(steps)
    teacher, student = _TimedNet(conditioning, 5), _TimedNet(conditioning, 6)
    zero = torch.zeros(4)  # a run with a student samples at ω 0: the student's guidance is learnt
    out, stats = _run(teacher, steps=steps, guidance_below=limit, student=student)
    assert teacher.ts == {t for t, _ in pairs if t >= limit} and student.ts == {t for t, _ in pairs if t < limit}
    plain, p_stats = _run(_TimedNet(conditioning, 5), steps=steps, guidance_below=0)  # teacher at ω 0 throughout
    if conditioning == LABEL_MAP:  # one pass per window at every level
        assert stats.forwards == p_stats.forwards
    assert not torch.allclose(out, plain)
    # with the student at every level it is a plain ω-0 run of the student
    every, _ = _run(_TimedNet(conditioning, 5), steps=steps, guidance_below=1000, student=_TimedNet(conditioning, 6))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((3, 24, 40), generator=g)
    mask = torch.zeros((1, 24, 40), dtype=torch.long)
    mask[:, :, 20:] = 1
    mask[:, 12:, :] = 2
    alone = sample_area(_TimedNet(conditioning, 6), noise, mask, ALPHAS, pairs, zero, window=16, plan="grid",
                        generator=g, rng=np.random.default_rng(0))
    assert torch.allclose(every, alone, atol=1e-6)


def _zero_omega_run(net, steps):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((3, 24, 40), generator=g)
    mask = torch.zeros((1, 24, 40), dtype=torch.long)
    mask[:, :, 20:] = 1
    mask[:, 12:, :] = 2
    return sample_area(net, noise, mask, ALPHAS, ddim_time_pairs(steps), torch.zeros(4), window=16, plan="grid",
                       generator=g, rng=np.random.default_rng(0))
