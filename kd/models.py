"""Models by name. A registry, so later datasets add models without touching the trainer."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kd.data import to_float
from kd.errors import Stopped, UserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
EVAL_BATCH = 1000  # images per forward pass where a model only predicts (evaluation, a teacher's logits)
CPU_PREDICT_BATCH = 128  # a teacher's logits on a CPU: batches whose activations stay in cache (3x faster than 1000)


def predict_batch(device: torch.device) -> int:
    """Images per forward pass of a model that only predicts, on ``device``."""
    return CPU_PREDICT_BATCH if device.type == "cpu" else EVAL_BATCH


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = builder
        return builder
    return add


def names() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, num_classes: int, input_shape: tuple[int, ...], pretrained: str | None = None) -> nn.Module:
    """Build a model by name for inputs of ``input_shape`` (C, H, W). ``pretrained`` concerns the
    ImageNet models only: None or "imagenet" (torchvision's weights), "none", or a weights file."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model '{name}' (known: {', '.join(names())})")
    return _REGISTRY[name](num_classes=num_classes, input_shape=input_shape, pretrained=pretrained)


def keras_init_(model: nn.Module) -> nn.Module:
    """Keras' defaults (Glorot-uniform weights, zero biases), as the reference study's models had."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


@register("mnist-cnn")
def mnist_cnn(num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28), **_) -> nn.Module:
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
def mnist_mlp(num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28), hidden: int = 784, **_) -> nn.Module:
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


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# torchvision name -> (weights enum name, head attribute, head input features)
IMAGENET_MODELS = {"resnet50": ("ResNet50_Weights", "fc", 2048), "mobilenet_v2": ("MobileNet_V2_Weights", "classifier", 1280)}


class Normalize(nn.Module):
    """ImageNet normalisation as the model's first layer: the data stays uint8 scaled to [0, 1]."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def imagenet_weights(name: str):
    """torchvision's ImageNet weights enum for a model (its DEFAULT entry)."""
    from torchvision import models as tvm

    return getattr(tvm, IMAGENET_MODELS[name][0]).DEFAULT


def _imagenet_model(name: str, num_classes: int, pretrained: str | None) -> nn.Module:
    """A torchvision ImageNet model with the reference study's head: dropout 0.2, dense to the classes."""
    from torchvision import models as tvm

    attr, features = IMAGENET_MODELS[name][1:]
    model = getattr(tvm, name)(weights=None)
    if pretrained in (None, "imagenet"):
        model.load_state_dict(_download_or_cached(name))
    elif pretrained != "none":
        try:
            model.load_state_dict(torch.load(pretrained, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, KeyError) as e:
            raise UserError(f"pretrained: {pretrained}: not {name} weights ({e.__class__.__name__})") from None
    setattr(model, attr, nn.Sequential(nn.Dropout(0.2), nn.Linear(features, num_classes)))
    return nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), model)


def _download_or_cached(name: str) -> dict:
    weights = imagenet_weights(name)
    try:
        return weights.get_state_dict(progress=False)  # torchvision's cache (TORCH_HOME), else a download
    except OSError as e:  # URLError and socket errors are OSErrors: no network
        raise UserError(f"pretrained weights {weights} for {name} are not in torchvision's cache "
                        f"({torch.hub.get_dir()}/checkpoints) and cannot be downloaded here ({e.__class__.__name__})",
                        hint="on a login node: kdsweep weights; or use the image built with BAKE_WEIGHTS=1; "
                             "or pretrained = \"none\"") from None


@register("resnet50")
def resnet50(num_classes: int = 2, input_shape: tuple[int, ...] = (3, 224, 224), pretrained: str | None = None,
             **_) -> nn.Module:
    """MHIST's teacher: torchvision ResNet50 (ImageNet weights), global average pooling, dropout 0.2, dense."""
    return _imagenet_model("resnet50", num_classes, pretrained)


@register("mobilenet_v2")
def mobilenet_v2(num_classes: int = 2, input_shape: tuple[int, ...] = (3, 224, 224), pretrained: str | None = None,
                 **_) -> nn.Module:
    """MHIST's student: torchvision MobileNetV2 (ImageNet weights) with the same head."""
    return _imagenet_model("mobilenet_v2", num_classes, pretrained)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH,
              stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """The model's logits (eval mode) for every image of a uint8 split; ``stop`` is asked between
    batches (kd.errors.Stopped when it says so)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        if stop is not None and stop():
            raise Stopped("stopped before the logits were all computed")
        out.append(_predict(model, to_float(x[i:i + batch_size])))
    return torch.cat(out)


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` without autograd; a plain Sequential's ReLUs rectify in place (each layer's
    output feeds only the next): the same values without writing a second copy of the activations
    (out of place, the ReLUs took a fifth of the reference teacher's forward pass on a CPU)."""
    if not isinstance(model, nn.Sequential) or any(len(list(m.children())) for m in model):
        return model(x)
    for m in model:
        x = x.relu_() if isinstance(m, nn.ReLU) else m(x)
    return x
