"""One unit of work: train a teacher, a student from scratch, or a distilled student.

``run(config, out_dir)`` is called the same way by a test, a notebook, a local process
and a SLURM task. The output folder holds ``checkpoint.pt`` (after every epoch),
``model.pt`` (final weights) and ``result.json`` (written last: the job is done).
Started again on the same folder, a job resumes from its last checkpoint.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import kd
from kd import atomic, data as kd_data, metrics as kd_metrics, models, phases, teacher as kd_teacher
from kd.config import TrainConfig
from kd.losses import class_logits, kd_loss, subclass_student_loss, subclass_teacher_loss

log = logging.getLogger(__name__)
RESULT, CHECKPOINT, MODEL = "result.json", "checkpoint.pt", kd_teacher.MODEL


def run(config: TrainConfig, out_dir: Path | str, *, data_root: Path | None = None,
        device: str | None = None, dataset: kd_data.Dataset | None = None,
        stop: Callable[[], bool] | None = None, teacher_mode: str = "cached") -> dict[str, Any] | None:
    """Train one job into ``out_dir`` and return its result (None if ``stop()`` asked to stop early).

    ``stop`` is polled after each epoch's checkpoint: a preempted or time-limited job
    stops there and a later call resumes from that checkpoint. ``teacher_mode`` "cached"
    reads the teacher's logits from its cache (exact here: no augmentation), "online"
    runs the teacher on every batch.
    """
    out = Path(out_dir)
    if (out / RESULT).exists():  # finished work is never redone
        return json.loads((out / RESULT).read_text())
    dev = pick_device(device)
    seen_by_teacher = kd_teacher.FORWARD_IMAGES["count"]
    teacher_file = kd_teacher.model_file(config.teacher) if config.teacher else None
    data = dataset or kd_data.load(config.dataset, data_root)
    teacher_net, teacher_logits_all = None, None
    if teacher_file and (teacher_mode == "online" or config.augment):  # augmented inputs: no cache is exact
        teacher_net = kd_teacher.load(teacher_file, data, dev)
    elif teacher_file:
        teacher_logits_all = kd_teacher.cached_logits(teacher_file, data, dev).to(dev)
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs are known good

    torch.manual_seed(config.seed)
    model = models.build(config.model, outputs(config, data), data.input_shape, config.pretrained).to(dev)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start_epoch, history = 0, []
    state = load_checkpoint(out / CHECKPOINT, dev)
    if state is not None:
        model.load_state_dict(state["model"])
        start_epoch, history = state["epoch"], state["history"]
        log.info("resuming %s from epoch %d", out, start_epoch)
    phase = phases.phase(config, start_epoch)
    optimizer, frozen = phases.setup(model, config, phase)
    if state is not None and phases.phase(config, start_epoch - 1) == phase:  # at the phase change: a new one
        optimizer.load_state_dict(state["optimizer"])

    train_x, train_y = data.train_x.to(dev), data.train_y.to(dev)
    test_x, test_y = data.test_x.to(dev), data.test_y.to(dev)
    weight = class_weights(config, data, dev)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        if phases.phase(config, epoch) != phase:  # head-only training is over: fine-tune, with a new optimiser
            phase = phases.phase(config, epoch)
            optimizer, frozen = phases.setup(model, config, phase)
        loss_fn = objective(config, weight) if phase != "head" else hard_labels(config, weight)
        model.train()
        for m in frozen:  # frozen layers keep their batch-norm statistics, as Keras' trainable=False does
            m.eval()
        loss_sum, seen = torch.zeros((), device=dev), 0
        for idx in tqdm(epoch_batches(config, epoch, len(train_y), dev), desc=f"epoch {epoch + 1}/{config.epochs}",
                        leave=False, disable=None):
            x, y = kd_data.to_float(train_x[idx]), train_y[idx]
            if config.augment:
                x = augment(x)
            if config.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                logits = model(x).float()  # the losses in float32
            teacher_logits = (teacher_logits_all[idx] if teacher_logits_all is not None
                              else kd_teacher.forward(teacher_net, x if config.augment else train_x[idx])
                              if teacher_net is not None else None)
            loss = loss_fn(logits, teacher_logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            seen += len(idx)
        test_loss, test_acc = evaluate(model, test_x, test_y, config.subclasses if is_subclass(config) else 1)
        history.append(epoch_record(epoch, config, (loss_sum / max(seen, 1)).item(), test_loss, test_acc,
                                    time.perf_counter() - t0))
        save_checkpoint(out / CHECKPOINT, model.state_dict(), optimizer.state_dict(), history, config)
        if stop is not None and epoch + 1 < config.epochs and stop():
            log.info("stopping after epoch %d at request; rerun to resume", epoch + 1)
            return None
    return finish(config, out, model, history, data, dev,
                  teacher_forward_images=kd_teacher.FORWARD_IMAGES["count"] - seen_by_teacher)


def is_subclass(config: TrainConfig) -> bool:
    return config.method in ("subclass", "subclass-teacher")


def outputs(config: TrainConfig, data: kd_data.Dataset) -> int:
    """The model's outputs: one per class, or C x S subclass logits for the subclass methods."""
    return data.num_classes * (config.subclasses if is_subclass(config) else 1)


