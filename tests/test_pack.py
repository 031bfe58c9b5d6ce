"""One loop for one model or many: a member's result is the same alone, in any pack, resumed or
not, mid-epoch included; and the teacher cache."""
import json
import shutil
import subprocess
import tomllib

import pytest
import torch

from kd import models, sealed, teacher as kd_teacher, train
from kd.config import auto_pack, make_config
from kd_fixtures import second_teacher_dir, teacher_dir, tiny  # noqa: F401 - session fixtures
from sweep import local, plan as planner, spec

ATOL = 2e-5  # batched and single products round differently; after 2 epochs of Adam the weights stay this close
RTOL = 1e-4


def stop_after(steps):
    """A stop() that asks to stop once ``steps`` training steps have been taken."""
    calls = iter(range(1, 1_000_000))
    return lambda: next(calls) >= steps


def assert_same(dir_a, dir_b, atol=ATOL):
    """Two finished jobs: the same weights (to atol) and the same history (every value but time)."""
    a = torch.load(dir_a / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(dir_b / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by {worst}"
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (dir_a, dir_b))
    assert len(ra["history"]) == len(rb["history"])
    for ha, hb in zip(ra["history"], rb["history"]):
        assert ha["epoch"] == hb["epoch"] and ha["test_accuracy"] == hb["test_accuracy"], (ha, hb)
        for key in ("train_loss", "test_loss"):
            assert ha[key] == pytest.approx(hb[key], rel=RTOL, abs=1e-6), (key, ha, hb)
    assert ra["config"] == rb["config"]


def _kd(teacher, alpha=0.5, temperature=4.0, **kw):
    return make_config(method="kd", alpha=alpha, temperature=temperature, teacher=str(teacher), batch_size=100,
                       **{"epochs": 2, **kw})


def test_packed_mlp_students_equal_students_trained_alone(tmp_path, small, teacher_dir):
    configs = [_kd(teacher_dir, a, t) for a, t in ((0.5, 4.0), (1.0, 2.0), (0.2, 16.0), (0.0, 1.0))]  # alpha edges
    for i, c in enumerate(configs):
        train.run(c, tmp_path / f"solo{i}", dataset=small, device="cpu")
    packed = train.run_pack(configs, [tmp_path / f"p{i}" for i in range(4)], dataset=small, device="cpu")
    for i in range(4):
        assert_same(tmp_path / f"solo{i}", tmp_path / f"p{i}")
    assert [p["pack_size"] for p in packed] == [4] * 4


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: run it where one is"))])
def test_written_out_mlp_backward_equals_autograd(device):
    """Stack.backward's hand-written pass for plain MLPs (the packed step's fast path) gives
    autograd's gradients, with dropout and a flatten, step after step (each step's gradient
    replaces the last, as zero_grad + backward would), and on a short last batch."""
    from torch import nn

    from kd import rng
    from kd.losses import kd_loss
    from kd.stack import Stack

    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 8), nn.ReLU(),
                             nn.Linear(8, 5))

    stack = Stack([net(s).to(device) for s in range(3)])
    assert stack.mlp_layers is not None
    stack.train()
    alpha = torch.tensor([0.2, 0.5, 1.0], device=device)
    temperature = torch.tensor([1.0, 4.0, 16.0], device=device)
    for step, batch in enumerate((7, 7, 4)):
        # drawn on the CPU: a failed capture earlier in the process (tests/test_graphs.py) leaves
        # CUDA's own generator unusable, which is why a worker whose capture failed is replaced
        x, teacher = torch.randn(3, batch, 3, 4).to(device), torch.randn(3, batch, 5).to(device)
        labels = torch.randint(0, 5, (3, batch)).to(device)
        stack.set_dropout_keys([rng.derive(rng.keys_tensor([0, 1, 2], 0, device=device), step)])
        losses_of = lambda z: kd_loss(z, teacher, labels, alpha, temperature)  # noqa: E731
        written = stack.backward(x, losses_of)
        got = {k: p.grad.clone() for k, p in stack.params.items()}
        for p in stack.params.values():
            p.grad = None
        want_losses = losses_of(stack(x))
        want_losses.sum().backward()
        assert torch.allclose(written, want_losses.detach(), rtol=1e-6, atol=0)
        for k, p in stack.params.items():
            assert torch.allclose(got[k], p.grad, rtol=1e-5, atol=1e-7), (step, k)
        for k, p in stack.params.items():
            p.grad = got[k]  # the buffers the next step writes into


def test_mlp_backward_with_frozen_layers_leaves_them_without_gradients():
    from torch import nn

    from kd.losses import cross_entropy
    from kd.stack import Stack

    stack = Stack([nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)) for _ in range(2)])
    stack.params["0.weight"].requires_grad_(False)
    stack.params["0.bias"].requires_grad_(False)
    x, labels = torch.randn(2, 5, 6), torch.randint(0, 3, (2, 5))
    stack.backward(x, lambda z: cross_entropy(z, labels))
    assert stack.params["0.weight"].grad is None and stack.params["2.weight"].grad is not None


