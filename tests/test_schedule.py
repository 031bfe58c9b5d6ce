"""The transfer-learning schedule (head first, then fine-tuning) and the augmentation."""
import shutil
import subprocess
import sys

import pytest
import torch

from kd import phases, sealed, teacher as kd_teacher, train
from kd.config import make_config
from kd.errors import UserError
from kd_fixtures import teacher_dir  # noqa: F401 - a session fixture


def _weights(folder):
    return sealed.load(folder / "checkpoint.pt")["model"]


def stop_after(steps):
    calls = iter(range(1, 1_000_000))
    return lambda: next(calls) >= steps


def test_head_phase_trains_the_head_only(tmp_path, small):
    cfg = make_config(method="scratch", epochs=3, head_epochs=1, finetune_lr=1e-4, unfreeze_from=2, batch_size=100)
    train.run(cfg, tmp_path, dataset=small, device="cpu", stop=stop_after(10))  # 10 steps: epoch 1, the head phase
    from kd import models

    torch.manual_seed(0)
    start = models.build("mnist-mlp", 10, (1, 28, 28)).state_dict()
    after = _weights(tmp_path)
    changed = [k for k in start if not torch.equal(start[k], after[k])]
    assert changed == ["5.weight", "5.bias"]  # the last Linear, nothing else


def test_resume_across_the_phase_change_equals_uninterrupted(tmp_path, small):
    cfg = make_config(method="scratch", epochs=3, head_epochs=1, finetune_lr=3e-4, unfreeze_from=2, batch_size=100)
    whole = train.run(cfg, tmp_path / "w", dataset=small, device="cpu", keep_checkpoint=True)
    assert train.run(cfg, tmp_path / "c", dataset=small, device="cpu", stop=stop_after(10)) is None  # at the boundary
    cut = train.run(cfg, tmp_path / "c", dataset=small, device="cpu", keep_checkpoint=True)
    assert train.run(cfg, tmp_path / "m", dataset=small, device="cpu", stop=stop_after(14)) is None  # mid-epoch 2
    train.run(cfg, tmp_path / "m", dataset=small, device="cpu", keep_checkpoint=True)
    assert all(torch.equal(a[k], b[k]) for a, b in [(_weights(tmp_path / "w"), _weights(tmp_path / "m"))] for k in a)
    a, b = _weights(tmp_path / "w"), _weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cut["metrics"] == whole["metrics"]


def test_after_the_head_phase_the_front_stays_frozen(tmp_path, small):
    from kd import models

    model = models.build("mnist-mlp", 10, (1, 28, 28))
    cfg = make_config(method="scratch", epochs=3, head_epochs=1, unfreeze_from=2)
    params = dict(model.named_parameters())
    opt, _ = phases.setup(model, params, cfg, phases.FULL)
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert trainable == ["3.weight", "3.bias", "5.weight", "5.bias"]
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 784 * 784 + 784 + 7850


def test_head_epochs_must_leave_epochs_to_fine_tune():
    with pytest.raises(UserError, match="head_epochs: 5 must be less than epochs \\(5\\)"):
        make_config(method="teacher", epochs=5, head_epochs=5)


def test_augmentation_keeps_pixels_and_the_teacher_runs_online(tmp_path, small, teacher_dir):
    from kd import rng

    x = torch.rand(2, 64, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # 2 members, 64 images each
    y = train.augment(x, rng.keys_tensor([0, 1], 0), noise_std=0.0)
    assert y.shape == x.shape
    assert torch.allclose(y.flatten(2).sort(2).values, x.flatten(2).sort(2).values)  # flips/rotations only move pixels
    assert not torch.equal(x, y)
    alone = train.augment(x[1:], rng.keys_tensor([1], 0), noise_std=0.0)
    assert torch.equal(alone[0], y[1])  # a member's augmentation is its own, whatever else is in the pack
    teacher = tmp_path / "t"
    shutil.copytree(teacher_dir, teacher)
    kd_teacher.FORWARD_IMAGES["count"] = 0
    train.run(make_config(method="kd", teacher=str(teacher), augment=True, epochs=1, batch_size=100),
              tmp_path / "s", dataset=small, device="cpu")
    assert kd_teacher.FORWARD_IMAGES["count"] == 1000  # every augmented batch, not the cache
    assert set(teacher.glob("logits-*.pt")) == {teacher / p.name for p in teacher_dir.glob("logits-*.pt")}  # none new


def test_class_weights_balance_the_hard_label_loss(small):
    from kd.data import Dataset

    y = torch.tensor([0] * 75 + [1] * 25)
    d = Dataset("mnist-5k-binary", small.train_x[:100], y, small.test_x, small.test_y, 2)
    w = train.class_weights(make_config(dataset="mnist-5k-binary", method="scratch", class_weights=True), d, "cpu")
    assert w.tolist() == pytest.approx([100 / (2 * 75), 100 / (2 * 25)])
    assert train.class_weights(make_config(method="scratch"), d, "cpu") is None
    logits = torch.zeros(4, 2)
    labels = torch.tensor([0, 0, 0, 1])
    loss = train.objective([make_config(method="scratch")], w)(logits.unsqueeze(0), None, labels.unsqueeze(0))
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels, weight=w).item())


def test_bf16_autocast_and_channels_last_train(tmp_path, small):
    r = train.run(make_config(method="teacher", precision="bf16", channels_last=True, epochs=1, batch_size=100),
                  tmp_path, dataset=small, device="cpu")
    assert r["config"]["precision"] == "bf16" and r["config"]["channels_last"] is True
    assert r["metrics"]["test_accuracy"] > 0.5
    with pytest.raises(UserError, match="precision: 'fp16' is not one of fp32, bf16"):
        make_config(method="teacher", precision="fp16")


@pytest.mark.parametrize("fused", [True, False])
def test_kd_adam_is_torch_adam_without_the_dynamo_import(fused):
    """phases.Adam's step is torch's (bit for bit, state included) minus the wrapper that imports
    torch._dynamo in every process that trains (1.1 s of this CPU)."""
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    opts = phases.Adam(ours, lr=1e-2, fused=fused), torch.optim.Adam(theirs, lr=1e-2, fused=fused)
    for step in range(5):
        x = torch.randn(3, 7)
        for params, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            ((x @ params[0] + params[1]).tanh().sum() * (step + 1)).backward()
            opt.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    state = [opts[0].state_dict()["state"][i] for i in range(2)], [opts[1].state_dict()["state"][i] for i in range(2)]
    for a, b in zip(*state):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))


def test_training_does_not_import_the_compiler():
    """In kd-sweep's own processes (sweep.worker, kdsweep train); an import of kd leaves torch as it is."""
    untouched = ("import torch; from kd import phases; from torch.optim import adam; "
                 "print(hasattr(adam.adam.__wrapped__, '__dynamo_disable'))")
    p = subprocess.run([sys.executable, "-c", untouched], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "False", p.stderr
    code = ("import sys, torch; from kd import phases; phases.skip_dynamo_import(); "
            "p = [torch.zeros(3, requires_grad=True)]; "
            "o = phases.adam(p, 1e-3); p[0].sum().backward(); o.step(); o.zero_grad(); o.state_dict(); "
            "print('torch._dynamo' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "False", p.stderr
