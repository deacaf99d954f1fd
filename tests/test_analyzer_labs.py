"""Unit tests of the Chapter 2 lab checks: a correct solution passes; the classic mistakes fail with a hint."""

from __future__ import annotations

import pytest

from unveiled.labs import LabCheckFailed
from unveiled.labs import analyzer as lab

pytestmark = pytest.mark.lab_analyzer


def kv_cache_bytes(num_layers, num_kv_heads, head_dim, seq_len, batch, kv_bits):
    return 2 * num_layers * num_kv_heads * head_dim * seq_len * batch * kv_bits / 8


def attention_cost(batch, query_len, key_len, num_heads, num_kv_heads, head_dim, act_bytes=2.0, kv_bytes=2.0):
    scores = batch * num_heads * query_len * key_len
    q = batch * num_heads * query_len * head_dim * act_bytes
    kv = batch * num_kv_heads * key_len * head_dim * kv_bytes
    return {
        "qk_matmul": (2 * scores * head_dim, q + kv + scores * act_bytes),
        "softmax": (5 * scores, 2 * scores * act_bytes),
        "sv_matmul": (2 * scores * head_dim, scores * act_bytes + kv + q),
    }


def linear_time(tokens, in_features, out_features, w_bits, a_bits, bandwidth, peak):
    flops = 2 * tokens * in_features * out_features
    nbytes = in_features * out_features * w_bits / 8 + tokens * (in_features + out_features) * a_bits / 8
    return max(flops / peak, nbytes / bandwidth)


def run(check, fn):
    return check(fn, raise_on_fail=False, show=False)


def test_correct_solutions_pass():
    for name, fn in (("kv_cache_bytes", kv_cache_bytes), ("attention_cost", attention_cost),
                     ("linear_time", linear_time)):
        report = run(lab.CHECKS[name], fn)
        assert report.passed, str(report)


def test_failures_raise_by_default():
    with pytest.raises(LabCheckFailed):
        lab.check_kv_cache_bytes(lambda *a: 0.0, show=False)


def messages(report) -> str:
    assert not report.passed
    return " ".join(r.message for r in report.results if not r.passed)


def test_kv_cache_mistakes_are_named():
    assert "factor 2" in messages(run(lab.check_kv_cache_bytes, lambda *a: kv_cache_bytes(*a) / 2))
    assert "Bits are not bytes" in messages(run(lab.check_kv_cache_bytes, lambda *a: kv_cache_bytes(*a) * 8))

    def query_heads(L, K, d, s, b, bits):  # uses H = 32 query heads for the GQA models
        return kv_cache_bytes(L, 32 if K == 8 else K, d, s, b, bits)

    assert "GQA" in messages(run(lab.check_kv_cache_bytes, query_heads))


def test_attention_mistakes_are_named():
    def half(*a):
        out = attention_cost(*a)
        return {k: (f / 2 if k != "softmax" else f, b) for k, (f, b) in out.items()}

    assert "2 FLOPs" in messages(run(lab.check_attention_cost, half))

    def query_heads_for_kv(b, q, k, H, K, d, ab=2.0, kvb=2.0):
        return attention_cost(b, q, k, H, H, d, ab, kvb)

    assert "num_kv_heads" in messages(run(lab.check_attention_cost, query_heads_for_kv))

    def no_scores(b, q, k, H, K, d, ab=2.0, kvb=2.0):
        out = attention_cost(b, q, k, H, K, d, ab, kvb)
        s = b * H * q * k * ab
        return {**out, "qk_matmul": (out["qk_matmul"][0], out["qk_matmul"][1] - s),
                "sv_matmul": (out["sv_matmul"][0], out["sv_matmul"][1] - s)}

    assert "score matrix" in messages(run(lab.check_attention_cost, no_scores))
    assert "return a dict" in messages(run(lab.check_attention_cost, lambda *a: 42))


def test_linear_time_mistakes_are_named():
    def summed(n, i, o, wb, ab, bw, peak):
        return 2 * n * i * o / peak + (i * o * wb + n * (i + o) * ab) / 8 / bw

    assert "max of compute and memory" in messages(run(lab.check_linear_time, summed))

    def weights_only(n, i, o, wb, ab, bw, peak):
        return max(2 * n * i * o / peak, i * o * wb / 8 / bw)

    assert "activations" in messages(run(lab.check_linear_time, weights_only))

    def no_factor_2(n, i, o, wb, ab, bw, peak):
        return max(n * i * o / peak, (i * o * wb + n * (i + o) * ab) / 8 / bw)

    assert "2 FLOPs" in messages(run(lab.check_linear_time, no_factor_2))
