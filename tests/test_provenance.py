"""Which code a result came from: a commit only where git names one, and uncommitted changes flagged."""
import hashlib
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from kd import provenance

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
                   cwd=root, check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "checkout"
    (root / "kd").mkdir(parents=True)
    (root / "kd" / "train.py").write_text("x = 1\n")
    _git(root, "init", "-q")
    return root


def test_outside_a_repository_there_is_no_commit(tmp_path):
    assert provenance.commit(tmp_path) is None and provenance.diff(tmp_path) is None


def test_a_repository_without_commits_has_no_commit(checkout):
    """`git rev-parse HEAD` prints "HEAD" there and fails: the exit status is what counts."""
    assert provenance.commit(checkout) is None


def test_a_folder_inside_some_other_repository_has_no_commit(checkout):
    _git(checkout, "add", ".")
    _git(checkout, "commit", "-q", "-m", "one")
    assert provenance.commit(checkout / "kd") is None  # kd copied into another project: not its commit


def test_commit_and_dirty_tree(checkout):
    _git(checkout, "add", ".")
    _git(checkout, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    assert provenance.commit(checkout) == head and len(head) == 40
    assert provenance.diff(checkout) == b""
    (checkout / "kd" / "train.py").write_text("x = 2\n")
    changes = provenance.diff(checkout)
    assert b"-x = 1\n+x = 2\n" in changes
    assert provenance.diff_hash(changes) == hashlib.sha256(changes).hexdigest()


def test_without_git_there_is_no_commit(checkout, monkeypatch):
    _git(checkout, "add", ".")
    _git(checkout, "commit", "-q", "-m", "one")
    monkeypatch.setenv("PATH", str(checkout / "no-such-dir"))
    assert provenance.git("rev-parse", "HEAD", cwd=checkout) is None
    assert provenance.commit(checkout) is None


def test_versions_record_the_commit_and_the_changes(checkout, tmp_path):
    _git(checkout, "add", ".")
    _git(checkout, "commit", "-q", "-m", "one")
    clean = provenance.versions(checkout)
    assert {"python", "torch", "kd"} <= set(clean) and len(clean["git"]) == 40
    assert clean["dirty"] is False and clean["diff_sha256"] is None
    (checkout / "kd" / "train.py").write_text("x = 2\n")
    provenance.versions.cache_clear()
    dirty = provenance.versions(checkout)
    assert dirty["git"] == clean["git"] and dirty["dirty"] is True
    assert dirty["diff_sha256"] == hashlib.sha256(provenance.diff(checkout)).hexdigest()
    elsewhere = provenance.versions(tmp_path / "checkout" / "kd")
    assert (elsewhere["git"], elsewhere["dirty"], elsewhere["diff_sha256"]) == (None, None, None)


def test_versions_of_this_code():
    v = provenance.versions()
    assert v["git"] != "HEAD" and (v["git"] is None) == (v["dirty"] is None)


def test_the_image_a_job_ran_in_is_recorded(tmp_path, monkeypatch):
    """Inside the image its record (the Dockerfile's /etc/kd-sweep-image) and the runtime; outside, None."""
    assert provenance.container(tmp_path / "absent") is None
    record = tmp_path / "kd-sweep-image"
    record.write_text('{"image": "kd-sweep", "commit": "abc123", "built": "2026-11-25T21:48:54Z"}\n')
    for var in ("CH_RUNNING", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER", "container"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CH_RUNNING", "Weird Al Yankovic")  # what ch-run 0.31 sets
    # this test's kd is a checkout's, not an installation's: inside an image, that is a host's code put in
    # front of the image's (PYTHONPATH): the image's commit does not name it, so where it ran from is said
    assert provenance.container(record) == {"image": "kd-sweep", "commit": "abc123", "built": "2026-11-25T21:48:54Z",
                                            "runtime": "charliecloud", "code": str(provenance.CODE_ROOT)}
    monkeypatch.setattr(provenance, "CODE_ROOT", Path(sysconfig.get_paths()["purelib"]))  # as the image installs it
    assert provenance.container(record) == {"image": "kd-sweep", "commit": "abc123", "built": "2026-11-25T21:48:54Z",
                                            "runtime": "charliecloud"}
    monkeypatch.delenv("CH_RUNNING")
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/kd.sif")
    assert provenance.container(record)["runtime"] == "apptainer"
    record.write_text("{damaged")
    assert provenance.container(record)["record"].startswith("unreadable")
