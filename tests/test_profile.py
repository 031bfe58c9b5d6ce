import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweep import profile as prof
from sweep.cli import main

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden" / "sbatch-reference-mnist-generic-apptainer.txt"
GOOD = 'name = "p"\npartition = "gpu"\ntime = "01:00:00"\ngpus = 1\n[container]\nruntime = "none"\n'
# Bad profiles: tests/test_bad_inputs.py


def test_good_profile(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text(GOOD)
    assert prof.load(p) == prof.Profile(name="p", partition="gpu", time_min=60, gpus=1, path=p)


def test_missing_image_is_refused_at_submission_only(tmp_path, capsys):
    p = tmp_path / "p.toml"
    p.write_text(GOOD.replace('runtime = "none"', f'runtime = "apptainer"\nimage = "{tmp_path}/nope.sif"'))
    assert main(["plan", "demo", "--profile", str(p)]) == 0  # a dry run on a login node needs no image
    capsys.readouterr()
    assert main(["run", "demo", "--profile", str(p), "--results", str(tmp_path / "r")]) == 2
    assert f"container.image: {tmp_path}/nope.sif does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value, minutes", [(90, 90), ("90", 90), ("01:30:00", 90), ("1-00:00:00", 1440),
                                            ("2-12", 3600), ("10:30", 11), ("100:00:00", 6000), ("364-23:59:59", 525600)])
def test_time_formats(value, minutes):
    assert prof.parse_time(value, "") == minutes


def test_bundled_profiles_load():
    for name in ("local-slurm", "generic-apptainer", "pyxis-enroot", "charliecloud"):
        assert prof.load(name).name == name


def _sbatch_text(capsys, monkeypatch, tmp_path) -> str:
    monkeypatch.chdir(ROOT)
    for var in ("PYTHONPATH", "PYTHONHOME"):  # a shell without them: the image's python as it is
        monkeypatch.delenv(var, raising=False)
    assert main(["plan", "reference-mnist", "--profile", "generic-apptainer", "--results", "/shared/results"]) == 0
    out = capsys.readouterr().out
    return out[out.index("# ---- array"):]


