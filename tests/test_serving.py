"""unveiled.serving: workloads, the scheduler on paged memory, the simulator, and the properties that must hold."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import unveiled.serving as sv
from claims import claim
from unveiled.serving.costs import StepShape

MODEL, DEVICE = "llama-2-7b", "a100-80gb"


@pytest.fixture(scope="module")
def cost():
    return sv.RooflineStepCost(MODEL, DEVICE)


def mixed_workload(n=300, rate=8.0, seed=0):
    return sv.poisson_workload(n, rate, sv.exponential_lengths(400, 1, 2000), sv.exponential_lengths(150, 1, 600),
                               seed=seed)


# ---- workloads --------------------------------------------------------------------------------------------


def test_poisson_workload_shape_rate_and_seed():
    wl = sv.poisson_workload(4000, 5.0, 128, sv.uniform_lengths(10, 20), seed=3)
    assert list(wl.columns) == list(sv.workload.COLUMNS)
    assert wl.arrival_s.iloc[0] == 0 and wl.arrival_s.is_monotonic_increasing
    gaps = np.diff(wl.arrival_s)
    # the mean of 3999 exponential gaps: standard error 1/(5 sqrt(3999)) = 0.0032 s; 4 standard errors
    assert abs(gaps.mean() - 0.2) < 4 * 0.2 / math.sqrt(len(gaps))
    assert abs(gaps.std() / gaps.mean() - 1) < 0.1  # Poisson: coefficient of variation 1
    assert (wl.prompt_len == 128).all() and wl.output_len.between(10, 20).all()
    pd.testing.assert_frame_equal(wl, sv.poisson_workload(4000, 5.0, 128, sv.uniform_lengths(10, 20), seed=3))
    assert not wl.equals(sv.poisson_workload(4000, 5.0, 128, sv.uniform_lengths(10, 20), seed=4))


def test_bursty_workload_is_burstier_with_the_same_mean():
    wl = sv.bursty_workload(4000, 5.0, 64, 8, burstiness=0.25, seed=1)
    gaps = np.diff(wl.arrival_s)
    assert abs(gaps.mean() / 0.2 - 1) < 0.1
    assert abs(gaps.std() / gaps.mean() - 2.0) < 0.25  # gamma shape 0.25: CV = 1/sqrt(0.25) = 2


def test_length_specs():
    rng_lengths = sv.poisson_workload(2000, 1.0, [5, 7], sv.lognormal_lengths(100, 0.5, 1, 1000), seed=0)
    assert set(rng_lengths.prompt_len) == {5, 7}
    assert 85 < rng_lengths.output_len.median() < 115
    custom = sv.poisson_workload(10, 1.0, lambda rng, n: np.full(n, 3), 4, seed=0)
    assert (custom.prompt_len == 3).all()


def test_shared_prefix_workload():
    wl = sv.poisson_workload(1000, 2.0, 50, 10, seed=0, shared_prefix=(2, 256, 0.5))
    with_prefix = wl.prefix_id >= 0
    assert 0.4 < with_prefix.mean() < 0.6
    assert set(wl.prefix_id[with_prefix]) == {0, 1}
    assert (wl.prompt_len[with_prefix] == 306).all() and (wl.prompt_len[~with_prefix] == 50).all()
    assert (wl.prefix_len[with_prefix] == 256).all()


@pytest.mark.parametrize("bad, match", [
    (dict(prompt_len=-3), "prompt_len must be >= 1"),
    (dict(output_len=0), "output_len must be >= 1"),
    (dict(prompt_len=2.5), "prompt_len must be an int"),
    (dict(rate=0), "rate must be > 0"),
    (dict(n=0), "n must be >= 1"),
])
def test_bad_workloads_raise_clearly(bad, match):
    args = dict(n=10, rate=1.0, prompt_len=10, output_len=10) | bad
    with pytest.raises((ValueError, TypeError), match=match):
        sv.poisson_workload(**args)


def test_prompt_longer_than_the_context_raises(cost):
    wl = sv.workload_from_requests([(0.0, 5000, 10)])
    with pytest.raises(ValueError, match="more than the model's context of 4096"):
        sv.simulate(MODEL, DEVICE, wl, cost=cost)


def test_workload_from_requests_and_its_errors():
    wl = sv.workload_from_requests([(1.0, 10, 5), (0.5, 20, 3)])
    assert wl.arrival_s.tolist() == [0.5, 1.0] and wl.prompt_len.tolist() == [20, 10]
    assert sv.workload_from_requests([{"arrival_s": 0.0, "prompt_len": 3, "output_len": 2}]).shape[0] == 1
    with pytest.raises(ValueError, match="empty list"):
        sv.workload_from_requests([])
    with pytest.raises(ValueError, match="at least one prompt token"):
        sv.workload_from_requests([(0.0, 0, 5)])
    with pytest.raises(ValueError, match="arrivals must be finite and >= 0"):
        sv.workload_from_requests([(-1.0, 3, 5)])
    with pytest.raises(TypeError, match="tuples"):
        sv.workload_from_requests([(0.0, 3)])


def test_traces(tmp_path):
    conv = sv.azure_trace("conv")
    assert len(conv) > 19000 and conv.arrival_s.iloc[0] == 0
    assert 3000 < conv.arrival_s.iloc[-1] < 3700  # about an hour of traffic
    fit = sv.trace_workload("azure-code", n=500, max_total_len=4096)
    assert len(fit) == 500 and (fit.prompt_len + fit.output_len <= 4096).all()
    redrawn = sv.trace_workload("azure-conv", n=200, rate=2.0, seed=1)
    assert abs(np.diff(redrawn.arrival_s).mean() - 0.5) < 0.15
    empty = tmp_path / "empty.csv"
    empty.write_text("arrival_s,prompt_len,output_len\n")
    with pytest.raises(ValueError, match="the trace is empty"):
        sv.trace_workload(empty)
    with pytest.raises(ValueError, match="no trace file"):
        sv.trace_workload(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="prompt and output token columns"):
        sv.trace_workload(bad)


# ---- step costs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, device, kw", [
    ("llama-2-7b", "a100-80gb", {}),
    ("llama-2-7b", "h100-sxm", dict(flash_attention=False)),
    ("mistral-7b", "a100-40gb", dict(kv_bits=8)),
    ("qwen2.5-7b", "rtx-4090", dict(w_bits=4, group_size=128)),
    ("mixtral-8x7b", "h100-sxm", dict(w_bits=4)),
])
def test_roofline_step_cost_equals_analyze_on_uniform_batches(model, device, kw):
    """A uniform step (every sequence decoding at one context length, or every prompt the same length) is what
    uv.analyze analyses: the step cost must give the same time. MoE layers (Mixtral) are interpolated in the
    token count between grid points: their error is bounded by 1e-4."""
    import unveiled as uv

    c = sv.RooflineStepCost(model, device, **kw)
    bits = dict(w_bits=c.w_bits, a_bits=c.a_bits, kv_bits=c.kv_bits, group_size=c.group_size,
                flash_attention=c.flash_attention, check_context=False)
    rng = np.random.default_rng(0)
    tol = 1e-4 if model == "mixtral-8x7b" else 1e-12
    for _ in range(8):
        b, length = int(rng.integers(1, 400)), int(rng.integers(1, 4000))
        ref = uv.analyze(model, device, stage="decode", batch=b, seq_len=length, **bits).time_s
        assert c.step_time(StepShape(b, b * length, (), b)) == pytest.approx(ref, rel=tol)
        b, s = int(rng.integers(1, 8)), int(rng.integers(1, 3000))
        ref = uv.analyze(model, device, stage="prefill", batch=b, seq_len=s, **bits).time_s
        assert c.step_time(StepShape(0, 0, ((s, s),) * b, b)) == pytest.approx(ref, rel=tol)


def test_chunk_attention_without_flash_is_the_analyzers_rectangle():
    """Without FlashAttention a chunk of q tokens over k keys computes the whole q x k score matrix: exactly the
    analyzer's attention_cost(1, q, k)."""
    from unveiled.analyzer import attention_cost

    c = sv.RooflineStepCost(MODEL, DEVICE, flash_attention=False)
    for q, k in [(5, 100), (256, 2000), (1, 7), (512, 512)]:
        ops = attention_cost(1, q, k, 32, 32, 128)
        want = sum(32 * max(ops[n][0] / c.device.peak("fp32" if n == "softmax" else "fp16"),
                            ops[n][1] / c.device.bandwidth) for n in ops)
        assert c.prefill_attention_time([(q, k)]) == pytest.approx(want, rel=1e-12)


