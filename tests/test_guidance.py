import torch

from src_models.sampling.guidance import (ALL_LABELS, LABEL_MAP, PER_CLASS, count_forwards, free_labels, guided_eps,
                                         omega_vector, window_labels)


class MaskEcho(torch.nn.Module):
    """ε = 0.5·x + (the conditioning mask, as floats): makes every pass visible in the output."""

    def __init__(self, conditioning):
        super().__init__()
        self.conditioning = conditioning
        self.calls = []

    def forward(self, x, t, mask):
        self.calls.append(x.shape[0])
        return 0.5 * x + mask.float()


def _batch():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 4)
    mask = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    mask[0, :, :2] = 1
    mask[0, :, 2:] = 3
    mask[1] = 2
    # window 2 is all unknown (label 0)
    return x, mask


def test_per_class_guidance_by_hand():
    x, mask = _batch()
    omega = omega_vector(4, 3.0, {3: 6.0})
    net = MaskEcho(PER_CLASS)
    eps = guided_eps(net, x, torch.full((3,), 500), mask, omega)
    # null = 0.5x; label l pass = 0.5x + l on its pixels -> guided = 0.5x + (ω_l + 1)·l there
    want = 0.5 * x.clone()
    want[0, :, :2] += (3 + 1) * 1
    want[0, :, 2:] += (6 + 1) * 3
    want[1] += (3 + 1) * 2
    assert torch.allclose(eps, want)
    assert sum(net.calls) == count_forwards(window_labels(mask), PER_CLASS) == 3 + 2 + 1


def test_label_map_guidance_by_hand_and_batching():
    x, mask = _batch()
    omega = omega_vector(4, 2.0)
    net = MaskEcho(LABEL_MAP)
    eps = guided_eps(net, x, torch.full((3,), 10), mask, omega)
    want = 0.5 * x + (2 + 1) * mask.float()  # one whole-map pass per window with labels
    assert torch.allclose(eps, want)
    assert count_forwards(window_labels(mask), LABEL_MAP) == 2 + 2 + 1
    small = MaskEcho(LABEL_MAP)
    eps1 = guided_eps(small, x, torch.full((3,), 10), mask, omega, max_batch=1)
    assert torch.allclose(eps, eps1) and small.calls == [1] * 5


def test_label_map_at_omega_zero_runs_no_null_pass():
    x, mask = _batch()
    guided, skipping = MaskEcho(LABEL_MAP), MaskEcho(LABEL_MAP)
    omega = omega_vector(4, 0.0)
    full = guided_eps(guided, x, torch.full((3,), 10), mask, omega, free=frozenset())
    eps = guided_eps(skipping, x, torch.full((3,), 10), mask, omega)  # decided from ω: all zero
    assert torch.allclose(eps, full) and torch.allclose(eps, 0.5 * x + mask.float())
    assert sum(skipping.calls) == 3 == count_forwards(window_labels(mask), LABEL_MAP, free_labels(omega, LABEL_MAP))
    assert sum(guided.calls) == 5
    # any class guided, or per-class conditioning: the null pass stays
    assert free_labels(omega_vector(4, 0.0, {2: 0.5}), LABEL_MAP) == {0, 1, 3} and not free_labels(omega, PER_CLASS)
    assert free_labels(omega, LABEL_MAP) == {0, 1, 2, 3} and free_labels(0.0, LABEL_MAP) == ALL_LABELS


def test_label_map_windows_of_unguided_classes_run_no_null_pass():
    x, mask = _batch()
    mask[2, :, :, :2] = 2  # window 2 now mixes class 2 (ω 0) with unknown
    mixed_x, mixed = x[:1].clone(), torch.ones(1, 1, 4, 4, dtype=torch.long)
    mixed[0, :, 2:] = 2  # classes 1 (ω 2) and 2 (ω 0) in one window
    x, mask = torch.cat([x, mixed_x]), torch.cat([mask, mixed])
    omega = omega_vector(4, 2.0, {2: 0.0})
    assert free_labels(omega, LABEL_MAP) == {0, 2} and free_labels(omega, PER_CLASS) == frozenset()
    assert free_labels(1.0, LABEL_MAP) == frozenset()  # one ω for all, not 0: nothing is free
    net, full = MaskEcho(LABEL_MAP), MaskEcho(LABEL_MAP)
    eps = guided_eps(net, x, torch.full((4,), 10), mask, omega)
    ref = guided_eps(full, x, torch.full((4,), 10), mask, omega, free=frozenset())
    scale = (omega + 1.0)[mask]  # per pixel: 3 where ω 2, 1 where ω 0
    want = 0.5 * x + scale * mask.float()
    assert torch.allclose(eps, want) and torch.allclose(ref, want)
    # windows 1 and 2 hold only ω-0 classes: one map pass each; windows 0 and 3 need both passes
    labels = window_labels(mask)
    assert sum(net.calls) == 6 == count_forwards(labels, LABEL_MAP, free=free_labels(omega, LABEL_MAP))
    assert sum(full.calls) == 8 == count_forwards(labels, LABEL_MAP)
    # per-class conditioning keeps every pass (each label pass is measured against the null pass)
    assert count_forwards(labels, PER_CLASS, free=frozenset({2})) == count_forwards(labels, PER_CLASS)


def test_omega_vector_rules():
    w = omega_vector(5, 3.0, {2: 0.0})
    assert w.tolist() == [0.0, 3.0, 0.0, 3.0, 3.0]
    try:
        omega_vector(3, 1.0, {7: 1.0})
    except ValueError as e:
        assert "class 7" in str(e)
    else:
        raise AssertionError("ω for a class the model does not have must be refused")