def class_weights(config: TrainConfig, data: kd_data.Dataset, device: torch.device) -> torch.Tensor | None:
    """With ``class_weights``: N / (C * count of the class) for each class of the training set, so
    that every class weighs the same in the hard-label loss (MHIST: 1,545 HP against 630 SSA)."""
    if not config.class_weights:
        return None
    counts = torch.bincount(data.train_y, minlength=data.num_classes).clamp_min(1).float()
    return (len(data.train_y) / (data.num_classes * counts)).to(device)


def objective(config: TrainConfig, weight: torch.Tensor | None = None
              ) -> Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]:
    """The method's loss as f(logits, teacher logits or None, labels)."""
    c = config
    if c.method == "kd":
        return lambda s, t, y: kd_loss(s, t, y, c.alpha, c.temperature, weight)
    if c.method == "subclass-teacher":
        return lambda s, t, y: subclass_teacher_loss(s, y, c.subclasses, c.beta, c.aux_temperature, weight)
    if c.method == "subclass":
        return lambda s, t, y: subclass_student_loss(s, t, y, c.subclasses, c.alpha, c.temperature or 1.0, weight)
    return lambda s, t, y: F.cross_entropy(s, y, weight=weight)


def hard_labels(config: TrainConfig, weight: torch.Tensor | None = None):
    """Cross-entropy on the class logits alone: the students' loss while only their head trains."""
    if is_subclass(config):
        return lambda s, t, y: F.cross_entropy(class_logits(s, config.subclasses), y, weight=weight)
    return lambda s, t, y: F.cross_entropy(s, y, weight=weight)


def augment(x: torch.Tensor, noise_std: float = 0.1) -> torch.Tensor:
    """The reference study's augmentation, per batch on the device: random vertical flip, random
    rotation by a multiple of 90 degrees (square images), additive Gaussian noise."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
    if x.shape[2] == x.shape[3]:
        k = torch.randint(0, 4, (len(x),), device=x.device)
        for turns in (1, 2, 3):
            x = torch.where((k == turns).view(-1, 1, 1, 1), torch.rot90(x, turns, dims=(2, 3)), x)
    return x + noise_std * torch.randn_like(x)


def pick_device(device: str | None) -> torch.device:
    """The device to train on (CUDA when present), with TF32 matmuls allowed on CUDA unless
    ``KDSWEEP_TF32=0``: about 3x the float32 matmul rate of an H100 for a 10-bit mantissa in the
    products' inputs, which leaves accuracy as it is for these models."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        tf32 = os.environ.get("KDSWEEP_TF32", "1") != "0"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return dev


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015) with the fused kernel where the device has one: the same update,
    in one pass over memory instead of several (8x faster on a CPU for the packed students)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr)


