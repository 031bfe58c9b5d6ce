"""Models by name. A registry, so later datasets add models without touching the trainer."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kd.data import to_float
from kd.errors import UserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = builder
        return builder
    return add


def names() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build a model by name for inputs of ``input_shape`` (C, H, W)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model '{name}' (known: {', '.join(names())})")
    return _REGISTRY[name](num_classes=num_classes, input_shape=input_shape)


def keras_init_(model: nn.Module) -> nn.Module:
    """Keras' defaults (Glorot-uniform weights, zero biases), as the reference study's models had."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


@register("mnist-cnn")
def mnist_cnn(num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)) -> nn.Module:
    """The reference study's teacher: 1,404,682 parameters on 28x28x1 inputs.

    Keras 'same' convolutions, then MaxPool 2 stride 1 (28 -> 27) and MaxPool 2 stride 2 (27 -> 13).
    """
    c, h, w = input_shape
    h1, w1 = h - 1, w - 1
    h2, w2 = (h1 - 2) // 2 + 1, (w1 - 2) // 2 + 1
    return keras_init_(nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, stride=1),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, stride=2),
        nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(64 * h2 * w2, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, num_classes),
    ))


@register("mnist-mlp")
def mnist_mlp(num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28), hidden: int = 784) -> nn.Module:
    """The reference study's student: 784-784-784-10 with ReLU, 1,238,730 parameters on MNIST."""
    n_in = 1
    for d in input_shape:
        n_in *= d
    return keras_init_(nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_in, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    ))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The model's logits (eval mode) for every image of a uint8 split."""
    model.eval()
    return torch.cat([model(to_float(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
