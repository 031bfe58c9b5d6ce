"""The optimiser, and the reference study's transfer-learning schedule: first the head alone on a
frozen pretrained backbone, then fine-tuning from a given parameter on with a lower learning rate."""
from __future__ import annotations

import inspect

import torch
from torch import nn

from kd.config import TrainConfig
from kd.errors import UserError

HEAD, FULL = "head", "full"


def phase(config: TrainConfig, epoch: int) -> str:
    return HEAD if config.head_epochs and epoch < config.head_epochs else FULL


def skip_dynamo_import() -> None:
    """torch.optim wraps Adam's update and the optimiser's zero_grad/state_dict/... in
    ``torch._disable_dynamo``, which imports torch._dynamo on the first call (about 1.1 s of this
    2-core CPU, in every process that trains) only to switch off a compiler this project never
    runs. That wrapper first looks for the function it caches on the wrapped function; giving it
    the function itself skips the import and calls the same code. It changes torch for the whole
    process (under torch.compile the compiler would then trace the optimiser), so only the
    processes kd-sweep owns call it (its workers, Slurm tasks, ``kdsweep train``), not an import of
    kd. A torch without such wrappers is left alone."""
    from torch.optim import adam as adam_module

    for wrapped in (adam_module.adam, *(getattr(torch.optim.Optimizer, n, None) for n in
                                        ("zero_grad", "state_dict", "load_state_dict", "add_param_group"))):
        fn = getattr(wrapped, "__wrapped__", None)
        if fn is not None and getattr(fn, "__code__", None) is not None and not hasattr(fn, "__dynamo_disable"):
            setattr(fn, "__dynamo_disable", fn)


_ADAM_STEP = inspect.unwrap(torch.optim.Adam.step)  # without the wrapper that imports torch._dynamo


class Adam(torch.optim.Adam):
    """torch's Adam, the same update: its step without the wrapper that imports torch._dynamo at
    every call (to place graph breaks for torch.compile) and sets grad mode, which this does."""

    @torch.no_grad()
    def step(self, closure=None):
        return _ADAM_STEP(self, closure)


def adam(params, lr: float, capturable: bool = False) -> Adam:
    """Adam (Kingma & Ba 2015) with the fused kernel where the device has one: the same update,
    in one pass over memory instead of several (8x faster on a CPU for packed students).
    ``capturable``: its step count kept on the device, so that a CUDA graph can replay the update."""
    params = list(params)
    try:
        return Adam(params, lr=lr, fused=True, capturable=capturable)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return Adam(params, lr=lr, capturable=capturable)


def head_names(model: nn.Module) -> set[str]:
    """The classifier head's parameter names: those of the last Linear layer."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return {f"{linears[-1]}.{n}".lstrip(".") for n, _ in model.get_submodule(linears[-1]).named_parameters()} \
        if linears else set()


def check_unfreeze(config: TrainConfig, model: nn.Module) -> None:
    """Refuse an ``unfreeze_from`` past the model's last parameter tensor: it froze all but the
    head, silently (the range a sweep file allows cannot know the model's count)."""
    n = len(list(model.parameters()))
    if config.unfreeze_from is not None and config.unfreeze_from >= n:
        raise UserError(f"unfreeze_from: {config.unfreeze_from}, but {config.model} has {n} parameter tensors "
                        f"(0 .. {n - 1}): no layer but the head would train",
                        hint="'kdsweep models' counts each model's parameter tensors")


def setup(model: nn.Module, params: dict[str, torch.Tensor], config: TrainConfig, which: str,
          capturable: bool = False) -> tuple[torch.optim.Optimizer, list[nn.Module]]:
    """Set which of ``params`` (the model's, by name, in its order) train in this phase; returns the
    phase's optimiser and the batch-norm layers to keep frozen (in eval mode).

    In the head phase only the head trains, at ``lr``; after it (from the start where head_epochs
    is 0 or unset), the head and the parameters from index ``unfreeze_from`` on (all when unset)
    train at ``finetune_lr`` (default ``lr``). A sweep refuses finetune_lr with neither head_epochs
    nor unfreeze_from (kd.config.combination_problem): then it would simply be the rate.
    """
    names = list(params)
    head = head_names(model)
    if which == HEAD:
        trainable, lr = head, config.lr
    else:
        trainable, lr = set(names[config.unfreeze_from or 0:]) | head, config.finetune_lr or config.lr
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    frozen = [m for prefix, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and not any(n in trainable for n, _ in m.named_parameters(prefix=prefix))]
    return adam([params[n] for n in names if n in trainable], lr, capturable), frozen
