"""kd.pool's fused ReLU + 2x2 max-pool gives torch's numbers bit for bit, both ways: on a CPU
through Triton's interpreter (the kernels' own code, run by numpy), on a GPU compiled. And
``fuse`` swaps only the pairs it computes, leaving a model's weights and their names as they are."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kd import models, pool

ROOT = Path(__file__).resolve().parent.parent

# ties at zero (ReLU's gradient), ties among positives (the first maximum takes it), a NaN, odd
# sizes (floor: 27 -> 13), both layouts, both strides, float32 and (on CUDA, whose pool sums a
# bfloat16 gradient in float32 as the kernels do; a CPU's rounds each sum) bfloat16
CHECK = r"""
import sys, torch
from kd import pool
device = sys.argv[1]
torch.manual_seed(0)
cases = 0
for shape, stride in [((3, 5, 28, 28), 1), ((3, 6, 27, 27), 2), ((2, 3, 7, 9), 1), ((2, 3, 7, 9), 2), ((1, 2, 2, 2), 1)]:
    for last in (False, True):
        for dtype in (torch.float32, torch.bfloat16) if device == "cuda" else (torch.float32,):
            x = torch.randn(shape).round(decimals=1).to(dtype)  # rounded: many ties
            x[0, 0] = 0.0
            x[-1, -1, :2, :2] = 1.5
            if shape[2] > 2:
                x[0, 1, 2, 2] = float("nan")
            x = x.to(device)
            if last:
                x = x.contiguous(memory_format=torch.channels_last)
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            ref = torch.nn.functional.max_pool2d(torch.relu(a), 2, stride)
            out = pool.relu_max_pool(b, stride)
            assert pool.FUSED["ok"], pool.FUSED
            g = torch.randn(ref.shape, device=device).to(dtype)
            ref.backward(g)
            out.backward(g)
            where = (shape, stride, last, dtype)
            assert out.shape == ref.shape and out.dtype == ref.dtype, where
            assert out.is_contiguous(memory_format=torch.channels_last if last else torch.contiguous_format), where
            assert torch.equal(torch.isnan(out), torch.isnan(ref)), where
            assert torch.equal(out.nan_to_num(7), ref.nan_to_num(7)), where
            assert torch.equal(b.grad.nan_to_num(7), a.grad.nan_to_num(7)), where
            cases += 1
print("cases", cases)
"""


def run_check(device: str, env: dict, cases: int) -> None:
    p = subprocess.run([sys.executable, "-c", CHECK, device], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"cases {cases}" in p.stdout


def test_the_kernels_compute_torchs_relu_and_pool_on_a_cpu():
    pytest.importorskip("triton")
    run_check("cpu", {"TRITON_INTERPRET": "1"}, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: run it where one is")
def test_the_kernels_compute_torchs_relu_and_pool_on_cuda():
    run_check("cuda", {}, 20)


def test_fuse_swaps_the_pairs_it_computes_and_keeps_the_weights():
    net = models.build("mnist-cnn", 10, (1, 28, 28))
    names = list(net.state_dict())
    assert pool.fuse(net) == 2
    assert list(net.state_dict()) == names
    kinds = [type(m).__name__ for m in net]
    assert kinds[:6] == ["Conv2d", "Identity", "ReluMaxPool", "Conv2d", "Identity", "ReluMaxPool"]
    assert [m.stride for m in net if isinstance(m, pool.ReluMaxPool)] == [1, 2]
    assert pool.fuse(net) == 0  # done once
    others = nn.Sequential(nn.ReLU(), nn.MaxPool2d(3, 2), nn.ReLU(), nn.MaxPool2d(2, 2, padding=1),
                           nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.GELU(), nn.MaxPool2d(2))
    assert pool.fuse(others) == 0


def test_without_the_kernels_it_is_torchs_ops(monkeypatch):
    """Where the kernels cannot run (here: a CPU without the interpreter, marked failed), the
    module computes torch's ReLU and pool: the same numbers."""
    monkeypatch.setitem(pool.FUSED, "ok", False)
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(pool.ReluMaxPool(2)(x), torch.nn.functional.max_pool2d(torch.relu(x), 2, 2))


def test_one_channel_images_are_restrided_channels_last_in_place():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    y = pool.channels_last(x)
    assert y.data_ptr() == x.data_ptr() and torch.equal(y, x)
    conv = nn.Conv2d(1, 4, 3)  # torch reads the layout from the strides: channels-last in, channels-last out
    assert conv(y).is_contiguous(memory_format=torch.channels_last) and conv(x).is_contiguous()
    z = pool.channels_last(torch.randn(2, 3, 5, 5))
    assert z.is_contiguous(memory_format=torch.channels_last)
    flat = torch.randn(4, 10)
    assert pool.channels_last(flat) is flat


def test_under_vmap_and_on_a_cpu_it_is_torchs_ops():
    """vmap (a batched tensor the kernels cannot take; it refuses even the layout questions) and a
    CPU tensor without Triton's interpreter take torch's ops, and leave the kernels on for later."""
    x = torch.randn(2, 3, 4, 6, 6)
    assert torch.equal(torch.func.vmap(pool.ReluMaxPool(2), in_dims=1)(x),
                       torch.func.vmap(lambda t: torch.nn.functional.max_pool2d(torch.relu(t), 2, 2), in_dims=1)(x))
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert torch.equal(pool.ReluMaxPool(1)(x[0]), torch.nn.functional.max_pool2d(torch.relu(x[0]), 2, 1))
    assert pool.FUSED["ok"] is not False


def test_fuse_leaves_sequential_subclasses_alone():
    class Mine(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2
    net = Mine(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2))
    assert pool.fuse(net) == 0 and type(net[1]) is nn.ReLU
