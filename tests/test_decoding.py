"""Speculative decoding: exactness (analytic and chi-square), greedy identity for every draft, the analytic
model, the roofline of verification, and argument checking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unveiled as uv
from unveiled.decoding import (
    LayerSkipDraft,
    ModelDraft,
    PromptLookupDraft,
    acceptance_probability,
    best_draft_length,
    chi_square_test,
    dynamic_reduction_table,
    expected_distinct_experts,
    expected_speedup,
    expected_tokens_per_pass,
    moe_decode_table,
    output_distribution,
    plain_generate,
    resample_from_target_accept,
    residual_distribution,
    simulate_distinct_experts,
    simulate_tokens_per_pass,
    speculative_accept,
    speculative_exactness_test,
    speculative_generate,
    verification_cost,
)
from unveiled.decoding.toy import TableLM
from unveiled.models import Decoder, DecoderConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the cached experiments ran (conftest)



FALSE_ALARM = 1e-3  # the chance a correct implementation fails one seeded chi-square test below


def tiny_decoder(seed: int, layers: int = 3, vocab: int = 24, scale: float = 6.0) -> Decoder:
    """A random decoder with decisive logits (weights scaled up, so arg-max ties cannot flip with the batch shape)."""
    cfg = DecoderConfig(vocab_size=vocab, hidden_size=32, num_layers=layers, num_heads=4, num_kv_heads=2,
                        intermediate_size=64, max_seq_len=64, name=f"tiny-{seed}")
    m = Decoder(cfg, seed=seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return m.eval()


def random_probs(seed: int, rows: int, v: int, sharp: float = 1.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, v, generator=gen, dtype=torch.float64) * sharp, -1)


@pytest.fixture(scope="module")
def target():
    return tiny_decoder(0)


@pytest.fixture(scope="module")
def prompt():
    return [1, 2, 3, 4, 5, 1, 2, 3, 7, 9]


# ---- one step, in closed form -------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), v=st.integers(2, 12))
def test_output_distribution_equals_target_for_any_draft(seed, v):
    p, q = random_probs(seed, 1, v, 2.0)[0], random_probs(seed + 1, 1, v, 2.0)[0]
    assert torch.allclose(output_distribution(p, q), p, atol=1e-12)
    assert torch.isclose(acceptance_probability(p, q), 1 - 0.5 * (p - q).abs().sum(), atol=1e-12)


def test_residual_is_the_undercovered_mass():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.2, 0.3, 0.1, 0.4])
    assert torch.allclose(residual_distribution(p, q), torch.tensor([0.75, 0.0, 0.25, 0.0]))
    assert torch.equal(residual_distribution(p, p), p)  # undefined residual falls back to p (never used)


def test_q_equal_p_always_accepts_and_disjoint_always_rejects():
    gen = torch.Generator().manual_seed(0)
    p = random_probs(3, 4, 6).float()
    for _ in range(50):
        assert len(speculative_accept(p, p[:3], [int(torch.multinomial(p[i], 1, generator=gen)) for i in range(3)],
                                      gen)) == 4
    p2 = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25] * 4])
    q2 = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    outs = {tuple(speculative_accept(p2, q2, [2], gen)) for _ in range(100)}
    assert outs <= {(0,), (1,)} and len(outs) == 2


def test_greedy_rows_keep_the_matching_prefix():
    eye = torch.eye(5)
    p = eye[[2, 0, 4]]
    assert speculative_accept(p, eye[[2, 3]], [2, 3]) == [2, 0]
    assert speculative_accept(p, eye[[2, 0]], [2, 0]) == [2, 0, 4]
    assert speculative_accept(p, eye[[1, 0]], [1, 0]) == [2]


# ---- one step, statistically (seeded chi-square, false-alarm rate 1e-3) -------------------------------------


def test_chi_square_exactness_of_the_accept_step():
    p, q = random_probs(11, 4, 6).float(), random_probs(12, 3, 6).float()
    res = speculative_exactness_test(speculative_accept, p, q, samples=20_000, seed=0, false_alarm=FALSE_ALARM)
    assert res.passed.all(), res


def test_chi_square_rejects_the_resample_from_target_bug():
    """Negative control: the test has power against the classic mistake (resample from p, not the residual)."""
    p, q = random_probs(11, 4, 6).float(), random_probs(12, 3, 6).float()
    res = speculative_exactness_test(resample_from_target_accept, p, q, samples=20_000, seed=0)
    assert not res.passed.all()
    assert res.iloc[0].p_value < 1e-12


def test_chi_square_test_values():
    # a perfect fit has statistic 0 and p-value 1; scipy.stats.chisquare([10, 20, 70], [20, 20, 60]) gives
    # statistic 6.6667, p-value 0.035674
    assert chi_square_test([25, 25, 50], [0.25, 0.25, 0.5])["p_value"] == pytest.approx(1.0)
    r = chi_square_test([10, 20, 70], [0.2, 0.2, 0.6])
    assert r["statistic"] == pytest.approx(6.6666667) and r["p_value"] == pytest.approx(0.035674, abs=1e-6)
    assert chi_square_test([1, 5], [0.0, 1.0])["p_value"] == 0.0


def test_whole_speculative_decoder_samples_the_target_sequence_distribution():
    """Three tokens from a table model (V = 3, 27 sequences), draft = another table model, k = 2: the counts of
    whole continuations match the exact law (KV rollback and multi-round logic included)."""
    t, d = TableLM(3, seed=0), TableLM(3, seed=1)
    ctx = [0, 1]
    exact = t.sequence_distribution(ctx, 3)
    draft = ModelDraft(d)
    counts = torch.zeros(27)
    for s in range(2000):
        a, b, c = speculative_generate(t, draft, ctx, 3, k=2, temperature=1.0, seed=s).new_tokens
        counts[a * 9 + b * 3 + c] += 1
    assert chi_square_test(counts, exact)["p_value"] >= FALSE_ALARM


def test_sampling_with_temperature_follows_the_warped_target():
    t = TableLM(3, seed=4)
    ctx = [2, 0]
    exact = t.sequence_distribution(ctx, 2, temperature=0.7)
    draft = PromptLookupDraft(3, max_ngram=2)  # deterministic proposals: one-hot q
    counts = torch.zeros(9)
    for s in range(1500):
        a, b = speculative_generate(t, draft, ctx, 2, k=2, temperature=0.7, seed=s).new_tokens
        counts[a * 3 + b] += 1
    assert chi_square_test(counts, exact)["p_value"] >= FALSE_ALARM


# ---- greedy: identical output for every draft kind ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["small model", "layer skip (first block)", "layer skip (blocks 0, 2)",
                                  "layer skip (by importance)", "prompt lookup", "the target itself"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_speculative_equals_plain_greedy(target, prompt, kind, k):
    drafts = {
        "small model": lambda: ModelDraft(tiny_decoder(1, layers=1)),
        "layer skip (first block)": lambda: LayerSkipDraft(target, [0]),
        "layer skip (blocks 0, 2)": lambda: LayerSkipDraft(target, [0, 2]),
        "layer skip (by importance)": lambda: LayerSkipDraft.by_importance(target, prompt * 3, keep=2),
        "prompt lookup": lambda: PromptLookupDraft(24),
        "the target itself": lambda: ModelDraft(target),
    }
    plain = plain_generate(target, prompt, 40)
    res = speculative_generate(target, drafts[kind](), prompt, 40, k=k)
    assert res.new_tokens == plain.new_tokens
    assert res.target_passes <= 40
    assert res.rounds.emitted.sum() == 40
    if kind == "the target itself":
        assert res.acceptance_rate == 1.0 and res.tokens_per_pass > k


def test_draft_reuse_across_generations_and_prompts(target):
    draft = ModelDraft(tiny_decoder(2, layers=1))
    for p in ([3, 1, 4, 1, 5], [9, 2, 6], [5]):
        assert speculative_generate(target, draft, p, 20, k=3).new_tokens == plain_generate(target, p, 20).new_tokens


def test_kv_rollback_leaves_the_cache_consistent(target, prompt):
    """After a speculative run, the target's cache-based logits still equal a fresh forward pass."""
    res = speculative_generate(target, ModelDraft(tiny_decoder(1, layers=1)), prompt, 25, k=4)
    seq = torch.tensor([res.tokens])
    cache = target.new_cache()
    target(seq[:, :-1], cache)
    full = target(seq)[0, -1]
    step = target(seq[:, -1:], cache)[0, -1]
    assert torch.allclose(full, step, atol=1e-4)


