import math

import pytest
import torch
import torch.nn.functional as F

from kd.losses import cross_entropy, distillation_loss, kd_loss


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


def test_members_on_a_leading_axis_equal_each_member_alone():
    """[N, B, K] logits with per-member alpha and T: member i's loss is kd_loss of its own slice."""
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(3, 5, 4, generator=g) * 2, torch.randn(3, 5, 4, generator=g) * 2
    y = torch.randint(0, 4, (3, 5), generator=g)
    alpha, temp = torch.tensor([0.0, 0.3, 1.0]), torch.tensor([1.0, 2.0, 8.0])
    together = kd_loss(s, t, y, alpha, temp)
    assert together.shape == (3,)
    for i in range(3):
        alone = kd_loss(s[i], t[i], y[i], alpha[i].item(), temp[i].item())
        assert together[i].item() == pytest.approx(alone.item(), rel=1e-6)


def test_kd_loss_by_hand_on_two_examples():
    """alpha 0.25, T 2, two examples of three classes, every term written out."""
    s, t, y = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]], [0, 2]
    soft = sum(-sum(a * math.log(b) for a, b in zip(_softmax(t[i], 2.0), _softmax(s[i], 2.0))) for i in range(2)) / 2
    hard = sum(-math.log(_softmax(s[i], 1.0)[y[i]]) for i in range(2)) / 2
    expected = 0.25 * 4.0 * soft + 0.75 * hard
    got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 0.25, 2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_weighted_cross_entropy_is_torchs():
    g = torch.Generator().manual_seed(0)
    z, y, w = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0]), torch.tensor([0.5, 2.0, 1.0])
    assert cross_entropy(z, y, w).item() == pytest.approx(F.cross_entropy(z, y, weight=w).item(), rel=1e-6)
    assert cross_entropy(z, y).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-6)


def test_without_teacher_logits_every_member_trains_on_labels():
    s, y = torch.randn(2, 4, 3), torch.tensor([[0, 1, 2, 0], [1, 1, 0, 2]])
    assert torch.allclose(kd_loss(s, None, y, torch.tensor([0.5, 0.0]), 2.0), cross_entropy(s, y))
