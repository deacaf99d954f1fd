"""Charts of serving (Chapter 9): request timelines, memory and queues over time, step times, latency and
throughput against the arrival rate (a static explorer), the simulator against the real engine, and tensor
parallelism.

Every number drawn comes from :mod:`unveiled.serving`. Each chart has a title; panels are 280 px wide and
stacked, legends below, so that they fit a phone as well as the page column. Policies keep one colour across
the chapter.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from .style import STAGE_COLORS, color_scale

__all__ = [
    "POLICY_COLORS",
    "engine_comparison_chart",
    "memory_chart",
    "rate_explorer_chart",
    "step_fit_chart",
    "step_time_chart",
    "tensor_parallel_chart",
    "timeline_chart",
]

_SVG = {"embedOptions": {"renderer": "svg"}}
#: One colour per scheduling policy.
POLICY_COLORS: dict[str, str] = {"static": "#7f7f7f", "continuous": "#1f77b4", "chunked": "#ff7f0e"}
_W = 280  # panel width: with its axis labels a panel fits a 358 px phone column


def _round(df: pd.DataFrame, cols, digits: int = 4) -> pd.DataFrame:
    df = df.copy()
    for c in cols:
        df[c] = df[c].map(lambda v: float(f"{v:.{digits}g}") if np.isfinite(v) else None)
    return df


def timeline_chart(results: dict[str, pd.DataFrame], *, title: str = "", max_requests: int = 40) -> alt.VConcatChart:
    """One row per request, one panel per policy: waiting (grey, arrival to admission), waiting for the first
    token (prefill, blue) and decoding (red, first token to finish). ``results`` maps a policy to its request
    table. Introduced in Chapter 9."""
    panels = []
    for policy, r in results.items():
        r = r.head(max_requests)
        segs = pd.concat([
            pd.DataFrame({"request": r.request_id, "start": r.arrival_s, "end": r.admitted_s, "phase": "queued"}),
            pd.DataFrame({"request": r.request_id, "start": r.admitted_s, "end": r.first_token_s, "phase": "prefill"}),
            pd.DataFrame({"request": r.request_id, "start": r.first_token_s, "end": r.finish_s, "phase": "decode"}),
        ])
        segs = _round(segs, ["start", "end"])
        colors = {"queued": "#c7c7c7", "prefill": STAGE_COLORS["prefill"], "decode": STAGE_COLORS["decode"]}
        panels.append(alt.Chart(segs).mark_bar(height=5).encode(
            x=alt.X("start:Q", title="time (s)"), x2="end:Q",
            y=alt.Y("request:O", title="request", axis=alt.Axis(labels=False, ticks=False)),
            color=alt.Color("phase:N", scale=color_scale(colors), title="phase",
                            legend=alt.Legend(orient="bottom", direction="horizontal")),
            tooltip=["request:O", "phase:N", alt.Tooltip("start:Q", title="from (s)"),
                     alt.Tooltip("end:Q", title="to (s)")],
        ).properties(width=_W, height=4 * len(r) + 20, title=f"{policy} batching"))
    return alt.vconcat(*panels).resolve_scale(x="shared").properties(title=title, usermeta=_SVG)


def memory_chart(runs: dict[str, pd.DataFrame], *, title: str = "") -> alt.VConcatChart:
    """KV memory in use (share of the pool) and the requests waiting, over time, one line per run.
    ``runs`` maps a label (e.g. a policy) to a :meth:`~unveiled.serving.ServingResult.memory` table.
    Introduced in Chapter 9."""
    frames = []
    for label, m in runs.items():
        step = max(1, len(m) // 400)  # keep the page light: at most ~400 points per line
        frames.append(m.iloc[::step].assign(run=label))
    df = _round(pd.concat(frames)[["run", "time_s", "kv_fraction", "waiting", "running"]], ["time_s", "kv_fraction"])
    domain = list(runs)
    color = alt.Color("run:N", title=None, scale=color_scale(POLICY_COLORS, domain),
                      legend=alt.Legend(orient="bottom", direction="horizontal"))
    base = alt.Chart(df).encode(x=alt.X("time_s:Q", title="time (s)"), color=color)
    mem = base.mark_line(interpolate="step-after").encode(
        y=alt.Y("kv_fraction:Q", title="KV blocks in use (share)", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])),
        tooltip=["run:N", "time_s:Q", alt.Tooltip("kv_fraction:Q", format=".1%"), "running:Q", "waiting:Q"],
    ).properties(width=_W, height=150, title="KV memory in use")
    queue = base.mark_line(interpolate="step-after").encode(
        y=alt.Y("waiting:Q", title="requests waiting"), tooltip=["run:N", "time_s:Q", "waiting:Q", "running:Q"],
    ).properties(width=_W, height=120, title="queue")
    return alt.vconcat(mem, queue).properties(title=title, usermeta=_SVG)


def step_time_chart(steps: dict[str, pd.DataFrame], *, title: str = "", t_max: float | None = None) -> alt.Chart:
    """Each step's duration (ms) at its start time, one colour per run: the spikes are steps that prefill
    whole prompts. Introduced in Chapter 9."""
    frames = []
    for label, s in steps.items():
        s = s if t_max is None else s[s.start_s <= t_max]
        frames.append(pd.DataFrame({"run": label, "start_s": s.start_s, "ms": 1e3 * s.time_s,
                                    "prefill_tokens": s.prefill_tokens, "decodes": s.decode_seqs}))
    df = _round(pd.concat(frames), ["start_s", "ms"])
    return alt.Chart(df).mark_point(size=12, filled=True, opacity=0.7).encode(
        x=alt.X("start_s:Q", title="time (s)"), y=alt.Y("ms:Q", title="step time (ms)"),
        color=alt.Color("run:N", title=None, scale=color_scale(POLICY_COLORS, list(steps)),
                        legend=alt.Legend(orient="bottom", direction="horizontal")),
        tooltip=["run:N", "start_s:Q", "ms:Q", "prefill_tokens:Q", "decodes:Q"],
    ).properties(width=_W, height=200, title=title or "step durations", usermeta=_SVG)


def rate_explorer_chart(grid: pd.DataFrame, *, title: str = "") -> alt.VConcatChart:
    """The static explorer of latency and throughput against the arrival rate: pick a model, a device and a
    policy (widgets that work without a kernel) and move the rate slider to read every metric at that rate.
    Panels: output throughput, TTFT (p50 solid, p99 dashed; log scale) and TPOT p50, one colour per policy.
    ``grid`` is the table of :func:`unveiled.serving.experiments.rate_sweep`. Introduced in Chapter 9."""
    models = list(dict.fromkeys(grid.model))
    devices = list(dict.fromkeys(grid.device))
    policies = [p for p in POLICY_COLORS if p in set(grid.policy)]
    rates = sorted(float(r) for r in grid.rate_rps.unique())
    df = pd.DataFrame({
        "m": grid.model.map({m: i for i, m in enumerate(models)}), "d": grid.device.map({d: i for i, d in enumerate(devices)}),
        "policy": grid.policy, "rate": grid.rate_rps.astype(float), "tput": grid.output_tokens_per_s,
        "ttft50": grid.ttft_p50_s, "ttft99": grid.ttft_p99_s, "tpot50": 1e3 * grid.tpot_p50_s,
        "good": grid.goodput_rps, "kv": grid.kv_peak_fraction,
    })
    df = _round(df, ["tput", "ttft50", "ttft99", "tpot50", "good", "kv"], 3)
    p_model = alt.param(name="sv_model", value=0,
                        bind=alt.binding_select(options=list(range(len(models))), labels=models, name="model "))
    p_device = alt.param(name="sv_device", value=0,
                         bind=alt.binding_select(options=list(range(len(devices))), labels=devices, name="device "))
    p_policy = alt.param(name="sv_policy", value="all",
                         bind=alt.binding_select(options=["all", *policies], name="policy "))
    p_rate = alt.param(name="sv_rate", value=rates[len(rates) // 2],
                       bind=alt.binding_range(min=rates[0], max=rates[-1], step=0.5, name="rate (requests/s) "))
    base = alt.Chart(df).transform_filter(
        (alt.datum.m == p_model) & (alt.datum.d == p_device)
        & ((p_policy == "all") | (alt.datum.policy == p_policy)))
    x = alt.X("rate:Q", title="arrival rate (requests/s)",
              scale=alt.Scale(type="log", domain=[rates[0], rates[-1]], nice=False))
    color = alt.Color("policy:N", scale=color_scale(POLICY_COLORS, policies), title="policy",
                      legend=alt.Legend(orient="bottom", direction="horizontal"))
    tip = ["policy:N", alt.Tooltip("rate:Q", title="rate (req/s)"),
           alt.Tooltip("tput:Q", title="output tokens/s"), alt.Tooltip("ttft50:Q", title="TTFT p50 (s)"),
           alt.Tooltip("ttft99:Q", title="TTFT p99 (s)"), alt.Tooltip("tpot50:Q", title="TPOT p50 (ms)"),
           alt.Tooltip("good:Q", title="goodput (req/s)"), alt.Tooltip("kv:Q", title="peak KV share", format=".0%")]
    rule = alt.Chart(pd.DataFrame({"r": [0]})).transform_calculate(rate="sv_rate").mark_rule(
        color="#333", strokeDash=[3, 3]).encode(x="rate:Q")

    def panel(field: str, ytitle: str, ptitle: str, log: bool = False, dashed: str | None = None):
        y = alt.Y(f"{field}:Q", title=ytitle, scale=alt.Scale(type="log") if log else alt.Scale(zero=True))
        layers = [base.mark_line(point=True).encode(x=x, y=y, color=color, tooltip=tip)]
        if dashed:
            layers.append(base.mark_line(strokeDash=[4, 3]).encode(x=x, y=f"{dashed}:Q", color=color, tooltip=tip))
        return alt.layer(*layers, rule).properties(width=_W, height=150, title=ptitle)

    return alt.vconcat(
        panel("tput", "output tokens/s", "throughput"),
        panel("ttft50", "seconds (log)", "time to first token (p50 solid, p99 dashed)", log=True, dashed="ttft99"),
        panel("tpot50", "ms", "time per output token (p50)"),
    ).add_params(p_model, p_device, p_policy, p_rate).properties(title=title, usermeta=_SVG)


def engine_comparison_chart(table: pd.DataFrame, *, title: str = "", tolerance: float = 0.15) -> alt.LayerChart:
    """Simulated over measured, per model, policy and metric (throughput, median TPOT, median TTFT), with the
    ±``tolerance`` band shaded. ``table`` is :func:`unveiled.serving.experiments.engine_vs_simulator`'s.
    Introduced in Chapter 9."""
    rows = []
    for r in table.itertuples(index=False):
        run = f"{r.model} {r.policy}" + ("" if r.setting == "default" else f", {r.num_blocks} blocks")
        for metric, err in (("throughput", r.throughput_err), ("TPOT p50", r.tpot_err), ("TTFT p50", r.ttft_err)):
            rows.append({"run": run, "metric": metric, "ratio": round(1 + err, 4)})
    df = pd.DataFrame(rows)
    band = alt.Chart(pd.DataFrame({"lo": [1 - tolerance], "hi": [1 + tolerance]})).mark_rect(
        color="#2ca02c", opacity=0.12).encode(x="lo:Q", x2="hi:Q")
    one = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(color="#333").encode(x="x:Q")
    dots = alt.Chart(df).mark_point(filled=True, size=70).encode(
        x=alt.X("ratio:Q", title="simulated ÷ measured", scale=alt.Scale(zero=False)),
        y=alt.Y("run:N", title=None, sort=None, axis=alt.Axis(labelLimit=150)),
        color=alt.Color("metric:N", title=None, legend=alt.Legend(orient="bottom", direction="horizontal")),
        shape=alt.Shape("metric:N", title=None), tooltip=["run:N", "metric:N", "ratio:Q"])
    return alt.layer(band, one, dots).properties(width=180, height=alt.Step(26), title=title, usermeta=_SVG)


def step_fit_chart(profile: pd.DataFrame, *, title: str = "") -> alt.LayerChart:
    """Measured step time against the fitted cost table's, one point per timed step (log–log), with the
    diagonal. ``profile`` has ``time_s`` and ``fitted_s`` (and optionally ``model``, ``tokens``).
    Introduced in Chapter 9."""
    df = pd.DataFrame({"measured": 1e3 * profile.time_s, "fitted": 1e3 * profile.fitted_s,
                       "model": profile.get("model", "engine"), "tokens": profile.get("tokens", 0)})
    df = _round(df, ["measured", "fitted"])
    lo, hi = float(min(df.measured.min(), df.fitted.min())), float(max(df.measured.max(), df.fitted.max()))
    diag = alt.Chart(pd.DataFrame({"v": [lo, hi]})).mark_line(color="#333", strokeDash=[4, 3]).encode(x="v:Q", y="v:Q")
    scale = alt.Scale(type="log", domain=[lo, hi])
    dots = alt.Chart(df).mark_point(filled=True, size=30, opacity=0.7).encode(
        x=alt.X("measured:Q", title="measured step (ms)", scale=scale),
        y=alt.Y("fitted:Q", title="cost table (ms)", scale=scale),
        color=alt.Color("model:N", title=None, legend=alt.Legend(orient="bottom")),
        tooltip=["model:N", "tokens:Q", "measured:Q", "fitted:Q"])
    return alt.layer(diag, dots).properties(width=_W, height=_W, title=title, usermeta=_SVG)


def tensor_parallel_chart(tp: pd.DataFrame, *, title: str = "") -> alt.Chart:
    """Decode-step time against the number of GPUs, one colour per assumed latency per all-reduce hop (a
    ``latency_us`` column; 0 when absent), solid over the peer link (NVLink) and dashed over the host link (PCIe).
    ``tp`` is :func:`unveiled.serving.tensor_parallel_decode`'s table. Introduced in Chapter 9."""
    df = tp.copy()
    if "latency_us" not in df:
        df["latency_us"] = 0
    df["link"] = df.interconnect
    df["latency"] = df.latency_us.map(lambda v: f"{v:g} µs per hop")
    df = _round(df[["gpus", "link", "latency", "compute_ms", "allreduce_ms", "step_ms", "speedup"]],
                ["compute_ms", "allreduce_ms", "step_ms", "speedup"])
    bottom = alt.Legend(orient="bottom", direction="vertical")
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("gpus:O", title="GPUs (tensor parallel)"),
        y=alt.Y("step_ms:Q", title="decode step (ms)", scale=alt.Scale(type="log")),
        color=alt.Color("latency:N", title="all-reduce latency", legend=bottom),
        strokeDash=alt.StrokeDash("link:N", title="link (solid, dashed)",
                                  legend=alt.Legend(orient="bottom", direction="vertical", symbolType="stroke")),
        tooltip=["link:N", "latency:N", "gpus:O", "compute_ms:Q", "allreduce_ms:Q", "step_ms:Q", "speedup:Q"],
    ).properties(width=_W, height=220, title=title, usermeta=_SVG)
