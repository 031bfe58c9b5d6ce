import subprocess
import sys
import tomllib

import pytest

from kd.errors import UserError
from sweep import plan as planner, spec


def _plan(text: str):
    return planner.plan(spec.parse(tomllib.loads(text)))


BASE = 'name = "t"\ndataset = "mnist-5k"\nmethods = ["teacher", "scratch", "kd"]\n'


def test_reference_grid_is_26_jobs_with_alpha_zero_merged():
    p = planner.plan(spec.load("reference-mnist"))
    assert len(p.jobs) == 26
    assert [j.method for j in p.jobs].count("kd") == 24
    (job, why), = p.merged()
    assert job.name == "scratch-s0" and why.startswith("6 kd points with alpha = 0")
    assert len(job.points) == 7  # the scratch method's own point + 6 kd points at alpha 0


def test_teachers_first_and_students_depend_on_their_seed_teacher():
    p = _plan(BASE + "[grid]\nalpha = [0.5]\ntemperature = [4]\nseed = [0, 1]\n")
    assert [j.name for j in p.jobs] == ["teacher-s0", "teacher-s1", "scratch-s0", "scratch-s1",
                                        "kd-a0.5-T4-s0", "kd-a0.5-T4-s1"]
    by = {j.name: j for j in p.jobs}
    assert by["kd-a0.5-T4-s1"].depends_on == (by["teacher-s1"].id,)
    assert by["kd-a0.5-T4-s1"].config["teacher"] == by["teacher-s1"].id
    assert [len(level) for level in p.levels()] == [4, 2]  # teachers and scratch need nothing; kd waits


def test_ids_are_stable_and_canonical():
    a = _plan(BASE + "[grid]\nalpha = [1]\ntemperature = [4]\n")
    b = _plan('methods = ["teacher", "scratch", "kd"]\nname = "other-name"\ndataset = "mnist-5k"\n'
              "[grid]\ntemperature = [4.0]\nalpha = [1.0]\n")
    assert [j.id for j in a.jobs] == [j.id for j in b.jobs]  # 1 == 1.0, key order and sweep name do not matter
    assert len({j.id for j in a.jobs}) == 3


def test_student_axes_do_not_multiply_teachers():
    p = _plan(BASE + "[grid]\nalpha = [0.5]\ntemperature = [4]\nlr = [0.001, 0.0003]\n")
    assert [j.name for j in p.jobs] == ["teacher-s0", "scratch-lr0.001-s0", "scratch-lr0.0003-s0",
                                        "kd-a0.5-T4-lr0.001-s0", "kd-a0.5-T4-lr0.0003-s0"]


def test_teacher_table_sets_teacher_only():
    p = _plan(BASE + "[train]\nepochs = 3\n[teacher]\nepochs = 7\n[grid]\nalpha = [0.5]\ntemperature = [2]\n")
    assert {j.method: j.config["epochs"] for j in p.jobs} == {"teacher": 7, "scratch": 3, "kd": 3}


def test_exclude_drops_matching_points():
    p = _plan(BASE + "[grid]\nalpha = [0.5, 1]\ntemperature = [1, 4]\n[[exclude]]\nalpha = 1\ntemperature = 1\n")
    assert p.excluded == 1
    assert "kd-a1-T1-s0" not in [j.name for j in p.jobs] and "kd-a1-T4-s0" in [j.name for j in p.jobs]


def test_excluded_teacher_that_students_need_runs_and_says_why():
    p = _plan(BASE.replace('"scratch", ', "") + "[grid]\nalpha = [0.5]\ntemperature = [4]\nseed = [0, 1]\n"
              '[[exclude]]\nmethod = "teacher"\nseed = 1\n')
    assert [j.name for j in p.jobs] == ["teacher-s0", "teacher-s1", "kd-a0.5-T4-s0", "kd-a0.5-T4-s1"]
    assert p.excluded == 0  # matched, but not left out: not counted as excluded
    assert p.kept_notes() == ["exclude[0] matches teacher-s1, but it runs: 1 student needs it (kd-a0.5-T4-s1); "
                              "exclude them too to leave it out"]
    alone = _plan(BASE.replace('"scratch", ', "") + "[grid]\nalpha = [0.5]\ntemperature = [4]\nseed = [0, 1]\n"
                  '[[exclude]]\nseed = 1\n')  # the teacher and its students: truly left out
    assert [j.name for j in alone.jobs] == ["teacher-s0", "kd-a0.5-T4-s0"] and alone.excluded == 2
    assert alone.kept == ()


def test_kd_alone_brings_its_teacher():
    p = _plan('name = "t"\ndataset = "mnist-5k"\nmethods = ["kd"]\n[grid]\nalpha = [0.5]\n')
    assert [j.method for j in p.jobs] == ["teacher", "kd"]


def test_planning_does_not_import_torch():
    code = ("import sys; from sweep import spec, plan; plan.plan(spec.load('reference-mnist')); "
            "from sweep import cli; assert 'torch' not in sys.modules, 'torch imported'")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_dry_run_prints_the_plan(capsys):
    from sweep.cli import main

    assert main(["plan", "reference-mnist"]) == 0
    out = capsys.readouterr().out
    assert "26 jobs from 32 grid points (1 teacher, 1 scratch, 24 kd)" in out
    assert "merged: 6 kd points with alpha = 0" in out
    assert "kd-a0.8-T64-s0" in out and "teacher-s0" in out


def test_every_merge_is_said_and_numbers_are_shown_apart():
    p = _plan('name = "t"\ndataset = "mnist-5k"\nmethods = ["scratch", "kd"]\n'
              '[grid]\nmodel = ["", "mnist-mlp"]\nalpha = [0, 0.5]\n')
    why = [w for _, w in p.merged()]
    assert why[0].startswith("2 kd points with alpha = 0 into 1 job") and "temperature ()" not in why[0]
    assert why[1].startswith("2 kd points (model '' / 'mnist-mlp') into 1 job, kd-a0.5-T4-")
    close = _plan(BASE + "[grid]\nalpha = [0.5]\ntemperature = [4]\nlr = [0.001, 0.0010000001]\n")
    assert {j.name for j in close.jobs if j.method == "kd"} == {"kd-a0.5-T4-lr0.001-s0", "kd-a0.5-T4-lr0.0010000001-s0"}


def test_finetune_lr_with_a_head_phase_of_zero_epochs_plans():
    """An ablation over head_epochs = [0, 1] with one finetune_lr: at 0 it is the rate from the start."""
    p = _plan('name = "t"\ndataset = "mnist-5k"\nmethods = ["scratch"]\n'
              "[train]\nepochs = 3\nfinetune_lr = 0.0001\n[grid]\nhead_epochs = [0, 1]\n")
    assert [j.config["head_epochs"] for j in p.jobs] == [0, 1]
    with pytest.raises(UserError, match=r"train.finetune_lr: .* set lr instead \(for the teacher jobs\)"):
        _plan(BASE + "[train]\nepochs = 3\nfinetune_lr = 0.0001\n[grid]\nhead_epochs = [0, 1]\n"
              "alpha = [0.5]\ntemperature = [4]\n")  # the teacher does not follow head_epochs: it has no schedule
