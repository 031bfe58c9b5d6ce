"""The reference study's transfer-learning schedule: first the head alone on a frozen pretrained
backbone, then fine-tuning from a given parameter on with a lower learning rate."""
from __future__ import annotations

import torch
from torch import nn

from kd.config import TrainConfig

HEAD, FULL = "head", "full"


def phase(config: TrainConfig, epoch: int) -> str:
    return HEAD if config.head_epochs and epoch < config.head_epochs else FULL


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier head: the last Linear layer and what follows it."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return list(linears[-1].parameters()) if linears else []


def setup(model: nn.Module, config: TrainConfig, which: str) -> tuple[torch.optim.Optimizer, list[nn.Module]]:
    """Set which parameters train in this phase; returns its optimiser and the frozen batch-norm layers.

    Without a schedule (no head_epochs, no unfreeze_from) everything trains at ``lr``, as before.
    In the head phase only the head trains, at ``lr``; after it, the head and the backbone's
    parameters from index ``unfreeze_from`` on (in ``model.parameters()`` order; all when unset)
    train at ``finetune_lr`` (default ``lr``).
    """
    from kd.train import adam

    params = list(model.parameters())
    head = {id(p) for p in head_parameters(model)}
    if which == HEAD:
        trainable = head
        lr = config.lr
    else:
        start = config.unfreeze_from or 0
        trainable = {id(p) for p in params[start:]} | head
        lr = config.finetune_lr or config.lr
    for p in params:
        p.requires_grad_(id(p) in trainable)
    frozen = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and not any(id(p) in trainable for p in m.parameters())]
    return adam([p for p in params if id(p) in trainable], lr), frozen