def test_packed_cnn_students_with_dropout_equal_students_alone(tmp_path, tiny, teacher_dir):
    configs = [_kd(teacher_dir, a, 4.0, model="mnist-cnn", seed=s) for a, s in ((0.5, 0), (0.9, 3))]
    for i, c in enumerate(configs):
        train.run(c, tmp_path / f"solo{i}", dataset=tiny, device="cpu")
    train.run_pack(configs, [tmp_path / "p0", tmp_path / "p1"], dataset=tiny, device="cpu")
    for i in range(2):
        assert_same(tmp_path / f"solo{i}", tmp_path / f"p{i}", atol=1e-4)
    # dropout is on and differs per member: the two seeds' masks are not the same draws
    from kd import rng

    assert not torch.equal(rng.uniform(rng.keys_tensor([0], 0), (64,)), rng.uniform(rng.keys_tensor([3], 0), (64,)))


def test_packed_teachers_equal_teachers_alone_and_teach_the_same(tmp_path, tiny):
    """Teachers of two seeds in one pack (the 5-seed grid's teachers on a GPU): each the teacher it
    would be alone, model.pt included, so its students learn the same from either."""
    configs = [make_config(method="teacher", seed=s, epochs=1, batch_size=100) for s in (0, 2)]
    for i, c in enumerate(configs):
        train.run(c, tmp_path / f"solo{i}", dataset=tiny, device="cpu")
    train.run_pack(configs, [tmp_path / "p0", tmp_path / "p1"], dataset=tiny, device="cpu")
    for i in range(2):
        assert_same(tmp_path / f"solo{i}", tmp_path / f"p{i}", atol=1e-4)
    students = [_kd(tmp_path / t, seed=3, epochs=1) for t in ("solo1", "p1")]
    for c, out in zip(students, ("from-solo", "from-pack")):
        train.run(c, tmp_path / out, dataset=tiny, device="cpu")
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("from-solo", "from-pack"))
    assert abs(a["metrics"]["test_accuracy"] - b["metrics"]["test_accuracy"]) <= 0.01


def test_a_teacher_damaged_since_it_finished_fails_its_students_alone(tmp_path, small, teacher_dir,
                                                                      second_teacher_dir):
    """A teacher's model.pt overwritten in place (its size kept): its students fail with the line
    that names it, and their pack-mates of another teacher train to their results."""
    from kd import teacher as kd_teacher

    bad = tmp_path / "bad-teacher"
    shutil.copytree(second_teacher_dir, bad)
    model = bad / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2: len(data) // 2 + 1000] = bytes(1000)
    model.write_bytes(bytes(data))
    configs = [_kd(teacher_dir, seed=0, epochs=1), _kd(bad, seed=1, epochs=1)]
    with pytest.raises(kd_teacher.DamagedTeacher, match="bad-teacher/model.pt"):
        train.run_pack(configs, [tmp_path / "good", tmp_path / "lost"], dataset=small, device="cpu")
    assert (tmp_path / "good" / "result.json").exists() and not (tmp_path / "lost" / "result.json").exists()
    with pytest.raises(kd_teacher.DamagedTeacher):  # alone: nothing trains, nothing is written
        train.run_pack(configs[1:], [tmp_path / "alone"], dataset=small, device="cpu")
    assert not (tmp_path / "alone").exists()
    # its result kept aside meanwhile (as a worker does for the first pack that met it): the next
    # pack of its students and others' is the same story, not a failure of the whole pack
    (bad / "result.json").rename(bad / "result.json.damaged-20261126")
    with pytest.raises(kd_teacher.DamagedTeacher, match="kept aside as damaged"):
        train.run_pack(configs, [tmp_path / "good2", tmp_path / "lost2"], dataset=small, device="cpu")
    assert (tmp_path / "good2" / "result.json").exists() and not (tmp_path / "lost2" / "result.json").exists()


