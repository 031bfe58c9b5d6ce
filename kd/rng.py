"""Randomness per member, by construction: counter-based random numbers.

Every random number a member draws during training (its dropout masks, its augmentation) is
a hash of (its seed, the epoch, the step, what it is for, the element's index), so a member
draws the same numbers whatever pack it trains in, alone or beside others, and a run resumed
from any step draws what it would have drawn uninterrupted: there is no generator state to
save. The same idea as Philox in JAX's and torch's counter-based generators (Salmon et al.,
SC 2011), with a simpler mixing function, which is plenty for dropout and augmentation.
"""
from __future__ import annotations

import logging
import math
import struct

import torch

from kd.errors import first_line

log = logging.getLogger(__name__)

M32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive counters apart


def _mix(x: torch.Tensor | int) -> torch.Tensor | int:
    """lowbias32 (Chris Wellons' hash-prospector): a bijection on 32-bit words with good avalanche.
    Works on Python ints and on int64 tensors (kept in [0, 2^32) after every step)."""
    x = (x ^ (x >> 16)) & M32
    x = (x * 0x7FEB352D) & M32
    x = (x ^ (x >> 15)) & M32
    x = (x * 0x846CA68B) & M32
    return (x ^ (x >> 16)) & M32


def key(seed: int, *counters: int) -> int:
    """A 32-bit key from a member's seed and counters (epoch, step, stream): a Python int."""
    k = _mix((seed & M32) ^ _mix(seed >> 32))
    for c in counters:
        k = _mix((k + GOLDEN * (c + 1)) & M32)
    return k


def _mix_(x: torch.Tensor) -> torch.Tensor:
    """``_mix`` in place on an int64 tensor of 32-bit words: the same words, with a third fewer
    kernels and no new tensor per operation (the masks after the xor-shifts are no-ops on words
    below 2^32). A training step's dropout masks took 4x the time out of place on a CPU."""
    x ^= x >> 16
    x *= 0x7FEB352D
    x &= M32
    x ^= x >> 15
    x *= 0x846CA68B
    x &= M32
    x ^= x >> 16
    return x


