"""Session-wide trained teachers: one training shared by every test that only reads a teacher."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, small):
    """A reference CNN teacher (1 epoch on the 1,000-digit slice), finished, in its own folder."""
    from kd import train
    from kd.config import make_config

    out = tmp_path_factory.mktemp("teacher")
    train.run(make_config(method="teacher", epochs=1, batch_size=100), out, dataset=small, device="cpu")
    return out


@pytest.fixture(scope="session")
def second_teacher_dir(tmp_path_factory, small):
    """Another teacher (seed 1): for packs whose members distil from different teachers."""
    from kd import train
    from kd.config import make_config

    out = tmp_path_factory.mktemp("teacher1")
    train.run(make_config(method="teacher", epochs=1, batch_size=100, seed=1), out, dataset=small, device="cpu")
    return out


@pytest.fixture(scope="session")
def tiny(small):
    """300 / 100 real digits: for the tests that train convolutional networks, several times over."""
    from kd.data import Dataset

    return Dataset("mnist-5k", small.train_x[:300], small.train_y[:300], small.test_x[:100], small.test_y[:100], 10)