def test_layer_selection_keeps_first_and_last_blocks(target, prompt):
    d = LayerSkipDraft.by_importance(target, prompt * 3, keep=2)
    assert d.layers == [0, 2]
    assert LayerSkipDraft.by_importance(target, prompt, keep=3).layers == [0, 1, 2]


def test_prompt_lookup_copies_the_latest_match():
    d = PromptLookupDraft(10, max_ngram=2)
    assert d.lookup([1, 2, 3, 4, 1, 2], 3) == [3, 4, 1]
    assert d.lookup([1, 2, 3, 9, 2, 5, 2], 2) == [5, 2]  # 1-gram fallback, latest occurrence
    assert d.lookup([1, 2, 3], 3) == []


def test_max_new_tokens_and_eos(target, prompt):
    res = speculative_generate(target, PromptLookupDraft(24), prompt, 7, k=5)
    assert len(res.new_tokens) == 7
    plain = plain_generate(target, prompt, 30).new_tokens
    eos = plain[5]
    res = speculative_generate(target, LayerSkipDraft(target, [0]), prompt, 30, k=3, eos_token_id=eos)
    assert res.new_tokens[-1] == eos and res.new_tokens == plain[: plain.index(eos) + 1]


# ---- the analytic model -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 0.7, 0.9])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_tokens_per_pass_formula_matches_simulation(alpha, k):
    sim = simulate_tokens_per_pass(alpha, k, rounds=200_000, seed=1)
    # standard error of the mean is below 0.006 for these settings; 5 sigma
    assert sim == pytest.approx(expected_tokens_per_pass(alpha, k), abs=0.03)