def bits(keys: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Random 32-bit words (int64) of shape ``keys.shape + shape``: word ``j`` of member ``i``
    depends only on ``keys[i]`` and ``j``. ``keys``: int64 tensor of 32-bit keys (any shape,
    including a 0-d one, as ``torch.func.vmap`` hands a member's key to a module)."""
    n = 1
    for s in shape:
        n *= s
    k = keys.reshape(keys.shape + (1,) * len(shape))
    x = k + torch.arange(0, n * GOLDEN, GOLDEN, device=keys.device, dtype=torch.int64).reshape(shape)
    x &= M32
    _mix_(x)
    x ^= k
    return _mix_(x)


def uniform(keys: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform floats in [0, 1) of shape ``keys.shape + shape`` (24 bits of each word of ``bits``)."""
    return (bits(keys, shape) >> 8).to(torch.float32) * (1.0 / (1 << 24))


def threshold(p: float) -> int:
    """The smallest word whose uniform is >= ``p`` (as float32, as torch compares a float32 tensor
    with a Python number): its top 24 bits are ceil(float32(p) * 2^24)."""
    p32 = struct.unpack("f", struct.pack("f", p))[0]
    return math.ceil(p32 * (1 << 24)) << 8


def at_least(keys: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """``uniform(keys, shape) >= p``, exactly, from the words alone: a dropout mask without the
    floats (three fewer kernels a mask). A bool tensor; on CUDA an int32 one of 0 and 1 (one fused
    kernel computes it): the same mask to multiply by, or to convert (``.to(dtype)``, ``.bool()``).
    Where the kernel cannot be compiled, or under a tracer or vmap, the tensor operations above."""
    if keys.is_cuda and FUSED["ok"] is not False:
        mask = _fused_at_least(keys, shape, threshold(p))
        if mask is not None:
            return mask
    return bits(keys, shape) >= threshold(p)


# The word and the comparison of ``at_least`` in one elementwise kernel (torch's jiterator: NVRTC,
# compiled once per process and threshold): on a GPU the tensor operations above are some twenty
# kernels over int64 words, a quarter of the reference teacher's step. The same arithmetic on
# 32-bit words, wrapping where the int64 version masks. tests/test_rng.py compares the two.
_FUSED_SOURCE = """
template <typename T> T kd_keep_THRESHOLD(T index, T key) {
    unsigned int k = static_cast<unsigned int>(key);
    unsigned int x = k + GOLDENu * static_cast<unsigned int>(index);
    x ^= x >> 16; x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x846CA68Bu; x ^= x >> 16;
    x ^= k;
    x ^= x >> 16; x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x846CA68Bu; x ^= x >> 16;
    return x >= THRESHOLDu ? T(1) : T(0);
}
"""
FUSED: dict = {"ok": None, "error": ""}  # None: not tried yet; False: it did not compile here (then the ops)
_KERNELS: dict[int, object] = {}
_INDICES: dict[tuple, torch.Tensor] = {}


def _fused_at_least(keys: torch.Tensor, shape: tuple[int, ...], thr: int) -> torch.Tensor | None:
    n = math.prod(shape)
    if thr > M32 or n >= 1 << 31 or traced(keys):
        return None
    capturing = torch.cuda.is_current_stream_capturing()
    index = _INDICES.get((n, keys.device))
    if index is None:  # made outside a capture (a captured one would hold nothing until replayed)
        index = torch.arange(n, dtype=torch.int32, device=keys.device)
        if not capturing:
            # finished before it is shared: a pack's members draw on streams of their own (kd.stack)
            torch.cuda.current_stream(keys.device).synchronize()
            _INDICES[(n, keys.device)] = index
    try:
        kernel = _KERNELS.get(thr)
        if kernel is None:
            from torch.cuda import jiterator

            kernel = _KERNELS[thr] = jiterator._create_jit_fn(
                _FUSED_SOURCE.replace("THRESHOLD", str(thr)).replace("GOLDEN", hex(GOLDEN)))
        k = keys.reshape(keys.shape + (1,) * len(shape)).to(torch.int32)  # the 32-bit word, wrapped
        mask = kernel(index.reshape(shape), k)
    except Exception as e:
        if capturing or FUSED["ok"]:  # it ran before: this is no compiler's error (out of memory, say)
            raise
        # no NVRTC, a compiler error: the tensor operations, from now on
        fused_failed(FUSED, e, "dropout masks from tensor operations: the fused CUDA kernel did not compile")
        return None
    FUSED["ok"] = True
    return mask


def fused_failed(state: dict, e: Exception, what: str, logger: logging.Logger = log) -> None:
    """A fused kernel's first use failed (no compiler, a compiler's error): ``state`` (a module's
    FUSED) records it, so that its caller takes torch's ops from now on, and ``what`` is said once
    (by the caller's ``logger``)."""
    state.update(ok=False, error=first_line(e, 200))
    logger.warning("%s (%s)", what, state["error"])


def traced(keys: torch.Tensor) -> bool:
    """Under a dispatch mode (make_fx's trace, which would not record the fused kernel's launch)
    or inside vmap (a batched tensor the kernel cannot take)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None or torch._C._functorch.is_batchedtensor(keys)


def normal(keys: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal floats (Box-Muller on two uniform streams drawn from derived keys)."""
    u1 = uniform(_mix((keys + 1) & M32), shape).clamp_min(1e-7)
    u2 = uniform(_mix((keys + 2) & M32), shape)
    return (-2.0 * u1.log()).sqrt() * torch.cos(2 * torch.pi * u2)


def keys_tensor(seeds: list[int], *counters: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """One key per member (its seed) for the same counters: an int64 tensor ``[N]``."""
    return torch.tensor([key(s, *counters) for s in seeds], dtype=torch.int64, device=device)


def derive(keys: torch.Tensor, *counters: int) -> torch.Tensor:
    """Keys for further counters (the step, the stream), on the keys' device: ``key(seed, a, b)``
    is ``derive(keys_tensor([seed], a), b)``. A counter may be an int or an int64 tensor (the step
    a CUDA graph reads from the device): the same keys."""
    for c in counters:
        keys = _mix((keys + (GOLDEN * (c + 1)) % (1 << 32)) & M32)
    return keys
