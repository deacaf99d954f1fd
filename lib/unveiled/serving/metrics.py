"""What a serving run is judged by: latency per request, throughput, goodput under targets, memory over time.

*Time to first token* (TTFT, arrival to first output token) is what a user waits before text appears; *time
per output token* (TPOT, the mean gap between later tokens, ``(finish - first token) / (output_len - 1)``) is
how fast it then streams. Throughput counts output tokens per second over the run; *goodput* counts only the
requests that met both latency targets (service-level objectives, SLOs), per second, as DistServe argues a
server should be judged [Zhong et al. 2024]. Little's law [Little 1961] ties the queue together: the mean
number of requests in the system equals the arrival rate times the mean time each spends there.
Introduced in Chapter 9.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["littles_law", "memory_timeline", "request_metrics", "summarize"]

_PCTS = (50, 90, 99)


def request_metrics(requests: pd.DataFrame) -> pd.DataFrame:
    """Add ``ttft_s``, ``tpot_s`` (NaN for one-token outputs, which have no gaps), ``latency_s`` (arrival to
    finish) and ``queue_s`` (arrival to first admission) to a per-request table. Introduced in Chapter 9."""
    out = requests.copy()
    out["ttft_s"] = out["first_token_s"] - out["arrival_s"]
    gaps = out["output_len"] - 1
    out["tpot_s"] = np.where(gaps > 0, (out["finish_s"] - out["first_token_s"]) / gaps.clip(lower=1), np.nan)
    out["latency_s"] = out["finish_s"] - out["arrival_s"]
    out["queue_s"] = out["admitted_s"] - out["arrival_s"]
    return out


def memory_timeline(steps: pd.DataFrame, num_blocks: int, block_bytes: float) -> pd.DataFrame:
    """KV memory during each step: blocks in use, their share of the pool and their bytes (GB).
    Introduced in Chapter 9."""
    return pd.DataFrame({"time_s": steps["start_s"], "kv_blocks_used": steps["kv_blocks_used"],
                         "kv_fraction": steps["kv_blocks_used"] / num_blocks,
                         "kv_GB": steps["kv_blocks_used"] * block_bytes / 1e9,
                         "running": steps["running"], "waiting": steps["waiting"]})


def summarize(requests: pd.DataFrame, steps: pd.DataFrame, ttft_slo_s: float | None = None,
              tpot_slo_s: float | None = None, num_blocks: int | None = None,
              block_bytes: float | None = None) -> pd.Series:
    """One run's numbers: TTFT/TPOT/latency percentiles (p50, p90, p99) and those of each request's worst gap
    between two tokens (``stall_*``, when the table has ``max_gap_s``), output and request throughput over the
    run (first arrival to last finish), goodput (requests per second meeting ``ttft_slo_s`` and
    ``tpot_slo_s``; all requests when no target is given) and SLO attainment, preemptions, step statistics and
    KV memory (peak and time-weighted mean share of the pool). Introduced in Chapter 9."""
    r = requests if "ttft_s" in requests else request_metrics(requests)
    span = float(r["finish_s"].max() - r["arrival_s"].min())
    out: dict[str, float] = {"requests": float(len(r)), "duration_s": span}
    out["request_throughput"] = len(r) / span
    out["output_tokens_per_s"] = float(r["output_len"].sum()) / span
    out["total_tokens_per_s"] = float((r["output_len"] + r["prompt_len"]).sum()) / span
    if "max_gap_s" in r:
        r = r.assign(stall_s=r["max_gap_s"].where(r["output_len"] > 1))
    for col in ("ttft", "tpot", "latency", "stall"):
        if f"{col}_s" not in r:
            continue
        values = r[f"{col}_s"].dropna().to_numpy()
        for p in _PCTS:
            out[f"{col}_p{p}_s"] = float(np.percentile(values, p)) if len(values) else float("nan")
        out[f"{col}_mean_s"] = float(values.mean()) if len(values) else float("nan")
    ok = np.ones(len(r), dtype=bool)
    if ttft_slo_s is not None:
        ok &= (r["ttft_s"] <= ttft_slo_s).to_numpy()
    if tpot_slo_s is not None:
        ok &= (r["tpot_s"].fillna(0.0) <= tpot_slo_s).to_numpy()
    out["slo_attainment"] = float(ok.mean())
    out["goodput_rps"] = float(ok.sum()) / span
    out["queue_mean_s"] = float(r["queue_s"].mean())
    out["preemptions"] = float(r["preemptions"].sum())
    out["steps"] = float(len(steps))
    out["step_max_s"] = float(steps["time_s"].max())
    out["step_mean_s"] = float(steps["time_s"].mean())
    out["batch_mean"] = float((steps["decode_seqs"] + steps["prefill_seqs"]).mean())
    w = steps["time_s"].to_numpy()
    if num_blocks:
        frac = steps["kv_blocks_used"].to_numpy() / num_blocks
        out["kv_peak_fraction"] = float(frac.max())
        out["kv_mean_fraction"] = float((frac * w).sum() / w.sum())
        if block_bytes is not None and np.isfinite(block_bytes):
            out["kv_peak_GB"] = float(steps["kv_blocks_used"].max() * block_bytes / 1e9)
    return pd.Series(out)


def littles_law(requests: pd.DataFrame, steps: pd.DataFrame) -> dict[str, float]:
    """Both sides of Little's law ``L = λ·W`` on a run, from two independent records [Little 1961].

    ``L``: the time-average number of requests in the system (waiting, running or swapped), integrated over
    the step table (its queue counts after each step's scheduling, held for the step; idle gaps count 0).
    ``λ·W``: the arrival rate times the mean time in the system, from the request table. A request that
    arrives during a step joins the queue only at the next step, so ``L`` misses the time from its arrival to
    that step's end: ``L_corrected`` adds it back and equals ``λ·W`` exactly; ``bound`` (λ times the longest
    step) bounds the difference without it. Introduced in Chapter 9."""
    r = requests if "latency_s" in requests else request_metrics(requests)
    t0, t1 = float(r["arrival_s"].min()), float(r["finish_s"].max())
    span = t1 - t0
    in_system = (steps["waiting"] + steps["running"] + steps["swapped"]).to_numpy(dtype=float)
    tau = steps["time_s"].to_numpy()
    L = float((in_system * tau).sum() / span)
    start, end = steps["start_s"].to_numpy(), steps["end_s"].to_numpy()
    a = r["arrival_s"].to_numpy()
    k = np.searchsorted(start, a, side="right") - 1  # the step running when each request arrived
    inside = (k >= 0) & (a > start[np.maximum(k, 0)]) & (a < end[np.maximum(k, 0)])
    missed = float((end[k[inside]] - a[inside]).sum())
    lam = len(r) / span
    W = float(r["latency_s"].mean())
    return {"L": L, "L_corrected": L + missed / span, "lambda_W": lam * W, "lambda": lam, "W": W,
            "bound": lam * float(tau.max())}
