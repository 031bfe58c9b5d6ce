"""The project's image, built and run for real (tests/container/with-image.sh, started by make test as
root): podman running it as a host user on a bind-mounted folder, and the demo sweep on the real
test cluster with every job inside the image through Charliecloud's ch-run, submitted by an
unprivileged user. Apptainer, Singularity and enroot/pyxis are not packaged here: their profiles are
tested by their command lines only (tests/test_profile.py)."""
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from sweep import api, state
from test_slurm import all_final, sacct_times, wait_until

pytestmark = pytest.mark.container
ROOT = Path(__file__).resolve().parent.parent
USER = "kdsweep-test"  # an unprivileged local user: munge and Slurm accept any
UMASK = 0o027  # not the usual 022: files must follow the caller's umask, not a fixed mode
HOST_VENV = Path("/var/tmp/kdsweep-host-venv")  # the user's host side (submit, status, collect, plot): no torch
SMALL = 'name = "small"\ndataset = "mnist-5k"\nmethods = ["scratch"]\n[train]\nepochs = 1\n[grid]\nseed = [0, 1]\n'


@pytest.fixture(scope="session")
def image() -> str:
    """The image tests/container/with-image.sh built, or a skip (a failure under make test) that says why."""
    required = os.environ.get("KDSWEEP_CONTAINER_REQUIRED") == "1" or os.environ.get("CI") == "true"
    if os.environ.get("KDSWEEP_NO_CONTAINER"):
        pytest.skip("KDSWEEP_NO_CONTAINER is set")
    name = os.environ.get("KDSWEEP_IMAGE")
    why = None
    if not name:
        why = "no image: KDSWEEP_IMAGE is not set (make test builds it as root; or tests/container/with-image.sh)"
    elif subprocess.run(["podman", "image", "exists", name], env=_podman_env()).returncode != 0:
        why = f"podman has no image {name}"
    if why:
        if required:
            pytest.fail(why)
        pytest.skip(why)
    return name


@pytest.fixture(scope="session")
def user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("creating a local user needs root")
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", USER], check=True)
        return pwd.getpwnam(USER)


@pytest.fixture
def user_dir(user):
    """A folder of the user's under /tmp (ch-run shares the host's /tmp with the container)."""
    d = Path(tempfile.mkdtemp(prefix="kdsweep-ct-", dir="/tmp"))
    os.chown(d, user.pw_uid, user.pw_gid)
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "tests/container/containers.conf"))}


def podman_run(image, folder, *args, user=None, timeout=300):
    who = ["--user", f"{user.pw_uid}:{user.pw_gid}", "--umask", f"{UMASK:04o}"] if user else []
    return subprocess.run(["podman", "run", "--rm", *who, "-v", f"{folder}:/results", image, *map(str, args)],
                          capture_output=True, text=True, env=_podman_env(), timeout=timeout)


def as_user(user, *cmd, cwd, timeout=300, **env):
    """``cmd`` as the unprivileged user, with a clean environment and the test's umask."""
    clean = {"PATH": f"{HOST_VENV}/bin:/usr/bin:/bin", "HOME": user.pw_dir, "USER": user.pw_name,
             "LOGNAME": user.pw_name, "LANG": "C.UTF-8", **env}
    return subprocess.run(["runuser", "-u", user.pw_name, "--", "env", "-i", *[f"{k}={v}" for k, v in clean.items()],
                           "sh", "-c", f'umask {UMASK:03o} && exec "$@"', "sh", *map(str, cmd)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def assert_owned_and_umasked(folder: Path, user) -> int:
    """Every file and folder under ``folder`` is the user's, with no permission the umask takes away."""
    paths = [folder, *folder.rglob("*")]
    for p in paths:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid), f"{p}: owned by {st.st_uid}:{st.st_gid}"
        assert stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) & UMASK == 0, f"{p}: mode {stat.S_IMODE(st.st_mode):o} despite umask {UMASK:o}"
    return len(paths)


def recorded_containers(folder: Path) -> list[dict]:
    return [json.loads(r.read_text())["versions"]["container"] for r in sorted(folder.rglob("result.json"))]


def test_image_does_not_run_as_root(image):
    p = subprocess.run(["podman", "run", "--rm", "--entrypoint", "id", image, "-u"], capture_output=True, text=True,
                       env=_podman_env())
    assert p.returncode == 0 and p.stdout.strip() == "1000", p.stdout + p.stderr


def test_podman_runs_train_and_a_local_sweep_as_the_host_user(image, user, user_dir):
    """`--user $(id -u):$(id -g)`: the job writes into the bind-mounted folder as its owner, with their umask."""
    p = podman_run(image, user_dir, "train", "--method", "scratch", "--epochs", "1", "--out", "/results/one", user=user)
    assert p.returncode == 0, p.stdout + p.stderr
    (user_dir / "small.toml").write_text(SMALL)
    p = podman_run(image, user_dir, "run", "/results/small.toml", "--results", "/results", user=user)
    assert p.returncode == 0, p.stdout + p.stderr
    states = {j.name: s.state for j, s in api.status(user_dir / "small.toml", results_root=user_dir)}
    assert set(states.values()) == {state.DONE} and len(states) == 2, states
    image_record = json.loads(subprocess.run(["podman", "run", "--rm", "--entrypoint", "cat", image, "/etc/kd-sweep-image"],
                                             capture_output=True, text=True, env=_podman_env(), check=True).stdout)
    records = recorded_containers(user_dir)
    assert len(records) == 3 and all(r == {**image_record, "runtime": "podman"} for r in records), records
    assert assert_owned_and_umasked(user_dir / "one", user) >= 3
    assert assert_owned_and_umasked(user_dir / "small", user) > 10


