"""Quantized and evicting KV caches: error bounds, the tokens they keep, exactness where promised."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unveiled import quant
from unveiled.kvcache import (
    HeavyHitterCache,
    QuantizedKVCache,
    SinkWindowCache,
    fake_quantize_along,
    kivi_cache,
    kv_quant_spec,
)
from unveiled.models import Decoder, DecoderConfig, KVCache

CFG = DecoderConfig(vocab_size=50, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=96, max_seq_len=128)


@pytest.fixture(scope="module")
def model() -> Decoder:
    return Decoder(CFG, seed=1).eval().requires_grad_(False)


def tokens(n: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def run_chunks(model, x, cache, sizes) -> torch.Tensor:
    outs, start = [], 0
    for s in sizes:
        outs.append(model(x[:, start : start + s], cache))
        start += s
    return torch.cat(outs, 1)


def step_bound(x: torch.Tensor, bits: int, dim: int, group: int) -> torch.Tensor:
    """Half a quantization step of each element's group, broadcast back to x's shape."""
    g = x.movedim(dim, -1)
    g = g.reshape(*g.shape[:-1], g.shape[-1] // group, group)
    half = (g.amax(-1, keepdim=True) - g.amin(-1, keepdim=True)) / (2**bits - 1) / 2
    return half.expand_as(g).reshape(x.movedim(dim, -1).shape).movedim(-1, dim)


# ---- the quantizer ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), dim=st.integers(0, 2), groups=st.integers(1, 4), group=st.sampled_from([1, 2, 4, 8]),
       seed=st.integers(0, 10_000), spread=st.floats(1e-3, 1e3))
def test_round_trip_within_half_a_step(bits, dim, groups, group, seed, spread):
    shape = [3, 5, 6]
    shape[dim] = groups * group
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread
    xq = fake_quantize_along(x, bits, dim, group)
    err = (xq - x).abs()
    assert xq.shape == x.shape and xq.dtype == x.dtype
    assert bool((err <= step_bound(x, bits, dim, group) * (1 + 1e-9) + 1e-12 * spread).all())
    # at most 2**bits distinct values per group: the codes fit in `bits` bits
    g = xq.movedim(dim, -1).reshape(-1, group)
    assert max(len(torch.unique(row)) for row in g) <= 2**bits


def test_the_kv_quantizer_is_the_quantization_packages():
    # KIVI's min-max groups are quant's float-minimum format; along the last axis the two are one function
    x = torch.randn(2, 4, 16, 8, generator=torch.Generator().manual_seed(3))
    for bits in (2, 3, 8):
        spec = kv_quant_spec(bits, 4)
        assert spec == quant.QuantSpec(bits, granularity="group", group_size=4, zero_point="float")
        assert torch.equal(fake_quantize_along(x, bits, 3, 4), quant.fake_quantize(x, spec))
        moved = quant.fake_quantize(x.transpose(2, 3), spec).transpose(2, 3)
        assert torch.equal(fake_quantize_along(x, bits, 2, 4), moved)
    assert kv_quant_spec(4).granularity == "token"  # no group size: the whole axis is one group


def test_constant_groups_are_exact():
    x = torch.full((2, 8, 4), 3.25)
    assert torch.equal(fake_quantize_along(x, 2, 1, 4), x)


def test_per_channel_groups_beat_per_token_groups_on_outlier_channels():
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 64, 32, generator=gen)
    k[..., 3] = k[..., 3] * 0.5 + 20.0  # an outlier channel, large for every token
    per_channel = ((fake_quantize_along(k, 2, 2, 32) - k) ** 2).mean()
    per_token = ((fake_quantize_along(k, 2, 3, 32) - k) ** 2).mean()
    assert per_channel < per_token / 3


@pytest.mark.parametrize(("bits", "error"), [(0, ValueError), (1, ValueError), (9, ValueError), (16, ValueError),
                                             (2.0, TypeError), (True, TypeError)])
def test_bits_out_of_range(bits, error):
    with pytest.raises(error, match="bits"):
        fake_quantize_along(torch.randn(4, 4), bits, 0)
    with pytest.raises(error, match="bits"):
        QuantizedKVCache(bits)


def test_quantizer_rejects_bad_groups_and_values():
    with pytest.raises(ValueError, match="does not divide"):
        fake_quantize_along(torch.randn(6, 4), 4, 0, 4)
    with pytest.raises(ValueError, match="NaN"):
        fake_quantize_along(torch.tensor([[1.0, float("nan")]]), 4, 1)
    with pytest.raises(ValueError, match="axis"):
        fake_quantize_along(torch.randn(4, 4), 4, 2)
    with pytest.raises(ValueError, match="key_grouping"):
        QuantizedKVCache(4, key_grouping="head")
    with pytest.raises(ValueError, match="group_size"):
        QuantizedKVCache(4, group_size=None)
    with pytest.raises(ValueError, match="residual"):
        QuantizedKVCache(4, residual=-1)


# ---- the quantized cache ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), kg=st.sampled_from(["channel", "token"]),
       vg=st.sampled_from(["channel", "token"]), group=st.sampled_from([2, 4]), residual=st.integers(0, 9),
       sizes=st.lists(st.integers(1, 7), min_size=1, max_size=8), seed=st.integers(0, 1000))
def test_cache_state_and_error_bound(bits, kg, vg, group, residual, sizes, seed):
    """Quantized part + full-precision tail = every token, in order; the last `residual` are exact; every
    quantized element is within half a step of its group."""
    cache = QuantizedKVCache(bits, key_grouping=kg, value_grouping=vg, group_size=group, residual=residual)
    gen = torch.Generator().manual_seed(seed)
    all_k, all_v = [], []
    for t in sizes:
        k, v = torch.randn(2, 2, t, 8, generator=gen), torch.randn(2, 2, t, 8, generator=gen) * 3
        all_k.append(k)
        all_v.append(v)
        got_k, got_v = cache.update(0, k, v)
        ref_k, ref_v = torch.cat(all_k, 2), torch.cat(all_v, 2)
        n = ref_k.shape[2]
        assert got_k.shape == ref_k.shape and len(cache) == cache.offset == n
        qk, qv = cache.quantized_tokens(0)
        for got, ref, qn, grouping in ((got_k, ref_k, qk, kg), (got_v, ref_v, qv, vg)):
            assert n - qn >= min(residual, n)  # the recent window is never quantized
            if grouping == "channel":
                assert qn % group == 0 and n - qn < residual + group
                bound = step_bound(ref[:, :, :qn], bits, 2, group)
            else:
                assert n - qn == min(residual, n)
                bound = step_bound(ref[:, :, :qn], bits, 3, group)
            assert torch.equal(got[:, :, qn:], ref[:, :, qn:])
            assert bool(((got[:, :, :qn] - ref[:, :, :qn]).abs() <= bound * (1 + 1e-5) + 1e-6).all())


def test_within_the_residual_window_the_model_output_is_exact(model):
    x = tokens(40)
    with torch.inference_mode():
        ref = model(x)
    cache = kivi_cache(2, group_size=8, residual=40)
    out = run_chunks(model, x, cache, [17, 1, 1, 21])
    assert cache.quantized_tokens() == (0, 0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_quantized_cache_is_close_at_8_bits_and_degrades_with_fewer(model):
    x = tokens(64, seed=3)
    with torch.inference_mode():
        ref = model(x).log_softmax(-1)
    errors = []
    for bits in (8, 4, 2):
        out = run_chunks(model, x, kivi_cache(bits, group_size=8, residual=8), [8] * 8).log_softmax(-1)
        errors.append(float((out - ref).abs().max()))
    assert errors[0] < 0.05 and errors[0] < errors[1] < errors[2]


@pytest.mark.parametrize("seq_len", [8, 40, 72])
def test_nbytes_matches_the_closed_form_and_the_sizing_formula(seq_len):
    import unveiled as uv
    from unveiled.kvcache.sizing import kv_cache_bytes

    spec = uv.model_from_hf_config(CFG.to_hf_config(), name="test-tiny")
    cache = kivi_cache(4, group_size=16, residual=8)
    gen = torch.Generator().manual_seed(0)
    for layer in range(CFG.num_layers):
        k = torch.randn(1, CFG.num_kv_heads, seq_len, CFG.head_dim, generator=gen)
        cache.update(layer, k, k.clone())
    per_element = cache.bits_per_element(CFG.head_dim, seq_len)
    elements = 2 * CFG.num_layers * CFG.num_kv_heads * CFG.head_dim * seq_len
    assert cache.nbytes == pytest.approx(per_element * elements / 8)
    # With every group complete ((L - R) divisible by G) the analyzer-side formula counts the same bytes.
    if (seq_len - 8) % 16 == 0:
        assert cache.nbytes == pytest.approx(kv_cache_bytes(spec, seq_len, 1, 4, group_size=16, residual=8))
    assert cache.nbytes_full_precision == pytest.approx(elements * 2)


def test_crop_rolls_back_only_the_full_precision_tail():
    cache = kivi_cache(2, group_size=4, residual=4)
    k = torch.randn(1, 1, 13, 8)
    cache.update(0, k, k)
    assert cache.quantized_tokens() == (8, 9)
    cache.crop(10)  # only full-precision tokens go
    with pytest.raises(ValueError, match="already quantized"):
        cache.crop(8)
    cache2 = kivi_cache(2, group_size=4, residual=8)
    cache2.update(0, k, k)
    cache2.crop(11)
    assert len(cache2) == cache2.offset == 11


# ---- sinks + window ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(2, 20), sinks=st.integers(0, 4), sizes=st.lists(st.integers(1, 6), min_size=1, max_size=12))
def test_sink_window_keeps_exactly_the_first_sinks_and_the_last_window(budget, sinks, sizes):
    if budget <= sinks:
        budget = sinks + 1
    cache = SinkWindowCache(budget, num_sinks=sinks)
    seen = 0
    for t in sizes:
        # each key is its own position, so what comes back says which tokens were kept
        k = torch.arange(seen, seen + t, dtype=torch.float32).reshape(1, 1, t, 1).expand(1, 2, t, 2)
        before = cache.kept_positions()
        got, _ = cache.update(0, k, k)
        assert got[0, 0, :, 0].long().tolist() == before + list(range(seen, seen + t))  # new ones last
        seen += t
        kept = cache.kept_positions()
        want = list(range(seen)) if seen <= budget else list(range(sinks)) + list(range(seen - (budget - sinks), seen))
        assert kept == want and len(cache) == len(want) <= budget and cache.offset == seen


def test_sink_window_equals_full_attention_until_it_evicts(model):
    x = tokens(30, seed=5)
    out = run_chunks(model, x, SinkWindowCache(30, num_sinks=4), [10, 1, 19])
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-5)


def test_sink_window_positions_stay_within_the_budget(model):
    # 200 tokens through a 24-token cache: RoPE never sees a position past 24 (the rope table stays small)
    cache = SinkWindowCache(24, num_sinks=4)
    run_chunks(model, tokens(200, seed=6), cache, [8] * 25)
    assert len(cache) == 24 and cache.offset == 200
    assert cache.kept_positions()[:4] == [0, 1, 2, 3] and cache.kept_positions()[-1] == 199


def test_budget_errors():
    with pytest.raises(ValueError, match="larger than the number of sink tokens"):
        SinkWindowCache(3, num_sinks=4)
    with pytest.raises(ValueError, match="larger than"):
        SinkWindowCache(4, num_sinks=4)
    with pytest.raises(TypeError, match="budget"):
        SinkWindowCache(10.0)
    with pytest.raises(ValueError, match="recent"):
        HeavyHitterCache(8, recent=8)
    with pytest.raises(ValueError, match="budget"):
        HeavyHitterCache(1)


def test_evicting_caches_refuse_to_roll_back_past_an_eviction():
    cache = SinkWindowCache(4, num_sinks=1)
    k = torch.randn(1, 1, 6, 2)
    cache.update(0, k, k)
    with pytest.raises(ValueError, match="evict"):
        cache.crop(3)


# ---- heavy hitters -----------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(budget=st.integers(2, 12), recent=st.integers(1, 6), steps=st.lists(st.integers(1, 4), min_size=1, max_size=10),
       seed=st.integers(0, 1000))
def test_heavy_hitters_keep_the_recent_window_and_the_top_accumulated_scores(budget, recent, steps, seed):
    if recent >= budget:
        recent = budget - 1
    cache = HeavyHitterCache(budget, recent=recent)
    gen = torch.Generator().manual_seed(seed)
    heads, kv_heads = 4, 2
    score: list[dict[int, float]] = [{} for _ in range(kv_heads)]  # reference scores, per kv head
    seen = 0
    for t in steps:
        k = torch.arange(seen, seen + t, dtype=torch.float64).reshape(1, 1, t, 1).expand(1, kv_heads, t, 1)
        keys, _ = cache.update(0, k, k)
        n = keys.shape[2]
        w = torch.rand(1, heads, t, n, generator=gen, dtype=torch.float64).softmax(-1)
        for g in range(kv_heads):
            for j in range(n):
                pos = int(keys[0, g, j, 0])
                score[g][pos] = score[g].get(pos, 0.0) + float(w[0, 2 * g : 2 * g + 2, :, j].sum())
        cache.observe_attention(0, w)
        seen += t
        kept = cache.kept_positions()[0]
        for g in range(kv_heads):
            held = sorted(score[g])
            if len(held) > budget:
                old, new = held[:-recent], held[-recent:]
                top = sorted(sorted(old, key=lambda p: -score[g][p])[: budget - recent])
                held = top + new
                score[g] = {p: score[g][p] for p in held}
            assert kept[g].tolist() == held  # exactly the promised tokens, in their original order
            torch.testing.assert_close(cache.scores()[0, g], torch.tensor([score[g][p] for p in held], dtype=torch.float64))
        assert len(cache) == min(seen, budget)


def test_heavy_hitters_equal_the_full_cache_while_within_budget(model):
    x = tokens(25, seed=7)
    out = run_chunks(model, x, HeavyHitterCache(32), [9, 1, 15])
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-5)


def test_eviction_runs_through_the_model_and_bounds_the_cache(model):
    cache = HeavyHitterCache(16, recent=8)
    run_chunks(model, tokens(64, seed=8), cache, [4] * 16)
    assert len(cache) == 16 and cache.offset == 64
    pos = cache.kept_positions(1)
    assert pos.shape == (1, CFG.num_kv_heads, 16)
    assert pos[..., -8:].tolist()[0][0] == list(range(56, 64))


def test_plain_cache_and_quantized_cache_agree_on_lengths(model):
    x = tokens(20)
    a, b = KVCache(), kivi_cache(8, group_size=16, residual=4)
    run_chunks(model, x, a, [5, 15])
    run_chunks(model, x, b, [5, 15])
    assert len(a) == len(b) == 20 and b.nbytes < a.nbytes / 2
