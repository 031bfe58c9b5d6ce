import math

import pytest
import torch
import torch.nn.functional as F

from kd.losses import distillation_loss, kd_loss


def _softmax(v, t):
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def test_distillation_loss_matches_hand_computation():
    s, t, T = [1.0, 2.0, 3.0], [3.0, 1.0, 0.0], 2.0
    p_t, p_s = _softmax(t, T), _softmax(s, T)
    expected = -sum(a * math.log(b) for a, b in zip(p_t, p_s)) * T * T
    got = distillation_loss(torch.tensor([s]), torch.tensor([t]), T)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_is_batch_mean():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    t = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    each = [distillation_loss(s[i:i + 1], t[i:i + 1], 4.0).item() for i in range(2)]
    assert distillation_loss(s, t, 4.0).item() == pytest.approx(sum(each) / 2, rel=1e-6)


def test_t_squared_keeps_gradient_magnitude_comparable():
    torch.manual_seed(0)
    teacher, start = torch.randn(64, 10) * 3, torch.randn(64, 10) * 3
    norms = {}
    for T in (4.0, 8.0, 16.0, 32.0, 64.0):
        student = start.clone().requires_grad_()
        distillation_loss(student, teacher, T).backward()
        norms[T] = student.grad.norm().item()
    # With T^2 the gradient tends to a constant as T grows; without it, it would fall 4x per doubling.
    for lo, hi in ((8.0, 16.0), (16.0, 32.0), (32.0, 64.0)):
        assert 0.8 < norms[hi] / norms[lo] < 1.25, norms


def test_alpha_zero_is_cross_entropy_and_needs_no_teacher():
    s, y = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([0])
    assert kd_loss(s, None, y, alpha=0.0, temperature=4.0).item() == pytest.approx(F.cross_entropy(s, y).item())


def test_alpha_one_is_pure_distillation():
    s, t, y = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([[0.0, 3.0, 1.0]]), torch.tensor([0])
    assert kd_loss(s, t, y, alpha=1.0, temperature=3.0).item() == pytest.approx(distillation_loss(s, t, 3.0).item())


def test_alpha_weights_the_distillation_term():
    s, t, y = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([[0.0, 3.0, 1.0]]), torch.tensor([0])
    soft, hard = distillation_loss(s, t, 4.0).item(), F.cross_entropy(s, y).item()
    assert kd_loss(s, t, y, alpha=0.2, temperature=4.0).item() == pytest.approx(0.2 * soft + 0.8 * hard)


def test_alpha_above_zero_without_teacher_is_an_error():
    with pytest.raises(ValueError, match="teacher"):
        kd_loss(torch.zeros(1, 3), None, torch.tensor([0]), alpha=0.5, temperature=2.0)