def test_a_teacher_packs_with_teachers_of_its_method_alone(tmp_path, tiny):
    from kd.errors import UserError

    text = GRID.replace('methods = ["teacher", "scratch", "kd"]', 'methods = ["teacher", "scratch", "kd"]\npack = 8')
    assert [[j.method for j in u] for u in _units(text, 8)] == [
        ["teacher", "teacher"], ["scratch", "scratch"], ["kd"] * 8]
    mixed = [make_config(method="teacher", model="mnist-mlp", epochs=1), make_config(method="scratch", epochs=1)]
    with pytest.raises(UserError, match="a teacher packs with teachers of its method alone: not a scratch job"):
        train.run_pack(mixed, [tmp_path / "a", tmp_path / "b"], dataset=tiny, device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_members_of_different_seeds_and_teachers_share_a_pack(tmp_path, small, teacher_dir, second_teacher_dir):
    configs = [_kd(teacher_dir, 0.5, 4.0, seed=0), _kd(second_teacher_dir, 0.5, 4.0, seed=1),
               make_config(method="scratch", seed=2, epochs=2, batch_size=100)]
    for i, c in enumerate(configs):
        train.run(c, tmp_path / f"solo{i}", dataset=small, device="cpu")
    train.run_pack(configs, [tmp_path / f"p{i}" for i in range(3)], dataset=small, device="cpu")
    for i in range(3):
        assert_same(tmp_path / f"solo{i}", tmp_path / f"p{i}")


def test_members_sharing_seeds_draw_each_seeds_order_once_and_train_as_alone(tmp_path, small, teacher_dir,
                                                                            second_teacher_dir, monkeypatch):
    """Four students of two seeds, interleaved (the 5-seed grid's 120-student pack in small): each
    seed's batch order is drawn once an epoch and its batches gathered once, then handed to its
    members; each member ends as it would alone."""
    configs = [_kd(teacher_dir, 0.5, 4.0, seed=0), _kd(second_teacher_dir, 0.9, 2.0, seed=1),
               _kd(teacher_dir, 0.9, 2.0, seed=0), _kd(teacher_dir, 0.5, 4.0, seed=1)]
    for i, c in enumerate(configs):
        train.run(c, tmp_path / f"solo{i}", dataset=small, device="cpu")
    drawn = []
    real = train.epoch_order
    monkeypatch.setattr(train, "epoch_order", lambda seed, epoch, n: drawn.append((seed, epoch)) or real(seed, epoch, n))
    train.run_pack(configs, [tmp_path / f"p{i}" for i in range(4)], dataset=small, device="cpu")
    assert sorted(drawn) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # not one draw a member
    for i in range(4):
        assert_same(tmp_path / f"solo{i}", tmp_path / f"p{i}")


def mount_tmpfs(folder, size):
    """A real file system of ``size`` (a tmpfs: root mounts it, as in CI) on ``folder``; the test
    skips where mounting is refused. Unmount it with ``unmount``."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")


def unmount(folder):
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 6 MB, gone after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount_tmpfs(disk, "6m")
    yield disk
    unmount(disk)


def test_a_full_disk_fails_each_unwritten_member_with_its_own_file_and_a_rerun_writes_them(small_disk, small,
                                                                                          teacher_dir):
    """Three students' weights (5 MB each) onto 6 MB, written side by side: those written are done,
    each of the others fails with the file it could not write (not torch's zip writer's 'unexpected
    pos', which torch.save raised over the disk's error), no partial file is left, and once there
    is room the same members finish."""
    from kd.errors import UserError

    configs = [_kd(teacher_dir, a, 4.0, epochs=1) for a in (0.2, 0.5, 0.8)]
    outs = [small_disk / f"m{i}" for i in range(3)]
    with pytest.raises(UserError) as e:
        train.run_pack(configs, outs, dataset=small, device="cpu")
    own = e.value.per_member
    assert own and set(own) == {o for o in outs if not (o / "result.json").exists()}
    for out, error in own.items():
        assert str(error).startswith(f"{out}/") and "No space left on device" in str(error), error
    assert not list(small_disk.rglob(".tmp-*"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    train.run_pack([c for c, o in zip(configs, outs) if o in own], [o for o in outs if o in own],
                   dataset=small, device="cpu")
    assert all((o / "result.json").exists() for o in outs)


@pytest.mark.parametrize("inodes", [13, 14])
def test_a_disk_too_full_to_record_a_failure_fails_that_unit_and_the_run_goes_on(tmp_path, inodes):
    """A file system out of room (here: of inodes) where a job's result and then its error.json
    cannot be written, or its next unit's log: the run stopped at once on that error.json ('error:
    .../error.json: cannot write it', exit 2, the other units never started, the real cause said
    nowhere). Now each such job fails with the file it could not write, the run goes on to the end,
    and once there is room one resume finishes the rest."""
    import os
    import sys

    disk = tmp_path / "disk"
    disk.mkdir()
    mount_tmpfs(disk, f"50m,nr_inodes={inodes}")
    try:
        sweep_file = tmp_path / "two.toml"
        sweep_file.write_text('name = "two"\ndataset = "mnist-5k"\nmethods = ["scratch"]\n[train]\nepochs = 1\n'
                              "batch_size = 500\n[grid]\nseed = [0, 1]\n")
        cli = [sys.executable, "-m", "sweep.cli", "-q"]
        env = {**os.environ, "TQDM_DISABLE": "1"}
        p = subprocess.run([*cli, "run", str(sweep_file), "--results", str(disk), "--pack", "1"],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 1 and "Traceback" not in p.stderr + p.stdout, p.stderr
        failed = [ln for ln in p.stdout.splitlines() if ln.startswith("failed")]
        assert failed and all("No space left on device" in ln for ln in failed), p.stdout
        assert failed[-1].endswith("scratch-s1: not started: " + str(disk / "two" / "jobs" / failed[-1].split()[1] / "log")
                                   + ": No space left on device"), p.stdout
        subprocess.run(["mount", "-o", f"remount,nr_inodes={inodes + 100}", str(disk)], check=True)
        p = subprocess.run([*cli, "resume", str(sweep_file), "--results", str(disk)], capture_output=True, text=True,
                           env=env)
        assert p.returncode == 0 and p.stdout.splitlines()[-1].startswith("2/2 done"), p.stdout + p.stderr
    finally:
        unmount(disk)


def test_a_periodic_checkpoint_the_disk_refuses_is_a_warning_and_a_stops_is_an_error(small_disk, caplog):
    """A disk full for a moment at a periodic checkpoint failed the job at its next checkpoint, or at
    its end, even with room again: all its training lost for a file that only saves a rerun time.
    Now the checkpoint before it stays, training goes on; a stop's checkpoint must be written."""
    import logging

    from kd.errors import UserError

    big = {"w": torch.zeros(2_000_000)}  # 8 MB onto 6
    writer = train.CheckpointWriter()
    writer.write([(small_disk / "c.pt", {"epoch": 1})])
    writer.write([(small_disk / "c.pt", big)])
    with caplog.at_level(logging.WARNING, logger="kd.train"):
        writer.write([(small_disk / "c.pt", {"epoch": 3})])  # finds the one before refused: says so, goes on
        writer.wait()
    assert f"checkpoint not written ({small_disk / 'c.pt'}: cannot write it (No space left on device))" in caplog.text
    assert sealed.load(small_disk / "c.pt") == {"epoch": 3}
    with train.CheckpointWriter() as writer:  # the end of training finds it refused: a warning too
        writer.write([(small_disk / "c.pt", big)])
    assert sealed.load(small_disk / "c.pt") == {"epoch": 3} and not list(small_disk.glob(".tmp-*"))
    writer.write([(small_disk / "c.pt", big)])
    with pytest.raises(UserError, match="c.pt: cannot write it"):  # a stop's: it must be there
        writer.wait()