def epoch_batches(config: TrainConfig, epoch: int, n: int, device: torch.device):
    """The epoch's batches: a permutation seeded by (seed, epoch), the same on resume and in a pack."""
    order = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return kd_data.batch_indices(n, config.batch_size, generator=order, drop_last=config.drop_last, device=device)


def epoch_record(epoch: int, config: TrainConfig, train_loss: float, test_loss: float, test_acc: float,
                 seconds: float) -> dict[str, Any]:
    log.info("epoch %3d/%d  train_loss %.4f  test_loss %.4f  test_acc %.4f  %.1fs",
             epoch + 1, config.epochs, train_loss, test_loss, test_acc, seconds)
    return {"epoch": epoch + 1, "train_loss": train_loss, "test_loss": test_loss, "test_accuracy": test_acc,
            "seconds": seconds}


def finish(config: TrainConfig, out: Path, model: torch.nn.Module, history: list[dict], data: kd_data.Dataset,
           dev: torch.device, **extra: Any) -> dict[str, Any]:
    """Write the final weights, then ``result.json`` (last, atomically: the job is done)."""
    atomic.write_with(out / MODEL, lambda f: torch.save(  # config saved: a teacher knows its own outputs
        {"config": config.to_dict(), "state_dict": model.state_dict()}, f))
    metrics = {"test_accuracy": history[-1]["test_accuracy"], "test_loss": history[-1]["test_loss"],
               "train_loss": history[-1]["train_loss"]}
    if data.num_classes == 2:  # F1 per class, macro F1, ROC AUC, confusion matrix
        logits = models.logits_of(model, data.test_x.to(dev))
        if is_subclass(config):
            logits = class_logits(logits, config.subclasses)
        metrics.update(kd_metrics.binary(logits, data.test_y.to(dev), data.class_names))
    result = {
        "config": config.to_dict(),
        "metrics": metrics,
        "history": history,
        "params": models.count_params(model),
        "flops_per_sample": flops_per_sample(model, data.input_shape, dev),
        "wall_seconds": sum(h["seconds"] for h in history),
        "device": (f"{torch.cuda.get_device_name(dev)} (tf32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})"
                   if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"),
        "versions": versions(),
        **extra,
    }
    atomic.write_json(out / RESULT, result)
    return result


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, subclasses: int = 1,
             batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) over a whole split, on class predictions
    (for a subclass model: the logsumexp of each class's subclass logits)."""
    logits = models.logits_of(model, x, batch_size)
    if subclasses > 1:
        logits = class_logits(logits, subclasses)
    loss = F.cross_entropy(logits, y, reduction="sum")
    correct = (logits.argmax(dim=1) == y).sum()
    return loss.item() / len(y), correct.item() / len(y)


def flops_per_sample(model: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device) -> int:
    """Forward FLOPs for one sample, counted by torch.utils.flop_counter."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def save_checkpoint(path: Path, model_state: dict, optimizer_state: dict, history: list, config: TrainConfig) -> None:
    state = {"epoch": len(history), "history": history, "config": config.to_dict(), "model": model_state,
             "optimizer": optimizer_state, "rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic.write_with(path, lambda f: f.write(buf.getvalue()), fsync=False)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """A checkpoint's contents, restoring the RNG states it saved (dropout continues as if
    uninterrupted); None where there is none, or, with a warning, a damaged one (training then
    starts over)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        log.warning("checkpoint %s is damaged (%s: %s): starting this job over", path, e.__class__.__name__, e)
        return None
    torch.set_rng_state(state["rng_cpu"].cpu())
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
    return state


@functools.cache
def versions() -> dict[str, str | None]:
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(kd.__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "kd": kd.__version__, "git": commit}