def test_a_mixed_step_costs_between_its_parts_and_their_sum(cost):
    decode = StepShape(64, 64 * 900, (), 64)
    prefill = StepShape(0, 0, ((300, 300), (200, 700)), 1)
    mixed = StepShape(64, 64 * 900, ((300, 300), (200, 700)), 65)
    parts = cost.step_time(decode), cost.step_time(prefill)
    assert max(parts) < cost.step_time(mixed) < sum(parts)
    # attending to more cached keys never makes a chunk cheaper
    assert cost.prefill_attention_time([(128, 2000)]) > cost.prefill_attention_time([(128, 500)])


def test_mla_models_are_refused():
    with pytest.raises(ValueError, match="multi-head latent attention"):
        sv.RooflineStepCost("deepseek-v2-lite", "h100-sxm")


def test_kv_pool_blocks_is_memory_left_over_block_bytes():
    import unveiled as uv
    from unveiled.kvcache import kv_bytes_per_token

    blocks = sv.kv_pool_blocks(MODEL, DEVICE, block_size=16, max_batched_tokens=2048)
    a = uv.analyze(MODEL, DEVICE, stage="prefill", batch=1, seq_len=2048)
    free = 0.9 * uv.get_device(DEVICE).memory_bytes - a.memory.weights - a.memory.activations
    assert blocks == math.floor(free / (16 * kv_bytes_per_token(MODEL)))
    assert sv.kv_pool_blocks("llama-2-70b", "a100-40gb") == 0  # 140 GB of weights do not fit 40 GB