def test_a_teacher_in_a_read_only_folder_teaches_without_its_logits_cached(tmp_path, small, teacher_dir, caplog):
    """A colleague's teacher, read-only: the student computes the logits, says they are not cached,
    and trains (it failed on the cache's write)."""
    import logging
    import shutil

    from conftest import read_only_view

    source = tmp_path / "source"
    shutil.copytree(teacher_dir, source, ignore=shutil.ignore_patterns("logits-*"))
    with read_only_view(source, tmp_path / "shared") as shared, caplog.at_level(logging.WARNING, logger="kd.teacher"):
        result = train.run(_kd(shared, epochs=1), tmp_path / "student", dataset=small, device="cpu")
    assert result["metrics"]["test_accuracy"] > 0.5 and (tmp_path / "student" / "result.json").exists()
    assert f"teacher logits not cached ({shared}/logits-mnist-5k-" in caplog.text
    assert "cannot write it (Read-only file system)): the next student computes them again" in caplog.text
    assert not list(source.glob("logits-*"))


def test_a_member_that_diverges_fails_alone_and_its_pack_mates_finish(tmp_path, small, teacher_dir):
    """A teacher file whose weights are not numbers (one that diverged, saved by hand): its student's
    loss is NaN from the first step. It ends without a result (not 'done' at chance accuracy), its
    checkpoint gone (nothing to resume from); the student of a sound teacher in its pack finishes."""
    from kd.errors import Diverged

    saved = torch.load(teacher_dir / "model.pt", weights_only=True)
    saved["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                           for k, v in saved["state_dict"].items()}
    broken = tmp_path / "nan-teacher.pt"
    torch.save(saved, broken)
    configs = [_kd(teacher_dir, epochs=1), _kd(broken, epochs=1, seed=1)]
    outs = [tmp_path / "sound", tmp_path / "nan"]
    with pytest.raises(Diverged) as e:
        train.run_pack(configs, outs, dataset=small, device="cpu")
    assert e.value.folders == [outs[1]] and str(e.value).startswith(
        "training diverged: the loss is not a number from nan (epoch 1) on; no result written")
    assert not (outs[1] / "result.json").exists() and not (outs[1] / "checkpoint.pt").exists()
    result = json.loads((outs[0] / "result.json").read_text())
    assert result["metrics"]["test_accuracy"] > 0.5 and not (outs[0] / "checkpoint.pt").exists()


def test_a_unit_whose_members_all_diverge_ends_diverged(tmp_path, small, teacher_dir):
    """Every member's loss not a number (no result to write at all): the unit ends Diverged, each
    member named, no result and no checkpoint left, as a pack with a sound member does."""
    from kd.errors import Diverged

    saved = torch.load(teacher_dir / "model.pt", weights_only=True)
    saved["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                           for k, v in saved["state_dict"].items()}
    broken = tmp_path / "nan-teacher.pt"
    torch.save(saved, broken)
    for configs in ([_kd(broken, epochs=1)], [_kd(broken, epochs=1), _kd(broken, epochs=1, seed=1)]):
        outs = [tmp_path / f"nan{len(configs)}-{i}" for i in range(len(configs))]
        with pytest.raises(Diverged) as e:
            train.run_pack(configs, outs, dataset=small, device="cpu")
        assert e.value.folders == outs
        assert not any((o / "result.json").exists() or (o / "checkpoint.pt").exists() for o in outs)


@pytest.mark.parametrize("method", ["teacher", "kd"])  # the teacher CNN has dropout
def test_stopped_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, tiny, teacher_dir, method):
    cfg = make_config(method=method, epochs=2, batch_size=50, teacher=str(teacher_dir) if method == "kd" else None)
    train.run(cfg, tmp_path / "whole", dataset=tiny, device="cpu")
    assert train.run(cfg, tmp_path / "cut", dataset=tiny, device="cpu", stop=stop_after(8)) is None
    ckpt = sealed.load(tmp_path / "cut" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)  # 6 steps an epoch: stopped 2 steps into the second
    assert not (tmp_path / "cut" / "result.json").exists()
    train.run(cfg, tmp_path / "cut", dataset=tiny, device="cpu")
    assert_same(tmp_path / "whole", tmp_path / "cut", atol=0)


def test_a_pack_stopped_mid_epoch_resumes_as_a_pack_or_alone(tmp_path, small, teacher_dir):
    configs = [_kd(teacher_dir, 0.5, 4.0, epochs=3), _kd(teacher_dir, 0.9, 2.0, epochs=3, seed=5)]
    whole = [tmp_path / "w0", tmp_path / "w1"]
    train.run_pack(configs, whole, dataset=small, device="cpu")
    cut = [tmp_path / "c0", tmp_path / "c1"]
    assert train.run_pack(configs, cut, dataset=small, device="cpu", stop=stop_after(15)) == [None, None]
    assert sealed.load(cut[0] / "checkpoint.pt")["step"] == 5
    train.run(configs[1], cut[1], dataset=small, device="cpu", stop=stop_after(9))  # alone, stopped again
    train.run_pack(configs, cut, dataset=small, device="cpu")  # members at different places: grouped by place
    assert_same(whole[0], cut[0])
    assert_same(whole[1], cut[1])


def test_checkpoint_every_writes_mid_epoch_checkpoints(tmp_path, small, monkeypatch):
    saved = []
    real = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint",
                        lambda path, state: (saved.append((state["epoch"], state["step"])), real(path, state)))
    train.run(make_config(method="scratch", epochs=2, batch_size=100), tmp_path, dataset=small, device="cpu",
              checkpoint_every=1e-9)
    # after every step, then the epoch's end; the last epoch's end writes none: the result follows at once
    assert saved == [(0, s) for s in range(1, 10)] + [(1, 0)] + [(1, s) for s in range(1, 10)]


