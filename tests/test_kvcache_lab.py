"""The Chapter 6 lab checks: correct solutions pass, the classic mistakes fail with the right message."""

from __future__ import annotations

import math

import pytest
import torch

from unveiled.labs import LabCheckFailed
from unveiled.labs import kvcache as lab

pytestmark = pytest.mark.lab_kvcache


def _quant(x, bits, dim, group, *, steps=None, rounding=torch.round, guard=True):
    x = x.movedim(dim, -1)
    g = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = (hi - lo) / (steps or 2**bits - 1)
    if guard:
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = rounding((g - lo) / scale).clamp(0, 2**bits - 1)
    return (q * scale + lo).reshape(x.shape).movedim(-1, dim)


def kivi_ok(keys, values, bits, group_size):
    return _quant(keys, bits, 0, group_size), _quant(values, bits, 1, group_size)


def gather_ok(pool, block_table, length):
    bs = pool.shape[1]
    return torch.stack([pool[block_table[t // bs], t % bs] for t in range(length)])


def attention_ok(query, key_pool, value_pool, block_table, length):
    h, d = query.shape
    rep = h // key_pool.shape[2]
    k = gather_ok(key_pool, block_table, length).repeat_interleave(rep, 1)
    v = gather_ok(value_pool, block_table, length).repeat_interleave(rep, 1)
    w = (torch.einsum("hd,lhd->hl", query, k) / math.sqrt(d)).softmax(-1)
    return torch.einsum("hl,lhd->hd", w, v)


def test_correct_solutions_pass():
    assert lab.check_kivi_quantize(kivi_ok, show=False).passed
    assert lab.check_gather_kv(gather_ok, show=False).passed
    assert lab.check_paged_attention(attention_ok, show=False).passed
    assert set(lab.CHECKS) == {"kivi_quantize", "gather_kv", "paged_attention"}


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda k, v, b, g: (_quant(k, b, 1, g), _quant(v, b, 1, g)), "grouping keys per token"),
    (lambda k, v, b, g: (_quant(k, b, 0, g), _quant(v, b, 0, g)), "grouping values per channel"),
    (lambda k, v, b, g: (_quant(k, b, 0, g, steps=2**b), _quant(v, b, 1, g)), "2**bits steps"),
    (lambda k, v, b, g: (_quant(k, b, 0, g, rounding=torch.floor), _quant(v, b, 1, g)), "truncation"),
    (lambda k, v, b, g: (_quant(k, b, 0, k.shape[0]), _quant(v, b, 1, g)), "one group over all tokens"),
    (lambda k, v, b, g: (_quant(k, b, 0, g, guard=False), _quant(v, b, 1, g)), "NaN"),
    (lambda k, v, b, g: k, "expected a pair"),
])
def test_kivi_mistakes_are_named(wrong, message):
    report = lab.check_kivi_quantize(wrong, raise_on_fail=False, show=False)
    assert not report.passed
    assert message in str(report)


def test_gather_mistakes_are_named():
    def ignores_table(pool, table, length):
        return pool.reshape(-1, *pool.shape[2:])[:length]

    def whole_last_block(pool, table, length):
        bs = pool.shape[1]
        return gather_ok(pool, table, math.ceil(length / bs) * bs)

    assert "look each logical block up in block_table" in str(lab.check_gather_kv(ignores_table, raise_on_fail=False, show=False))
    assert "stop at `length` tokens" in str(lab.check_gather_kv(whole_last_block, raise_on_fail=False, show=False))


def test_attention_mistakes_are_named():
    def no_scale(q, kp, vp, table, length):
        return attention_ok(q * math.sqrt(q.shape[1]), kp, vp, table, length)

    def modulo_heads(q, kp, vp, table, length):
        h, d = q.shape
        kvh = kp.shape[2]
        idx = torch.arange(h) % kvh
        k, v = gather_ok(kp, table, length)[:, idx], gather_ok(vp, table, length)[:, idx]
        w = (torch.einsum("hd,lhd->hl", q, k) / math.sqrt(d)).softmax(-1)
        return torch.einsum("hl,lhd->hd", w, v)

    assert "1/sqrt(head_dim)" in str(lab.check_paged_attention(no_scale, raise_on_fail=False, show=False))
    assert "h // (H // K)" in str(lab.check_paged_attention(modulo_heads, raise_on_fail=False, show=False))


def test_unfinished_task_raises_by_default():
    def stub(*args):
        raise NotImplementedError("write it")

    with pytest.raises(LabCheckFailed, match="not implemented"):
        lab.check_gather_kv(stub, show=False)
