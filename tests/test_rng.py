"""kd.rng: the counter-based random numbers every member draws (dropout masks, augmentation). The
stream is part of every result: these pin it to its definition on Python ints, and the fast
tensor forms (in place, masks without floats) to the plain ones, bit for bit."""
import pytest
import torch
from torch.func import vmap

from kd import rng
from kd.rng import GOLDEN, M32


def word(key: int, j: int) -> int:
    """Word j under a key, by the module's definition, on Python ints."""
    return rng._mix(rng._mix((key + j * GOLDEN) & M32) ^ key)


def test_words_are_their_definition_and_pinned():
    keys = rng.keys_tensor([0, 1, 2**40 + 7], 3, 5)
    got = rng.bits(keys, (4, 5))
    for i, k in enumerate(keys.tolist()):
        assert got[i].flatten().tolist() == [word(k, j) for j in range(20)]
    assert rng.key(0, 0) == 33350994 and word(rng.key(0, 0), 0) == 945847668  # the stream itself, as committed results drew it


def test_uniforms_and_masks_are_the_words():
    keys = rng.keys_tensor([3, 4], 1)
    u = rng.uniform(keys, (256, 300))
    assert torch.equal(u, (rng.bits(keys, (256, 300)) >> 8).to(torch.float32) / 2**24)
    for p in (0.5, 0.1, 0.2, 0.25, 1 / 3, 0.9, 1e-7, 0.999999, 0.0):
        assert torch.equal(rng.at_least(keys, (256, 300), p), u >= p), p
        top = rng.threshold(p) >> 8  # every 24-bit value within 300 of the threshold, any low bits
        words = torch.arange(max(0, top - 300), min(2**24, top + 300), dtype=torch.int64) << 8 | 0xAB
        assert torch.equal(words >= rng.threshold(p), (words >> 8).to(torch.float32) / 2**24 >= p), p


def test_a_members_words_do_not_depend_on_its_pack_or_vmap():
    keys = rng.keys_tensor([0, 5, 9], 2, 7)
    together = rng.bits(keys, (6, 7))
    alone = torch.stack([rng.bits(k, (6, 7)) for k in keys])  # 0-d keys, as vmap hands a module
    mapped = vmap(lambda k: rng.bits(k, (6, 7)))(keys)
    assert torch.equal(together, alone) and torch.equal(together, mapped)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: run it where one is")
def test_the_fused_cuda_mask_is_the_words_mask():
    """On CUDA a dropout mask is one fused kernel (kd.rng._FUSED_SOURCE, 32-bit words): the same
    mask as the tensor operations on the CPU, keys of all 32 bits, any pack shape, any threshold."""
    keys = rng.keys_tensor([0, 1, 2**40 + 7, 12345], 3, 5)
    keys[0] = 2**32 - 1  # the largest word, and one above 2^31: the cast to int32 wraps them
    keys[1] = 2**31 + 3
    for shape in ((256, 10816), (7, 5, 3), (1,)):
        for p in (0.5, 0.2, 1 / 3, 0.999999, 1e-7):
            cpu = rng.at_least(keys, shape, p)
            cuda = rng.at_least(keys.cuda(), shape, p)
            assert rng.FUSED["ok"] is True, rng.FUSED["error"]
            assert torch.equal(cuda.cpu().bool(), cpu), (shape, p)
            alone = rng.at_least(keys[2].cuda(), shape, p)  # a 0-d key, as a looped member's module has
            assert torch.equal(alone.cpu().bool(), cpu[2]), (shape, p)


def test_the_fused_mask_stands_aside_under_a_tracer_or_vmap():
    """make_fx would not record the fused kernel's launch (a replayed trace would draw from memory
    never written), and vmap hands it a batched key it cannot take: there the tensor operations."""
    from torch.fx.experimental.proxy_tensor import make_fx

    keys = rng.keys_tensor([0, 1], 3)
    assert not rng.traced(keys)
    seen = []
    make_fx(lambda k: seen.append(rng.traced(k)) or k + 1)(keys)
    vmap(lambda k: seen.append(rng.traced(k)) or k + 1)(keys)
    assert seen == [True, True]