def test_with_an_interval_short_epochs_checkpoint_only_when_it_falls_due_or_when_stopped(tmp_path, small, monkeypatch):
    saved = []
    real = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint",
                        lambda path, state: (saved.append((state["epoch"], state["step"])), real(path, state)))
    cfg = make_config(method="scratch", epochs=3, batch_size=100)  # 10 steps an epoch, well under a second
    train.run(cfg, tmp_path / "interval", dataset=small, device="cpu", checkpoint_every=3600.0)
    assert saved == []  # a crash would lose seconds; the writes would have cost as much
    train.run(cfg, tmp_path / "epochs", dataset=small, device="cpu", checkpoint_every=None)
    assert saved == [(1, 0), (2, 0)]  # after every epoch but the last
    saved.clear()
    assert train.run(cfg, tmp_path / "cut", dataset=small, device="cpu", checkpoint_every=3600.0,
                     stop=stop_after(12)) is None
    assert saved == [(1, 2)]  # a stop always checkpoints, where it stopped
    train.run(cfg, tmp_path / "cut", dataset=small, device="cpu", checkpoint_every=3600.0)
    assert_same(tmp_path / "epochs", tmp_path / "cut", atol=0)


def test_cached_teacher_gives_the_same_student_as_online(tmp_path, small, teacher_dir):
    cfg = _kd(teacher_dir)
    train.run(cfg, tmp_path / "online", dataset=small, device="cpu", teacher_mode="online")
    train.run(cfg, tmp_path / "cached", dataset=small, device="cpu", teacher_mode="cached")
    assert_same(tmp_path / "online", tmp_path / "cached")


def test_teacher_runs_once_per_teacher_not_per_step(tmp_path, small, teacher_dir):
    teacher = tmp_path / "t"  # a copy: the test damages its cache
    shutil.copytree(teacher_dir, teacher, ignore=shutil.ignore_patterns("logits-*"))
    cfg = _kd(teacher)
    kd_teacher.FORWARD_IMAGES["count"] = 0
    train.run(cfg, tmp_path / "a", dataset=small, device="cpu")
    assert kd_teacher.FORWARD_IMAGES["count"] == 1000  # one pass over the training images, then cached
    train.run(cfg, tmp_path / "b", dataset=small, device="cpu")
    assert kd_teacher.FORWARD_IMAGES["count"] == 1000  # the second student reads the cache
    train.run(cfg, tmp_path / "c", dataset=small, device="cpu", teacher_mode="online")
    assert kd_teacher.FORWARD_IMAGES["count"] == 1000 + 2 * 1000  # online: every step, every epoch
    (cache,) = teacher.glob("logits-*.pt")
    torch.save({"model_sha256": "stale", "train": torch.zeros(1)}, cache)  # a cache of other weights
    train.run(cfg, tmp_path / "d", dataset=small, device="cpu")
    assert kd_teacher.FORWARD_IMAGES["count"] == 3000 + 1000  # rebuilt, not trusted
    cache.write_bytes(b"\x00garbage")  # a damaged cache
    train.run(cfg, tmp_path / "e", dataset=small, device="cpu")
    assert kd_teacher.FORWARD_IMAGES["count"] == 5000
    assert_same(tmp_path / "a", tmp_path / "d", atol=0)
    assert_same(tmp_path / "a", tmp_path / "e", atol=0)


