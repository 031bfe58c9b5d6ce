"""Packed students and the teacher cache: faster, and the same results."""
import tomllib

import pytest
import torch

from kd import pack, teacher as kd_teacher, train
from kd.config import make_config
from sweep import plan as planner, spec


def _close(dir_a, dir_b, atol=2e-5):
    a = torch.load(dir_a / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(dir_b / "model.pt", weights_only=True)["state_dict"]
    return max((a[k] - b[k]).abs().max().item() for k in a) <= atol


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, small):
    out = tmp_path_factory.mktemp("teacher")
    train.run(make_config(method="teacher", epochs=1, batch_size=100), out, dataset=small, device="cpu")
    return out


def _students(teacher_dir, epochs=2):
    points = [(0.5, 4.0), (1.0, 2.0), (0.2, 16.0), (0.0, 1.0)]  # alpha 1 and alpha 0 edges included
    return [make_config(method="kd", alpha=a, temperature=t, teacher=str(teacher_dir), epochs=epochs, batch_size=100)
            for a, t in points]


def test_packed_students_match_students_trained_alone(tmp_path, small, teacher_dir):
    configs = _students(teacher_dir)
    solo = [train.run(c, tmp_path / f"solo{i}", dataset=small, device="cpu") for i, c in enumerate(configs)]
    packed = pack.run(configs, [tmp_path / f"p{i}" for i in range(4)], dataset=small, device="cpu")
    for i, (s, p) in enumerate(zip(solo, packed)):
        assert _close(tmp_path / f"solo{i}", tmp_path / f"p{i}"), i
        assert p["metrics"]["test_accuracy"] == s["metrics"]["test_accuracy"]
        assert p["metrics"]["test_loss"] == pytest.approx(s["metrics"]["test_loss"], rel=1e-4)
        assert p["pack_size"] == 4 and p["config"] == s["config"]


def test_pack_resumes_and_its_checkpoints_resume_alone(tmp_path, small, teacher_dir):
    configs = _students(teacher_dir, epochs=3)[:2]
    whole = [tmp_path / "w0", tmp_path / "w1"]
    pack.run(configs, whole, dataset=small, device="cpu")
    cut = [tmp_path / "c0", tmp_path / "c1"]
    assert pack.run(configs, cut, dataset=small, device="cpu", stop=lambda: True) == [None, None]
    assert torch.load(cut[0] / "checkpoint.pt", weights_only=True)["epoch"] == 1
    train.run(configs[1], cut[1], dataset=small, device="cpu")  # a packed student's checkpoint, resumed alone
    pack.run(configs, cut, dataset=small, device="cpu")  # the other one, resumed as a pack of one left to do
    assert _close(whole[0], cut[0]) and _close(whole[1], cut[1])


def test_cached_teacher_gives_the_same_student_as_online(tmp_path, small, teacher_dir):
    cfg = _students(teacher_dir)[0]
    train.run(cfg, tmp_path / "online", dataset=small, device="cpu", teacher_mode="online")
    train.run(cfg, tmp_path / "cached", dataset=small, device="cpu", teacher_mode="cached")
    assert _close(tmp_path / "online", tmp_path / "cached")


def test_teacher_runs_once_per_teacher_not_per_step(tmp_path, small):
    teacher = tmp_path / "t"
    train.run(make_config(method="teacher", epochs=1, batch_size=100), teacher, dataset=small, device="cpu")
    cfg = make_config(method="kd", teacher=str(teacher), epochs=2, batch_size=100)
    kd_teacher.FORWARD_IMAGES["count"] = 0
    train.run(cfg, tmp_path / "a", dataset=small, device="cpu")
    assert kd_teacher.FORWARD_IMAGES["count"] == 1000 + 200  # one pass over train and test, then cached
    train.run(cfg, tmp_path / "b", dataset=small, device="cpu")
    assert kd_teacher.FORWARD_IMAGES["count"] == 1200  # the second student reads the cache
    train.run(cfg, tmp_path / "c", dataset=small, device="cpu", teacher_mode="online")
    assert kd_teacher.FORWARD_IMAGES["count"] == 1200 + 2 * 1000  # online: every step, every epoch
    (cache,) = teacher.glob("logits-*.pt")
    torch.save({"model_sha256": "stale", "train": torch.zeros(1)}, cache)  # a cache of other weights
    train.run(cfg, tmp_path / "d", dataset=small, device="cpu")
    assert kd_teacher.FORWARD_IMAGES["count"] == 3200 + 1200  # rebuilt, not trusted
    assert _close(tmp_path / "a", tmp_path / "d", atol=0)


def _units(text, pack):
    return planner.units(planner.plan(spec.parse(tomllib.loads(text))), pack)


GRID = ('name = "t"\ndataset = "mnist-5k"\nmethods = ["teacher", "scratch", "kd"]\n'
        "[grid]\nalpha = [0, 0.5, 1]\ntemperature = [1, 4]\nseed = [0, 1]\n")


def test_units_pack_students_that_share_a_teacher():
    units = _units(GRID, "auto")
    assert [[j.name for j in u] for u in units] == [
        ["teacher-s0"], ["teacher-s1"], ["scratch-s0"], ["scratch-s1"],
        ["kd-a0.5-T1-s0", "kd-a0.5-T4-s0", "kd-a1-T1-s0", "kd-a1-T4-s0"],
        ["kd-a0.5-T1-s1", "kd-a0.5-T4-s1", "kd-a1-T1-s1", "kd-a1-T4-s1"]]
    assert [len(u) for u in _units(GRID, 3)] == [1, 1, 1, 1, 3, 3, 1, 1]
    assert all(len(u) == 1 for u in _units(GRID, 1))


def test_a_pack_of_cnn_students_uses_vmap_and_learns(tmp_path, small, teacher_dir):
    from kd import models
    from kd.pack import _stacked_mlp

    assert _stacked_mlp(models.build("mnist-cnn", 10, (1, 28, 28))) is None  # not a plain MLP: vmap path
    configs = [make_config(method="kd", model="mnist-cnn", alpha=a, temperature=4.0, teacher=str(teacher_dir),
                           epochs=1, batch_size=100) for a in (0.5, 0.9)]
    results = pack.run(configs, [tmp_path / "a", tmp_path / "b"], dataset=small, device="cpu")
    assert [r["params"] for r in results] == [1_404_682] * 2
    assert all(r["metrics"]["test_accuracy"] > 0.5 for r in results)
