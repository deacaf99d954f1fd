"""Lab checks for Chapter 9 (serving): the iteration-level scheduler's admission step, and the latency metrics
a serving run is judged by.

:func:`check_can_admit` first asks the reader's admission rule about hand-made situations (a full batch, a pool
that fits the prompt only by eating the reserve, a budget that a whole prompt overflows, a lone long prompt,
a chunked step with room left), then plugs it into the library's scheduler and serves seeded workloads
(continuous and chunked batching, a memory-starved pool) and compares every request's admission and finish
time with the reference :func:`unveiled.serving.can_admit`. :func:`check_request_metrics` compares the reader's
TTFT, TPOT and goodput with :func:`unveiled.serving.summarize` on simulated runs, and names the classic
mistakes (TPOT over ``output_len`` instead of ``output_len - 1``, TTFT from admission instead of arrival,
goodput over the wrong time span). Introduced in Chapter 9.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..serving.costs import RooflineStepCost
from ..serving.metrics import request_metrics, summarize
from ..serving.scheduler import AdmissionView, can_admit
from ..serving.simulator import simulate
from ..serving.workload import exponential_lengths, poisson_workload, uniform_lengths
from . import Case, LabReport, describe, run_cases

__all__ = ["CHECKS", "check_can_admit", "check_request_metrics"]

_MODEL, _DEVICE = "llama-2-7b", "a100-80gb"


def _view(**kw) -> AdmissionView:
    base = dict(prompt_tokens=200, blocks_needed=13, free_blocks=100, reserve_blocks=2, running=3, max_batch=8,
                tokens_left=math.inf, admitted_this_step=0, chunked=False)
    return AdmissionView(**(base | kw))


def _bool_judge(want: bool) -> Callable:
    def judge(got) -> str | None:
        if not isinstance(got, (bool, np.bool_)):
            return f"expected True or False, got {type(got).__name__} {got!r}"
        return None if bool(got) == want else f"expected {want}, got {bool(got)}"

    return judge


_BATCH = "Static versus continuous batching"
_CHUNK = "Prefill–decode interference and chunked prefill"
_MEMORY = "Memory is the admission limit: paging, preemption, prefix sharing"

#: (name, fields that differ from the base view, the right answer, hint, section).
_UNIT_CASES = [
    ("room everywhere", dict(), True, "which limit would stop this request? None of them.", _BATCH),
    ("the batch is full (running == max_batch)", dict(running=8), False,
     "how many sequences may one step carry?", _BATCH),
    ("the prompt fits only by using the reserve", dict(free_blocks=14, blocks_needed=13, reserve_blocks=2), False,
     "what must still be free after the prompt's blocks are taken, and why?", _MEMORY),
    ("the prompt fits with the reserve kept", dict(free_blocks=15, blocks_needed=13, reserve_blocks=2), True,
     "is keeping exactly reserve_blocks free enough?", _MEMORY),
    ("whole prompt overflows the budget, others admitted", dict(tokens_left=150, admitted_this_step=1), False,
     "without chunks, how much of a prompt runs in the step it is admitted in?", _CHUNK),
    ("a lone prompt longer than the budget", dict(tokens_left=150, admitted_this_step=0), True,
     "if the first prompt of a step were refused for its length, when would it ever run?", _CHUNK),
    ("chunked: some budget left", dict(tokens_left=40, admitted_this_step=2, chunked=True), True,
     "with chunked prefill, how much of the prompt must fit in this step?", _CHUNK),
    ("chunked: no budget left", dict(tokens_left=0, admitted_this_step=2, chunked=True), False,
     "how many tokens would this request's first chunk get?", _CHUNK),
    ("chunked: but no memory", dict(tokens_left=100, chunked=True, free_blocks=5), False,
     "when does a chunked request take its KV blocks: per chunk or at admission?", _MEMORY),
]


def _run(admission, policy: str, workload, num_blocks: int | None, budget: int | None):
    return simulate(_MODEL, _DEVICE, workload, policy, cost=_cost(), num_blocks=num_blocks,
                    max_batched_tokens=budget, max_batch=12, admission=admission).requests


_COST: list = []


def _cost() -> RooflineStepCost:
    if not _COST:
        _COST.append(RooflineStepCost(_MODEL, _DEVICE))
    return _COST[0]


def _scenarios():
    wl = poisson_workload(150, 12.0, exponential_lengths(500, 1, 2000), exponential_lengths(120, 1, 500), seed=7)
    tight = poisson_workload(80, 40.0, uniform_lengths(100, 600), uniform_lengths(50, 300), seed=8)
    return [("continuous batching, roomy pool", "continuous", wl, None, None),
            ("continuous batching, 2,048-token budget", "continuous", wl, None, 2048),
            ("chunked prefill, 512-token budget", "chunked", wl, None, 512),
            ("continuous batching, a starved pool of 150 blocks", "continuous", tight, 150, None)]


def _same_schedule(ref: pd.DataFrame) -> Callable:
    def judge(got) -> str | None:
        if isinstance(got, str):
            return got
        if not isinstance(got, pd.DataFrame):
            return f"the run did not produce a request table (got {type(got).__name__})"
        for col in ("admitted_s", "finish_s"):
            a, b = got[col].to_numpy(), ref[col].to_numpy()
            bad = np.flatnonzero(~np.isclose(a, b, rtol=1e-12, atol=0))
            if len(bad):
                i = int(bad[0])
                return (f"request {int(ref.request_id.iloc[i])}: {col} expected {b[i]:.6g} s, got {a[i]:.6g} s "
                        f"({len(bad)} requests differ)")
        return None

    return judge


def _schedule_summary(r) -> str:
    if isinstance(r, pd.DataFrame):
        return (f"{len(r)} requests, first admission of the last one at {r.admitted_s.iloc[-1]:.6g} s, "
                f"last finish at {r.finish_s.max():.6g} s")
    return describe(r)


def check_can_admit(fn: Callable[[AdmissionView], bool], raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Lab 9.1: check an admission rule ``fn(view) -> bool`` on hand-made situations, then inside the scheduler on
    seeded workloads against :func:`unveiled.serving.can_admit`. Introduced in Chapter 9."""
    if not callable(fn):
        raise TypeError(f"pass your function itself (check_can_admit(can_admit)), got {type(fn).__name__}")
    cases = [Case(name, (_view(**kw),), judge=_bool_judge(want), expected=want, hint=hint, section=section)
             for name, kw, want, hint, section in _UNIT_CASES]

    def served(policy, workload, num_blocks, budget):
        try:
            return _run(fn, policy, workload, num_blocks, budget)
        except (ValueError, RuntimeError) as exc:
            return f"serving with your rule failed: {exc}"

    for name, policy, wl, blocks, budget in _scenarios():
        ref = _run(can_admit, policy, wl, blocks, budget)
        cases.append(Case(f"scheduler with your rule: {name}", (policy, wl, blocks, budget), judge=_same_schedule(ref),
                          expected=_schedule_summary(ref), show_result=_schedule_summary,
                          input=f"{len(wl)} seeded requests, {policy} batching, "
                                f"{'the default pool' if blocks is None else f'{blocks} KV blocks'}, "
                                f"{'no token budget' if budget is None else f'a budget of {budget} tokens'}",
                          hint="the hand-made cases above say which rule differs; fix those first.",
                          section=_CHUNK if policy == "chunked" else (_MEMORY if blocks else _BATCH)))

    def call(*args):
        if len(args) == 1:
            return fn(*args)
        return served(*args)

    return run_cases(call, cases, "Lab 9.1: the admission step", raise_on_fail=raise_on_fail, show=show)