def test_a_teacher_pack_caches_the_logits_its_students_read(tmp_path, small):
    """cache_logits: the teacher's unit caches its logits once its result is written, with the
    student's own call: the student reads them, no forward pass."""
    cfg = make_config(method="teacher", epochs=1, batch_size=100)
    outs = [tmp_path / "t0", tmp_path / "t1"]
    kd_teacher.FORWARD_IMAGES["count"] = 0
    train.run_pack([cfg, make_config(method="teacher", epochs=1, batch_size=100, seed=1)], outs,
                   dataset=small, device="cpu", cache_logits=[outs[0]])
    assert kd_teacher.FORWARD_IMAGES["count"] == 1000  # t0's training images, once
    (cache,) = outs[0].glob("logits-*.pt")
    assert not list(outs[1].glob("logits-*.pt"))  # no student of its reads a cache: none made
    saved = sealed.load(cache)
    recorded = json.loads((outs[0] / "result.json").read_text())["model_file"]["sha256"]
    assert saved["model_sha256"] == recorded[:16]
    train.run(_kd(outs[0]), tmp_path / "s", dataset=small, device="cpu")
    assert kd_teacher.FORWARD_IMAGES["count"] == 1000  # the student read them
    fresh = kd_teacher.load(outs[0] / "model.pt", small, torch.device("cpu"))
    assert torch.equal(saved["train"], models.logits_of(fresh, small.train_x, models.CPU_PREDICT_BATCH))


def test_a_stop_skips_the_teachers_logits_cache_and_the_teacher_stays_done(tmp_path, small, teacher_dir, caplog):
    """The cache is a speed-up made after the teacher's result: a stop (a signal) skips it, before
    or during its forward pass, leaving no file; the students compute the logits."""
    caplog.set_level("INFO")
    t = tmp_path / "t"
    shutil.copytree(teacher_dir, t, ignore=shutil.ignore_patterns("logits-*"))
    sha = json.loads((t / "result.json").read_text())["model_file"]["sha256"]
    train.cache_teacher_logits([(t, sha)], small, torch.device("cpu"), stop=lambda: True)
    assert "the logits of 1 teacher(s) not cached" in caplog.text
    calls = iter(range(100))
    train.cache_teacher_logits([(t, sha)], small, torch.device("cpu"), stop=lambda: next(calls) >= 3)  # mid-way
    assert "teacher logits not cached (Stopped: stopped before the logits were all computed)" in caplog.text
    assert sorted(p.name for p in t.iterdir()) == sorted(p.name for p in teacher_dir.iterdir()
                                                          if not p.name.startswith("logits-"))
    train.cache_teacher_logits([(t, sha)], small, torch.device("cpu"), stop=lambda: False)
    assert len(list(t.glob("logits-*.pt"))) == 1


def test_teacher_cache_is_per_dataset_content(tmp_path, small, teacher_dir):
    """The same teacher on changed data (a dataset re-downloaded, relabelled) gets a new cache."""
    from kd.data import Dataset

    changed = Dataset("mnist-5k", small.train_x.flip(0), small.train_y.flip(0), small.test_x, small.test_y, 10)
    a = kd_teacher.cached_logits(teacher_dir / "model.pt", small, torch.device("cpu"))
    b = kd_teacher.cached_logits(teacher_dir / "model.pt", changed, torch.device("cpu"))
    caches = [teacher_dir / f"logits-mnist-5k-{d.fingerprint()}.pt" for d in (small, changed)]
    assert caches[0] != caches[1] and all(c.exists() for c in caches)
    assert torch.allclose(b, a.flip(0), atol=1e-5)  # the logits of the changed data, not the old ones



def test_a_teacher_cache_with_overwritten_bytes_is_rebuilt_not_trusted(tmp_path, small, teacher_dir, caplog):
    shutil.copy(teacher_dir / "model.pt", tmp_path / "model.pt")
    good = kd_teacher.cached_logits(tmp_path / "model.pt", small, torch.device("cpu"))
    (cache,) = tmp_path.glob("logits-*.pt")
    data = cache.read_bytes()
    cache.write_bytes(data[:-800] + b"\x7f" * 400 + data[-400:])  # inside the logits' bytes
    again = kd_teacher.cached_logits(tmp_path / "model.pt", small, torch.device("cpu"))
    assert "unreadable" in caplog.text and "SHA-256 differs" in caplog.text
    assert torch.equal(again, good)

def test_a_subclass_teacher_is_refused_for_kd_before_anything_is_written(tmp_path, tiny):
    from kd.data import Dataset
    from kd.errors import UserError

    binary = Dataset("mnist-5k-binary", tiny.train_x, (tiny.train_y >= 5).long(), tiny.test_x,
                     (tiny.test_y >= 5).long(), 2)
    t = tmp_path / "subclass-teacher"
    train.run(make_config(dataset="mnist-5k-binary", method="subclass-teacher", subclasses=5, epochs=1,
                          batch_size=100), t, dataset=binary, device="cpu")
    with pytest.raises(UserError, match="subclass-teacher job with 10 outputs; this student has 2"):
        train.run(make_config(dataset="mnist-5k-binary", method="kd", teacher=str(t), epochs=1),
                  tmp_path / "s", dataset=binary, device="cpu")
    assert not (tmp_path / "s").exists() and not list(t.glob("logits-*.pt"))


