"""ReLU then 2x2 max-pooling in one CUDA kernel each way (Triton), for the reference CNN on a GPU.

torch's ReLU and max-pool are four memory-bound kernels a step (forward and backward of each),
and its pool keeps an int64 index per output: on an H100 the reference teacher's two pools and
ReLUs were over a quarter of its step (bench/epoch_ways.py --profile). Here the forward pass
writes the pooled output and a one-byte code per output (which of the window's four inputs won,
or none where the maximum is not positive), and the backward pass gathers each input's gradient
from the (at most four) windows that hold it: about a third of the memory traffic.

The same numbers as ``max_pool2d(relu(x), 2, stride)``, bit for bit, both ways (but for the
sign of a zero output: always +0 here): relu(max(x)) is max(relu(x)); the window's first maximum
(rows, then columns) takes the gradient, as torch's pool gives it; where the maximum is not
positive ReLU's gradient is zero, as torch's is at 0; an input's gradient sums its windows' in
torch's order. NaN propagates as torch's does. tests/test_pool.py checks it against torch's ops
(on a CPU through Triton's interpreter). ``fuse(model)`` puts it in a model's place of each
(ReLU, MaxPool2d(2, stride 1 or 2)) pair on CUDA: parameter-free modules, so the weights and
their names stay as they are. Where Triton is missing or its first compile (both kernels, probed
on zeros of the first input's shape) fails, torch's own ops, with a warning once. float32 and
bfloat16 (autocast's convolutions) only.
"""
from __future__ import annotations

import logging
import os
import threading

import torch
from torch import nn

from kd import rng

log = logging.getLogger(__name__)

FUSED: dict = {"ok": None, "error": ""}  # None: not tried yet; False: it failed here (then torch's ops)
BLOCK = 1024

_kernels: dict = {}


def warm_up() -> None:
    """Import Triton and compute its cache key in a thread, in a process that may train a CNN on
    CUDA: a process's first kernel compile (or cache lookup) hashes Triton's own 500 MB library for
    that key, which the first training step would wait for (0.4-0.6 s of a GPU machine's CPU); the
    hashing releases the GIL, so it overlaps the data and the models being made. Ahead of time
    only: whatever fails here is left for the first use to meet, and fall back from."""
    def warm() -> None:
        try:
            try:
                from triton.runtime.cache import triton_key
            except ImportError:  # where older Triton releases keep it
                from triton.compiler.compiler import triton_key
            triton_key()
        except Exception:  # noqa: BLE001 - see above
            pass

    threading.Thread(target=warm, name="triton-warm-up", daemon=True).start()