def test_sbatch_scripts_match_golden(capsys, monkeypatch, tmp_path):
    """Refresh with: KDSWEEP_REFRESH_GOLDEN=1 pytest tests/test_profile.py"""
    text = _sbatch_text(capsys, monkeypatch, tmp_path)
    if os.environ.get("KDSWEEP_REFRESH_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_sbatch_scripts_say_what_matters(capsys, monkeypatch, tmp_path):
    text = _sbatch_text(capsys, monkeypatch, tmp_path)
    first, students = text.split("# ---- array 'students'")
    assert "2 tasks (2 jobs" in first and "#SBATCH --array=0-1%2" in first and "--dependency" not in first
    assert "1 task (24 jobs, pack auto)" in students and "#SBATCH --array=0-0%1" in students  # one packed task
    assert re.search(r"#SBATCH --dependency='?afterok:", students)
    for script in (first, students):
        assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --time=120" in script
        assert "#SBATCH --signal=USR2@120" in script and "#SBATCH --partition=gpu" in script
        assert ("apptainer exec --nv --bind /scratch --bind /shared/results /shared/containers/kd-sweep.sif "
                "env PYTHONNOUSERSITE=1 PYTHONSAFEPATH=1 python3 -u -m submitit.core._submit") in script


def test_pack_one_gives_one_task_per_student(monkeypatch):
    monkeypatch.chdir(ROOT)
    p = prof.load("generic-apptainer")
    from sweep import api, submit

    (_, first, _), (_, students, text) = submit.preview(api.plan("reference-mnist"), p, Path("/r"), pack=1)
    assert [[j.name for j in t] for t in first] == [["teacher-s0"], ["scratch-s0"]]
    assert len(students) == 24 and all(len(t) == 1 for t in students) and "#SBATCH --array=0-23%16" in text


def test_pyxis_profile_puts_the_image_on_srun(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PYTHONPATH", "/home/me/src")  # a shell's own (a .bashrc's): unset inside the image
    monkeypatch.delenv("PYTHONHOME", raising=False)
    assert main(["plan", "demo", "--profile", "pyxis-enroot", "--results", "/shared/results"]) == 0
    out = capsys.readouterr().out
    assert "srun --unbuffered" in out and "--container-image=/shared/containers/kd-sweep.sqsh" in out
    assert "--container-mounts=/scratch:/scratch,/shared/results:/shared/results" in out
    assert "env -u PYTHONPATH PYTHONNOUSERSITE=1 PYTHONSAFEPATH=1 python3 -u -m submitit.core._submit" in out


def test_plan_with_profile_needs_no_slurm(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no sbatch, srun or sacct on PATH
    p = subprocess.run([sys.executable, "-m", "sweep.cli", "plan", "demo", "--profile", "local-slurm"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0 and "#SBATCH --partition=debug" in p.stdout


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    p = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "", p.stdout + p.stderr


def test_charliecloud_profile_runs_python_through_ch_run(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("PYTHONPATH", raising=False)  # none here: an image's own PYTHONPATH is left alone
    monkeypatch.setenv("PYTHONHOME", "/opt/py")
    assert main(["plan", "demo", "--profile", "charliecloud", "--results", "/shared/results"]) == 0
    out = capsys.readouterr().out
    assert ("ch-run --set-env -b /scratch -b /shared/results /shared/containers/kd-sweep -- "
            "env -u PYTHONHOME PYTHONNOUSERSITE=1 PYTHONSAFEPATH=1 python3 -u -m submitit.core._submit") in out


def test_charliecloud_refuses_a_bind_the_image_has_no_directory_for(tmp_path, capsys):
    image = tmp_path / "image"
    (image / "scratch").mkdir(parents=True)
    p = tmp_path / "cc.toml"
    p.write_text(GOOD.replace('runtime = "none"', f'runtime = "charliecloud"\nimage = "{image}"\nbinds = ["/scratch"]'))
    results = Path("/var/tmp") / f"kd-results-{os.getpid()}"  # outside /tmp, and not in the image
    assert main(["run", "demo", "--profile", str(p), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert f"has no directory {results}: ch-run binds only onto directories that exist in the image" in err
    assert not results.exists()
    p.write_text(GOOD.replace('runtime = "none"', f'runtime = "charliecloud"\nimage = "{tmp_path}/nope"'))
    assert main(["run", "demo", "--profile", str(p), "--results", str(tmp_path / "r")]) == 2
    assert f"container.image: {tmp_path}/nope does not exist" in capsys.readouterr().err


def test_plan_with_a_profile_counts_the_array_tasks_not_a_local_runs_units(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["plan", "reference-mnist", "--profile", "generic-apptainer", "--results", "/shared/results"]) == 0
    out = capsys.readouterr().out
    assert "SLURM submission (profile generic-apptainer): 3 array tasks (pack auto, sized for the profile's GPUs" in out
    assert "local run:" not in out


@pytest.mark.parametrize("mem_gb, mem", [(32, "32GB"), (1.5, "1536MB"), (0.0001, "1MB"), (2.0004, "2049MB")])
def test_memory_is_asked_in_whole_megabytes_rounded_up(tmp_path, mem_gb, mem):
    """0.0001 GB was --mem=0MB, which Slurm reads as all of the node's memory."""
    from sweep import submit

    path = tmp_path / "p.toml"
    path.write_text(f"mem_gb = {mem_gb}\n" + GOOD)
    assert submit.executor_parameters(prof.load(path), "s-first", [])["mem"] == mem


def test_the_bundled_profiles_are_in_the_installed_package(tmp_path):
    """Installed from a wheel (pip install kd-sweep, the image's own), --profile local-slurm said 'no such
    profile file (bundled profiles: )': the profiles live in slurm/, outside the packages."""
    import zipfile

    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                        "-w", str(tmp_path / "wheel")], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from sweep import profile; "
            "print(profile.load('local-slurm').name, profile.load('charliecloud').name)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})  # not the checkout's
    assert (p.returncode, p.stdout.split()) == (0, ["local-slurm", "charliecloud"]), p.stderr
