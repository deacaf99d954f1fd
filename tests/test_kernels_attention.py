"""FlashAttention and Flash-Decoding (unveiled.kernels.attention): exact against PyTorch's attention for every
tiling, grouped-query attention, causal masks, low precision, and the traffic the kernel reports."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from unveiled.kernels import (
    TileTraffic,
    flash_attention,
    flash_attention_traffic,
    flash_decoding,
    merge_partials,
    naive_attention,
    online_softmax_update,
    tile_schedule,
)


def _qkv(seed, B, H, K, Nq, Nk, d, dv=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, d, generator=g, dtype=torch.float64)
    k = torch.randn(B, K, Nk, d, generator=g, dtype=torch.float64)
    v = torch.randn(B, K, Nk, dv or d, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _reference(q, k, v, causal):
    """PyTorch's own attention in fp64, bottom-right causal mask given explicitly."""
    Nq, Nk = q.shape[2], k.shape[2]
    mask = None
    if causal:
        mask = torch.arange(Nk)[None, :] <= torch.arange(Nq)[:, None] + (Nk - Nq)
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask,
                                          enable_gqa=q.shape[1] != k.shape[1])


shapes = st.fixed_dictionaries({
    "B": st.integers(1, 2), "K": st.integers(1, 3), "G": st.integers(1, 3), "Nq": st.integers(1, 40),
    "extra": st.integers(0, 30), "d": st.integers(1, 16), "dv": st.integers(1, 12),
    "block_q": st.integers(1, 48), "block_k": st.integers(1, 48), "causal": st.booleans(), "seed": st.integers(0, 99),
})


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_flash_attention_is_exact_for_every_tiling(p):
    """fp64: equal to scaled_dot_product_attention to rounding, for any block sizes, ragged lengths, GQA, causal."""
    Nk = p["Nq"] + p["extra"]  # every query sees at least one key
    q, k, v = _qkv(p["seed"], p["B"], p["K"] * p["G"], p["K"], p["Nq"], Nk, p["d"], p["dv"])
    out = flash_attention(q, k, v, causal=p["causal"], block_q=p["block_q"], block_k=p["block_k"])
    ref = _reference(q, k, v, p["causal"])
    assert out.shape == ref.shape and out.dtype == torch.float64
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_flash_attention_fp32_within_rounding(p):
    Nk = p["Nq"] + p["extra"]
    q, k, v = _qkv(p["seed"], p["B"], p["K"] * p["G"], p["K"], p["Nq"], Nk, p["d"], p["dv"], dtype=torch.float32)
    out = flash_attention(q, k, v, causal=p["causal"], block_q=p["block_q"], block_k=p["block_k"])
    assert out.dtype == torch.float32
    assert (out.double() - _reference(q, k, v, p["causal"])).abs().max() <= 1e-5


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_lse_is_the_rows_logsumexp(p):
    Nk = p["Nq"] + p["extra"]
    q, k, v = _qkv(p["seed"], p["B"], p["K"] * p["G"], p["K"], p["Nq"], Nk, p["d"], p["dv"])
    _, lse = flash_attention(q, k, v, causal=p["causal"], block_q=p["block_q"], block_k=p["block_k"], return_lse=True)
    kk = k.repeat_interleave(p["G"], dim=1)
    s = q @ kk.transpose(-1, -2) / math.sqrt(p["d"])
    if p["causal"]:
        s = s.masked_fill(~(torch.arange(Nk)[None, :] <= torch.arange(p["Nq"])[:, None] + Nk - p["Nq"]), -math.inf)
    assert torch.allclose(lse, torch.logsumexp(s, -1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_no_worse_than_naive(dtype, causal):
    """FlashAttention's own test rule: error vs an fp64 reference at most twice that of naive attention run in
    the same low precision (here it is far smaller: scores and accumulators stay fp32)."""
    q, k, v = _qkv(3, 2, 8, 2, 77, 77, 64, dtype=dtype)
    ref = _reference(q, k, v, causal)
    err = (flash_attention(q, k, v, causal=causal, block_q=16, block_k=32).double() - ref).abs().max()
    naive_err = (naive_attention(q, k, v, causal=causal).double() - ref).abs().max()
    assert err <= 2 * naive_err + 1e-5
    out = flash_attention(q, k, v, causal=causal)
    assert out.dtype == dtype


def test_naive_attention_matches_reference():
    for causal in (False, True):
        q, k, v = _qkv(1, 1, 6, 3, 9, 14, 8)
        assert torch.allclose(naive_attention(q, k, v, causal=causal), _reference(q, k, v, causal), atol=1e-12)


def test_fully_masked_rows_are_zero():
    """More queries than keys, causal bottom-right: the first rows see nothing and return 0 (lse -inf), no NaN."""
    q, k, v = _qkv(2, 1, 2, 1, 6, 3, 4)
    out, lse = flash_attention(q, k, v, causal=True, block_q=2, block_k=2, return_lse=True)
    assert torch.all(out[:, :, :3] == 0) and torch.all(torch.isinf(lse[:, :, :3]))
    assert torch.allclose(out[:, :, 3:], _reference(q[:, :, 3:], k, v, causal=True), atol=1e-12)
    assert not torch.isnan(naive_attention(q, k, v, causal=True)).any()


def test_matches_sdpa_is_causal_when_square():
    q, k, v = _qkv(4, 1, 4, 4, 20, 20, 8)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(flash_attention(q, k, v, causal=True, block_q=7, block_k=5), ref, atol=1e-12)


def test_online_softmax_update_one_tile_is_softmax():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64)
    v = torch.randn(5, 2, generator=g, dtype=torch.float64)
    m, denom, acc = online_softmax_update(torch.full((3,), -math.inf, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                                      torch.zeros(3, 2, dtype=torch.float64), s, v)
    assert torch.allclose(acc / denom[:, None], torch.softmax(s, -1) @ v)
    assert torch.allclose(m + torch.log(denom), torch.logsumexp(s, -1))
    # a tile of -inf scores leaves an empty row empty (no NaN)
    m2, l2, acc2 = online_softmax_update(torch.full((1,), -math.inf), torch.zeros(1), torch.zeros(1, 2),
                                         torch.full((1, 4), -math.inf), torch.ones(4, 2))
    assert torch.isinf(m2).all() and (l2 == 0).all() and (acc2 == 0).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 70), st.integers(1, 3), st.integers(1, 3), st.integers(0, 50))