# ---- Lab 9.2 ----------------------------------------------------------------------------------------------


def _metric_cases():
    out = []
    for name, policy, rate, seed in (("continuous, light load", "continuous", 4.0, 1),
                                     ("chunked, heavy load", "chunked", 30.0, 2)):
        wl = poisson_workload(120, rate, exponential_lengths(400, 1, 2000), uniform_lengths(1, 300), seed=seed)
        r = simulate(_MODEL, _DEVICE, wl, policy, cost=_cost()).requests
        out.append((name, r))
    single = out[0][1].copy()
    single.loc[single.index[:5], "output_len"] = 1  # one-token answers have no time per output token
    single.loc[single.index[:5], "finish_s"] = single.loc[single.index[:5], "first_token_s"]
    out.append(("five one-token answers", single))
    return out


def _wrong_metrics(r: pd.DataFrame, ttft_slo: float, tpot_slo: float) -> dict[str, dict]:
    span = r.finish_s.max() - r.arrival_s.min()
    ttft = r.first_token_s - r.arrival_s
    tpot = (r.finish_s - r.first_token_s) / (r.output_len - 1).replace(0, np.nan)
    ok = (ttft <= ttft_slo) & (tpot.fillna(0) <= tpot_slo)
    return {
        "divides by output_len instead of output_len - 1 (the first token has no gap before it)":
            {"tpot_p50_s": float(((r.finish_s - r.first_token_s) / r.output_len).median())},
        "measures TTFT from admission instead of arrival (queueing is part of the wait)":
            {"ttft_p50_s": float((r.first_token_s - r.admitted_s).median())},
        "divides goodput by the span of finishes instead of first arrival to last finish":
            {"goodput_rps": float(ok.sum() / (r.finish_s.max() - r.finish_s.min()))},
        "counts every request in goodput, not only those meeting both targets":
            {"goodput_rps": float(len(r) / span)},
        "lets one-token answers (no gap between tokens, so no TPOT) miss the TPOT target":
            {"goodput_rps": float(((ttft <= ttft_slo) & (tpot <= tpot_slo)).sum() / span)},
    }


