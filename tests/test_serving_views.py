"""Charts and the live explorer of Chapter 9 build from the library's tables, with titles and phone-sized panels."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import unveiled.serving as sv
from unveiled.plots import serving as plots

MODEL, DEVICE = "llama-2-7b", "a100-80gb"


@pytest.fixture(scope="module")
def runs():
    cost = sv.RooflineStepCost(MODEL, DEVICE)
    wl = sv.poisson_workload(60, 6.0, sv.uniform_lengths(100, 1500), sv.uniform_lengths(20, 200), seed=0)
    return {p: sv.simulate(MODEL, DEVICE, wl, p, cost=cost) for p in ("static", "continuous", "chunked")}


def widths(spec: dict) -> list[int]:
    out = []
    if isinstance(spec, dict):
        if isinstance(spec.get("width"), int):
            out.append(spec["width"])
        for v in spec.values():
            out += widths(v)
    elif isinstance(spec, list):
        for v in spec:
            out += widths(v)
    return out


def check(chart, title_needed=True):
    spec = chart.to_dict()
    text = json.dumps(spec)
    assert '"title"' in text
    assert all(w <= 340 for w in widths(spec)), "panels must fit a phone column"
    return spec


def test_timeline_memory_and_step_charts(runs):
    check(plots.timeline_chart({p: r.requests for p, r in runs.items()}, title="requests over time"))
    check(plots.memory_chart({p: r.memory() for p, r in runs.items()}, title="memory"))
    check(plots.step_time_chart({p: r.steps for p, r in runs.items() if p != "static"}, title="steps"))


def test_rate_explorer_chart_has_bound_widgets():
    grid = pd.DataFrame([{"model": m, "device": d, "policy": p, "rate_rps": r, "output_tokens_per_s": 100.0 * r,
                          "ttft_p50_s": 0.1, "ttft_p99_s": 0.5, "tpot_p50_s": 0.02, "goodput_rps": r,
                          "kv_peak_fraction": 0.5}
                         for m in ("a", "b") for d in ("x", "y") for p in ("static", "continuous") for r in (1.0, 2.0)])
    spec = check(plots.rate_explorer_chart(grid, title="explorer"))
    binds = [p["bind"] for p in spec["params"] if "bind" in p]
    assert len(binds) == 4 and {b.get("input") for b in binds} == {"select", "range"}


def test_engine_comparison_and_fit_charts():
    table = pd.DataFrame([{"model": "M", "policy": "continuous", "setting": "default", "throughput_err": 0.05,
                           "tpot_err": -0.03, "ttft_err": 0.2}])
    check(plots.engine_comparison_chart(table, title="simulated / measured"))
    check(plots.step_fit_chart(pd.DataFrame({"time_s": [0.001, 0.002], "fitted_s": [0.0011, 0.0019]}), title="fit"))


def test_tensor_parallel_chart():
    tp = sv.tensor_parallel_decode("llama-2-70b", "h100-sxm", batch=8, seq_len=1024)
    check(plots.tensor_parallel_chart(tp, title="tensor parallelism"))


def test_live_explorer_builds(runs):
    pytest.importorskip("ipywidgets")
    import unveiled as uv

    box = uv.serving_explorer(requests=40)
    assert box.children
    from unveiled.explorers.serving import serving_summary_html

    assert "goodput" in serving_summary_html(runs["continuous"])