def test_flash_decoding_is_exact_for_any_split(L, splits, K, G, seed):
    q, k, v = _qkv(seed, 2, K * G, K, 1, L, 8)
    out, lse = flash_decoding(q, k, v, splits=splits, return_lse=True)
    assert torch.allclose(out, _reference(q, k, v, False), atol=1e-12, rtol=0)
    _, lse_ref = flash_attention(q, k, v, return_lse=True)
    assert torch.allclose(lse, lse_ref, atol=1e-12)


def test_flash_decoding_low_precision_keeps_dtype():
    q, k, v = _qkv(0, 1, 4, 2, 1, 33, 16, dtype=torch.bfloat16)
    out = flash_decoding(q, k, v, splits=4)
    assert out.dtype == torch.bfloat16
    assert (out.double() - _reference(q, k, v, False)).abs().max() < 1e-2


def test_merge_is_associative_and_ignores_empty_chunks():
    g = torch.Generator().manual_seed(5)
    outs = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    lses = torch.randn(4, 3, generator=g, dtype=torch.float64)
    lses[2] = -math.inf  # an empty chunk
    full, lse = merge_partials(outs, lses)
    left, lse_l = merge_partials(outs[:2], lses[:2])
    right, lse_r = merge_partials(outs[2:], lses[2:])
    tree, lse_t = merge_partials(torch.stack([left, right]), torch.stack([lse_l, lse_r]))
    assert torch.allclose(full, tree) and torch.allclose(lse, lse_t)
    none, lse_none = merge_partials(outs[2:3], lses[2:3])
    assert (none == 0).all() and torch.isinf(lse_none).all()
    with pytest.raises(ValueError, match="last dimension"):
        merge_partials(outs, lses[:, :2])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(0, 20), st.integers(1, 16), st.integers(1, 16), st.booleans(),
       st.integers(1, 2), st.sampled_from([2, 4, 8]))
def test_traffic_count_equals_what_the_kernel_records(Nq, extra, bq, bk, causal, G, esize):
    dtype = {2: torch.float16, 4: torch.float32, 8: torch.float64}[esize]
    q, k, v = _qkv(0, 1, 2 * G, 2, Nq, Nq + extra, 8, 4, dtype=dtype)
    t = TileTraffic()
    flash_attention(q, k, v, causal=causal, block_q=bq, block_k=bk, traffic=t, return_lse=True)
    counted = flash_attention_traffic(1, 2 * G, 2, Nq, Nq + extra, 8, v_head_dim=4, causal=causal, block_q=bq,
                                      block_k=bk, element_bytes=esize, lse_bytes=4 if esize < 8 else 8)
    assert t == counted


def test_traffic_formula_non_causal():
    """Q and O once, K and V once per query tile (FlashAttention-2's loop order)."""
    N, d, b = 1000, 64, 128
    t = flash_attention_traffic(1, 1, 1, N, N, d, block_q=b, block_k=64, element_bytes=2)
    tiles = math.ceil(N / b)
    assert t.q_bytes == t.out_bytes == N * d * 2
    assert t.k_bytes == t.v_bytes == tiles * N * d * 2
    assert t.total_bytes == 2 * N * d * 2 + 2 * tiles * N * d * 2
    # causal reads about half the keys
    tc = flash_attention_traffic(1, 1, 1, N, N, d, block_q=b, block_k=64, element_bytes=2, causal=True)
    assert 0.5 < tc.k_bytes / t.k_bytes < 0.6


def test_tile_schedule_skips_tiles_above_the_diagonal():
    tiles = list(tile_schedule(8, 8, 4, 4, causal=True))
    assert [(r.start, [(c.start, m) for c, m in ts]) for r, ts in tiles] == [(0, [(0, True)]),
                                                                             (4, [(0, False), (4, True)])]
    assert [len(ts) for _, ts in tile_schedule(8, 8, 4, 4, causal=False)] == [2, 2]


def test_bad_input_is_explained():
    q, k, v = _qkv(0, 1, 4, 2, 3, 3, 8)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        flash_attention(q, k[:, :1].expand(1, 3, 3, 8), v[:, :1].expand(1, 3, 3, 8))
    with pytest.raises(ValueError, match="4-D"):
        flash_attention(q[0], k, v)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        flash_attention(q.numpy(), k, v)
    with pytest.raises(ValueError, match="head_dim"):
        flash_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="block_q"):
        flash_attention(q, k, v, block_q=0)
    with pytest.raises(TypeError, match="causal"):
        flash_attention(q, k, v, causal="yes")
    with pytest.raises(ValueError, match="splits"):
        flash_decoding(q[:, :, :1], k, v, splits=0)
    with pytest.raises(ValueError, match="multiple"):
        flash_attention_traffic(1, 3, 2, 4, 4, 8)
