"""KV-cache sizing: known values, agreement with the analyzer's memory and traffic accounting, variants."""

from __future__ import annotations

import pytest

import unveiled as uv
from unveiled.kvcache import sizing as kvs

MODELS = ["llama-2-7b", "llama-2-13b", "llama-3-8b", "llama-3-70b", "mistral-7b", "qwen3-8b", "gemma-2b",
          "opt-13b", "gpt2", "deepseek-v2-lite", "deepseek-v3", "mixtral-8x7b"]


@pytest.mark.parametrize(("name", "per_token"), [
    ("opt-13b", 819_200),  # vLLM paper: "800 KB per token"
    ("llama-2-7b", 524_288),
    ("llama-3-8b", 131_072),
    ("llama-3-70b", 327_680),
    ("deepseek-v2-lite", 27 * (512 + 64) * 2),  # MLA: one latent + rotary key, no factor 2
])
def test_known_bytes_per_token(name, per_token):
    assert kvs.kv_bytes_per_token(name) == per_token


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kv_bits", [16, 8, 4, 2])
def test_sizes_match_the_analyzer_memory_accounting(name, kv_bits):
    spec = uv.model_spec(name)
    for seq_len, batch in ((1, 1), (4096, 8), (32_000, 3)):
        ours = kvs.kv_cache_bytes(name, seq_len, batch, kv_bits)
        assert ours == pytest.approx(spec.kv_cache_bytes(seq_len, batch, kv_bits), rel=1e-12)
        # the analyzer's footprint: a prefill of seq_len tokens and a decode step with seq_len cached tokens
        pre = uv.analyze(name, "h100-sxm", stage="prefill", batch=batch, seq_len=seq_len, kv_bits=kv_bits,
                         check_context=False).memory.kv_cache
        dec = uv.analyze(name, "h100-sxm", stage="decode", batch=batch, seq_len=seq_len, kv_bits=kv_bits,
                         check_context=False).memory.kv_cache
        assert ours == pytest.approx(pre, rel=1e-12)
        assert ours == pytest.approx(dec, rel=1e-12)


@pytest.mark.parametrize("name", ["llama-2-7b", "llama-3-8b", "qwen3-8b", "deepseek-v2-lite"])
def test_a_decode_step_reads_the_whole_cache(name):
    df = kvs.decode_traffic(name, seq_lens=[1000, 20_000], batch=4)
    for row in df.itertuples():
        assert row.kv_bytes == pytest.approx(kvs.kv_cache_bytes(name, row.seq_len, 4), rel=1e-12)
    assert df.kv_share.is_monotonic_increasing


def test_variants_order_and_kinds():
    v = kvs.attention_variants("llama-2-7b")
    assert [kvs.attention_kind(s) for s in v.values()] == ["MHA", "GQA", "MQA", "MLA"]
    size = {k: kvs.kv_bytes_per_token(s) for k, s in v.items()}
    assert size["MHA"] == 4 * size["GQA"] == 32 * size["MQA"]
    assert size["MQA"] < size["MLA"] < size["GQA"]
    assert size["MLA"] == 32 * 576 * 2
    with pytest.raises(ValueError, match="divide"):
        kvs.attention_variants("llama-2-7b", gqa_kv_heads=5)


def test_crossover_is_where_kv_equals_weights():
    for batch in (1, 16):
        n = kvs.kv_weights_crossover("llama-2-13b", batch=batch)
        weights = uv.analyze("llama-2-13b", "a6000", stage="decode", seq_len=1, check_context=False).memory.weights
        assert batch * n * kvs.kv_bytes_per_token("llama-2-13b") == pytest.approx(weights)
    assert kvs.kv_weights_crossover("llama-2-13b", kv_bits=4) == pytest.approx(4 * kvs.kv_weights_crossover("llama-2-13b"))


def test_quantized_sizes_count_group_overhead_and_the_residual():
    base = kvs.kv_bytes_per_token("llama-2-7b")
    assert kvs.kv_bytes_per_token("llama-2-7b", 4) == base / 4
    assert kvs.kv_bytes_per_token("llama-2-7b", 2, group_size=32) == pytest.approx(base * (2 + 1) / 16)
    full = kvs.kv_cache_bytes("llama-2-7b", 1000, kv_bits=2, group_size=32, residual=128)
    assert full == pytest.approx(872 * base * 3 / 16 + 128 * base)
    assert kvs.kv_cache_bytes("mistral-7b", 100_000) == kvs.kv_cache_bytes("mistral-7b", 4096)  # sliding window


def test_size_table_and_memory_wall():
    t = kvs.kv_size_table(["llama-2-7b", "llama-3-8b", "deepseek-v2-lite"], seq_len=1000, batch=4)
    assert list(t.attention) == ["MHA", "GQA", "MLA"]
    assert (t.bytes_batch == 4 * t.bytes_per_sequence).all()
    assert (t.bytes_per_sequence == 1000 * t.bytes_per_token).all()
    w = kvs.memory_wall(["llama-2-13b"], [10_000, 50_000, 200_000])
    # the survey's Fig. 11 claim: past ~50k tokens the KV cache outweighs the weights (Llama-2-13b, batch 1)
    assert list(w.kv_share > 0.5) == [False, True, True]


@pytest.mark.parametrize(("kv_bits", "error"), [(0, ValueError), (17, ValueError), (4.0, TypeError)])
def test_bad_kv_bits(kv_bits, error):
    with pytest.raises(error, match="kv_bits"):
        kvs.kv_bytes_per_token("llama-2-7b", kv_bits)


def test_unknown_model_suggests_names():
    with pytest.raises(ValueError, match="llama-2-7b"):
        kvs.kv_bytes_per_token("llama2-7b")
