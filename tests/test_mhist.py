"""MHIST in exactly its distributed format (annotations.csv + images.zip of PNGs), made in the test."""
import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from kd import data
from kd.errors import UserError

HEADER = "Image Name,Majority Vote Label,Number of Annotators who Selected SSA (Out of 7),Partition\n"


def _png(rng, size=16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.randint(0, 256, size=(size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_mhist(root, n_train=6, n_test=4, size=16, rows=None, pngs=None):
    rng = np.random.RandomState(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = rows or [(f"MHIST_{i:03d}.png", "SSA" if i % 3 == 0 else "HP", 4 if i % 3 == 0 else 1,
                     "train" if i < n_train else "test") for i in range(n_train + n_test)]
    (root / "annotations.csv").write_text(HEADER + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows))
    with zipfile.ZipFile(root / "images.zip", "w") as z:
        for name in dict.fromkeys(r[0] for r in rows):  # a name listed twice (a bad-input case) is one image
            z.writestr(f"images/{name}", (pngs or {}).get(name, _png(rng, size)))
    return root


def test_reads_the_distributed_format_and_caches(tmp_path):
    root = make_mhist(tmp_path / "MHIST")
    d = data.load("mhist", tmp_path)
    assert d.train_x.shape == (6, 3, 16, 16) and d.test_x.shape == (4, 3, 16, 16) and d.num_classes == 2
    assert d.train_y.tolist() == [1, 0, 0, 1, 0, 0]  # SSA is 1
    with zipfile.ZipFile(root / "images.zip") as z, Image.open(io.BytesIO(z.read("images/MHIST_001.png"))) as im:
        assert (d.train_x[1].permute(1, 2, 0).numpy() == np.asarray(im)).all()
    (cache,) = root.glob(".kdsweep-mhist-*.pt")
    assert data.load("mhist", tmp_path).fingerprint() == d.fingerprint()  # served from the cache
    make_mhist(root, n_train=5, n_test=5)  # the source changed: the cache is rebuilt
    assert len(data.load("mhist", tmp_path).train_y) == 5 and not cache.exists()


def test_a_read_only_data_folder_caches_in_the_users_cache_or_nowhere(tmp_path, monkeypatch, caplog):
    """A cluster's shared datasets are read-only: the decoded tensors go to ~/.cache/kdsweep (its
    place here: $XDG_CACHE_HOME), and where that is refused too the job decodes and trains on."""
    import logging

    from conftest import read_only_view

    with read_only_view(make_mhist(tmp_path / "source"), tmp_path / "MHIST") as shared:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        with caplog.at_level(logging.INFO, logger="kd.mhist"):
            d = data.load("mhist", tmp_path)
        (cache,) = (tmp_path / "cache" / "kdsweep").glob("mhist-*.pt")
        assert f"MHIST decoded and cached in {cache}" in caplog.text and not list(shared.glob(".kdsweep-*"))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kd.mhist"):
            assert data.load("mhist", tmp_path).fingerprint() == d.fingerprint()
        assert "decoded" not in caplog.text  # read from that cache
        monkeypatch.setenv("XDG_CACHE_HOME", str(shared / "cache"))  # no place takes it
        with caplog.at_level(logging.INFO, logger="kd.mhist"):
            assert data.load("mhist", tmp_path).fingerprint() == d.fingerprint()
        assert (f"MHIST decoded, not cached ({shared}/.kdsweep-mhist-" in caplog.text
                and f"{shared / 'cache'}: Read-only file system): each job decodes it again" in caplog.text), caplog.text


def test_images_folder_instead_of_zip(tmp_path):
    root = make_mhist(tmp_path / "MHIST")
    with zipfile.ZipFile(root / "images.zip") as z:
        z.extractall(root)
    (root / "images.zip").unlink()
    assert len(data.load("mhist", tmp_path).test_y) == 4
    # an image replaced in place (unzip -o) changes neither the folder's size nor its time: not the cache's
    folder_times = (root / "images").stat()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / "images" / "MHIST_000.png")
    os.utime(root / "images", ns=(folder_times.st_atime_ns, folder_times.st_mtime_ns))
    assert int(data.load("mhist", tmp_path).train_x[0].sum()) == 0


# Bad MHIST files (csv, zip, png), each named with its row: tests/test_bad_inputs.py


def test_teacher_and_student_on_mhist_format_data(tmp_path):
    """ResNet50 teacher and MobileNetV2 student (random init), small images, on CPU, in seconds."""
    from kd import train
    from kd.config import make_config

    make_mhist(tmp_path / "MHIST", n_train=8, n_test=6, size=32)
    t = train.run(make_config(dataset="mhist", method="teacher", pretrained="none", epochs=1, batch_size=4),
                  tmp_path / "t", data_root=tmp_path, device="cpu")
    s = train.run(make_config(dataset="mhist", method="kd", pretrained="none", epochs=1, batch_size=4,
                              alpha=0.5, temperature=4.0, teacher=str(tmp_path / "t")),
                  tmp_path / "s", data_root=tmp_path, device="cpu")
    assert t["config"]["model"] == "resnet50" and s["config"]["model"] == "mobilenet_v2"
    assert t["params"] == 23_512_130 and s["params"] == 2_226_434  # 2-way heads
    for r in (t, s):
        m = r["metrics"]
        assert set(m) >= {"test_accuracy", "f1_hp", "f1_ssa", "macro_f1", "roc_auc", "confusion"}
        assert sum(map(sum, m["confusion"])) == 6 and 0 <= m["f1_ssa"] <= 1


def test_pretrained_weights_missing_offline_say_how_to_get_them(tmp_path, monkeypatch, capsys):
    from kd import models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache, and no network here
    monkeypatch.setattr("torch.hub.load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(UserError, match="pretrained weights .* for resnet50 are not in torchvision's cache") as e:
        models.build("resnet50", 2, (3, 32, 32))
    assert "kdsweep weights" in e.value.hint
    from sweep.cli import main  # kdsweep weights itself, offline: a hint that is not itself

    assert main(["weights"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: pretrained weights ") and err[1] == (
        f"hint: run it where download.pytorch.org answers (a login node), then share {tmp_path}/torch/hub/checkpoints "
        "(TORCH_HOME) with the jobs"), err


def test_binary_metrics_by_hand():
    import torch

    from kd.metrics import binary

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, 1, 1, 1])  # predictions: 0, 1, 1, 0, 1
    m = binary(logits, y, ("hp", "ssa"))
    assert m["confusion"] == [[1, 1], [1, 2]]
    assert m["f1_ssa"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["f1_hp"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    # scores (l1 - l0): neg -2, 1; pos 3, -1, 2 -> pairs won: 3>-2,3>1,-1>-2,2>-2,2>1 = 5 of 6
    assert m["roc_auc"] == pytest.approx(5 / 6)


def test_mhist_sweep_collects_f1_columns_and_draws_the_f1_figure(tmp_path):
    """A small MHIST-format sweep end to end: run, collect (F1, AUC, confusion columns), plot."""
    import pandas as pd

    from sweep import api

    make_mhist(tmp_path / "data" / "MHIST", n_train=8, n_test=6, size=32)
    sweep = tmp_path / "m.toml"
    sweep.write_text('name = "m"\ndataset = "mhist"\nmethods = ["teacher", "kd"]\n'
                     '[train]\nepochs = 2\nhead_epochs = 1\nbatch_size = 4\npretrained = "none"\naugment = true\n'
                     "[grid]\nalpha = [0.5]\ntemperature = [1, 4]\n")
    summary = api.run(sweep, results_root=tmp_path / "r", data_root=tmp_path / "data", jobs=2)
    assert not summary.failed and len(summary.done) == 3
    c = api.collect(sweep, results_root=tmp_path / "r")
    df = pd.read_parquet(c.results)
    assert {"f1_hp", "f1_ssa", "macro_f1", "roc_auc", "tn", "fp", "fn", "tp"} <= set(df.columns)
    assert (df[["tn", "fp", "fn", "tp"]].sum(axis=1) == 6).all()
    files = api.plot(sweep, results_root=tmp_path / "r")
    assert "accuracy_f1_vs_temperature.png" in [f.name for f in files]


def test_spaces_after_the_commas_of_the_header_are_read_as_around_values(tmp_path):
    """'Image Name, Majority Vote Label, ...' said: missing column 'Majority Vote Label' (found: ...
    Majority Vote Label ...)."""
    root = make_mhist(tmp_path / "MHIST")
    text = (root / "annotations.csv").read_text()
    header, rest = text.split("\n", 1)
    (root / "annotations.csv").write_text(header.replace(",", ", ") + "\n" + rest)
    assert len(data.load("mhist", tmp_path).train_y) == 6
