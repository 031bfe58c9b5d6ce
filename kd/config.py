"""Training settings of one job: a frozen dataclass, validated once, without torch."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from typing import Any

from kd.errors import UserError, did_you_mean

METHODS = ("teacher", "scratch", "kd", "subclass-teacher", "subclass")
TEACHER_OF = {"kd": "teacher", "subclass": "subclass-teacher"}  # students -> the method of their teacher
TEACHER_METHODS = tuple(dict.fromkeys(TEACHER_OF.values()))  # jobs whose model.pt other jobs read
DATASETS = ("mnist-5k", "mnist", "fashion-mnist", "mnist-5k-binary", "mnist-binary", "fashion-mnist-binary", "mhist")
# Training images of each dataset where known without loading it (a data root may hold fewer; mhist: unknown)
TRAIN_SIZES = {"mnist-5k": 4000, "mnist": 60_000, "fashion-mnist": 60_000,
               "mnist-5k-binary": 4000, "mnist-binary": 60_000, "fashion-mnist-binary": 60_000}
MODELS = ("mnist-cnn", "mnist-mlp", "mobilenet_v2", "resnet50")  # kd.models.names(), known without torch
IMAGENET_MODELS = ("resnet50", "mobilenet_v2")  # those with pretrained weights (kd.models.IMAGENET_MODELS)
SEED_LIMIT = 2**32  # seeds are 0 .. 2**32 - 1
DEFAULT_MODELS = {"teacher": "mnist-cnn", "scratch": "mnist-mlp", "kd": "mnist-mlp",
                  "subclass-teacher": "mnist-cnn", "subclass": "mnist-mlp"}
# Which settings apply to which methods; the others are cleared (None) and are not part of a job's identity.
APPLIES = {"alpha": ("kd", "subclass"), "temperature": ("kd", "subclass"), "teacher": ("kd", "subclass"),
           "subclasses": ("subclass-teacher", "subclass"), "beta": ("subclass-teacher",),
           "aux_temperature": ("subclass-teacher",)}
# MHIST's models (the reference study's Part 2); the MNIST-shaped datasets use DEFAULT_MODELS
MHIST_MODELS = {"teacher": "resnet50", "subclass-teacher": "resnet50"}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting that determines a run (the data root and device do not)."""

    dataset: str = "mnist-5k"
    method: str = "kd"
    model: str = ""  # empty: the method's default (teacher CNN or student MLP)
    alpha: float | None = 0.5  # weight of the distillation term (reference study's convention); students (kd, subclass)
    temperature: float | None = 4.0  # students (kd, subclass)
    epochs: int = 12
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    drop_last: bool = True
    teacher: str | None = None  # teacher job folder (or checkpoint file) for methods kd, subclass
    subclasses: int | None = 5  # subclass methods: outputs per class (C x S outputs in all)
    beta: float | None = 1.0  # subclass-teacher: weight of the auxiliary loss
    aux_temperature: float | None = 1.0  # subclass-teacher: T_aux of the auxiliary loss
    pretrained: str | None = None  # ImageNet models: None/"imagenet" (torchvision's), "none", or a weights file
    augment: bool | None = None  # random vertical flip, 90-degree rotation, Gaussian noise (std 0.1), per batch
    head_epochs: int | None = None  # the first epochs train the head only (backbone frozen), at lr
    finetune_lr: float | None = None  # after head_epochs: this learning rate (default lr) ...
    unfreeze_from: int | None = None  # ... for the head and the backbone's parameters from this index on
    class_weights: bool | None = None  # weigh the hard-label loss by inverse class frequency
    precision: str | None = None  # "bf16": bfloat16 autocast for the training steps (default float32)
    channels_last: bool | None = None  # channels-last memory format (convolutional models on GPUs)

    def __post_init__(self) -> None:
        for key, value in resolve({k: getattr(self, k) for k in SETTINGS}).items():
            object.__setattr__(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_TYPES = {"dataset": str, "method": str, "model": str, "alpha": float, "temperature": float,
               "epochs": int, "batch_size": int, "lr": float, "seed": int, "drop_last": bool,
               "teacher": (str, type(None)), "subclasses": int, "beta": float, "aux_temperature": float,
               "pretrained": str, "augment": bool, "head_epochs": int, "finetune_lr": float, "unfreeze_from": int,
               "class_weights": bool, "precision": str, "channels_last": bool}
SETTINGS = tuple(FIELD_TYPES)
DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
FLOAT_SETTINGS = tuple(k for k, t in FIELD_TYPES.items() if t is float)


# What the members of one pack share: the data, the architecture and its outputs, the optimiser's
# settings and the number of steps. Seeds, teachers, alpha and temperature are per member.
PACK_SHARED = ("dataset", "model", "epochs", "batch_size", "lr", "drop_last", "subclasses")
PACKED_METHODS = ("kd", "scratch", "subclass", *TEACHER_METHODS)  # teachers pack with teachers of their method
# ... and what each member has of its own (every setting is in one of the three: tests/test_pack.py)
PER_MEMBER = ("method", "alpha", "temperature", "seed", "teacher", "beta", "aux_temperature", "pretrained")
NOT_PACKABLE = ("augment", "head_epochs", "finetune_lr", "unfreeze_from", "class_weights", "precision", "channels_last")
# Values that mean what leaving the setting out means (a job that writes them out packs as one that does not)
OFF_VALUES = {"augment": False, "class_weights": False, "channels_last": False, "precision": "fp32"}
# Jobs per pack when pack = "auto", by the kind of device that trains them and the model (others:
# alone), from bench/pack_scaling.py. On a CPU the rate per student-sample shows no trend from 1 to
# 120, so 128 reference MLPs is a memory bound (16 bytes a parameter: weights, gradients and Adam's
# two moments; 2.5 GB). On an H200 the rate grows with the pack: 3.3 M student-samples/s at 24,
# 8.1 M at 120 (2.7 GiB), 9.6 M at 480 (10.7 GiB); 120 gets 84% of the best rate in a quarter of
# the memory, so that a pack fits a small GPU too (a large one may take pack = 480). CNNs on a CPU alone:
# vmapped (grouped convolutions), five reference CNNs took 1.8x their time alone on this project's
# CPU and 1.2x on an H200; a call per member (kd.stack._looped) takes 0.75-0.89x on this CPU, too
# little to give up the parallelism of units (-j N, array tasks) and to let one failure take five
# jobs with it. On CUDA each member runs on a stream of its own: five teachers in one pack took
# 0.75x their time alone on an H100 (1.34 s an epoch against 5 x 0.356, bench/epoch_ways.py), and
# units side by side gain nothing there (-j 5 took as long as -j 1 on an H200: processes on one GPU take
# turns), so CNNs pack on a GPU that a run's units share: the 5-seed grid's teachers train as one
# unit. Array tasks have a GPU each and run side by side: there CNNs train alone (5 teachers on 5
# GPUs take a fifth of the time, where a pack of 5 on one GPU takes 3.75 times one teacher's).
# A pack of teachers holds teachers of one method, no students.
AUTO_PACK = {"cpu": {"mnist-mlp": 128}, "cuda": {"mnist-mlp": 120, "mnist-cnn": 8}}
TAKING_TURNS = ("mnist-cnn",)  # packed by "auto" only where units would take turns on one device


CUDA_GRAPHS_ENV = "KDSWEEP_CUDA_GRAPHS"
CUDA_GRAPHS = {"1": "training steps replayed as CUDA graphs on a GPU, the default", "0": "eager steps",
               "trace": "steps replayed from an FX trace on any device, a replay-safety check"}


def cuda_graphs() -> str:
    """``KDSWEEP_CUDA_GRAPHS``: "1" (default, also when empty), "0" or "trace" (kd.graphs); UserError
    if mistyped. Read without torch, so that a run can check it before it starts anything."""
    raw = os.environ.get(CUDA_GRAPHS_ENV, "1").strip() or "1"
    if raw not in CUDA_GRAPHS:
        raise UserError(f"{CUDA_GRAPHS_ENV}: '{raw}' is none of " + "; ".join(f"{k} ({v})" for k, v in CUDA_GRAPHS.items()))
    return raw


def switch(name: str, default: bool) -> bool:
    """An on/off setting from the environment (``KDSWEEP_TF32``, ``KDSWEEP_KEEP_CHECKPOINTS``): "1"
    or "0", the default when unset or empty; UserError if mistyped, where any other word meant on
    (or off) without a word said."""
    raw = os.environ.get(name, "").strip()
    if raw not in ("", "0", "1"):
        raise UserError(f"{name}: '{raw}' must be 1 (on) or 0 (off); default {int(default)}")
    return default if raw == "" else raw == "1"


def shown(value: Any) -> str:
    """A setting as names, tables and titles show it: floats short (0.001, 1e-05) but never so short
    that two values read the same (0.001 and 0.0010000001)."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(float(value))
    return str(value)


def auto_pack(model: str, device_kind: str, side_by_side: bool = False) -> int:
    """Jobs per pack of ``model`` under pack = "auto" on a device of kind "cpu" or "cuda";
    ``side_by_side``: each unit has a device of its own (array tasks), not one they take turns on."""
    if side_by_side and model in TAKING_TURNS:
        return 1
    return AUTO_PACK.get(device_kind, AUTO_PACK["cpu"]).get(model, 1)


def packable(settings: dict[str, Any]) -> bool:
    """Whether a job may train in a pack: students whose teacher's logits can be cached (no
    augmentation) and that train with the plain schedule, loss and float32 arithmetic."""
    return settings["method"] in PACKED_METHODS and not any(_on(k, settings.get(k)) for k in NOT_PACKABLE)


def _on(key: str, value: Any) -> bool:
    """Whether a setting asks for more than the default does ("fp32" written out, augment = false: not)."""
    off = OFF_VALUES.get(key)
    return bool(value) and not (type(value) is type(off) and value == off)


def pack_key(settings: dict[str, Any]) -> tuple:
    """Jobs with the same key may train in one pack (a student without a teacher packs apart from
    those that have one: it need not wait for a teacher; a teacher packs with teachers of its own
    method: other jobs wait for it, and a subclass teacher's loss is its own)."""
    method = settings["method"]
    return (*(settings.get(k) for k in PACK_SHARED), settings.get("teacher") is None,
            method if method in TEACHER_METHODS else None)


def resolve(settings: dict[str, Any]) -> dict[str, Any]:
    """All settings of a job: defaults filled in, ints made floats where floats are due, and the
    settings that do not apply to its method cleared (they are not part of the job's identity)."""
    cfg = {**DEFAULTS, **settings}
    if not cfg["model"]:
        cfg["model"] = (MHIST_MODELS.get(cfg["method"], "mobilenet_v2") if cfg["dataset"] == "mhist"
                        else DEFAULT_MODELS.get(cfg["method"], ""))
    for key, methods in APPLIES.items():
        if cfg["method"] not in methods:
            cfg[key] = None
    if cfg["method"] in TEACHER_OF and cfg["alpha"] == 0:  # no distillation term: no teacher, no temperature
        cfg["temperature"] = cfg["teacher"] = None
    for key in FLOAT_SETTINGS:
        value = cfg[key]
        if isinstance(value, int) and not isinstance(value, bool):
            cfg[key] = float(value)
    return cfg


def teacher_problem(student: dict[str, Any], teacher: dict[str, Any]) -> tuple[str, str] | None:
    """What keeps a student (resolved settings) from distilling from a teacher (its settings), as
    kd.teacher.load would find once the teacher is trained: (the setting, why), else None."""
    if student["dataset"] != teacher["dataset"]:
        return "dataset", (f"the teacher trains on '{teacher['dataset']}', its student on '{student['dataset']}': "
                           "a teacher's logits are for its own dataset's images")
    if student["method"] == "subclass" and student["subclasses"] != teacher["subclasses"]:
        return "subclasses", (f"the teacher has {teacher['subclasses']} per class, its subclass student "
                              f"{student['subclasses']}: a student matches its teacher's outputs")
    return None


def check_value(key: str, value: Any, where: str = "", at: str | None = None) -> Any:
    """Check one setting's type and range; returns it normalised (ints to floats where a float is due).

    Errors start with ``at`` (default: ``where`` + key), so they name the file and key path.
    """
    at = at or f"{where}{key}"
    if key not in FIELD_TYPES:
        raise UserError(f"{at}: unknown setting ({did_you_mean(key, SETTINGS)})")
    want = FIELD_TYPES[key]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1023 else math.inf  # float() of a huge int overflows
    ok = isinstance(value, want) and not (want in (int, float) and isinstance(value, bool))
    if not ok:
        name = want.__name__ if isinstance(want, type) else "string or none"
        raise UserError(f"{at}: expected {name}, got {value!r}")
    problem = _range_problem(key, value) if key in RANGES else _word_problem(key, value)
    if problem:
        raise UserError(f"{at}: {problem}")
    return value


# Every number's range: (lowest, highest, lowest excluded). The highest values are far beyond any
# sensible run; they keep arithmetic from overflowing (a temperature's square scales the loss) and
# seeds within what torch's generators take (seed * 1_000_003 + epoch must stay below 2**63).
RANGES: dict[str, tuple[float, float, bool]] = {
    "alpha": (0.0, 1.0, False), "temperature": (0.01, 1e4, False), "aux_temperature": (0.01, 1e4, False),
    "lr": (0.0, 10.0, True), "finetune_lr": (0.0, 10.0, True), "beta": (0.0, 1e4, False),
    "epochs": (1, 100_000, False), "head_epochs": (0, 100_000, False), "batch_size": (1, 1_000_000, False),
    "seed": (0, SEED_LIMIT - 1, False), "subclasses": (1, 1000, False), "unfreeze_from": (0, 100_000, False),
}


def _range_problem(key: str, value: float) -> str | None:
    low, high, open_low = RANGES[key]
    if key == "alpha" and not low <= value <= high:  # nan fails both comparisons
        return f"{value!r} must be in [0, 1]"
    above = f"{'>' if open_low else '>='} {low:g}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} must be a finite number {above}"
    if value < low or (open_low and value == low):
        return f"{value!r} must be {above}"
    if value > high and key == "seed":
        return f"{value!r} must be < 2**32 = {SEED_LIMIT:,} (seed * 1_000_003 + epoch seeds torch's generators)"
    if value > high:
        return f"{value!r} must be <= {high:,.0f}"
    return None


def _word_problem(key: str, value: Any) -> str | None:
    if key == "dataset" and value not in DATASETS:
        return f"unknown dataset {value!r} ({did_you_mean(value, DATASETS)})"
    if key == "model" and value and value not in MODELS:
        return f"unknown model {value!r} ({did_you_mean(value, MODELS)})"
    if key == "method" and value not in METHODS:
        return f"unknown method {value!r} ({did_you_mean(value, METHODS)})"
    if key == "precision" and value not in ("fp32", "bf16"):
        return f"{value!r} is not one of fp32, bf16"
    if key == "pretrained" and not value.strip():
        return "empty (imagenet, none, or a weights file)"
    return None


def make_config(where: str = "", **settings: Any) -> TrainConfig:
    """Build a validated TrainConfig; errors name the setting (prefixed by ``where``)."""
    checked = {k: check_value(k, v, where) for k, v in settings.items()}
    cfg = TrainConfig(**checked)
    if cfg.method in TEACHER_OF and cfg.alpha > 0 and not cfg.teacher:
        raise UserError(f"{where}teacher: method '{cfg.method}' with alpha > 0 needs a teacher")
    problem = combination_problem(cfg.to_dict())
    if problem:
        raise UserError(f"{where}{problem[0]}: {problem[1]}")
    return cfg


def combination_problem(settings: dict[str, Any]) -> tuple[str, str] | None:
    """What is wrong between a job's resolved settings, each valid alone: (the setting to name, the
    problem), else None. The batch size against the dataset's size where that is known without
    loading it (kd.train refuses it again once the data is loaded)."""
    head, epochs = settings["head_epochs"], settings["epochs"]
    if settings.get("pretrained") not in (None, "none") and settings["model"] not in IMAGENET_MODELS:
        return "pretrained", (f"{settings['pretrained']!r}: only the ImageNet models ({', '.join(IMAGENET_MODELS)}) "
                              f"load weights; {settings['model']} starts from its own initialisation")
    if head and head >= epochs:
        return "head_epochs", f"{head} must be less than epochs ({epochs}), which counts both phases"
    if settings.get("finetune_lr") is not None and head is None and settings.get("unfreeze_from") is None:
        return "finetune_lr", ("is the learning rate after head_epochs (or of the layers from unfreeze_from); "
                               "with neither set every parameter trains at one rate: set lr instead")
    n = TRAIN_SIZES.get(settings["dataset"])
    if n is not None and settings["drop_last"] and settings["batch_size"] > n:
        return "batch_size", (f"{settings['batch_size']} is larger than the training set of '{settings['dataset']}' "
                              f"({n:,} images): with drop_last no step would be taken")
    return None