def test_fit_step_cost_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    true = {"steps": 2e-3, "tokens": 5e-5, "seqs": 1e-4, "prefill_seqs": 0.0, "attention_pairs": 1e-8,
            "logit_rows": 2e-5}
    rows = []
    for _ in range(60):
        shape = StepShape(int(rng.integers(0, 16)), 0, tuple((q, q + int(rng.integers(0, 200)))
                                                              for q in rng.integers(1, 200, int(rng.integers(0, 3)))), 0)
        completing = int(rng.integers(0, len(shape.chunks) + 1))  # chunks that end their prompt sample a token
        shape = StepShape(shape.decode_seqs, shape.decode_seqs * int(rng.integers(10, 1000)), shape.chunks,
                          shape.decode_seqs + completing)
        if shape.tokens == 0:
            continue
        f = sv.step_features(shape)
        rows.append(f | {"time_s": sum(true[k] * f[k] for k in true)})
    fit = sv.fit_step_cost(pd.DataFrame(rows))
    for k, v in true.items():
        assert fit.coefficients[k] == pytest.approx(v, rel=1e-6, abs=1e-12)
    with pytest.raises(ValueError, match="lacks the columns"):
        sv.fit_step_cost(pd.DataFrame({"time_s": [1.0] * 10}))
    with pytest.raises(ValueError, match="unknown step features"):
        sv.LinearStepCost({"warp_speed": 1.0})


# ---- the simulator: what must hold ------------------------------------------------------------------------


def check_conservation(res, workload):
    r = res.requests
    assert len(r) == len(workload) and r.request_id.is_unique
    assert r.finish_s.notna().all() and (r.first_token_s >= r.arrival_s).all() and (r.finish_s >= r.first_token_s).all()
    assert (r.prompt_len.to_numpy() == workload.prompt_len.to_numpy()).all()
    s = res.steps
    assert s.finished.sum() == len(workload)  # every request finishes exactly once ...
    assert s.output_tokens.sum() == r.output_len.sum()  # ... with exactly its output length
    # every key/value computed is in a cache at the end (prompt + output - 1 tokens per request) or was lost to a
    # recompute preemption; prefix-cache hits were not computed
    computed = s.prefill_tokens.sum() + s.decode_tokens.sum()
    assert computed == (r.prompt_len + r.output_len - 1).sum() + r.recomputed_tokens.sum() - r.cached_tokens.sum()
    assert (s.kv_blocks_used <= res.config.num_blocks).all()
    assert res.final_blocks_used == 0  # the pool is empty again
    assert (s.start_s.diff().dropna() > 0).all() and np.allclose(s.end_s, s.start_s + s.time_s)


