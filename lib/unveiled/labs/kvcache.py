"""Lab checks for Chapter 6 (the KV cache): KIVI quantization, the paged gather and paged attention.

Each check runs the reader's function on fixed, seeded cases and compares it with the library's reference
(:func:`unveiled.kvcache.fake_quantize_along`, :func:`unveiled.kvcache.gather_kv`,
:func:`unveiled.kvcache.paged_attention`). When a result is wrong, the check also tries the classic mistakes
(keys grouped per token, symmetric instead of asymmetric, ``2**bits`` steps, truncation instead of rounding,
ignoring the block table, forgetting the ``1/sqrt(d)`` scale, mapping query heads to the wrong key/value
head) and says which one the result matches. Introduced in Chapter 6.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..kvcache.paged import gather_kv as _gather_ref
from ..kvcache.paged import paged_attention as _paged_ref
from ..kvcache.quantized import fake_quantize_along
from . import Case, LabReport, run_cases

__all__ = ["CHECKS", "check_gather_kv", "check_kivi_quantize", "check_paged_attention"]

# The chapter sections the hints point at (headings without their numbers).
_QUANT = "Quantizing the cache"
_PAGING = "Paging the cache"


def _as_tensor(x) -> torch.Tensor | None:
    try:
        return torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def _mismatch(got, want: torch.Tensor, what: str, mistakes: dict[str, torch.Tensor], atol: float) -> str | None:
    """None when ``got`` matches ``want``; otherwise what is wrong, naming a matching classic mistake."""
    t = _as_tensor(got)
    if t is None:
        return f"{what}: expected a tensor, got {type(got).__name__}"
    for hint, wrong in mistakes.items():
        same_as_right = wrong.shape == want.shape and bool(((wrong.double() - want.double()).abs() <= atol).all())
        if wrong.shape == t.shape and not same_as_right and bool(((t - wrong.double()).abs() <= atol).all()):
            return f"{what} is not right: it matches what {hint}"
    if tuple(t.shape) != tuple(want.shape):
        return f"{what}: expected shape {tuple(want.shape)}, got {tuple(t.shape)}"
    if torch.isnan(t).any():
        return f"{what} contains NaN (a group whose max equals its min has scale 0: do not divide by it)"
    diff = (t - want.double()).abs()
    if bool((diff <= atol).all()):
        return None
    idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    return (f"{what} differs from the reference by up to {float(diff.max()):.3g}: at index {idx} expected "
            f"{float(want[idx]):.6g}, got {float(t[idx]):.6g}")


# ---- Lab 6.1: KIVI quantization ------------------------------------------------------------------


def _minmax(x: torch.Tensor, bits: int, dim: int, group: int, *, levels: int | None = None,
            rounding=torch.round) -> torch.Tensor:
    x = x.movedim(dim, -1)
    g = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    steps = (2**bits - 1) if levels is None else levels
    scale = torch.where(hi > lo, (hi - lo) / steps, torch.ones_like(hi))
    q = rounding((g - lo) / scale).clamp(0, 2**bits - 1)
    return (q * scale + lo).reshape(x.shape).movedim(-1, dim)


def _symmetric(x: torch.Tensor, bits: int, dim: int, group: int) -> torch.Tensor:
    x = x.movedim(dim, -1)
    g = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)
    qmax = 2 ** (bits - 1) - 1
    scale = g.abs().amax(-1, keepdim=True) / max(qmax, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.round(g / scale).clamp(-qmax - 1, qmax) * scale).reshape(x.shape).movedim(-1, dim)


def _kivi_inputs(seed: int, tokens: int, dim: int, outliers: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(tokens, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(tokens, dim, generator=gen, dtype=torch.float64)
    if outliers:  # a few key channels are large for every token, as in real models
        k[:, 1] = k[:, 1] * 0.5 + 12.0
        k[:, dim // 2] = k[:, dim // 2] * 0.5 - 9.0
    return k, v


def _kivi_judge(k: torch.Tensor, v: torch.Tensor, bits: int, group: int) -> Callable:
    want_k = fake_quantize_along(k, bits, 0, group)
    want_v = fake_quantize_along(v, bits, 1, group)

    def judge(result) -> str | None:
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            return f"expected a pair (keys_hat, values_hat), got {type(result).__name__}"
        atol = 1e-6 * max(1.0, float(k.abs().max()), float(v.abs().max()))
        key_mistakes = {
            "grouping keys per token (along channels) gives; KIVI groups keys per channel, along tokens":
                _minmax(k, bits, 1, group),
            "symmetric quantization gives; KIVI is asymmetric (a min and a scale per group)":
                _symmetric(k, bits, 0, group),
            "2**bits steps give; b bits have 2**b levels, so 2**b - 1 steps between min and max":
                _minmax(k, bits, 0, group, levels=2**bits),
            "truncation (floor) gives; round to the nearest level": _minmax(k, bits, 0, group, rounding=torch.floor),
            "one group over all tokens gives; use groups of group_size tokens": _minmax(k, bits, 0, k.shape[0]),
        }
        value_mistakes = {
            "grouping values per channel (along tokens) gives; KIVI groups values per token, along channels":
                _minmax(v, bits, 0, group),
            "symmetric quantization gives; KIVI is asymmetric (a min and a scale per group)":
                _symmetric(v, bits, 1, group),
            "2**bits steps give; b bits have 2**b levels, so 2**b - 1 steps between min and max":
                _minmax(v, bits, 1, group, levels=2**bits),
            "truncation (floor) gives; round to the nearest level": _minmax(v, bits, 1, group, rounding=torch.floor),
            "one group over all channels gives; use groups of group_size channels": _minmax(v, bits, 1, v.shape[1]),
        }
        return (_mismatch(result[0], want_k, "keys_hat", key_mistakes, atol)
                or _mismatch(result[1], want_v, "values_hat", value_mistakes, atol))

    return judge


def _kivi_expected(k: torch.Tensor, v: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    return fake_quantize_along(k, bits, 0, group), fake_quantize_along(v, bits, 1, group)


def check_kivi_quantize(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``fn(keys, values, bits, group_size) -> (keys_hat, values_hat)`` (KIVI fake quantization).

    ``keys`` and ``values`` are ``[tokens, channels]``; keys must be quantized per channel in groups of
    ``group_size`` tokens, values per token in groups of ``group_size`` channels, asymmetric min-max,
    round to nearest, and returned dequantized. Introduced in Chapter 6.
    """
    cases = []
    for name, seed, tokens, dim, bits, group in (
        ("2 bits, groups of 16, outlier key channels", 0, 64, 32, 2, 16),
        ("4 bits, groups of 32", 1, 64, 64, 4, 32),
        ("3 bits, groups of 8", 2, 32, 16, 3, 8),
        ("8 bits, one group per axis", 3, 16, 16, 8, 16),
    ):
        k, v = _kivi_inputs(seed, tokens, dim)
        cases.append(Case(name, (k.clone(), v.clone(), bits, group), judge=_kivi_judge(k, v, bits, group),
                          expected=_kivi_expected(k, v, bits, group), section=_QUANT,
                          hint="Which axis does KIVI group the keys along, and which the values? Then follow one "
                               "group through min, scale, rounding and back."))
    k, v = _kivi_inputs(4, 16, 8, outliers=False)
    k[:8, 3] = 2.5  # a constant group: max == min
    v[5, :4] = -1.0
    cases.append(Case("constant groups (max == min) come back exactly", (k.clone(), v.clone(), 2, 4),
                      judge=_kivi_judge(k, v, 2, 4), expected=_kivi_expected(k, v, 2, 4), section=_QUANT,
                      hint="What is the scale of a group whose max equals its min, and what does dividing by it "
                           "give?"))
    return run_cases(fn, cases, "Lab 6.1: KIVI quantization", raise_on_fail=raise_on_fail, show=show)


