"""A finished teacher: its frozen model, and its logits cached next to its checkpoint.

The cache (FKD-style, Shen & Xing, ECCV 2022) holds the teacher's logits for the training
images, computed once and used by every student of that teacher. It is exact when the
teacher is frozen, in eval mode, and sees the same un-augmented inputs the students see; it
stores logits, not probabilities, so one cache serves every temperature. It is keyed by the
checkpoint's hash and the dataset's fingerprint, and rebuilt when either changes.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from kd import data as kd_data, models, results, sealed
from kd.errors import DamagedTeacher, UserError, first_line

log = logging.getLogger(__name__)
MODEL = "model.pt"
# counters for the benchmark: how many images went through a teacher's forward pass in this process
FORWARD_IMAGES = {"count": 0}


def model_file(path: str | Path | None) -> Path:
    """The finished teacher's ``model.pt``, given the file itself or its job folder. A folder's
    result.json says whether it is the file written (its size; ``verified``: its hash); a folder
    whose result was kept aside as damaged (by the teacher's student, or its own rerun) holds no
    teacher until it is trained again, whatever model.pt is there."""
    if not path:
        raise UserError("teacher: method 'kd' with alpha > 0 needs a teacher (--teacher DIR)")
    p = Path(path)
    file = p / MODEL if p.is_dir() else p
    try:
        result = results.read(p / results.RESULT) if p.is_dir() else None
    except results.DamagedResult:
        result = None
    if result is not None:
        problem = results.model_problem(p, result)
        if problem:
            raise DamagedTeacher(file, problem)
    elif p.is_dir() and any(p.glob(f"{results.RESULT}.damaged-*")):
        raise DamagedTeacher(file, "its result was kept aside as damaged; it has not been trained again since")
    if not file.is_file():
        hint = "has the teacher job finished?" if p.is_dir() else None
        raise UserError(f"teacher: {file} not found", hint=hint)
    return file


def _recorded(file: Path) -> dict | None:
    """What the result.json beside ``file`` records of it (name, bytes, sha256), if it does."""
    try:
        record = (results.read(file.parent / results.RESULT) or {}).get("model_file")
    except results.DamagedResult:
        return None
    return record if isinstance(record, dict) and record.get("name", MODEL) == file.name else None


def verified(file: Path) -> str:
    """``file``'s SHA-256 (hex), checked against the one its job's result.json records (torch.load
    reads a file with bytes overwritten in its middle without complaint)."""
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    record = _recorded(file)
    if record and record.get("sha256") not in (None, digest):
        raise DamagedTeacher(file, f"{len(data):,} bytes, not the ones written: its SHA-256 differs "
                                          f"from the one its result.json records")
    return digest


def load(file: Path, data: kd_data.Dataset, device: torch.device, outputs: int | None = None) -> torch.nn.Module:
    """A finished teacher from its ``model.pt``, frozen and in eval mode; ``outputs``: what the
    student has, which the teacher must match (a subclass teacher has C x S). Its bytes are the
    caller's to check first (``verified``), once."""
    try:
        saved = torch.load(file, map_location=device, weights_only=True)
        cfg = saved["config"]
    except Exception as e:
        why = first_line(e, 100)
        if (file.parent / results.RESULT).exists():  # a finished teacher's own file that does not load: damaged
            raise DamagedTeacher(file, f"it does not load ({why})") from None
        raise UserError(f"teacher: {file} is not a kd model file ({why})") from None
    if cfg["dataset"] != data.name:
        raise UserError(f"teacher: {file} was trained on '{cfg['dataset']}', not '{data.name}'")
    has = data.num_classes * (cfg.get("subclasses") or 1)  # a subclass teacher has C x S outputs
    _check_outputs(file, cfg["method"], has, outputs)
    teacher = models.build(cfg["model"], has, data.input_shape, "none").to(device)  # weights: from the file
    teacher.load_state_dict(saved["state_dict"])
    if any(isinstance(m, torch.nn.Conv2d) for m in teacher.modules()):
        # channels-last convolutions: the reference CNN's logits 2-3x faster on a CPU (oneDNN), and
        # the layout cuDNN's fastest kernels take; the same logits up to float rounding
        teacher = teacher.to(memory_format=torch.channels_last)
    teacher.eval().requires_grad_(False)
    return teacher


def forward(teacher: torch.nn.Module, x: torch.Tensor, stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """The teacher's logits for uint8 images (or, already scaled and augmented, float ones)."""
    FORWARD_IMAGES["count"] += len(x)
    if x.dtype == torch.uint8:
        return models.logits_of(teacher, x, models.predict_batch(x.device), stop)
    with torch.no_grad():
        return teacher(x)


def _check_outputs(file: Path, method: str, has: int, wanted: int | None) -> None:
    if wanted is not None and has != wanted:
        raise UserError(f"teacher: {file} is a {method} job with {has} outputs; this student has {wanted}",
                        hint="method 'kd' distils from a 'teacher' job, method 'subclass' from a 'subclass-teacher' "
                             "with the same subclasses")


def cached_logits(file: Path, data: kd_data.Dataset, device: torch.device, outputs: int | None = None,
                  digest: str | None = None, stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """The teacher's logits on the training set, from the cache beside ``file`` or computed and cached;
    ``digest``: the file's SHA-256 where the caller has checked it already (``verified``); ``stop``:
    asked between batches of the forward pass (kd.errors.Stopped; nothing cached)."""
    model_hash = (digest or verified(file))[:16]
    cache = file.parent / f"logits-{data.name}-{data.fingerprint()}.pt"
    if cache.exists():
        try:
            saved = sealed.load(cache, map_location=device)
            fresh = saved["model_sha256"] == model_hash and saved["train"].shape[0] == len(data.train_y)
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("teacher cache %s unreadable (%s): recomputing", cache, e)
        else:
            if fresh:
                _check_outputs(file, "teacher", saved["train"].shape[1], outputs)
                return saved["train"]
            log.info("teacher cache %s is stale: recomputing", cache)
    teacher = load(file, data, device, outputs)
    train = forward(teacher, data.train_x.to(device), stop)
    try:
        sealed.save(cache, {"model_sha256": model_hash, "dataset": data.name, "train": train.cpu()})
    except (UserError, OSError) as e:  # a teacher file in a read-only folder (a colleague's; `kdsweep train --teacher`)
        log.warning("teacher logits not cached (%s): the next student computes them again", e)
    else:
        log.info("teacher logits cached in %s", cache)
    return train
