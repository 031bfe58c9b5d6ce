import json

import pytest
import torch

from kd import train
from kd.config import make_config
from kd.errors import UserError


def _stop_after(n):
    calls = iter(range(1, 1000))
    return lambda: next(calls) >= n


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, small):
    out = tmp_path_factory.mktemp("teacher")
    train.run(make_config(method="teacher", epochs=2, batch_size=100), out, dataset=small, device="cpu")
    return out


def test_result_json_has_what_collect_needs(teacher_dir):
    r = json.loads((teacher_dir / "result.json").read_text())
    assert r["config"]["method"] == "teacher" and r["config"]["model"] == "mnist-cnn"
    assert 0.5 < r["metrics"]["test_accuracy"] <= 1.0  # a fraction, and the CNN learned something
    assert [h["epoch"] for h in r["history"]] == [1, 2]
    assert r["params"] == 1_404_682
    assert 2e7 < r["flops_per_sample"] < 1e8  # about 30 MFLOP forward per 28x28 digit
    assert r["device"].startswith("cpu") and r["versions"]["torch"] == torch.__version__
    assert r["wall_seconds"] > 0


def test_checkpoints_load_with_weights_only(teacher_dir):
    state = torch.load(teacher_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and "optimizer" in state
    assert set(torch.load(teacher_dir / "model.pt", weights_only=True)) == {"config", "state_dict"}


@pytest.mark.parametrize("method", ["teacher", "kd"])  # the teacher CNN has dropout: its RNG must resume too
def test_resume_equals_uninterrupted(tmp_path, small, teacher_dir, method):
    cfg = make_config(method=method, epochs=3, batch_size=100, alpha=0.5, temperature=4.0,
                      teacher=str(teacher_dir) if method == "kd" else None)
    whole = train.run(cfg, tmp_path / "whole", dataset=small, device="cpu")
    assert train.run(cfg, tmp_path / "cut", dataset=small, device="cpu", stop=_stop_after(1)) is None
    assert not (tmp_path / "cut" / "result.json").exists()
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = train.run(cfg, tmp_path / "cut", dataset=small, device="cpu")
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda r: [{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]]  # noqa: E731
    assert strip(resumed) == strip(whole) and resumed["metrics"] == whole["metrics"]


def test_finished_job_is_not_run_again(tmp_path, small):
    cfg = make_config(method="scratch", epochs=1, batch_size=100)
    first = train.run(cfg, tmp_path, dataset=small, device="cpu")
    mtime = (tmp_path / "result.json").stat().st_mtime_ns
    assert train.run(cfg, tmp_path, dataset=small, device="cpu") == first
    assert (tmp_path / "result.json").stat().st_mtime_ns == mtime


def test_kd_with_missing_teacher_writes_nothing(tmp_path, small):
    cfg = make_config(method="kd", teacher=str(tmp_path / "nope"), epochs=1)
    with pytest.raises(UserError, match="teacher: .*nope.*not found"):
        train.run(cfg, tmp_path / "out", dataset=small, device="cpu")
    assert not (tmp_path / "out").exists()


def test_teacher_from_another_dataset_is_refused(tmp_path, small, teacher_dir):
    from kd.data import Dataset

    other = Dataset("fashion-mnist", small.train_x, small.train_y, small.test_x, small.test_y, 10)
    cfg = make_config(dataset="fashion-mnist", method="kd", teacher=str(teacher_dir), epochs=1)
    with pytest.raises(UserError, match="trained on 'mnist-5k', not 'fashion-mnist'"):
        train.run(cfg, tmp_path / "out", dataset=other, device="cpu")


def test_alpha_zero_kd_runs_without_teacher(tmp_path, small):
    r = train.run(make_config(method="kd", alpha=0.0, epochs=1, batch_size=100), tmp_path, dataset=small, device="cpu")
    assert r["metrics"]["test_accuracy"] > 0.5


@pytest.mark.slow
def test_reference_recipe_on_mnist_5k(tmp_path):
    """The reference study's settings on mnist-5k: teacher >= 96%, KD student (alpha 0.5, T 4) >= 93.5%."""
    teacher = train.run(make_config(method="teacher"), tmp_path / "t", device="cpu")
    student = train.run(make_config(method="kd", alpha=0.5, temperature=4.0, teacher=str(tmp_path / "t")),
                        tmp_path / "s", device="cpu")
    assert teacher["metrics"]["test_accuracy"] >= 0.96
    assert student["metrics"]["test_accuracy"] >= 0.935