def test_an_unwritable_results_folder_is_one_error_line(image, user):
    folder = Path(tempfile.mkdtemp(prefix="kdsweep-ct-root-", dir="/tmp"))  # root's, 0755: not the user's
    folder.chmod(0o755)
    try:
        (folder / "small.toml").write_text(SMALL)
        for args in (["train", "--method", "scratch", "--epochs", "1", "--out", "/results/one"],
                     ["run", "/results/small.toml", "--results", "/results"]):
            p = podman_run(image, folder, *args, user=user)
            assert p.returncode == 2, p.stdout + p.stderr
            lines = p.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and "permission denied" in lines[0], p.stderr
        assert [f.name for f in folder.iterdir()] == ["small.toml"]  # nothing written
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="session")
def host_venv(user):
    """The user's host-side kdsweep: a venv of Debian's python3 (root's pyenv python is not theirs to
    read) with the project's dependencies but torch (the host only submits, watches and collects)."""
    deps = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
            if not d.startswith(("torch", "torchvision"))]
    key = hashlib.sha256(json.dumps(deps).encode()).hexdigest()[:12]
    marker = HOST_VENV / f".deps-{key}"
    if not marker.exists():
        shutil.rmtree(HOST_VENV, ignore_errors=True)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(HOST_VENV)], check=True)
        subprocess.run([HOST_VENV / "bin/pip", "install", "-q", "setuptools", "wheel", *deps], check=True)
        marker.touch()
    build = Path(tempfile.mkdtemp(prefix="kdsweep-src-"))  # this tree's code, installed (not linked: the user
    try:                                                    # may not read the checkout)
        shutil.copytree(ROOT, build / "src", ignore=shutil.ignore_patterns(".venv", ".git", "results", "build", "*.egg-info"))
        subprocess.run([HOST_VENV / "bin/pip", "install", "-q", "--no-deps", "--no-build-isolation", "--force-reinstall",
                        build / "src"], check=True, capture_output=True)
    finally:
        shutil.rmtree(build)
    return HOST_VENV


def test_demo_on_slurm_runs_every_job_inside_the_image(image, user, user_dir, host_venv, slurm_cluster):
    """The demo sweep (1 epoch) submitted by an unprivileged user with the Charliecloud profile."""
    ch_image = Path(os.environ["KDSWEEP_CH_IMAGE"])
    demo = (ROOT / "sweep/examples/demo.toml").read_text().replace("epochs = 12", "epochs = 1")
    profile = (ROOT / "slurm/profiles/charliecloud.toml").read_text()
    for old, new in (('partition = "gpu"', 'partition = "debug"'), ('account = "my-account"\n', ""), ("mem_gb = 32\n", ""),
                     ("cpus = 8", "cpus = 1"), ('time = "02:00:00"', 'time = "00:10:00"'),
                     ("signal_delay_s = 120", "signal_delay_s = 30"),
                     ('image = "/shared/containers/kd-sweep"', f'image = "{ch_image}"'), ('binds = ["/scratch"]', "binds = []")):
        assert old in profile
        profile = profile.replace(old, new)
    for name, text in (("demo.toml", demo), ("cc.toml", profile)):
        (user_dir / name).write_text(text)
        os.chown(user_dir / name, user.pw_uid, user.pw_gid)
    results = user_dir / "results"
    kdsweep = ["kdsweep", "-q"]
    # a PYTHONPATH in the user's shell (a .bashrc's) reaches the job through sbatch and ch-run: inside the image
    # it must not put the host's packages in front of the image's (here a torch that cannot be imported)
    shadow = user_dir / "host-site" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("the host PYTHONPATH reached the job")\n')
    for path in (shadow.parent, shadow, shadow / "__init__.py"):
        os.chown(path, user.pw_uid, user.pw_gid)
    p = as_user(user, *kdsweep, "run", "demo.toml", "--profile", "cc.toml", "--results", results, cwd=user_dir,
                SLURM_CONF=slurm_cluster, PYTHONPATH=shadow.parent)
    assert p.returncode == 0 and "submitted students array" in p.stdout, p.stdout + p.stderr
    states = wait_until(user_dir / "demo.toml", results, all_final, timeout=300)
    assert {s.state for s in states.values()} == {state.DONE}, states
    for step in (["collect"], ["plot"]):
        p = as_user(user, *kdsweep, *step, "demo.toml", "--results", results, cwd=user_dir, SLURM_CONF=slurm_cluster)
        assert p.returncode == 0, p.stdout + p.stderr

    image_record = json.loads((ch_image / "etc/kd-sweep-image").read_text())
    records = recorded_containers(results / "demo" / "jobs")
    assert len(records) == len(states) == 8 and all(r == {**image_record, "runtime": "charliecloud"} for r in records)
    assert assert_owned_and_umasked(results, user) > 50
    assert len(pd.read_parquet(results / "demo" / "results.parquet")) == 8
    assert len(list((results / "demo" / "plots").glob("*.png"))) >= 3

    record = json.loads((results / "demo" / "slurm" / "submissions.json").read_text())
    first, students = record[0]["jobs"], record[1]["jobs"]
    teacher = next(j for j in api.plan(user_dir / "demo.toml").jobs if j.method == "teacher")
    times = sacct_times(sorted({i.split("_")[0] for i in [*first.values(), *students.values()]}))
    assert all(times[s][0] >= times[first[teacher.id]][1] for s in students.values()), times  # teacher first