def _build():
    """The two Triton kernels, made at first use (importing triton costs a second)."""
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(x_ptr, out_ptr, code_ptr, total, C, OH, OW, sN, sC, sH, sW, stride,
                       CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = o < total
        if CHANNELS_LAST:  # outputs in memory order: n, oh, ow, c
            c = o % C
            ow = (o // C) % OW
            oh = (o // (C * OW)) % OH
            n = o // (C * OW * OH)
        else:  # n, c, oh, ow
            ow = o % OW
            oh = (o // OW) % OH
            c = (o // (OW * OH)) % C
            n = o // (OW * OH * C)
        base = n.to(tl.int64) * sN + c * sC + (oh * stride) * sH + (ow * stride) * sW
        v0 = tl.load(x_ptr + base, mask=valid, other=0.0)
        v1 = tl.load(x_ptr + base + sW, mask=valid, other=0.0)
        v2 = tl.load(x_ptr + base + sH, mask=valid, other=0.0)
        v3 = tl.load(x_ptr + base + sH + sW, mask=valid, other=0.0)
        # torch's pool: the first maximum in rows-then-columns order; a NaN wins (the last one)
        m = v0
        code = tl.zeros_like(o)
        take = (v1 > m) | (v1 != v1)
        m = tl.where(take, v1, m)
        code = tl.where(take, 1, code)
        take = (v2 > m) | (v2 != v2)
        m = tl.where(take, v2, m)
        code = tl.where(take, 2, code)
        take = (v3 > m) | (v3 != v3)
        m = tl.where(take, v3, m)
        code = tl.where(take, 3, code)
        positive = (m > 0) | (m != m)  # ReLU's gradient: 1 above zero (and for NaN), else 0
        tl.store(out_ptr + o, tl.where(positive, m, 0.0), mask=valid)
        tl.store(code_ptr + o, tl.where(positive, code, 4).to(tl.uint8), mask=valid)  # 4: no input's gradient

    @triton.jit
    def backward_kernel(g_ptr, code_ptr, gx_ptr, total, C, H, W, OH, OW, stride,
                        CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = i < total
        if CHANNELS_LAST:  # inputs (and outputs) in memory order n, h, w, c
            c = i % C
            w = (i // C) % W
            h = (i // (C * W)) % H
            n = i // (C * W * H)
        else:
            w = i % W
            h = (i // W) % H
            c = (i // (W * H)) % C
            n = i // (W * H * C)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        # the windows in torch's order (rows, then columns, ascending), so that the sums are its sums
        for a in tl.static_range(2):
            for b in tl.static_range(2):
                dh = 1 - a
                dw = 1 - b
                ph = h - dh
                pw = w - dw
                oh = ph // stride
                ow = pw // stride
                inside = (valid & (ph >= 0) & (pw >= 0) & (ph % stride == 0) & (pw % stride == 0)
                          & (oh < OH) & (ow < OW))
                if CHANNELS_LAST:
                    o = ((n.to(tl.int64) * OH + oh) * OW + ow) * C + c
                else:
                    o = ((n.to(tl.int64) * C + c) * OH + oh) * OW + ow
                k = tl.load(code_ptr + o, mask=inside, other=4)
                g = tl.load(g_ptr + o, mask=inside & (k == dh * 2 + dw), other=0.0)
                acc += g.to(tl.float32)
        tl.store(gx_ptr + i, acc.to(gx_ptr.dtype.element_ty), mask=valid)

    return forward_kernel, backward_kernel


def _layout(x: torch.Tensor) -> bool | None:
    """True for channels-last, False for contiguous (NCHW), None for another layout."""
    if x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=torch.channels_last):
        return True
    return None


class _ReluMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, stride: int) -> torch.Tensor:
        forward_kernel, _ = _kernels["fns"]
        last = bool(_layout(x))
        n, c, h, w = x.shape
        oh, ow = (h - 2) // stride + 1, (w - 2) // stride + 1
        fmt = torch.channels_last if last else torch.contiguous_format
        out = torch.empty((n, c, oh, ow), device=x.device, dtype=x.dtype, memory_format=fmt)
        code = torch.empty((n, c, oh, ow), device=x.device, dtype=torch.uint8, memory_format=fmt)
        total = out.numel()
        if total:
            forward_kernel[((total + BLOCK - 1) // BLOCK,)](
                x, out, code, total, c, oh, ow, *x.stride(), stride, CHANNELS_LAST=last, BLOCK=BLOCK)
        ctx.save_for_backward(code)
        ctx.stride, ctx.shape, ctx.last = stride, x.shape, last
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        _, backward_kernel = _kernels["fns"]
        (code,) = ctx.saved_tensors
        n, c, h, w = ctx.shape
        fmt = torch.channels_last if ctx.last else torch.contiguous_format
        g = g.contiguous(memory_format=fmt)
        gx = torch.empty(ctx.shape, device=g.device, dtype=g.dtype, memory_format=fmt)
        total = gx.numel()
        if total:
            backward_kernel[((total + BLOCK - 1) // BLOCK,)](
                g, code, gx, total, c, h, w, code.shape[2], code.shape[3], ctx.stride,
                CHANNELS_LAST=ctx.last, BLOCK=BLOCK)
        return gx, None


def _usable(x: torch.Tensor) -> bool:
    """A tensor the kernels take: not under a tracer or vmap (asked first: vmap refuses the layout
    questions), on CUDA (or Triton's interpreter), 4-d float32 or bfloat16, NCHW or channels-last,
    at least one window, and indices that fit the kernels' 32-bit arithmetic."""
    return (not rng.traced(x) and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")
            and x.dim() == 4 and x.dtype in (torch.float32, torch.bfloat16) and x.numel() < 1 << 31
            and x.shape[2] >= 2 and x.shape[3] >= 2 and _layout(x) is not None)


def _probe(x: torch.Tensor, stride: int) -> None:
    """Both kernels compiled and run once, on zeros of ``x``'s shape and layout (so that Triton's
    variants are the ones ``x`` needs, compiled once): a toolchain that cannot build the backward
    kernel fails here, where the fallback catches it, not in a later backward pass."""
    t = torch.zeros_like(x, memory_format=torch.preserve_format).requires_grad_(True)
    with torch.enable_grad():
        _ReluMaxPool.apply(t, stride).sum().backward()


def relu_max_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``max_pool2d(relu(x), 2, stride)``: the fused kernels where they can run (CUDA, or any device
    under Triton's interpreter), else torch's ops."""
    if FUSED["ok"] is not False and _usable(x):
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        try:
            if "fns" not in _kernels:
                _kernels["fns"] = _build()
            if not FUSED["ok"] and not capturing:
                _probe(x, stride)
            out = _ReluMaxPool.apply(x, stride)
        except Exception as e:
            if capturing or FUSED["ok"]:  # it ran before: no compiler's error (out of memory, say)
                raise
            rng.fused_failed(FUSED, e, "ReLU and max-pool from torch's ops: the fused kernels did not run", log)
        else:
            FUSED["ok"] = True
            return out
    return torch.nn.functional.max_pool2d(torch.relu(x), 2, stride)


class ReluMaxPool(nn.Module):
    """ReLU, then MaxPool2d(2, stride) (the fused kernels: ``relu_max_pool``)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_max_pool(x, self.stride)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def _fusable(relu: nn.Module, pool: nn.Module) -> int | None:
    """The stride of a (ReLU, MaxPool2d) pair the kernels compute, or None."""
    if not (type(relu) is nn.ReLU and type(pool) is nn.MaxPool2d) or pool.return_indices or pool.ceil_mode:
        return None
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    k, s, p, d = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), pair(pool.padding), pair(pool.dilation)
    if k == (2, 2) and s in ((1, 1), (2, 2)) and p == (0, 0) and d == (1, 1):
        return s[0]
    return None


def fuse(model: nn.Module) -> int:
    """In every Sequential of ``model``, each (ReLU, MaxPool2d(2, stride 1 or 2)) pair becomes
    (Identity, ReluMaxPool): the same numbers, its weights and their names unchanged. Returns the
    number of pairs fused. In place."""
    fused = 0
    for module in model.modules():
        if type(module) is not nn.Sequential:  # a subclass may have a forward of its own
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            stride = _fusable(module._modules[a], module._modules[b])
            if stride is not None:
                module._modules[a], module._modules[b] = nn.Identity(), ReluMaxPool(stride)
                fused += 1
    return fused


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """An image batch ``[B, C, H, W]`` channels-last, so that cuDNN's convolutions (NHWC kernels
    under TF32) read and write it without transposing it to and from NCHW around every call (an
    eighth of the reference teacher's step on an H100). One channel: the same memory, restrided
    (``contiguous(memory_format=...)`` leaves such a tensor as it is, and torch reads it as NCHW).
    Other tensors as they are."""
    if x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] != 1:
        return x
    if x.shape[1] == 1 and x.is_contiguous():
        b, _, h, w = x.shape
        return x.as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)
