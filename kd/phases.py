"""The optimiser, and the reference study's transfer-learning schedule: first the head alone on a
frozen pretrained backbone, then fine-tuning from a given parameter on with a lower learning rate."""
from __future__ import annotations

import torch
from torch import nn

from kd.config import TrainConfig

HEAD, FULL = "head", "full"


def phase(config: TrainConfig, epoch: int) -> str:
    return HEAD if config.head_epochs and epoch < config.head_epochs else FULL


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015) with the fused kernel where the device has one: the same update,
    in one pass over memory instead of several (8x faster on a CPU for packed students)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr)


def head_names(model: nn.Module) -> set[str]:
    """The classifier head's parameter names: those of the last Linear layer."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return {f"{linears[-1]}.{n}".lstrip(".") for n, _ in model.get_submodule(linears[-1]).named_parameters()} \
        if linears else set()


def setup(model: nn.Module, params: dict[str, torch.Tensor], config: TrainConfig, which: str
          ) -> tuple[torch.optim.Optimizer, list[nn.Module]]:
    """Set which of ``params`` (the model's, by name, in its order) train in this phase; returns the
    phase's optimiser and the batch-norm layers to keep frozen (in eval mode).

    Without a schedule (no head_epochs, no unfreeze_from) everything trains at ``lr``. In the head
    phase only the head trains, at ``lr``; after it, the head and the parameters from index
    ``unfreeze_from`` on (all when unset) train at ``finetune_lr`` (default ``lr``).
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
    return adam([params[n] for n in names if n in trainable], lr), frozen