def test_tokens_per_pass_limits_and_speedup():
    assert expected_tokens_per_pass(0.0, 5) == 1.0
    assert expected_tokens_per_pass(1.0, 5) == 6.0
    assert expected_tokens_per_pass(0.7, 2) == pytest.approx(1 + 0.7 + 0.49)
    assert expected_speedup(0.7, 2, 0.0, 1.0) == pytest.approx(2.19)
    assert expected_speedup(0.7, 2, 0.1, 1.0) == pytest.approx(2.19 / 1.2)
    arr = expected_speedup(np.array([0.5, 0.8]), 3, 0.05)
    assert arr.shape == (2,) and arr[1] > arr[0]
    assert best_draft_length(0.9, 0.01) > best_draft_length(0.5, 0.01) >= 1
    assert best_draft_length(0.8, 0.0, k_max=8, verify_ratio=np.linspace(1, 3, 8)) < 8


def test_verification_is_nearly_free_while_memory_bound():
    df = verification_cost("llama-2-7b", "a6000", tokens=(1, 5, 17, 1024), context_len=1024)
    rel = df.set_index("tokens").relative_time
    assert rel[1] == 1.0 and rel[5] < 1.01 and rel[17] < 1.05
    assert rel[1024] > 3  # far past the ridge point the pass is compute-bound


@pytest.mark.parametrize("name", uv.model_names())
def test_one_token_verification_is_the_analyzers_decode_step(name):
    # the same pass, so the same numbers: MLA, sliding windows (Mistral past its 4k window) and MoE included
    for context_len in (255, 8191):
        for fa in (False, True):
            v = verification_cost(name, "a6000", tokens=(1,), context_len=context_len, flash_attention=fa).iloc[0]
            a = uv.analyze(name, "a6000", stage="decode", batch=1, seq_len=context_len + 1, flash_attention=fa,
                           check_context=False)
            assert (v.flops, v.bytes, v.time_s) == (a.flops, a.bytes, a.time_s), (name, context_len, fa)


def test_verification_attention_follows_windows_and_causality():
    # Mistral's window W = 4096: T new tokens at the end of a long cache read the last W + T - 1 keys
    spec = uv.model_spec("mistral-7b")
    W, T, L = spec.sliding_window, 8, 8192
    a = uv.analyze(spec, "a6000", stage="decode", seq_len=L, new_tokens=T, flash_attention=True)
    att = a.ops.set_index("op").loc["fused_attention"]
    assert att.kv_load_bytes == spec.num_kv_heads * (W + T - 1) * 2 * spec.head_dim * 2
    # without FlashAttention the score matrix of T queries × (W + T - 1) keys is materialised
    eager = uv.analyze(spec, "a6000", stage="decode", seq_len=L, new_tokens=T).ops.set_index("op")
    assert eager.loc["softmax", "flops"] == 5 * spec.num_heads * T * (W + T - 1)
    # MLA: the absorbed decode attends over the latent cache with one shared "head" of width r + d_rope
    ds = uv.model_spec("deepseek-v2-lite")
    m = uv.analyze(ds, "a6000", stage="decode", seq_len=1000, new_tokens=T, flash_attention=True)
    kv = m.ops.set_index("op").loc["fused_attention", "kv_load_bytes"]
    assert kv == 1000 * (ds.kv_lora_rank + ds.qk_rope_head_dim) * 2
    with pytest.raises(ValueError, match="needs stage='decode'"):
        uv.analyze("llama-2-7b", "a6000", stage="prefill", new_tokens=2)
    with pytest.raises(ValueError, match="only in conventions='exact'"):
        uv.analyze("llama-2-7b", "a6000", stage="decode", new_tokens=2, conventions="paper")