@pytest.mark.parametrize("policy", sv.POLICIES)
def test_conservation_and_determinism(policy, cost):
    wl = mixed_workload()
    res = sv.simulate(MODEL, DEVICE, wl, policy, cost=cost)
    check_conservation(res, wl)
    again = sv.simulate(MODEL, DEVICE, wl, policy, cost=cost)
    pd.testing.assert_frame_equal(res.requests, again.requests)
    pd.testing.assert_frame_equal(res.steps, again.steps)


@pytest.mark.parametrize("preemption", sv.PREEMPTION)
def test_preemption_under_memory_pressure_keeps_every_request(preemption, cost):
    wl = sv.poisson_workload(120, 50.0, sv.uniform_lengths(50, 400), sv.uniform_lengths(50, 400), seed=2)
    kw = dict(swap_space_gb=1.0) if preemption == "swap" else {}
    res = sv.simulate(MODEL, DEVICE, wl, "continuous", num_blocks=120, preemption=preemption, cost=cost, **kw)
    assert res.requests.preemptions.sum() > 0
    check_conservation(res, wl)
    if preemption == "swap":
        assert res.requests.swaps.sum() > 0 and res.steps.swapped_blocks.sum() > 0
        assert res.steps.host_blocks_used.max() > 0
    else:
        assert res.requests.recomputed_tokens.sum() > 0


@claim("chapters/09_serving.ipynb", "check its bookkeeping with Little's law")
def test_littles_law_holds_on_the_simulated_queue(cost):
    res = sv.simulate(MODEL, DEVICE, mixed_workload(600, 6.0, seed=5), "continuous", cost=cost)
    ll = sv.littles_law(res.requests, res.steps)
    assert ll["L_corrected"] == pytest.approx(ll["lambda_W"], rel=1e-9)
    assert abs(ll["L"] - ll["lambda_W"]) <= ll["bound"]
    assert ll["L"] < ll["lambda_W"]  # arrivals during a step are counted from the next one: L undercounts


@pytest.mark.parametrize("rate, seed", [(2.0, 0), (6.0, 1), (15.0, 2), (40.0, 3)])
def test_continuous_batching_is_never_slower_than_static(rate, seed, cost):
    wl = mixed_workload(250, rate, seed)
    stat = sv.simulate(MODEL, DEVICE, wl, "static", cost=cost).requests
    cont = sv.simulate(MODEL, DEVICE, wl, "continuous", cost=cost).requests
    assert cont.finish_s.max() <= stat.finish_s.max()
    assert cont.latency_s.mean() <= stat.latency_s.mean()
    assert cont.ttft_s.median() <= stat.ttft_s.median()


def test_chunked_prefill_bounds_the_longest_step(cost):
    wl = sv.poisson_workload(200, 4.0, sv.uniform_lengths(1500, 3500), sv.uniform_lengths(50, 200), seed=4)
    cont = sv.simulate(MODEL, DEVICE, wl, "continuous", cost=cost).steps
    chunked = sv.simulate(MODEL, DEVICE, wl, "chunked", max_batched_tokens=512, cost=cost).steps
    assert (chunked.decode_tokens + chunked.prefill_tokens).max() <= 512
    # the budget's worth of tokens over the longest context bounds every chunked step
    bound = cost.step_time(StepShape(0, 0, ((512, 4096),), 1)) + cost.decode_attention_time(256, 256 * 4096)
    assert chunked.time_s.max() <= bound
    assert chunked.time_s.max() < 0.5 * cont.time_s.max()


def test_worst_gap_between_tokens(cost):
    """A request's worst stall is at least its mean gap (TPOT); chunked prefill shrinks the worst stalls that
    whole-prompt prefills cause."""
    wl = sv.poisson_workload(150, 4.0, sv.uniform_lengths(1500, 3500), sv.uniform_lengths(50, 200), seed=4)
    runs = {p: sv.simulate(MODEL, DEVICE, wl, p, cost=cost) for p in ("continuous", "chunked")}
    for res in runs.values():
        r = res.requests
        assert (r.max_gap_s >= r.tpot_s - 1e-12).all()
        # a running request decodes in every step: without preemption its worst gap is one step
        steady = r.preemptions == 0
        assert (r.max_gap_s[steady] <= res.steps.time_s.max() * (1 + 1e-12)).all()
    assert runs["chunked"].summary().stall_p99_s < 0.5 * runs["continuous"].summary().stall_p99_s


