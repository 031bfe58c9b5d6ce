"""Where a result comes from: the versions of the code and libraries that computed it.

``versions()["git"]`` is the commit of the checkout that ``kd`` was imported from, or None when
there is none to name (no git, not a repository, a copy of ``kd`` inside some other repository);
``dirty`` says whether the package's tracked files (CODE_PATHS) differed from that commit, and
``diff_sha256`` is the hash of that ``git diff HEAD``, so results from the same uncommitted code
can be told apart from results from different uncommitted code. Edits to documents, tests or
results do not make a result's code dirty.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import kd

log = logging.getLogger(__name__)
CODE_ROOT = Path(kd.__file__).resolve().parent.parent  # the checkout that holds kd/, when it is one
CODE_PATHS = ("kd", "sweep", "pyproject.toml")  # what computes a result: the package and its dependencies
IMAGE_RECORD = Path("/etc/kd-sweep-image")  # written by the Dockerfile: the commit the image was built from


def git(*args: str, cwd: Path = CODE_ROOT) -> bytes | None:
    """The output of a git command run in ``cwd``, or None where git is missing or fails."""
    try:
        p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("git %s: %s", " ".join(args), e)
        return None
    if p.returncode != 0:  # not a repository, no commit yet, ...: git said so, there is no commit
        log.debug("git %s: exit %d: %s", " ".join(args), p.returncode, p.stderr.decode(errors="replace").strip())
        return None
    return p.stdout


def commit(root: Path = CODE_ROOT) -> str | None:
    """The commit checked out at ``root``, or None unless ``root`` is the top of a git work tree."""
    top = git("rev-parse", "--show-toplevel", cwd=root)
    if top is None or Path(top.decode().strip()).resolve() != root.resolve():
        return None  # not a checkout, or kd installed inside some other repository: its commit says nothing
    head = git("rev-parse", "--verify", "HEAD^{commit}", cwd=root)
    return head.decode().strip() if head else None


def diff(root: Path = CODE_ROOT) -> bytes | None:
    """``git diff HEAD -- kd sweep pyproject.toml`` of the checkout at ``root`` (empty when that code
    is committed), or None where there is no checkout."""
    if commit(root) is None:
        return None
    return git("diff", "--no-color", "--no-ext-diff", "HEAD", "--", *CODE_PATHS, cwd=root)


def diff_hash(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


@functools.cache
def versions(root: Path = CODE_ROOT) -> dict[str, Any]:
    """Python, torch, kd and the commit of the checkout at ``root`` (this code's); ``dirty`` and
    ``diff_sha256`` of its uncommitted changes to tracked files (both None without a checkout)."""
    import torch  # here, not at the top: sweep.collect reads the helpers above without torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "kd": kd.__version__,
                           "git": commit(root), "dirty": None, "diff_sha256": None, "container": container()}
    changes = diff(root) if out["git"] else None
    if changes is not None:
        out["dirty"] = bool(changes)
        out["diff_sha256"] = diff_hash(changes) if changes else None
    return out


def container(record: Path = IMAGE_RECORD) -> dict[str, Any] | None:
    """The kd-sweep image this process runs in (its record: the commit it was built from, when)
    and the runtime that started it, as far as the runtime says; None outside the image."""
    try:
        image = json.loads(record.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        image = {"image": "kd-sweep", "record": f"unreadable: {e}"}
    out = {**image, "runtime": runtime()}
    if not _installed(CODE_ROOT):  # a host's checkout put in front of the image's code (PYTHONPATH)
        out["code"] = str(CODE_ROOT)
        log.warning("kd runs from %s, not from the image's own installation: the image's commit does not "
                    "name this code", CODE_ROOT)
    return out


def _installed(root: Path) -> bool:
    """Whether ``root`` (the folder that holds kd/) is this python's site-packages, where the image's
    build installed the project."""
    import site
    import sysconfig

    places = {*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return any(root == Path(p).resolve() for p in places)


def runtime() -> str:
    """The container runtime, from the marks each leaves: an environment variable or a file."""
    if os.environ.get("CH_RUNNING"):  # Charliecloud's ch-run
        return "charliecloud"
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        return "apptainer"
    if os.environ.get("container") == "podman" or Path("/run/.containerenv").exists():
        return "podman"
    if Path("/.dockerenv").exists():
        return "docker"
    return "unknown"