def test_suffix_tiles_match_a_direct_count():
    from unveiled.analyzer.costs import _suffix_tiles

    for q in (1, 2, 7, 64, 300):
        for k in (q, q + 1, q + 1000):
            for tile in (16, 128):
                for window in (None, 5, 512):
                    cols = elements = 0
                    for start in range(0, q, tile):
                        rows = range(k - q + start, k - q + min(start + tile, q))  # query positions
                        keys = set()
                        for p in rows:
                            keys |= set(range(0 if window is None else max(0, p - window + 1), p + 1))
                        cols += len(keys)
                        elements += len(rows) * len(keys)
                    c, e = _suffix_tiles(q, k, tile, window)
                    assert (float(c), float(e)) == (cols, elements), (q, k, tile, window)


def test_distinct_experts_formula_matches_monte_carlo():
    for b in (1, 3, 8, 32):
        sim = simulate_distinct_experts(8, 2, b, trials=3000, seed=b)
        assert sim == pytest.approx(expected_distinct_experts(8, 2, b), abs=0.05)
    assert expected_distinct_experts(8, 2, 1) == 2.0


def test_moe_decode_gets_memory_heavier_with_batch():
    t = moe_decode_table("mixtral-8x7b", "a6000", batches=(1, 2, 16, 256))
    assert t.experts_touched.is_monotonic_increasing and t.experts_touched.iloc[0] == 2.0
    assert t.expert_weight_bytes.iloc[-1] / t.expert_weight_bytes.iloc[0] == pytest.approx(4.0, rel=1e-3)
    assert t.time_per_token_s.is_monotonic_decreasing


def test_dynamic_reduction_cuts_flops_and_bytes_together():
    df = dynamic_reduction_table("llama-2-7b", "a6000", keep=0.5).set_index("variant")
    ee = df.iloc[1]
    assert ee.flops_ratio == pytest.approx(ee.bytes_ratio, rel=0.05) and 0.45 < ee.flops_ratio < 0.56
    dense = df.iloc[0]
    for _, row in df.iterrows():
        assert row.intensity == pytest.approx(dense.intensity, rel=0.1)  # the bound does not move


# ---- bad input ----------------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(target, prompt):
    draft = PromptLookupDraft(24)
    with pytest.raises(ValueError, match="k \\(draft length\\) must be >= 1"):
        speculative_generate(target, draft, prompt, 5, k=0)
    with pytest.raises(TypeError, match="k \\(draft length\\) must be an int"):
        speculative_generate(target, draft, prompt, 5, k=2.5)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        speculative_generate(target, draft, prompt, 5, temperature=-0.5)
    with pytest.raises(ValueError, match="mismatched vocabularies"):
        speculative_generate(target, PromptLookupDraft(30), prompt, 5)
    with pytest.raises(ValueError, match="mismatched vocabularies"):
        speculative_generate(target, ModelDraft(tiny_decoder(1, vocab=20)), prompt, 5)
    with pytest.raises(TypeError, match="Draft protocol"):
        speculative_generate(target, object(), prompt, 5)
    with pytest.raises(ValueError, match="at least one token"):
        speculative_generate(target, draft, [], 5)
    with pytest.raises(ValueError, match="mismatched vocabularies"):
        speculative_accept(torch.ones(2, 4) / 4, torch.ones(1, 5) / 5, [0])
    with pytest.raises(ValueError, match=r"p must be \[k \+ 1, V\]"):
        speculative_accept(torch.ones(3, 4) / 4, torch.ones(1, 4) / 4, [0])
    with pytest.raises(ValueError, match="draft probability 0"):
        speculative_accept(torch.ones(2, 4) / 4, torch.tensor([[1.0, 0, 0, 0]]), [2])
    with pytest.raises(ValueError, match="k \\(draft length\\) must be >= 1"):
        expected_tokens_per_pass(0.5, 0)
    with pytest.raises(ValueError, match="alpha"):
        expected_speedup(1.5, 2, 0.1)
    with pytest.raises(ValueError, match="cost_ratio"):
        expected_speedup(0.5, 2, -0.1)
    with pytest.raises(ValueError, match="increasing order"):
        LayerSkipDraft(target, [2, 0])
    with pytest.raises(ValueError, match="<= 2"):
        LayerSkipDraft(target, [0, 5])
    with pytest.raises(ValueError, match="not a mixture-of-experts"):
        moe_decode_table("llama-2-7b")
    with pytest.raises(ValueError, match="unknown"):
        verification_cost("llama-2-7", "a6000")
