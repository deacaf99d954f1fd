"""Chapter 9's cached experiments: the real engine against the simulator (the simulator's measured error), and
the rate sweep behind the static explorer. Assertions read the cached tables; no timing is taken here."""

from __future__ import annotations

import pandas as pd
import pytest

import unveiled.serving as sv
from claims import claim
from unveiled import results
from unveiled.serving import experiments as sx

PAGE = "chapters/09_serving.ipynb"


@pytest.fixture(scope="module")
def engine():
    return results.cached("serving.experiments.engine_vs_simulator")


@pytest.fixture(scope="module")
def grid():
    return results.cached("serving.experiments.rate_sweep")


def test_engine_table_covers_both_models_and_every_scenario(engine):
    for name, setup in sx.ENGINE_SETUPS.items():
        rows = engine[engine.model == name]
        want = {(p, label) for p, _, label in sx.default_scenarios(setup)}
        assert set(zip(rows.policy, rows.setting, strict=True)) == want
    prov = engine.attrs["provenance"]
    assert prov["command"] == "python -m unveiled.results run serving.experiments.engine_vs_simulator"
    assert (engine.repeats >= 2).all() and (engine.step_repeats >= 3).all()


@claim(PAGE, "the simulator predicts a real engine's throughput and median time per token within 15 % when no request "
             "is preempted; with preemption, two runs of the engine itself differ in median time per token by more "
             "than the simulator's error")
def test_simulated_throughput_and_median_tpot_within_the_tolerance(engine):
    """The issue's goal: simulated vs measured output throughput and median TPOT within 15 %. Why 15 % is the
    right width (single-step error of the cost table, run-to-run drift of a shared machine) is written next to
    ``sx.ENGINE_TOLERANCE``; the table records both (``step_median_abs_err``, ``throughput_spread``,
    ``tpot_spread``)."""
    tol = sx.ENGINE_TOLERANCE
    assert tol == 0.15
    steady = engine[engine.measured_preemptions == 0]
    assert len(steady) >= 4
    bad = steady[(steady.throughput_err.abs() > tol) | (steady.tpot_err.abs() > tol)]
    assert bad.empty, bad[["model", "policy", "setting", "throughput_err", "tpot_err"]].to_string()
    # with preemptions the engine does not reproduce itself closer than its run-to-run spread (see ENGINE_TOLERANCE)
    churn = engine[engine.measured_preemptions > 0]
    assert (churn.throughput_err.abs() <= tol + churn.throughput_spread).all()
    assert (churn.tpot_err.abs() <= tol + churn.tpot_spread).all()
    assert len(churn) >= 1 and (churn.tpot_spread > churn.tpot_err.abs()).all()  # the summary's last words
    # the errors are recomputed from the measured and simulated columns, not copied
    assert (engine.throughput_err - (engine.simulated_tokens_per_s / engine.measured_tokens_per_s - 1)).abs().max() < 1e-12
    assert (engine.tpot_err - (engine.simulated_tpot_p50_s / engine.measured_tpot_p50_s - 1)).abs().max() < 1e-12


def test_engine_runs_saturate_and_the_starved_run_preempts(engine):
    """The rate is above the capacity the designed-shape profile predicts, so the measured throughput is the
    engine's capacity: it serves fewer requests per second than arrive (the queue grows)."""
    for name, setup in sx.ENGINE_SETUPS.items():
        # the lengths of a seeded workload do not depend on its rate (arrivals are drawn first, n of them)
        wl = sv.poisson_workload(setup.requests, 1.0, sv.uniform_lengths(*setup.prompt_len),
                                 sv.uniform_lengths(*setup.output_len), seed=0)
        rows = engine[engine.model == name]
        served_rps = rows.measured_tokens_per_s / wl.output_len.mean()
        assert (served_rps < rows.rate_rps).all(), (name, served_rps.tolist(), rows.rate_rps.tolist())
    starved = engine[engine.setting != "default"]
    assert len(starved) == 1 and starved.measured_preemptions.iloc[0] > 0 and starved.simulated_preemptions.iloc[0] > 0


def test_rate_sweep_grid_is_complete(grid):
    assert len(grid) == len(sx.SWEEP_MODELS) * len(sx.SWEEP_DEVICES) * 3 * len(sx.SWEEP_RATES)
    assert not grid[["output_tokens_per_s", "ttft_p50_s", "tpot_p50_s", "goodput_rps"]].isna().any().any()


@pytest.mark.parametrize("policy, rate", [("continuous", 4.0), ("chunked", 16.0)])
def test_rate_sweep_reproduces_live(grid, policy, rate):
    """The sweep is a deterministic simulation: a point recomputed now equals the cached one."""
    row = grid.query("model == 'llama-2-7b' and device == 'a100-80gb' and policy == @policy and rate_rps == @rate")
    live = pd.Series(sx.rate_point("llama-2-7b", "a100-80gb", policy, rate))
    for col in ("output_tokens_per_s", "ttft_p50_s", "tpot_p50_s", "goodput_rps", "kv_peak_fraction"):
        assert live[col] == pytest.approx(float(row[col].iloc[0]), rel=1e-9), col


def test_rate_sweep_shapes(grid):
    """What Section 9.6 reads off the curves: with iteration-level scheduling throughput grows with the rate and
    saturates (the last rate adds under 10 %); static batching's capacity under the targets is never above
    continuous batching's, and continuous batching meets them at some rate on every device."""
    rates = sorted(sx.SWEEP_RATES)
    saturated = 0
    for (m, d, p), g in grid.groupby(["model", "device", "policy"]):
        if p == "static" or sx.slo_capacity(grid, m).loc[d, p] >= rates[-3]:
            continue  # static batching's throughput falls past its knee; the knee must lie well inside the sweep
        tput = g.sort_values("rate_rps").output_tokens_per_s.to_numpy()
        assert tput[-1] >= 0.97 * tput.max() and tput[-1] < 1.1 * tput[-2], (m, d, p)
        saturated += 1
    assert saturated >= 8
    for m in sx.SWEEP_MODELS:
        cap = sx.slo_capacity(grid, m)
        assert (cap.continuous >= cap.static).all(), cap
        assert (cap.continuous > 0).all()


def test_compare_engine_runs_end_to_end_on_a_small_setup(one_torch_thread):
    """The experiment's machinery on a tiny setting (no timing is asserted: the numbers depend on the machine)."""
    import dataclasses

    setup = dataclasses.replace(sx.ENGINE_SETUPS["M"], requests=6, output_len=(4, 8), prompt_len=(8, 24))
    table, cal = sx.compare_engine(setup, [("continuous", None, "default"), ("continuous", 12, "starved")],
                                   repeats=1, profile_repeats=1, step_repeats=1)
    assert list(table.setting) == ["default", "starved"] and (table.measured_tokens_per_s > 0).all()
    assert set(sx.steps_features(pd.DataFrame({
        "decode_tokens": [1], "prefill_tokens": [2], "padded_tokens": [0], "decode_seqs": [1], "prefill_seqs": [1],
        "attention_pairs": [7], "logit_rows": [2]})).columns) == set(sv.FEATURES)
    assert len(cal) == table.calibration_steps.iloc[0] and (cal.fitted_s > 0).all()
    for col in ("throughput_err", "tpot_err", "ttft_err", "step_median_abs_err", "load_1min_before"):
        assert table[col].notna().all(), col