def test_a_batch_larger_than_the_data_is_refused(tmp_path, small):
    from kd.errors import UserError

    with pytest.raises(UserError, match="batch_size: 5000 is larger than the training set"):
        train.run(make_config(method="scratch", batch_size=5000), tmp_path / "o", dataset=small, device="cpu")
    assert not (tmp_path / "o").exists()


def _units(text, pack, device_kind="cpu"):
    return planner.units(planner.plan(spec.parse(tomllib.loads(text))), pack, device_kind)


GRID = ('name = "t"\ndataset = "mnist-5k"\nmethods = ["teacher", "scratch", "kd"]\n'
        "[grid]\nalpha = [0, 0.5, 1]\ntemperature = [1, 4]\nseed = [0, 1]\n")


def test_units_pack_students_across_seeds_and_teachers():
    units = _units(GRID, "auto")
    assert [[j.name for j in u] for u in units] == [
        ["teacher-s0"], ["teacher-s1"], ["scratch-s0", "scratch-s1"],
        ["kd-a0.5-T1-s0", "kd-a0.5-T1-s1", "kd-a0.5-T4-s0", "kd-a0.5-T4-s1",
         "kd-a1-T1-s0", "kd-a1-T1-s1", "kd-a1-T4-s0", "kd-a1-T4-s1"]]
    assert [len(u) for u in _units(GRID, 3)] == [2, 2, 3, 3, 2]  # a number asked for packs teachers too
    assert all(len(u) == 1 for u in _units(GRID, 1))


def test_every_setting_is_shared_by_a_pack_keeps_jobs_apart_or_is_each_members():
    """A setting in none of the three would let jobs that differ in it share a pack, which trains
    them all with the first member's (finetune_lr did: a job trained at another rate than recorded)."""
    from kd.config import NOT_PACKABLE, PACK_SHARED, PER_MEMBER, SETTINGS

    groups = (PACK_SHARED, NOT_PACKABLE, PER_MEMBER)
    assert sorted(k for g in groups for k in g) == sorted(SETTINGS)  # each once


def test_a_setting_written_out_at_its_default_packs_as_the_default():
    """precision = "fp32" written out made every student train alone (its id stays its own: a
    sweep that wrote it keeps its finished jobs)."""
    plain = GRID.replace("seed = [0, 1]", "seed = [0, 1, 2, 3]")
    written = plain.replace("[grid]", '[train]\nprecision = "fp32"\naugment = false\nclass_weights = false\n'
                            "channels_last = false\n[grid]")
    assert [len(u) for u in _units(written, "auto")] == [len(u) for u in _units(plain, "auto")] == [1, 1, 1, 1, 4, 16]


@pytest.mark.parametrize("key, values", [
    ("model", '["mnist-mlp", "mnist-cnn"]'), ("epochs", "[2, 3]"), ("batch_size", "[100, 200]"),
    ("lr", "[0.001, 0.002]"), ("drop_last", "[true, false]"), ("augment", "[false, true]"),
    ("head_epochs", "[0, 1]"), ("unfreeze_from", "[0, 1]"), ("class_weights", "[false, true]"),
    ("precision", '["fp32", "bf16"]'), ("channels_last", "[false, true]"), ("finetune_lr", "[0.001, 0.002]")])
def test_jobs_that_differ_in_a_shared_or_unpackable_setting_never_share_a_pack(key, values):
    """What the trainer takes from a pack's first member (the data, the model, the optimiser, the
    schedule): two jobs that differ in it are in two units, whatever pack size is asked for."""
    from kd.config import NOT_PACKABLE, PACK_SHARED

    assert key in PACK_SHARED + NOT_PACKABLE
    text = GRID.replace("[grid]", f"[train]\nepochs = 3\n{'head_epochs = 1' if key == 'finetune_lr' else ''}\n[grid]\n"
                        f"{key} = {values}")
    if key == "epochs":
        text = text.replace("[train]\nepochs = 3\n", "[train]\n")
    for unit in _units(text, 64):
        assert len({repr(j.config[key]) for j in unit}) == 1, (key, [j.name for j in unit])
    assert any(len(u) > 1 for u in _units(text, 64)) or key in NOT_PACKABLE  # packs do form where they may


def test_auto_packs_are_sized_for_the_device_kind():
    """pack = "auto" as measured (kd.config.AUTO_PACK): reference MLP students in packs of 128 on a
    CPU, 120 on a GPU; CNNs (the teachers) alone on a CPU, packed on a GPU (their streams overlap)."""
    assert [len(u) for u in _units(GRID, "auto", "cpu")] == [1, 1, 2, 8]
    assert [len(u) for u in _units(GRID, "auto", "cuda")] == [2, 2, 8]
    big = GRID.replace("seed = [0, 1]", "seed = " + str(list(range(60))))  # 60 seeds: 240 kd students
    assert [len(u) for u in _units(big, "auto", "cpu") if u[0].method == "kd"] == [128, 112]
    assert [len(u) for u in _units(big, "auto", "cuda") if u[0].method == "kd"] == [120, 120]
    assert auto_pack("mnist-cnn", "cpu") == auto_pack("resnet50", "cuda") == 1 and auto_pack("mnist-cnn", "cuda") == 8


