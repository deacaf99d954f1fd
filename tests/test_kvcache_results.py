"""Chapter 6's cached SmolLM2 experiments: provenance, a live rerun of a small setting, and the claims the
chapter makes about them."""

from __future__ import annotations

import pytest

import unveiled as uv
from unveiled import kvcache as kv
from unveiled.kvcache import experiments as kvexp

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the cached experiments ran (conftest)

QUANT = "kvcache.experiments.smollm2_kv_quant"
EVICTION = "kvcache.experiments.smollm2_kv_eviction"


def test_cached_tables_have_their_provenance_and_settings():
    quant, evict = uv.results.cached(QUANT), uv.results.cached(EVICTION)
    for name, df in ((QUANT, quant), (EVICTION, evict)):
        prov = df.attrs["provenance"]
        assert prov["command"] == f"python -m unveiled.results run {name}" and prov["rows"] == len(df)
    assert len(quant) == 1 + len(kvexp.QUANT_SCHEMES) * len(kvexp.KV_BITS)
    assert (quant.tokens == kvexp.QUANT_TOKENS).all()
    assert len(evict) == 1 + 3 * len(kvexp.EVICTION_BUDGETS)
    assert (evict.tokens == kvexp.EVICTION_TOKENS - kvexp.EVICTION_SKIP).all()



@pytest.fixture(scope="module")
def smol():
    return uv.load_smollm2(progress=False)


def test_cached_rows_match_a_live_rerun(smol):
    # Streaming is causal, so the first LIVE_TOKENS predictions of the sweep are recomputed exactly by
    # streaming just those tokens. Same code and chunking; fp32 matmul rounding may differ between CPUs and
    # thread counts by ~1e-6 relative, which could at worst flip a quantization code at a rounding boundary;
    # 1e-3 relative on the mean loss is far above that and far below the differences the chapter discusses.
    tokens = kvexp.smollm2_eval_tokens(kvexp.LIVE_TOKENS)
    quant = uv.results.cached(QUANT)
    col = f"nll_first_{kvexp.LIVE_TOKENS}"
    for scheme, bits in ((None, 16), ("KIVI (K per channel, V per token), R=32", 2), ("per token (K and V), R=0", 2)):
        row = quant[(quant.scheme == (scheme or "full precision")) & (quant.kv_bits == bits)].iloc[0]
        live = kv.streaming_nll(smol, tokens, kvexp.quant_cache(scheme, bits), chunk=kvexp.CHUNK).mean().item()
        assert live == pytest.approx(row[col], rel=1e-3), scheme


def test_the_quantization_claims_of_the_chapter():
    q = uv.results.cached(QUANT).set_index(["scheme", "kv_bits"]).perplexity
    fp = q[("full precision", 16)]
    kivi, kivi0 = "KIVI (K per channel, V per token), R=32", "KIVI, no residual (R=0)"
    tok, tok0 = "per token (K and V), R=32", "per token (K and V), R=0"
    for scheme in (kivi, kivi0, tok, tok0):
        assert abs(q[(scheme, 8)] / fp - 1) < 0.01  # 8 bits: indistinguishable
    assert abs(q[(kivi, 4)] / fp - 1) < 0.03  # 4 bits: nearly so with KIVI
    for bits in (3, 2):
        assert q[(kivi0, bits)] < q[(tok0, bits)]  # without a window, per-channel keys beat per-token keys
        assert q[(kivi, bits)] < q[(kivi0, bits)]  # the residual window helps either layout
        assert q[(tok, bits)] < q[(tok0, bits)]
    assert abs(q[(kivi, 3)] / q[(tok, 3)] - 1) < 0.05  # at 3 bits the window alone rescues either layout
    assert q[(kivi, 2)] < 0.8 * q[(tok, 2)]  # at 2 bits the layout decides even with the window
    assert q[(tok0, 2)] > 2 * q[(kivi, 2)]  # the naive layout collapses at 2 bits


def test_the_eviction_claims_of_the_chapter():
    e = uv.results.cached(EVICTION)
    full = e[e.policy == "full cache"].perplexity.iloc[0]
    by = e.set_index(["policy", "budget"]).perplexity
    for budget in kvexp.EVICTION_BUDGETS:
        window = by[("window", budget)]
        sinks = by[("sinks + window (StreamingLLM)", budget)]
        h2o = by[("heavy hitters + recent (H2O)", budget)]
        assert window > 5 * sinks  # evicting the first tokens is catastrophic
        assert full < h2o < sinks  # nothing beats keeping everything; heavy hitters beat sinks here
    # a larger budget gets closer to the full cache
    for policy in ("sinks + window (StreamingLLM)", "heavy hitters + recent (H2O)"):
        ppl = [by[(policy, b)] for b in kvexp.EVICTION_BUDGETS]
        assert ppl == sorted(ppl, reverse=True)


def test_heavy_hitters_keep_the_first_token_on_smollm2(smol):
    # the chapter's explanation of H2O's results: accumulated attention favours the first tokens (the sinks)
    cache = kv.HeavyHitterCache(64)
    kv.streaming_nll(smol, kvexp.smollm2_eval_tokens(256), lambda: cache, chunk=kvexp.CHUNK)
    for layer in range(smol.config.num_layers):
        kept = cache.kept_positions(layer)[0]
        assert (kept == 0).any(dim=-1).all(), f"layer {layer}: a head evicted the first token"


def test_the_tiny_model_eviction_claims_of_the_chapter():
    # Section 5.5: past its 256-character training length the tiny model's full cache degrades, H2O (original
    # positions) with it, while window caches (positions within the cache) stay flat; sinks change little.
    tiny = uv.zoo.load("S")
    stream = uv.text.shakespeare_tokenizer().encode(uv.text.corpus_split("val"))[: 3 * 256 + 1]
    policies = {"full": None, "window": lambda: kv.SinkWindowCache(64, num_sinks=0),
                "sinks": lambda: kv.SinkWindowCache(64, num_sinks=4), "h2o": lambda: kv.HeavyHitterCache(64)}
    _, summary = kv.compare_caches(tiny, stream, policies, chunk=16)
    late = summary.set_index("policy").nll_second_half
    assert late["window"] < late["full"] - 0.1
    assert abs(late["sinks"] - late["window"]) < 0.05
    assert late["h2o"] > late["window"] + 0.1
