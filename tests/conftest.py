from __future__ import annotations

import gzip
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """Write ``array`` (uint8) as an IDX file, the format MNIST ships in."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def trained_an_epoch(folder: Path) -> bool:
    """Whether the job in ``folder`` has logged the end of an epoch: training is under way. (A
    checkpoint is no such sign: by default one is written only every 10 minutes, or when stopped.)"""
    log = folder / "log"
    return log.exists() and re.search(r"epoch +1/\d+ ", log.read_text()) is not None


@contextmanager
def read_only_view(source: Path, at: Path):
    """``source`` seen read-only at ``at``, as a cluster's shared folders are (a bind mount: root
    makes it, as in CI); the test skips where mounting is refused."""
    at.mkdir()
    bound = subprocess.run(["mount", "--bind", str(source), str(at)], capture_output=True, text=True)
    if bound.returncode:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(at)], check=True)
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)


def make_idx_root(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20, gz: bool = True) -> Path:
    """A data root in torchvision's layout with small real-format IDX files."""
    rng = np.random.RandomState(0)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.randint(0, 256, size=(n, 28, 28)), gz=gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.randint(0, 10, size=n), gz=gz)
    return raw


@pytest.fixture(scope="session")
def mnist5k():
    from kd import data

    return data.load("mnist-5k")


@pytest.fixture(scope="session")
def small(mnist5k):
    """A 1,000 / 200 slice of real MNIST digits: enough to learn something in a second."""
    from kd.data import Dataset

    d = mnist5k
    return Dataset("mnist-5k", d.train_x[:1000], d.train_y[:1000], d.test_x[:200], d.test_y[:200], 10)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The real test cluster (slurm/testcluster), or a skip that says why it is absent."""
    import shutil
    import subprocess

    required = os.environ.get("KDSWEEP_SLURM_REQUIRED") == "1" or os.environ.get("CI") == "true"
    if os.environ.get("KDSWEEP_NO_SLURM"):
        pytest.skip("KDSWEEP_NO_SLURM is set")
    why = None
    if not shutil.which("sinfo"):
        why = "Slurm is not installed (as root: make test installs and starts the test cluster)"
    elif not os.environ.get("SLURM_CONF"):
        why = "no test cluster: SLURM_CONF is not set (run through make test, or slurm/testcluster/start.sh)"
    else:
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        if p.returncode != 0 or not p.stdout.strip():
            why = f"the test cluster does not answer: {p.stderr.strip()}"
    if why:
        if required:
            pytest.fail(why)
        pytest.skip(why)
    return os.environ["SLURM_CONF"]


@pytest.fixture(scope="session")
def mini_mnist(tmp_path_factory, small):
    """A data root with 1,000 / 200 real MNIST digits as the standard IDX files: dataset "mnist"
    at a fraction of mnist-5k's training cost, for the tests that run whole sweeps."""
    root = tmp_path_factory.mktemp("mini-mnist")
    raw = root / "MNIST" / "raw"
    for prefix, x, y in (("train", small.train_x, small.train_y), ("t10k", small.test_x, small.test_y)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0].numpy())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y.numpy().astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def mini_mnist_env(mini_mnist):
    """KDSWEEP_DATA points at ``mini_mnist`` for this module's tests and the processes they start."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSWEEP_DATA", str(mini_mnist))
        yield mini_mnist