def test_a_local_run_sizes_its_packs_for_the_device_it_will_train_on(monkeypatch, tmp_path):
    assert local.device_kind("cuda:1") == local.device_kind("cuda") == "cuda" and local.device_kind("cpu") == "cpu"
    driver = tmp_path / "nvidiactl"
    monkeypatch.setattr(local, "NVIDIA_DEVICE", driver)  # this machine's driver device, absent or there
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local.device_kind(None) == "cpu"
    driver.touch()
    assert local.device_kind(None) == "cuda"
    for visible, kind in (("0", "cuda"), ("1,0", "cuda"), ("GPU-5f3c", "cuda"), ("MIG-1a2b", "cuda"),
                          ("", "cpu"), ("-1", "cpu"), ("-1,0", "cpu"), ("none", "cpu"), ("NoDevFiles", "cpu")):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)  # CUDA stops at the first entry that is no device
        assert local.device_kind(None) == kind, visible


def test_a_slurm_submission_sizes_its_packs_for_the_profiles_device():
    import dataclasses

    from sweep import profile, submit

    plan = planner.plan(spec.parse(tomllib.loads(GRID.replace("seed = [0, 1]", f"seed = {list(range(60))}"))))
    gpu = profile.load("local-slurm")
    cpu = dataclasses.replace(gpu, gpus=0)
    sizes = lambda p: [len(u) for level in submit._level_units(plan, "auto", p) for u in level if u[0].method == "kd"]  # noqa: E731
    assert gpu.gpus == 1 and sizes(gpu) == [120, 120] and sizes(cpu) == [128, 112]
    # array tasks have a GPU each and run side by side: the 60 teachers are 60 tasks, not 8 packs
    teachers = [len(u) for level in submit._level_units(plan, "auto", gpu) for u in level if u[0].method == "teacher"]
    assert teachers == [1] * 60
    assert [len(u) for u in planner.units(plan, "auto", "cuda") if u[0].method == "teacher"] == [8] * 7 + [4]


def test_five_seed_reference_grid_is_two_student_packs():
    raw = tomllib.loads(spec.resolve_path("reference-mnist").read_text())
    raw["grid"]["seed"] = [0, 1, 2, 3, 4]
    units = planner.units(planner.plan(spec.parse(raw)), "auto")
    students = [u for u in units if u[0].method != "teacher"]
    assert sorted(len(u) for u in students) == [5, 120]  # was 10 packs (one per seed and kind) before


@pytest.mark.parametrize("full_disk", [False, True])
def test_each_member_that_fails_for_a_reason_of_its_own_gets_its_own_line(tmp_path, teacher_dir, second_teacher_dir,
                                                                         full_disk):
    """One pack, three students: one of a sound teacher, one of a teacher whose weights are not
    numbers (it diverges), one of a teacher overwritten since it finished. The first finishes; the
    other two fail, each with its own reason in its error.json; the damaged teacher is handed back
    (its result kept aside) so that resume trains it again. With a fourth, whose folder is a full
    disk (a 1 MB tmpfs): it fails with its own file, the others as before, each with its own
    traceback."""
    from kd.teacher import DamagedTeacher
    from sweep import state, worker

    jobs = tmp_path / "jobs"
    shutil.copytree(teacher_dir, jobs / "sound")
    shutil.copytree(second_teacher_dir, jobs / "damaged")
    (jobs / "nan").mkdir()
    saved = torch.load(teacher_dir / "model.pt", weights_only=True)
    saved["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                           for k, v in saved["state_dict"].items()}
    torch.save(saved, jobs / "nan" / "model.pt")
    model = jobs / "damaged" / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    model.write_bytes(bytes(data))
    folders = []
    for name in ("sound", "nan", "damaged") + (("sound",) if full_disk else ()):
        folder = jobs / f"kd-of-{name}{len(folders)}"
        folder.mkdir()
        if len(folders) == 3:
            mount_tmpfs(folder, "1m")
        config = make_config(method="kd", alpha=0.5, temperature=4.0, teacher=name, epochs=1, batch_size=500)
        (folder / "config.json").write_text(json.dumps({"id": folder.name, "name": folder.name,
                                                        "config": config.to_dict()}))
        folders.append(folder)
    try:
        with pytest.raises(DamagedTeacher):  # the unit's one error: the first (the worker's exit line)
            worker.run_unit(folders, device="cpu")
        assert (folders[0] / "result.json").exists()
        errors = [json.loads((f / "error.json").read_text()) for f in folders[1:]]
    finally:
        if full_disk:
            unmount(folders[3])
    lines = [e["line"] for e in errors]
    assert lines[0].startswith("Diverged: training diverged: the loss is not a number from kd-of-nan1 (epoch 1)")
    assert lines[1].startswith(f"DamagedTeacher: teacher: {model} is damaged"), lines[1]
    assert "DamagedTeacher" in errors[1]["traceback"] and "No space left" not in errors[1]["traceback"]
    if full_disk:
        assert lines[2] == f"UserError: {folders[3]}/model.pt: cannot write it (No space left on device)", lines[2]
        assert "No space left on device" in errors[2]["traceback"]
    assert state.job_state(jobs / "damaged").state == state.FAILED  # handed back: resume trains it again
    assert list((jobs / "damaged").glob("result.json.damaged-*"))
