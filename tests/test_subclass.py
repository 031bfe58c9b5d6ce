"""Subclass distillation (Mueller, Kornblith & Hinton 2020): losses by hand, planning, a run."""
import math
import tomllib

import pytest
import torch
import torch.nn.functional as F

from kd import train
from kd.config import make_config
from kd.data import Dataset
from kd.losses import class_logits, distillation_loss, kd_loss, subclass_aux_loss, subclass_teacher_loss
from sweep import plan as planner, spec


def test_class_logits_are_logsumexp_over_each_block():
    z = torch.tensor([[1.0, 2.0, 0.5, -1.0, 3.0, 0.0]])  # 2 classes x 3 subclasses, class-major
    expected = [math.log(math.exp(1) + math.exp(2) + math.exp(0.5)), math.log(math.exp(-1) + math.exp(3) + 1)]
    assert class_logits(z, 3)[0].tolist() == pytest.approx(expected)
    # softmax over classes = the summed softmax of each class's subclasses
    assert F.softmax(class_logits(z, 3), -1)[0, 0].item() == pytest.approx(F.softmax(z, -1)[0, :3].sum().item())


def test_aux_loss_by_hand_on_two_examples():
    """Two examples of D = 3 subclass logits, T_aux = 1, worked out on paper:
    z_1 = [0, 1, 2]: mean 1, std sqrt(2/3), normalised sqrt(3/2) * [-1, 0, 1];
    z_2 = [2, 2, 5]: mean 3, std sqrt(2), normalised [-1, -1, 2] / sqrt(2);
    v = normalised / sqrt(T_aux * D): G_11 = G_22 = 3 / 3 = 1, G_12 = sqrt(3/2) / sqrt(2) * (1 + 0 + 2) / 3 = sqrt(3)/2.
    L = mean_i log(e^1 + e^(sqrt(3)/2)) - 1/T_aux - log 2 (both rows have the same logsumexp).
    Normalised over the batch instead (per column: a wrong axis), G_12 would be -1."""
    expected = math.log(math.e + math.exp(math.sqrt(3) / 2)) - 1.0 - math.log(2)
    assert expected == pytest.approx(-0.06475, abs=1e-5)
    z = torch.tensor([[0.0, 1.0, 2.0], [2.0, 2.0, 5.0]])
    assert subclass_aux_loss(z, 1.0).item() == pytest.approx(expected, rel=1e-5)


def test_aux_loss_prefers_spread_subclasses():
    same = torch.tensor([[3.0, 0.0, 0.0, 0.0]] * 4)
    spread = torch.eye(4) * 3
    assert subclass_aux_loss(spread).item() < subclass_aux_loss(same).item()


def test_teacher_loss_is_class_cross_entropy_plus_beta_aux():
    z, y = torch.randn(5, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 1, 0, 1])
    ce = F.cross_entropy(class_logits(z, 3), y).item()
    assert subclass_teacher_loss(z, y, 3, beta=0.0).item() == pytest.approx(ce)
    assert subclass_teacher_loss(z, y, 3, beta=0.5).item() == pytest.approx(ce + 0.5 * subclass_aux_loss(z).item())


def test_student_loss_at_alpha_0_and_1():
    g = torch.Generator().manual_seed(1)
    s, t, y = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.tensor([1, 0, 0, 1])
    hard = F.cross_entropy(class_logits(s, 3), y).item()
    assert kd_loss(s, None, y, 0.0, 4.0, subclasses=3).item() == pytest.approx(hard)
    assert kd_loss(s, t, y, 1.0, 4.0, subclasses=3).item() == pytest.approx(
        distillation_loss(s, t, 4.0).item())  # on all C x S subclass logits, T^2 included
    mixed = kd_loss(s, t, y, 0.3, 2.0, subclasses=3).item()
    assert mixed == pytest.approx(0.3 * distillation_loss(s, t, 2.0).item() + 0.7 * hard)


def test_plan_gives_subclass_students_their_own_teacher():
    p = planner.plan(spec.load("subclass-mnist-binary"))
    by = {j.name: j for j in p.jobs}
    assert sorted(by) == ["kd-a0.5-T4-s0", "scratch-s0", "subclass-a0.5-T4-s0", "subclass-teacher-s0", "teacher-s0"]
    assert by["subclass-a0.5-T4-s0"].depends_on == (by["subclass-teacher-s0"].id,)
    assert by["kd-a0.5-T4-s0"].depends_on == (by["teacher-s0"].id,)
    assert by["subclass-teacher-s0"].config["subclasses"] == 10 and by["teacher-s0"].config["subclasses"] is None
    assert by["subclass-teacher-s0"].config["dataset"] == "mnist-5k-binary"
    assert [len(u) for u in planner.units(p)] == [1, 1, 1, 1, 1]  # one student of each kind: kd and subclass students never share a pack


def test_subclass_axis_makes_one_teacher_per_value():
    text = ('name = "t"\ndataset = "mnist-5k-binary"\nmethods = ["subclass"]\n'
            "[grid]\nalpha = [0.5]\nsubclasses = [2, 5]\n")
    names = [j.name for j in planner.plan(spec.parse(tomllib.loads(text))).jobs]
    assert names == ["subclass-teacher-subclasses2-s0", "subclass-teacher-subclasses5-s0",
                     "subclass-a0.5-T4-subclasses2-s0", "subclass-a0.5-T4-subclasses5-s0"]


def test_subclass_teacher_and_student_train_on_binary_digits(tmp_path, small):
    binary = Dataset("mnist-5k-binary", small.train_x, (small.train_y >= 5).long(), small.test_x,
                     (small.test_y >= 5).long(), 2)
    t = train.run(make_config(dataset="mnist-5k-binary", method="subclass-teacher", subclasses=5, epochs=1,
                              batch_size=100), tmp_path / "t", dataset=binary, device="cpu")
    s = train.run(make_config(dataset="mnist-5k-binary", method="subclass", subclasses=5, alpha=0.5,
                              temperature=4.0, teacher=str(tmp_path / "t"), epochs=1, batch_size=100),
                  tmp_path / "s", dataset=binary, device="cpu")
    assert t["params"] == 1_404_682  # 2 classes x 5 subclasses: 10 outputs, as the 10-class teacher
    assert s["params"] == 1_238_730  # likewise 10 outputs
    assert s["metrics"]["test_accuracy"] > 0.7  # class predictions, two classes
