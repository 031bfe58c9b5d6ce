import pytest
import torch

from kd import models
from kd.errors import UserError


@pytest.mark.parametrize("name, params", [("mnist-cnn", 1_404_682), ("mnist-mlp", 1_238_730)])
def test_reference_parameter_counts(name, params):
    model = models.build(name, 10, (1, 28, 28))
    assert models.count_params(model) == params
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_unknown_model_lists_known_ones():
    with pytest.raises(UserError, match="unknown model 'resnet9'.*mnist-cnn.*mnist-mlp"):
        models.build("resnet9", 10, (1, 28, 28))


def test_keras_initialisation_zero_biases():
    model = models.build("mnist-mlp", 10, (1, 28, 28))
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("name, shape", [("mnist-cnn", (1, 28, 28)), ("mnist-mlp", (1, 28, 28)),
                                         ("resnet50", (3, 224, 224)), ("mobilenet_v2", (3, 224, 224))])
def test_flops_are_what_torch_flop_counter_counts(name, shape):
    """kd counts FLOPs from layer shapes (FlopCounterMode costs a second in every process)."""
    from torch.utils.flop_counter import FlopCounterMode

    from kd.train import flops_per_sample

    model = models.build(name, 10, shape, pretrained="none" if name in ("resnet50", "mobilenet_v2") else None)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    assert flops_per_sample(model, shape, torch.device("cpu")) == counter.get_total_flops() > 0
