"""Atomic writes: all or nothing, and the file modes a user's umask asks for."""
import os
import stat

import pytest

from kd import atomic


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic.write_json(tmp_path / "result.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    atomic.write_text(tmp_path / "f", "old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.write_with(tmp_path / "f", fail)
    assert (tmp_path / "f").read_text() == "old" and os.listdir(tmp_path) == ["f"]


def test_files_written_from_threads_follow_the_umask(tmp_path):
    """A pack's results are written from threads (kd.train.write_all): reading the umask sets it
    to 0 for a moment, so two threads reading it at once could create a file 0666, or leave the
    process's umask at 0. Switching threads as often as possible (without the lock: some 0666 files
    in 3 of 5 runs of this test), every file has the umask's mode and the umask is what it was."""
    import sys

    from kd import train

    old, interval = os.umask(0o022), sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for r in range(30):
            assert train.write_all([lambda p=tmp_path / f"r{r}" / f"m{i}.json": atomic.write_text(p, "x" * 1000)
                                    for i in range(64)]) == [None] * 64  # each written
    finally:
        sys.setswitchinterval(interval)
        umask_after = os.umask(old)
    assert umask_after == 0o022
    modes = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("m*.json")}
    assert modes == {0o644}