def test_prefix_caching_shares_blocks_and_skips_compute(cost):
    wl = sv.poisson_workload(200, 20.0, 32, 64, seed=0, shared_prefix=(1, 512, 1.0))
    plain = sv.simulate(MODEL, DEVICE, wl, "continuous", cost=cost)
    shared = sv.simulate(MODEL, DEVICE, wl, "continuous", prefix_caching=True, cost=cost)
    check_conservation(shared, wl)
    assert shared.requests.cached_tokens.sum() > 0
    assert shared.steps.prefill_tokens.sum() < plain.steps.prefill_tokens.sum()
    assert shared.steps.kv_blocks_used.max() < plain.steps.kv_blocks_used.max()


def test_static_batching_pads_prompts_and_keeps_rows(cost):
    wl = sv.workload_from_requests([(0.0, 100, 5), (0.0, 300, 2), (0.0, 50, 9), (0.01, 10, 1)])
    res = sv.simulate(MODEL, DEVICE, wl, "static", cost=cost)
    s = res.steps
    assert s.prefill_seqs.iloc[0] == 3 and s.padded_tokens.iloc[0] == 3 * 300 - 450
    # the batch runs until its longest output (9 tokens: 8 decode steps), rows padded as the others finish
    assert (s.decode_seqs.iloc[1:9] + s.padded_tokens.iloc[1:9] == 3).all()
    late = res.requests.set_index("request_id").loc[3]
    assert late.admitted_s >= s.end_s.iloc[8]  # the late request waits for the whole batch


def test_simulate_errors(cost):
    wl = mixed_workload(20)
    with pytest.raises(ValueError, match="policy must be one of"):
        sv.simulate(MODEL, DEVICE, wl, "fastest", cost=cost)
    with pytest.raises(ValueError, match="could never run"):
        sv.simulate(MODEL, DEVICE, sv.workload_from_requests([(0.0, 2000, 100)]), num_blocks=50, cost=cost)
    with pytest.raises(ValueError, match=r"max_batched_tokens .* >= max_batch"):
        sv.simulate(MODEL, DEVICE, wl, "chunked", max_batched_tokens=64, cost=cost)
    with pytest.raises(ValueError, match="swap_space_gb must be > 0"):
        sv.simulate(MODEL, DEVICE, wl, preemption="swap", cost=cost)
    with pytest.raises(ValueError, match="host memory"):
        sv.SchedulerConfig(preemption="swap")
    with pytest.raises(ValueError, match="needs a model and a device"):
        sv.simulate(None, None, wl)
    with pytest.raises(TypeError, match="step_time"):
        sv.simulate(MODEL, DEVICE, wl, cost=object())
    with pytest.raises(ValueError, match="no memory is left"):
        sv.simulate("llama-2-70b", "a100-40gb", wl)


def test_summary_and_goodput(cost):
    res = sv.simulate(MODEL, DEVICE, mixed_workload(300, 10.0), "chunked", cost=cost)
    s = res.summary()
    r = res.requests
    assert s.ttft_p50_s == pytest.approx(r.ttft_s.median()) and s.ttft_p50_s <= s.ttft_p90_s <= s.ttft_p99_s
    assert s.output_tokens_per_s == pytest.approx(r.output_len.sum() / (r.finish_s.max() - r.arrival_s.min()))
    assert s.goodput_rps == pytest.approx(s.request_throughput)  # no target: every request counts
    strict = res.summary(ttft_slo_s=float(r.ttft_s.median()), tpot_slo_s=1.0)
    assert strict.slo_attainment == pytest.approx((r.ttft_s <= r.ttft_s.median()).mean())
    assert 0 < s.kv_mean_fraction <= s.kv_peak_fraction <= 1
    mem = res.memory()
    assert len(mem) == len(res.steps) and mem.kv_GB.max() == pytest.approx(s.kv_peak_GB)
