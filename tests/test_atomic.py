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
