import numpy as np
import pytest
import torch

from src_models import sampler as sampler_mod
from src_models.guidance import LABEL_MAP, PER_CLASS
from src_models.plan import parallel_plan, sequential_window
from src_models.sampler import Cancelled, SampleStats, sample_area
from src_models.schedule import cosine_alphas_cumprod, ddim_time_pairs

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
def test_parallel_plan_tiles_exactly_once(h, w, size):
    rng = np.random.default_rng(3)
    offsets = set()
    for _ in range(20):
        plan = parallel_plan(h, w, size, rng)
        cover = np.zeros((h, w), int)
        for win in plan:
            assert 0 <= win.y <= h - size and 0 <= win.x <= w - size  # never leaves the area
            assert win.y <= win.cy0 < win.cy1 <= win.y + size and win.x <= win.cx0 < win.cx1 <= win.x + size
            cover[win.cy0 : win.cy1, win.cx0 : win.cx1] += 1
        assert (cover == 1).all()
        offsets.add((plan[0].cy1, plan[0].cx1))
    assert len(offsets) > 1  # the grid moves between levels


def test_sequential_window_picks_lowest_count():
    counts = np.ones((20, 20), int)
    counts[15, 3] = 0
    win, level = sequential_window(counts, np.ones_like(counts, bool), 8, np.random.default_rng(0))
    assert level == 0 and (win.y, win.x) == (11, 0)  # centred on (15, 3), clamped inside


def _run(net, schedule="parallel", seed=0, steps=4, h=24, w=40, size=16, **kw):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((3, h, w), generator=g)
    mask = torch.zeros((1, h, w), dtype=torch.long)
    mask[:, :, w // 2 :] = 1
    mask[:, h // 2 :, :] = 2
    stats = SampleStats()
    out = sample_area(net, noise, mask, ALPHAS, ddim_time_pairs(steps), torch.tensor([0.0, 3.0, 3.0, 3.0]),
                      window=size, schedule=schedule, generator=g, rng=np.random.default_rng(seed), stats=stats, **kw)
    return out, stats


def test_every_pixel_written_once_per_level_from_that_level_only(monkeypatch):
    grids = []
    real = sampler_mod.grid_plan

    def spy(*a, **k):
        grids.append(real(*a, **k))
        return grids[-1]

    monkeypatch.setattr(sampler_mod, "grid_plan", spy)
    net = ConvNet()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((3, 24, 40), generator=g)
    levels = []
    mask = torch.ones((1, 24, 40), dtype=torch.long)
    sample_area(net, noise.clone(), mask, ALPHAS, ddim_time_pairs(3), torch.tensor([0.0, 3.0, 3.0, 3.0]), window=16,
                generator=g, callback=lambda info: levels.append(info.x0.clone()))
    assert len(grids) == 3 and len(levels) == 3
    plans = [g.windows() for g in grids]
    for grid, plan in zip(grids, plans):
        cover = np.zeros((24, 40), int)
        for win in plan:
            cover[win.cy0 : win.cy1, win.cx0 : win.cx1] += 1
        assert (cover == 1).all()
        # the scatter map sends each pixel to exactly the window whose cell holds it
        owner, ly, lx = grid.owners()
        ys, xs = np.mgrid[0:24, 0:40]
        wy, wx = grid.starts()
        assert (wy[owner] + ly == ys).all() and (wx[owner] + lx == xs).all()
        for i, win in enumerate(plan):
            assert (owner[win.cy0 : win.cy1, win.cx0 : win.cx1] == i).all()
    # level 1: every window (cond and null rows) is a crop of the starting noise, unchanged by
    # the other windows of the level
    first = torch.cat(net.inputs[: 1])[: 2 * len(plans[0])]
    for i, win in enumerate(plans[0]):
        crop = noise[:, win.y : win.y + 16, win.x : win.x + 16]
        assert torch.equal(first[2 * i], crop) and torch.equal(first[2 * i + 1], crop)


@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_same_seed_same_output(schedule):
    a, _ = _run(ConvNet(), schedule, seed=5)
    b, _ = _run(ConvNet(), schedule, seed=5)
    c, _ = _run(ConvNet(), schedule, seed=6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.abs().max() <= 1.0  # the last step returns the clamped x0


def test_sequential_finishes_every_pixel_and_parallel_needs_fewer_forwards():
    # on an area of 4x4 windows; on tiny areas the shifted grid can cut more cells
    _, par = _run(ConvNet(PER_CLASS), "parallel", steps=5, h=64, w=64)
    _, seq = _run(ConvNet(PER_CLASS), "sequential", steps=5, h=64, w=64)
    assert len(par.windows_per_level) == len(seq.windows_per_level) == 5
    assert par.forwards < seq.forwards, (par.forwards, seq.forwards)


def test_context_is_kept_and_fed_renoised():
    h, w = 24, 40
    known = torch.zeros(h, w, dtype=torch.bool)
    known[:, :12] = True
    context = torch.rand(3, h, w) * 2 - 1
    for schedule in ("parallel", "sequential"):
        out, _ = _run(ConvNet(), schedule, context=context, known=known)
        assert torch.equal(out[:, known], context[:, known])
        free, _ = _run(ConvNet(), schedule)
        assert not torch.allclose(out[:, ~known], free[:, ~known])  # the context changed the rest


def test_cancel_raises():
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        _run(ConvNet(), "parallel", steps=6, cancel=cancel)
