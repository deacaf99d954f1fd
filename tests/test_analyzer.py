"""Tests of the LLM analyzer (unveiled.analyzer): the survey's numbers, first-principles invariants, the
closed-form generation, the vectorised sweep, memory, bad input and the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unveiled as uv
from unveiled.__main__ import main
from unveiled.analyzer import survey as sv
from unveiled.analyzer.configs import param_classes
from unveiled.analyzer.costs import _causal_tiles, attention_cost, flash_tile

# Table 1 of the survey exactly as printed (Yuan et al. 2024, v6): layer, OPs, memory access, arithmetic
# intensity, max performance, bound. Llama-2-7b, A6000, batch 1, sequence 2048, one layer per row.
TABLE1 = {
    "prefill": [
        ("q_proj", "69G", "67M", "1024", "155T", "compute"),
        ("k_proj", "69G", "67M", "1024", "155T", "compute"),
        ("v_proj", "69G", "67M", "1024", "155T", "compute"),
        ("o_proj", "69G", "67M", "1024", "155T", "compute"),
        ("gate_proj", "185G", "152M", "1215", "155T", "compute"),
        ("up_proj", "185G", "152M", "1215", "155T", "compute"),
        ("down_proj", "185G", "152M", "1215", "155T", "compute"),
        ("qk_matmul", "34G", "302M", "114", "87T", "memory"),
        ("sv_matmul", "34G", "302M", "114", "87T", "memory"),
        ("softmax", "671M", "537M", "1.25", "960G", "memory"),
        ("norm", "59M", "34M", "1.75", "1T", "memory"),
        ("add", "8M", "34M", "0.25", "192G", "memory"),
    ],
    "decode": [
        ("q_proj", "34M", "34M", "1", "768G", "memory"),
        ("k_proj", "34M", "34M", "1", "768G", "memory"),
        ("v_proj", "34M", "34M", "1", "768G", "memory"),
        ("o_proj", "34M", "34M", "1", "768G", "memory"),
        ("gate_proj", "90M", "90M", "1", "768G", "memory"),
        ("up_proj", "90M", "90M", "1", "768G", "memory"),
        ("down_proj", "90M", "90M", "1", "768G", "memory"),
        ("qk_matmul", "17M", "17M", "0.99", "762G", "memory"),
        ("sv_matmul", "17M", "17M", "0.99", "762G", "memory"),
        ("softmax", "328K", "262K", "1.25", "960G", "memory"),
        ("norm", "29K", "16K", "1.75", "1T", "memory"),
        ("add", "4K", "16K", "0.25", "192G", "memory"),
    ],
}


# ---- the survey's numbers (paper convention) ---------------------------------------------------------
@pytest.mark.parametrize("stage", ["prefill", "decode"])
def test_table1_is_reproduced_to_the_printed_precision(stage):
    ops = uv.analyze("llama-2-7b", "a6000", stage=stage, batch=1, seq_len=2048, conventions="paper").ops
    ops = ops.set_index("op")
    for layer, o, m, ai, perf, bound in TABLE1[stage]:
        row = ops.loc[{"norm": "attn_norm", "add": "attn_add"}.get(layer, layer)]
        for printed, ours in ((o, row.flops), (m, row.bytes), (ai, row.intensity), (perf, row.attainable_flop_s)):
            value, half_digit = sv.parse_printed(printed)
            assert abs(ours - value) <= half_digit, f"{stage} {layer}: {ours:.6g} does not round to {printed}"
            assert sv.format_like(ours, printed) == printed
        assert row.bound == bound, f"{stage} {layer}"
    # the two norms and the two adds of a layer are the same operator (Table 1 prints one row each)
    assert ops.loc["attn_norm", "flops"] == ops.loc["mlp_norm", "flops"]
    assert ops.loc["attn_add", "bytes"] == ops.loc["mlp_add", "bytes"]


def test_table1_data_file_is_the_printed_table():
    printed = sv.survey_table1()
    rows = [(s, *r) for s in ("prefill", "decode") for r in TABLE1[s]]
    assert [tuple(r) for r in printed.itertuples(index=False)] == rows
    assert sv.table1().match.all()


def test_llm_viewer_network_totals():
    # LLM-Viewer HEAD, Llama-2-7b, A6000, sequence 2048, batch 1, FP16 (research notes, paper.md §6)
    pre = uv.analyze("llama-2-7b", "a6000", stage="prefill", seq_len=2048, conventions="paper")
    dec = uv.analyze("llama-2-7b", "a6000", stage="decode", seq_len=2048, conventions="paper")
    assert pre.flops == pytest.approx(28.75e12, rel=5e-4)
    assert pre.time_s == pytest.approx(0.227, rel=3e-3)
    assert dec.flops == pytest.approx(14.17e9, rel=5e-4)
    assert dec.bytes == pytest.approx(14.31e9, rel=5e-4)
    assert dec.time_s == pytest.approx(18.6e-3, rel=3e-3)
    assert dec.memory.weights == pytest.approx(12.95e9, rel=5e-4)
    assert dec.memory.kv_cache == pytest.approx(1.07e9, rel=5e-3)


def test_paper_convention_uses_llm_viewer_hardware_numbers():
    a = uv.analyze("llama-2-7b", "a6000", conventions="paper")
    assert a.device.preset == "llm-viewer"
    assert a.device.peak("fp16") == pytest.approx(309.677e12 / 2)
    # the INT8 roof only when weights, activations and KV are all <= 8 bits, for every operator
    w8 = uv.analyze("llama-2-7b", "a6000", w_bits=8, conventions="paper").ops
    assert set(w8.compute_dtype) == {"fp16"}
    w8a8 = uv.analyze("llama-2-7b", "a6000", w_bits=8, a_bits=8, conventions="paper").ops
    assert set(w8a8.compute_dtype) == {"int8"}


def test_figure_claims_hold_in_the_reproduced_data():
    f8 = sv.figure8_data().pivot_table(index="batch", columns="setting", values="time_s")
    assert f8.loc[1, "W2"] < 0.6 * f8.loc[1, "W4"]  # small batch: fewer weight bits, faster
    assert f8.loc[63, "W2"] == pytest.approx(f8.loc[63, "W4"], rel=0.01)  # large batch: no gain below 4 bits
    f9 = sv.figure9_data().pivot_table(index="seq_len", columns="setting", values="time_s")
    ratio = f9["FP16"] / f9["W4"]
    assert ratio.iloc[0] > 3 and ratio[ratio.index >= 256].max() < 1.02  # curves merge near 2^8
    f11 = sv.figure11_data().pivot_table(index=["setting", "seq_len"], columns="part", values="bytes")
    assert f11.loc[("FP16", 10_000), "KV cache"] < f11.loc[("FP16", 10_000), "Weight"]
    assert f11.loc[("FP16", 50_000), "KV cache"] > f11.loc[("FP16", 50_000), "Weight"]
    f19 = sv.figure19_data()
    big = f19[f19.seq_len == 1024].set_index("batch")
    assert big.throughput_tokens_per_s.is_monotonic_increasing and big.latency_s.is_monotonic_increasing
    assert big.memory_GB.loc[1] < 48 < big.memory_GB.loc[127]
    f20 = sv.figure20_data()
    assert np.allclose(f20.time_s * f20.bandwidth_GB_s, f20.time_s.iloc[0] * f20.bandwidth_GB_s.iloc[0])


def test_figure16_savings_came_from_the_march_2024_kv_undercount():
    march = sv.figure16_data("paper-2024-03").set_index(["stage", "case"])
    july = sv.figure16_data("paper").set_index(["stage", "case"])
    exact = sv.figure16_data("exact").set_index(["stage", "case"])
    assert march.loc[("decode", "bs1, 100k"), "time_reduction_pct"] > 30
    assert july.loc[("decode", "bs1, 100k"), "time_reduction_pct"] < 2
    assert exact.loc[("decode", "bs1, 100k"), "time_reduction_pct"] < 2
    # first principles: FlashAttention's gain is in prefill, where the s x s scores are never written
    assert exact.loc[("prefill", "bs1, 100k"), "memory_access_reduction_pct"] > 50


# ---- parameters ------------------------------------------------------------------------------------------
PUBLISHED_PARAMS = {  # totals published with the models (Hugging Face model cards / papers)
    "llama-2-7b": 6_738_415_616,
    "mistral-7b": 7_241_732_096,
    "mixtral-8x7b": 46_702_792_704,
    "gpt2": 124_439_808,
    "opt-125m": 125_239_296,
    "deepseek-v3": 671_026_419_200,  # without the multi-token-prediction module
}


@pytest.mark.parametrize(("name", "params"), PUBLISHED_PARAMS.items())
def test_param_count_matches_published_totals(name, params):
    assert uv.model_spec(name).param_count() == params


def test_active_params_of_moe_models():
    assert uv.model_spec("mixtral-8x7b").active_param_count() == pytest.approx(12.9e9, rel=0.01)
    assert uv.model_spec("deepseek-v3").active_param_count() == pytest.approx(37e9, rel=0.03)
    assert uv.model_spec("llama-2-7b").active_param_count() == uv.model_spec("llama-2-7b").param_count()


def test_kv_cache_sizes():
    assert uv.model_spec("llama-2-7b").kv_cache_bytes(1) == 524_288  # 2 · 32 layers · 4096 · 2 bytes
    assert uv.model_spec("llama-3-8b").kv_cache_bytes(1) == 131_072  # GQA: 8 KV heads
    assert uv.model_spec("deepseek-v3").kv_elements_per_token == 512 + 64  # MLA: latent + rotary key
    m = uv.model_spec("mistral-7b")
    assert m.kv_cache_bytes(10_000) == m.kv_cache_bytes(4096)  # sliding window of 4,096 tokens
    assert uv.model_spec("llama-2-7b").kv_cache_bytes(2048, batch=4, kv_bits=4) == 2048 * 4 * 524_288 / 4


# ---- exact convention: first principles --------------------------------------------------------------------
def test_exact_counts_what_llm_viewer_misses():
    ops = uv.analyze("llama-2-7b", "a6000", stage="prefill", seq_len=1024).ops.set_index("op")
    h, inter, n = 4096, 11008, 1024
    assert ops.loc["mlp_act", "act_load_bytes"] == 2 * n * inter * 2  # SwiGLU on the intermediate width
    assert ops.loc["attn_add", "act_load_bytes"] == 2 * n * h * 2  # both operands of the residual add
    assert ops.loc["attn_norm", "weight_bytes"] == h * 2  # RMSNorm reads its weight
    assert ops.loc["lm_head", "flops"] == 2 * h * 32000  # last token, 2 FLOPs per MAC
    assert {"rope", "embed_tokens", "final_norm", "kv_store"} <= set(ops.index)
    all_pos = uv.analyze("llama-2-7b", "a6000", stage="prefill", seq_len=1024, batch=3, logits="all").ops
    assert all_pos.set_index("op").loc["lm_head", "flops"] == 2 * 3 * 1024 * h * 32000


def test_gqa_reads_kv_heads_and_query_heads():
    ops = uv.analyze("llama-3-8b", "a6000", stage="decode", seq_len=1000, batch=2).ops.set_index("op")
    K, H, d = 8, 32, 128
    assert ops.loc["qk_matmul", "kv_load_bytes"] == 2 * 1000 * K * d * 2
    assert ops.loc["qk_matmul", "act_load_bytes"] == 2 * H * d * 2


def test_flash_attention_never_writes_the_scores():
    naive = uv.analyze("llama-2-7b", "a6000", stage="prefill", seq_len=4096).ops.set_index("op")
    fa = uv.analyze("llama-2-7b", "a6000", stage="prefill", seq_len=4096, flash_attention=True).ops.set_index("op")
    B, H, s, d = 1, 32, 4096, 128
    assert fa.loc["fused_attention", "act_store_bytes"] == B * H * s * d * 2  # the output, once
    assert naive.loc["qk_matmul", "act_store_bytes"] == B * H * s * s * 2  # the full score matrix
    # causal tile skipping: about half the score elements of the full s x s product
    full = naive.loc[["qk_matmul", "softmax", "sv_matmul"], "flops"].sum()
    assert 0.45 < fa.loc["fused_attention", "flops"] / full < 0.55


def test_causal_tiles_closed_form_matches_a_direct_count():
    for s in (1, 5, 128, 129, 1000, 4096):
        for tile in (16, 64, 128):
            for window in (None, 7, 100, 4096):
                cols = elements = 0
                for start in range(0, s, tile):
                    rows = min(tile, s - start)
                    hi = start + rows - 1
                    lo = 0 if window is None else max(0, start - window + 1)
                    k0, k1 = (lo // tile) * tile, min((hi // tile + 1) * tile, s)
                    cols += k1 - k0
                    elements += rows * (k1 - k0)
                c, e = _causal_tiles(s, tile, window)
                assert (float(c), float(e)) == (cols, elements), (s, tile, window)


def test_flash_tile_follows_shared_memory():
    a6000 = uv.get_device("a6000")
    assert flash_tile(a6000, 128) == 128
    assert flash_tile(a6000, 256) == 64
    assert flash_tile(None, 128) == 128


def test_attention_costs_from_first_principles_and_flop_counter():
    # one decode step of Llama-3-8B attention (GQA: 32 query heads share 8 K/V heads), batch 3, 777 cached tokens
    B, L, H, K, d, b = 3, 777, 32, 8, 128, 2
    got = attention_cost(B, 1, L, H, K, d)
    scores = B * H * L
    assert got["qk_matmul"] == (2 * scores * d, b * (B * H * d + scores + B * K * L * d))  # Q, scores, K once
    assert got["softmax"] == (5 * scores, b * 2 * scores)  # read and write the scores
    assert got["sv_matmul"] == (2 * scores * d, b * (scores + B * K * L * d + B * H * d))  # scores, V, out
    flash = attention_cost(B, 1, L, H, K, d, flash=True)["fused_attention"]
    assert flash == (scores * (4 * d + 5), b * (2 * B * H * d + 2 * B * K * L * d))  # the scores never leave
    # the matmul FLOPs match what PyTorch counts for the eager computation (repeat_kv does no arithmetic)
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v = torch.randn(B, H, 1, d), torch.randn(B, K, L, d), torch.randn(B, K, L, d)
    with FlopCounterMode(display=False) as counter:
        k_rep, v_rep = k.repeat_interleave(H // K, 1), v.repeat_interleave(H // K, 1)
        (q @ k_rep.transpose(-1, -2)).softmax(-1) @ v_rep
    assert counter.get_total_flops() == got["qk_matmul"][0] + got["sv_matmul"][0]
    # and the analyzer charges exactly these per layer
    ops = uv.analyze("llama-3-8b", "a6000", stage="decode", seq_len=L, batch=B).ops.set_index("op")
    for name in ("qk_matmul", "softmax", "sv_matmul"):
        assert (ops.loc[name, "flops"], ops.loc[name, "bytes"]) == got[name]
        assert ops.loc[name, "count"] == 32


def test_moe_distinct_experts_formula_matches_simulation():
    rng = np.random.default_rng(0)
    E, k = 8, 2
    for tokens in (1, 2, 4, 16):
        sims = [len({e for _ in range(tokens) for e in rng.choice(E, k, replace=False)}) for _ in range(4000)]
        # an expert escapes one token with probability 1 - k/E, and all N tokens with (1 - k/E)^N
        formula = E * (1 - (1 - k / E) ** tokens)
        assert np.mean(sims) == pytest.approx(formula, rel=0.02)
    ops = uv.analyze("mixtral-8x7b", "a6000", stage="decode", batch=1, seq_len=100).ops.set_index("op")
    one_expert = 4096 * 14336 * 2
    assert ops.loc["experts.gate_proj", "weight_bytes"] == pytest.approx(2 * one_expert)  # top-2 at batch 1
    big = uv.analyze("mixtral-8x7b", "a6000", stage="prefill", batch=1, seq_len=512).ops.set_index("op")
    assert big.loc["experts.gate_proj", "weight_bytes"] == pytest.approx(8 * one_expert)  # all experts


def test_compute_dtype_per_operator():
    def dtypes(dev, **bits):
        ops = uv.analyze("llama-2-7b", dev, stage="prefill", seq_len=512, **bits).ops.set_index("op")
        return ops.loc["q_proj", "compute_dtype"], ops.loc["qk_matmul", "compute_dtype"], ops.loc["softmax", "compute_dtype"]

    assert dtypes("a6000") == ("fp16", "fp16", "fp32")
    assert dtypes("a6000", w_bits=4) == ("fp16", "fp16", "fp32")  # weight-only quantization runs at FP16
    assert dtypes("a6000", w_bits=8, a_bits=8) == ("int8", "int8", "fp32")
    assert dtypes("a6000", w_bits=4, a_bits=4) == ("int4", "int4", "fp32")
    assert dtypes("h100-sxm", w_bits=4, a_bits=4)[0] == "int8"  # no INT4 peak: the next wider type


# ---- property tests ------------------------------------------------------------------------------------------
DENSE = ["llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-7b", "gemma-2b", "opt-125m", "gpt2", "qwen3-0.6b"]
ALL = [*DENSE, "mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite"]
bits = st.sampled_from([1, 2, 4, 8, 16])


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(ALL), batch=st.integers(1, 64), seq=st.integers(1, 2000), w=bits, kv=bits,
       fa=st.booleans())
def test_decode_reads_at_least_the_weights_and_the_kv_cache(name, batch, seq, w, kv, fa):
    a = uv.analyze(name, "a6000", stage="decode", batch=batch, seq_len=seq, w_bits=w, kv_bits=kv, flash_attention=fa,
                   check_context=False)
    m = uv.model_spec(name)
    ops = a.ops
    weights = (ops["count"] * ops.weight_bytes).sum()
    kv_read = (ops["count"] * ops.kv_load_bytes).sum()
    assert kv_read >= m.kv_cache_bytes(seq, batch, kv) * (1 - 1e-12)
    assert a.bytes >= weights + kv_read
    if not m.is_moe:  # a dense model reads every linear weight of every layer once per step
        assert weights >= param_classes(m)["linear"] * w / 8 * (1 - 1e-12)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(ALL), stage=st.sampled_from(["prefill", "decode"]), batch=st.integers(1, 32),
       seq=st.integers(1, 1500), fa=st.booleans(), conv=st.sampled_from(["exact", "paper"]))
def test_time_is_monotone_in_batch_and_sequence(name, stage, batch, seq, fa, conv):
    if conv == "paper" and uv.model_spec(name).is_mla:
        return
    kw = dict(stage=stage, flash_attention=fa, conventions=conv, check_context=False)
    t = uv.analyze(name, "a6000", batch=batch, seq_len=seq, **kw).time_s
    assert uv.analyze(name, "a6000", batch=batch + 1, seq_len=seq, **kw).time_s >= t
    assert uv.analyze(name, "a6000", batch=batch, seq_len=seq + 1, **kw).time_s >= t


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(ALL), stage=st.sampled_from(["prefill", "decode"]), batch=st.integers(1, 32),
       seq=st.integers(1, 1500), which=st.sampled_from(["w_bits", "a_bits", "kv_bits"]),
       pair=st.sampled_from([(32, 16), (16, 8), (8, 4), (4, 2), (2, 1), (16, 4)]))
def test_fewer_bits_are_never_slower(name, stage, batch, seq, which, pair):
    wide, narrow = pair
    kw = dict(stage=stage, batch=batch, seq_len=seq, check_context=False)
    base = dict(w_bits=16, a_bits=16, kv_bits=16)
    assert (uv.analyze(name, "a6000", **kw, **{**base, which: narrow}).time_s
            <= uv.analyze(name, "a6000", **kw, **{**base, which: wide}).time_s)


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("device", ["a6000", "h100-sxm", "a100-80gb", "rtx-4090"])
def test_dense_decode_at_batch_one_is_memory_bound(name, device):
    a = uv.analyze(name, device, stage="decode", batch=1, seq_len=512)
    assert (a.ops.bound == "memory").all()
    assert a.intensity < 2


def test_totals_are_count_weighted_sums_of_the_table():
    a = uv.analyze("qwen1.5-moe-a2.7b", "a6000", stage="prefill", batch=2, seq_len=300)
    ops = a.ops
    assert list(ops.columns[:7]) == ["op", "count", "flops", "bytes", "intensity", "bound", "time_s"]
    assert a.flops == pytest.approx((ops["count"] * ops.flops).sum())
    assert a.bytes == pytest.approx((ops["count"] * ops.bytes).sum())
    assert a.time_s == pytest.approx(ops.total_time_s.sum())
    peak = np.where(ops.bound == "compute", ops.attainable_flop_s, np.inf)
    assert np.allclose(ops.time_s, np.maximum(ops.flops / peak, ops.bytes / uv.get_device("a6000").bandwidth))
    assert ops.time_share.sum() == pytest.approx(1.0)


# ---- memory ------------------------------------------------------------------------------------------------
def test_memory_footprint_exact():
    a = uv.analyze("llama-2-7b", "a6000", stage="decode", batch=4, seq_len=1000)
    m = uv.model_spec("llama-2-7b")
    assert a.memory.weights == m.param_count() * 2
    assert a.memory.kv_cache == m.kv_cache_bytes(1000, 4)
    assert 0 < a.memory.activations < a.memory.kv_cache
    assert a.memory.total == a.memory.weights + a.memory.kv_cache + a.memory.activations
    assert a.memory.fits is True
    w4 = uv.analyze("llama-2-7b", "a6000", stage="decode", w_bits=4, group_size=128).memory
    linear = m.param_count() - 2 * 32000 * 4096 - (2 * 32 + 1) * 4096
    assert w4.weights == pytest.approx(linear * (0.5 + 4 / 128) + (m.param_count() - linear) * 2)
    # peak activations, not a sum: FlashAttention removes the s x s scores from the peak
    naive = uv.analyze("llama-2-7b", "a6000", stage="prefill", seq_len=4096).memory.activations
    fa = uv.analyze("llama-2-7b", "a6000", stage="prefill", seq_len=4096, flash_attention=True).memory.activations
    assert fa < naive / 4


def test_largest_batch_and_context_that_fit():
    b = uv.max_batch("llama-2-7b", "a6000", seq_len=4096)
    fits = uv.analyze("llama-2-7b", "a6000", stage="decode", batch=b, seq_len=4096).memory
    over = uv.analyze("llama-2-7b", "a6000", stage="decode", batch=b + 1, seq_len=4096).memory
    assert fits.fits and not over.fits
    assert uv.max_batch("llama-2-70b", "a6000", seq_len=1024) == 0  # 140 GB of weights
    n = uv.max_seq_len("llama-2-7b", "a6000", batch=16, within_context=False)
    assert uv.analyze("llama-2-7b", "a6000", stage="decode", batch=16, seq_len=n, check_context=False).memory.fits
    assert not uv.analyze("llama-2-7b", "a6000", stage="decode", batch=16, seq_len=n + 1,
                          check_context=False).memory.fits
    assert uv.max_seq_len("llama-2-7b", "a6000", batch=1) == 4096  # capped at the context


# ---- generate and sweep ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fa", "conv"), [("llama-2-7b", False, "exact"), ("mistral-7b", True, "exact"),
                                                  ("deepseek-v2-lite", False, "exact"), ("llama-2-13b", True, "paper")])
def test_generate_closed_form_equals_the_per_token_sum(name, fa, conv):
    p, g = 3000, 1500
    gen = uv.estimate_generation(name, "a6000", batch=3, prompt_len=p, gen_len=g, flash_attention=fa, conventions=conv,
                      check_context=False)
    steps = range(p + 1, p + g) if conv == "exact" else range(p, p + g)
    loop = sum(uv.analyze(name, "a6000", stage="decode", batch=3, seq_len=L, flash_attention=fa, conventions=conv,
                          check_context=False).time_s for L in steps)
    assert gen.decode_s == pytest.approx(loop, rel=1e-10)
    assert gen.decode_steps == len(steps)
    assert gen.ttft_s == uv.analyze(name, "a6000", stage="prefill", batch=3, seq_len=p, flash_attention=fa,
                                    conventions=conv, check_context=False).time_s
    assert gen.total_s == pytest.approx(gen.ttft_s + gen.decode_s)
    assert gen.tokens_per_s == pytest.approx(3 * g / gen.total_s)
    assert gen.tpot_s == pytest.approx(gen.decode_s / gen.decode_steps)


def test_generate_single_token_is_the_prefill():
    g = uv.estimate_generation("llama-2-7b", "a6000", prompt_len=100, gen_len=1)
    assert g.decode_steps == 0 and g.decode_s == 0 and math.isnan(g.tpot_s)
    assert g.total_s == g.ttft_s


def test_sweep_equals_analyze_for_every_configuration():
    df = uv.sweep(["llama-3-8b", "mixtral-8x7b"], ["a6000", "h100-sxm"], stage=["prefill", "decode"],
                  batch=[1, 3, 16], seq_len=[17, 512], w_bits=[16, 4], a_bits=[16, 8], flash_attention=[False, True])
    assert len(df) == 2 * 2 * 2 * 3 * 2 * 2 * 2 * 2
    for _, r in df.sample(25, random_state=0).iterrows():
        a = uv.analyze(r.model, r.device, stage=r.stage, batch=int(r.batch), seq_len=int(r.seq_len),
                       w_bits=int(r.w_bits), a_bits=int(r.a_bits), kv_bits=int(r.kv_bits),
                       flash_attention=bool(r.flash_attention))
        assert (r.flops, r.bytes, r.time_s, r.memory_bytes) == pytest.approx(
            (a.flops, a.bytes, a.time_s, a.memory.total), rel=1e-12)
        assert r.fits == a.memory.fits
        assert r.memory_bound_share == pytest.approx(a.memory_bound_share)


def test_sweep_paper_convention_matches_analyze():
    df = uv.sweep("llama-2-13b", "a6000", stage="decode", batch=[1, 7], seq_len=[256, 2048], w_bits=[16, 8],
                  a_bits=[16, 8], kv_bits=[16, 8], conventions="paper")
    for _, r in df.iterrows():
        a = uv.analyze("llama-2-13b", "a6000", stage="decode", batch=int(r.batch), seq_len=int(r.seq_len),
                       w_bits=int(r.w_bits), a_bits=int(r.a_bits), kv_bits=int(r.kv_bits), conventions="paper")
        assert (r.time_s, r.memory_bytes) == pytest.approx((a.time_s, a.memory.total), rel=1e-12)


def test_compute_bound_batch_is_near_the_ridge_point():
    hw = uv.get_device("a6000")
    b = sv.compute_bound_batch("llama-2-7b", hw)
    assert hw.ridge_point("fp16") < b < 1.2 * hw.ridge_point("fp16")
    ops = uv.analyze("llama-2-7b", hw, stage="decode", batch=b, seq_len=1024).ops.set_index("op")
    assert ops.loc["down_proj", "bound"] == "compute"
    prev = uv.analyze("llama-2-7b", hw, stage="decode", batch=b - 1, seq_len=1024).ops
    assert (prev[prev.compute_dtype == "fp16"].bound == "memory").any()


# ---- configs -----------------------------------------------------------------------------------------------
TINY = {  # the shape of the book's tiny LLaMA-style models: a small vocabulary and tied embeddings
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 352,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 65,
    "max_position_embeddings": 256, "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "hidden_act": "silu",
}


def test_tiny_llama_config_with_tied_embeddings(tmp_path):
    path = tmp_path / "tiny" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY))
    for src in (TINY, path, path.parent, str(path)):
        m = uv.model_from_hf_config(src)
        h, i, n = 128, 352, 2
        assert m.param_count() == 65 * h + n * (2 * h + h * h + 2 * h * 64 + h * h + 3 * h * i) + h
        assert m.tie_embeddings and m.head_dim == 32
    assert uv.model_from_hf_config(path).name == "tiny"
    a = uv.analyze(m, "a6000", stage="prefill", batch=4, seq_len=256)
    assert a.ops.set_index("op").loc["lm_head", "weight_bytes"] == 65 * 128 * 2  # the tied table is read
    with pytest.raises(ValueError, match="context"):
        uv.analyze(m, "a6000", seq_len=257)


def test_every_shipped_config_analyzes():
    assert len(uv.model_names()) >= 20
    for name in uv.model_names():
        m = uv.model_spec(name)
        a = uv.analyze(m, "h100-sxm", stage="decode", batch=2, seq_len=min(512, m.max_context))
        assert a.time_s > 0 and np.isfinite(a.ops[["flops", "bytes", "time_s"]].to_numpy()).all()


def test_explicit_head_dim():
    g = uv.model_spec("gemma-7b")  # 16 heads of 256 = 4096, not the hidden size 3072
    assert g.head_dim == 256 and g.attention_width == 4096
    ops = uv.analyze(g, "a6000", stage="prefill", seq_len=10).ops.set_index("op")
    assert ops.loc["q_proj", "flops"] == 2 * 10 * 3072 * 4096


# ---- bad input -------------------------------------------------------------------------------------------
def test_unknown_names_suggest_close_matches():
    with pytest.raises(ValueError, match="llama-2-7b"):
        uv.model_spec("lama-2-7b")
    with pytest.raises(ValueError, match="a6000"):
        uv.analyze("llama-2-7b", "a600")
    with pytest.raises(ValueError, match="llama"):
        uv.model_from_hf_config({"model_type": "lama", "hidden_size": 8})


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"])
def test_missing_config_field_is_named(field):
    cfg = {k: v for k, v in TINY.items() if k != field}
    with pytest.raises(ValueError, match=field):
        uv.model_from_hf_config(cfg)


def test_bad_config_inputs():
    with pytest.raises(ValueError, match="model_type"):
        uv.model_from_hf_config({"hidden_size": 8})
    with pytest.raises(ValueError, match="no config file"):
        uv.model_from_hf_config("does/not/exist.json")
    with pytest.raises(TypeError):
        uv.model_from_hf_config(42)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        uv.model_from_hf_config({**TINY, "num_key_value_heads": 3})
    with pytest.raises(TypeError):
        uv.model_spec(3.5)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"batch": 0}, ValueError, "batch"),
    ({"batch": -2}, ValueError, "batch"),
    ({"seq_len": 0}, ValueError, "seq_len"),
    ({"batch": 1.0}, TypeError, "batch"),
    ({"w_bits": 7}, ValueError, "w_bits"),
    ({"a_bits": 0}, ValueError, "a_bits"),
    ({"kv_bits": 12}, ValueError, "kv_bits"),
    ({"w_bits": 4.0}, TypeError, "w_bits"),
    ({"stage": "training"}, ValueError, "stage"),
    ({"conventions": "llm-viewer"}, ValueError, "conventions"),
    ({"logits": "first"}, ValueError, "logits"),
    ({"flash_attention": "yes"}, TypeError, "flash_attention"),
    ({"seq_len": 4097}, ValueError, "context"),
    ({"stage": "decode", "seq_len": 5000}, ValueError, "context"),
])
def test_bad_analyze_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        uv.analyze("llama-2-7b", "a6000", **kwargs)


def test_bad_generate_and_sweep_arguments():
    with pytest.raises(ValueError, match="context"):
        uv.estimate_generation("llama-2-7b", "a6000", prompt_len=4000, gen_len=200)
    with pytest.raises(ValueError, match="gen_len"):
        uv.estimate_generation("llama-2-7b", "a6000", gen_len=0)
    with pytest.raises(ValueError, match="w_bits"):
        uv.sweep("llama-2-7b", "a6000", w_bits=[16, 7])
    with pytest.raises(ValueError, match="batch"):
        uv.sweep("llama-2-7b", "a6000", batch=[0, 1])
    with pytest.raises(TypeError, match="seq_len"):
        uv.sweep("llama-2-7b", "a6000", seq_len=[1.0])
    with pytest.raises(ValueError, match="empty"):
        uv.sweep([], "a6000")
    with pytest.raises(ValueError, match="multi-head latent"):
        uv.analyze("deepseek-v3", "a6000", conventions="paper")
    with pytest.raises(ValueError, match="context"):
        uv.sweep("llama-2-7b", "a6000", seq_len=[100, 5000])
    # the paper convention does not check the context, as LLM-Viewer did not (Figs 11 and 16 go beyond it)
    assert uv.analyze("llama-2-13b", "a6000", seq_len=100_000, stage="decode", conventions="paper").time_s > 0


# ---- command line ------------------------------------------------------------------------------------------
def test_cli_analyze_table_and_totals(capsys):
    assert main(["analyze", "llama-2-7b", "a6000", "--stage", "decode", "--batch", "8", "--seq-len", "4096",
                 "--w-bits", "4"]) == 0
    out = capsys.readouterr().out
    assert "llama-2-7b" in out and "q_proj" in out and "total:" in out and "memory:" in out


def test_cli_csv_and_json(capsys):
    main(["analyze", "llama-2-7b", "a6000", "--csv"])
    df = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    a = uv.analyze("llama-2-7b", "a6000")
    assert list(df.op) == list(a.ops.op) and np.allclose(df.flops, a.ops.flops)
    main(["analyze", "mixtral-8x7b", "a6000", "--json", "--stage", "decode", "--conventions", "paper"])
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["conventions"] == "paper" and data["ops"][0]["op"] == "q_proj"
    main(["generate", "llama-2-7b", "a6000", "--gen-len", "16", "--json"])
    assert json.loads(capsys.readouterr().out)["gen_len"] == 16
    main(["models"])
    assert "deepseek-v3" in capsys.readouterr().out


def test_cli_bad_input_exits_with_a_message(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "lama-2-7b", "a6000"])
    assert exc.value.code == 2
    assert "Did you mean" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["frobnicate"])
