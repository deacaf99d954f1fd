"""The words Chapter 9 uses to interpret its simulations (takeaways, summary), asserted on the same settings.

The simulations are deterministic, so each claim is re-derived here from the chapter's own configuration (the
cached tables are checked in test_serving_results.py)."""

from __future__ import annotations

import pytest

import unveiled.serving as sv
from unveiled.serving import experiments as sx

MODEL, DEVICE = "llama-2-7b", "a100-80gb"
PAGE = "chapters/09_serving.ipynb"


@pytest.fixture(scope="module")
def cost():
    return sv.RooflineStepCost(MODEL, DEVICE)


def test_9_1_nobody_waits_for_someone_elses_answer(cost):
    small = sx.sweep_workload(rate=4.0, n=24)
    demo = {p: sv.simulate(MODEL, DEVICE, small, p, max_batch=8, cost=cost).requests for p in ("static", "continuous")}
    assert demo["continuous"].finish_s.max() < demo["static"].finish_s.max()
    assert demo["continuous"].latency_s.mean() < demo["static"].latency_s.mean()


def test_9_2_continuous_batching_multiplies_goodput_and_drains_the_queue(cost):
    rate = 4.0
    wl = sx.sweep_workload(rate=rate, n=500)
    slo = dict(ttft_slo_s=sx.SWEEP_TTFT_SLO_S, tpot_slo_s=sx.SWEEP_TPOT_SLO_S)
    runs = {p: sv.simulate(MODEL, DEVICE, wl, p, cost=cost) for p in ("static", "continuous")}
    st, co = (runs[p].summary(**slo) for p in ("static", "continuous"))
    assert co.goodput_rps > 10 * st.goodput_rps  # "multiplies the goodput"
    drain = {p: r.requests.finish_s.max() - wl.arrival_s.max() for p, r in runs.items()}
    assert drain["continuous"] < 10 < drain["static"] / 6  # continuous keeps up; static's backlog takes minutes
    q = runs["static"].steps
    assert q.waiting.iloc[len(q) // 2:].mean() > q.waiting.iloc[: len(q) // 4].mean()  # and it grows


def test_9_3_chunked_prefill_steadies_the_stream(cost):
    code_wl = sv.trace_workload("azure-code", n=300, rate=2.0, max_total_len=4096, seed=0)
    ci = sv.simulate(MODEL, DEVICE, code_wl, "continuous", cost=cost).summary()
    ch = sv.simulate(MODEL, DEVICE, code_wl, "chunked", max_batched_tokens=512, cost=cost).summary()
    assert ch.step_max_s < 0.2 * ci.step_max_s
    assert ch.stall_p99_s < 0.5 * ci.stall_p99_s and ch.stall_p90_s < ci.stall_p90_s


def test_9_4_memory_claims():
    # grouped-query attention: Llama-3-8B holds more requests than Llama-2-7B on every device of the table
    for d in ("a100-40gb", "l40s", "h100-sxm"):
        assert sv.kv_pool_blocks("llama-3-8b", d) > 3 * sv.kv_pool_blocks("llama-2-7b", d)
    starved_wl = sx.sweep_workload(rate=2.0, n=200)
    for mode in ("recompute", "swap"):
        res = sv.simulate("llama-2-13b", "a100-40gb", starved_wl, "continuous", preemption=mode,
                          swap_space_gb=4.0 if mode == "swap" else 0.0)
        assert res.requests.preemptions.sum() > 0  # the pool overflows ...
        assert res.steps.finished.sum() == len(starved_wl) and res.final_blocks_used == 0  # ... and all are served
    assert sv.kv_pool_blocks("llama-2-70b", "a100-80gb") == 0


def test_9_4_prefix_caching_stores_and_computes_shared_prompts_once():
    shared_wl = sv.poisson_workload(300, 6.0, sv.exponential_lengths(200, 1, 1500),
                                    sv.exponential_lengths(150, 1, 600), seed=0, shared_prefix=(4, 1024, 0.8))
    pc = {on: sv.simulate(MODEL, "a100-40gb", shared_wl, "continuous", prefix_caching=on) for on in (False, True)}
    assert pc[True].steps.prefill_tokens.sum() < 0.5 * pc[False].steps.prefill_tokens.sum()
    assert pc[True].steps.kv_blocks_used.max() < pc[False].steps.kv_blocks_used.max()
    assert pc[True].summary().ttft_p50_s < pc[False].summary().ttft_p50_s


def test_9_5_tensor_parallelism_claims():
    import pandas as pd

    tp = pd.concat([sv.tensor_parallel_decode("llama-2-70b", "h100-sxm", gpus=(1, 2, 4, 8), batch=b, seq_len=2048,
                                              latency_s=lat * 1e-6).assign(batch=b, latency_us=lat)
                    for b in (1, 64) for lat in (0, 1, 5)], ignore_index=True)
    t = tp.set_index(["batch", "latency_us", "link", "gpus"]).speedup
    for b in (1, 64):
        assert t[(b, 0, "peer", 8)] > 0.85 * 8  # "divides a memory-bound step by the number of GPUs"
        for lat in (0, 1, 5):
            for p in (2, 4, 8):
                assert t[(b, lat, "peer", p)] >= t[(b, lat, "host", p)]  # fast links keep it so
        assert t[(b, 5, "peer", 8)] < t[(b, 1, "peer", 8)] < t[(b, 0, "peer", 8)]  # latency costs
    # at batch 1 the link's bandwidth hardly matters; the per-hop latency decides
    assert t[(1, 0, "peer", 8)] > 0.95 * 8 and t[(1, 0, "host", 8)] > 0.95 * 8
    assert t[(1, 5, "peer", 8)] < 0.5 * t[(1, 0, "peer", 8)]