# ---- Lab 6.2: the paged gather -------------------------------------------------------------------


def _pool(seed: int, num_blocks: int, block_size: int, *rest: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_blocks, block_size, *rest, generator=gen, dtype=torch.float64)


def _gather_judge(pool: torch.Tensor, table: list[int], length: int) -> Callable:
    want = _gather_ref(pool, table, length)
    flat = pool.reshape(-1, *pool.shape[2:])
    mistakes = {
        "reading the pool as if the blocks were in order gives; look each logical block up in block_table":
            flat[:length],
    }
    nb = math.ceil(length / pool.shape[1])
    if nb * pool.shape[1] != length:
        mistakes["keeping the whole last block gives; stop at `length` tokens"] = _gather_ref(
            pool, table, nb * pool.shape[1])

    def judge(result) -> str | None:
        return _mismatch(result, want, "the gathered tensor", mistakes, 1e-12)

    return judge


def check_gather_kv(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``fn(pool, block_table, length) -> [length, ...]``: token ``t`` is
    ``pool[block_table[t // block_size], t % block_size]``. Introduced in Chapter 6."""
    cases = []
    for name, seed, nblocks, bs, table, length in (
        ("blocks out of order, last block partly filled", 0, 8, 4, [5, 2, 7, 0], 14),
        ("length a multiple of the block size", 1, 6, 4, [3, 1, 4], 12),
        ("a single token", 2, 4, 8, [2], 1),
        ("unused entries after the last needed block", 3, 10, 2, [9, 3, 6, 1, 8], 5),
        ("block size 1", 4, 6, 1, [4, 0, 5, 2], 4),
    ):
        pool = _pool(seed, nblocks, bs, 3)
        cases.append(Case(name, (pool.clone(), list(table), length), judge=_gather_judge(pool, table, length),
                          expected=_gather_ref(pool, table, length), section=_PAGING,
                          hint="Follow one token: which logical block holds it, where the block table puts that "
                               "block in the pool, and at which slot."))
    return run_cases(fn, cases, "Lab 6.2: the paged gather", raise_on_fail=raise_on_fail, show=show)


# ---- Lab 6.3: paged attention for one decode step -----------------------------------------------


def _attn_variant(q, kp, vp, table, length, *, scale=True, head_map="group"):
    h, d = q.shape
    kvh = kp.shape[2]
    k = _gather_ref(kp, table, length)  # [L, K, d]
    v = _gather_ref(vp, table, length)
    idx = torch.arange(h) // (h // kvh) if head_map == "group" else torch.arange(h) % kvh
    k, v = k[:, idx], v[:, idx]  # [L, H, d]
    s = torch.einsum("hd,lhd->hl", q, k) * (1 / math.sqrt(d) if scale else 1.0)
    return torch.einsum("hl,lhd->hd", s.softmax(-1), v)


def _attention_judge(q, kp, vp, table, length) -> Callable:
    want = _paged_ref(q[None], kp, vp, [table], [length])[0]
    mistakes = {"leaving out the 1/sqrt(head_dim) scale gives": _attn_variant(q, kp, vp, table, length, scale=False)}
    if q.shape[0] != kp.shape[2] and kp.shape[2] > 1:
        mistakes["mapping query head h to key/value head h % K gives; heads are grouped: h // (H // K)"] = \
            _attn_variant(q, kp, vp, table, length, head_map="modulo")

    def judge(result) -> str | None:
        return _mismatch(result, want, "the attention output", mistakes, 1e-9)

    return judge


def check_paged_attention(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``fn(query [H, d], key_pool, value_pool, block_table, length) -> [H, d]`` where the pools are
    ``[num_blocks, block_size, K, d]`` and query head ``h`` reads key/value head ``h // (H // K)``.
    Introduced in Chapter 6."""
    cases = []
    for name, seed, nblocks, bs, heads, kv_heads, d, table, length in (
        ("multi-head attention, 3 blocks", 0, 6, 4, 2, 2, 8, [4, 0, 2], 10),
        ("grouped-query attention (4 query heads, 2 key/value heads)", 1, 8, 4, 4, 2, 8, [7, 1, 3, 5], 13),
        ("multi-query attention, one token", 2, 3, 8, 4, 1, 16, [1], 1),
    ):
        gen = torch.Generator().manual_seed(seed)
        q = torch.randn(heads, d, generator=gen, dtype=torch.float64)
        kp = _pool(seed + 10, nblocks, bs, kv_heads, d)
        vp = _pool(seed + 20, nblocks, bs, kv_heads, d)
        cases.append(Case(name, (q.clone(), kp.clone(), vp.clone(), list(table), length),
                          judge=_attention_judge(q, kp, vp, table, length),
                          expected=_paged_ref(q[None], kp, vp, [table], [length])[0], section=_PAGING,
                          hint="Gather the sequence's keys and values first (your gather_kv), decide which "
                               "key/value head each query head reads, then apply scaled dot-product attention."))
    return run_cases(fn, cases, "Lab 6.3: paged attention", raise_on_fail=raise_on_fail, show=show)


CHECKS: dict[str, Callable] = {
    "kivi_quantize": check_kivi_quantize,
    "gather_kv": check_gather_kv,
    "paged_attention": check_paged_attention,
}