def check_request_metrics(fn: Callable, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Lab 9.2: check ``fn(requests, ttft_slo_s, tpot_slo_s) -> dict`` with keys ``ttft_p50_s``, ``tpot_p50_s`` and
    ``goodput_rps`` against :func:`unveiled.serving.summarize` on simulated request tables; each case's targets
    are set so that some requests miss them. Introduced in Chapter 9."""
    cases = []
    for name, r in _metric_cases():
        raw = r[["request_id", "arrival_s", "admitted_s", "first_token_s", "finish_s", "prompt_len", "output_len",
                 "preemptions"]]
        full = request_metrics(raw)
        ttft_slo_s = float(full.ttft_s.quantile(0.7))
        tpot_slo_s = float(full.tpot_s.quantile(0.8))
        want = summarize(full, pd.DataFrame({"time_s": [1.0], "decode_seqs": [0], "prefill_seqs": [0]}),
                         ttft_slo_s, tpot_slo_s)
        wrong = _wrong_metrics(raw, ttft_slo_s, tpot_slo_s)

        def judge(got, want=want, wrong=wrong) -> str | None:
            if not isinstance(got, dict):
                return f"expected a dict with ttft_p50_s, tpot_p50_s and goodput_rps, got {type(got).__name__}"
            for key in ("ttft_p50_s", "tpot_p50_s", "goodput_rps"):
                if key not in got:
                    return f"the result has no {key!r} (keys: {sorted(got)})"
                try:
                    value = float(got[key])
                except (TypeError, ValueError):
                    return f"{key} must be a number, got {got[key]!r}"
                if not math.isclose(value, float(want[key]), rel_tol=1e-9):
                    for mistake, vals in wrong.items():
                        if key in vals and math.isclose(value, vals[key], rel_tol=1e-9):
                            return f"{key}: expected {float(want[key]):.6g}, got {value:.6g}: the result {mistake}"
                    return f"{key}: expected {float(want[key]):.6g}, got {value:.6g}"
            return None

        expected = {k: float(want[k]) for k in ("ttft_p50_s", "tpot_p50_s", "goodput_rps")}
        cases.append(Case(f"{name} (TTFT target {ttft_slo_s:.3g} s, TPOT target {1e3 * tpot_slo_s:.3g} ms)",
                          (raw.copy(), ttft_slo_s, tpot_slo_s), judge=judge, expected=expected,
                          input=f"a request table of {len(raw)} requests, ttft_slo_s={ttft_slo_s:.4g}, "
                                f"tpot_slo_s={tpot_slo_s:.4g}",
                          hint="which event starts each clock, and how many gaps does an answer of n tokens have?",
                          section=_BATCH))
    return run_cases(fn, cases, "Lab 9.2: TTFT, TPOT and goodput", raise_on_fail=raise_on_fail, show=show)


CHECKS = {"can_admit": check_can_admit, "request_metrics": check_request_metrics}
