"""Charts of Chapter 8 (kernels): FlashAttention's counted traffic against sequence length and on-chip buffer,
the static traffic explorer, fusion measured on this CPU, and where a decode step's time goes.

Every number drawn comes from :mod:`unveiled.kernels`; data are rounded before charting so the pages stay
light. Single charts take the page column's width (``width="container"``); stacked panels are narrow enough
for a phone. Introduced in Chapter 8.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from ..hardware import get_device
from .roofline import PHASE_COLORS
from .style import BOUND_COLORS, color_scale

__all__ = [
    "DEVICE_BUFFERS",
    "READ_PATH",
    "decode_speed_chart",
    "figure14_chart",
    "fusion_chart",
    "profile_chart",
    "traffic_chart",
    "traffic_explorer_chart",
]

#: The reference bar of :func:`decode_speed_chart`: a plain read of the step's weights, measured in the same run.
READ_PATH = "plain read of the weights"
_SVG = {"embedOptions": {"renderer": "svg"}}
_DECADES = "abs(log(datum.value) / log(10) - round(log(datum.value) / log(10))) < 1e-6 ? datum.label : ''"
_KIND_COLORS = {"matrix-vector (weights)": "#4c78a8", "attention": "#f58518", "elementwise": "#54a24b",
                "copies": "#b279a2", "Python and dispatch": "#9d9d9d"}
_SERIES = {"naive (eager kernels, counted)": "#d62728", "FlashAttention tiles (counted)": "#1f77b4",
           "Θ(N²d²/M) (constant 1)": "#7f7f7f", "compulsory (Q, K, V, O once)": "#2ca02c"}

#: On-chip shared memory per streaming multiprocessor (KB) of three GPUs of the hardware registry, marked on
#: the charts (read from the registry, not typed).
DEVICE_BUFFERS = {label: get_device(name).smem_per_sm_bytes / 1e3
                  for label, name in (("A6000", "a6000"), ("A100", "a100-80gb"), ("H100", "h100-sxm"))}


def _svg(chart):
    return chart.properties(usermeta=_SVG)


def _round(df: pd.DataFrame, cols, digits: int = 4) -> pd.DataFrame:
    df = df.copy()
    for c in cols:
        df[c] = df[c].map(lambda v: float(f"{v:.{digits}g}"))
    return df


def _long_traffic(df: pd.DataFrame) -> pd.DataFrame:
    long = df.melt(id_vars=[c for c in ("seq_len", "head_dim", "buffer_kb", "tile") if c in df],
                   value_vars=["naive_bytes", "flash_bytes", "bound_bytes", "compulsory_bytes"],
                   var_name="series", value_name="bytes")
    long["series"] = long["series"].map({
        "naive_bytes": "naive (eager kernels, counted)", "flash_bytes": "FlashAttention tiles (counted)",
        "bound_bytes": "Θ(N²d²/M) (constant 1)", "compulsory_bytes": "compulsory (Q, K, V, O once)"})
    long["MB"] = long["bytes"] / 1e6
    return _round(long.drop(columns="bytes"), ["MB"])


def traffic_chart(sweep: pd.DataFrame, *, head_dim: int, buffer_kb: float, title: str = "",
                  height: int = 280) -> alt.LayerChart:
    """Traffic of one attention head versus sequence length (log–log): naive and tiled, counted, with the
    Θ(N²d²/M) term and the compulsory traffic. ``sweep`` comes from :func:`unveiled.kernels.io.traffic_sweep`.
    Introduced in Chapter 8.
    """
    df = sweep[(sweep.head_dim == head_dim) & (sweep.buffer_kb == buffer_kb)]
    if df.empty:
        raise ValueError(f"the sweep has no rows for head_dim={head_dim}, buffer_kb={buffer_kb}")
    long = _long_traffic(df)
    order = list(_SERIES)
    chart = alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("seq_len:Q", title="sequence length N (tokens)", scale=alt.Scale(type="log", base=2, nice=False)),
        y=alt.Y("MB:Q", title="device-memory traffic (MB)", scale=alt.Scale(type="log"),
                axis=alt.Axis(labelExpr=_DECADES)),
        color=alt.Color("series:N", title=None, sort=order,
                        scale=alt.Scale(domain=order, range=[_SERIES[s] for s in order]),
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=260)),
        strokeDash=alt.condition(alt.datum.series == "Θ(N²d²/M) (constant 1)", alt.value([4, 3]), alt.value([1, 0])),
        tooltip=["series:N", "seq_len:Q", alt.Tooltip("MB:Q", title="traffic (MB)")],
    )
    return _svg(chart.properties(width="container", height=height, title=title))


def traffic_explorer_chart(sweep: pd.DataFrame, *, device_buffers: dict[str, float] | None = None,
                           width: int = 320, height: int = 200) -> alt.VConcatChart:
    """The static explorer: choose a sequence length and a head width (widgets that work in the page); see
    traffic and roofline time versus on-chip buffer size, naive against tiled, with device buffers marked.

    ``sweep`` comes from :func:`unveiled.kernels.io.traffic_sweep` with a ``device`` (for ``naive_s`` and
    ``flash_s``). Introduced in Chapter 8.
    """
    device_buffers = DEVICE_BUFFERS if device_buffers is None else device_buffers
    seqs = sorted(int(s) for s in sweep.seq_len.unique())
    dims = sorted(int(d) for d in sweep.head_dim.unique())
    df = pd.DataFrame({"n": sweep.seq_len.astype(int), "d": sweep.head_dim.astype(int), "m": sweep.buffer_kb,
                       "tile": sweep.tile.astype(int), "naive": sweep.naive_bytes / 1e6,
                       "tiled": sweep.flash_bytes / 1e6, "bound": sweep.bound_bytes / 1e6,
                       "naive_us": sweep.naive_s * 1e6, "tiled_us": sweep.flash_s * 1e6})
    df = _round(df, ["naive", "tiled", "bound", "naive_us", "tiled_us"], 3)
    p_n = alt.param(name="kern_n", value=seqs[len(seqs) // 2],
                    bind=alt.binding_select(options=seqs, name="sequence length N "))
    p_d = alt.param(name="kern_d", value=128 if 128 in dims else dims[-1], bind=alt.binding_radio(options=dims, name="head width d "))
    base = alt.Chart(df).transform_filter((alt.datum.n == p_n) & (alt.datum.d == p_d))
    x = alt.X("m:Q", title="on-chip buffer M (KB)", scale=alt.Scale(type="log", nice=False),
              axis=alt.Axis(labelExpr=_DECADES))
    marks = pd.DataFrame({"device": list(device_buffers), "m": list(device_buffers.values())})
    rules = alt.Chart(marks).mark_rule(strokeDash=[2, 2], color="#888").encode(
        x="m:Q", tooltip=["device:N", alt.Tooltip("m:Q", title="shared memory per SM (KB)")])
    labels = alt.Chart(marks).mark_text(angle=270, align="left", dx=-4, dy=-3, fontSize=9, color="#666").encode(
        x="m:Q", y=alt.value(4), text="device:N")
    tip = [alt.Tooltip("n:Q", title="N"), alt.Tooltip("d:Q", title="d"), alt.Tooltip("m:Q", title="buffer (KB)"),
           alt.Tooltip("tile:Q", title="tile rows"), alt.Tooltip("naive:Q", title="naive (MB)"),
           alt.Tooltip("tiled:Q", title="tiled (MB)"), alt.Tooltip("naive_us:Q", title="naive (µs)"),
           alt.Tooltip("tiled_us:Q", title="tiled (µs)")]
    panels = []
    for fields, ytitle, ptitle in ((("naive", "tiled", "bound"), "traffic (MB)", "traffic of one head"),
                                   (("naive_us", "tiled_us"), "roofline time (µs)", "roofline time, A6000 FP16")):
        names = {"naive": "naive", "tiled": "tiled (FlashAttention)", "bound": "Θ(N²d²/M)", "naive_us": "naive",
                 "tiled_us": "tiled (FlashAttention)"}
        folded = base.transform_fold(list(fields), as_=["what", "value"]).transform_calculate(
            series="{" + ",".join(f"'{f}': '{names[f]}'" for f in fields) + "}[datum.what]")
        domain = [names[f] for f in fields]
        colors = {"naive": "#d62728", "tiled (FlashAttention)": "#1f77b4", "Θ(N²d²/M)": "#7f7f7f"}
        line = folded.mark_line(point=True).encode(
            x=x, y=alt.Y("value:Q", title=ytitle, scale=alt.Scale(type="log"), axis=alt.Axis(labelExpr=_DECADES)),
            color=alt.Color("series:N", title=None, scale=alt.Scale(domain=domain, range=[colors[s] for s in domain]),
                            legend=alt.Legend(orient="bottom", direction="horizontal")),
            tooltip=tip)
        panels.append(alt.layer(line, rules, labels).properties(width=width, height=height, title=ptitle))
    return _svg(alt.vconcat(*panels).add_params(p_n, p_d).resolve_scale(color="independent"))


def figure14_chart(phases: pd.DataFrame, *, title: str = "", height: int = 150) -> alt.LayerChart:
    """The survey's Fig. 14 as two timelines, separate kernels against fused, from
    :func:`unveiled.kernels.fusion.figure14_phases`; each bar is a load, compute or store phase, in µs.
    Introduced in Chapter 8.
    """
    df = phases.assign(start=phases.start_s * 1e6, end=phases.end_s * 1e6, MB=phases["bytes"] / 1e6)
    df = _round(df, ["start", "end", "MB"])
    y = alt.Y("schedule:N", title=None, sort=["separate kernels", "fused"])
    bars = alt.Chart(df).mark_bar(size=22, stroke="#fff", strokeWidth=1).encode(
        x=alt.X("start:Q", title="time on the roofline (µs)"), x2="end:Q", y=y,
        color=alt.Color("phase:N", scale=color_scale(PHASE_COLORS), legend=alt.Legend(title=None, orient="bottom")),
        tooltip=["schedule:N", "kernel:N", "phase:N", alt.Tooltip("MB:Q", title="bytes (MB)"),
                 alt.Tooltip("start:Q", title="start (µs)"), alt.Tooltip("end:Q", title="end (µs)")])
    first = df.groupby(["schedule", "kernel"], as_index=False, sort=False)["start"].min()
    labels = alt.Chart(first).mark_text(align="left", dx=3, dy=-16, fontSize=10).encode(
        x="start:Q", y=y, text="kernel:N")
    return _svg(alt.layer(bars, labels).properties(width="container", height=height, title=title))


def fusion_chart(table: pd.DataFrame, *, title: str = "", height: int = 220) -> alt.Chart:
    """Speed-up of compiled over eager per case: measured, and predicted by the roofline from the counted
    bytes (``predicted_eager_s / predicted_compiled_s``). ``table`` comes from
    :func:`unveiled.kernels.fusion.measure_fusion` (compiled rows only). Introduced in Chapter 8.
    """
    t = table[table["compiled"].astype(bool)]
    df = pd.DataFrame({"case": list(t["case"]) * 2,
                       "what": ["measured"] * len(t) + ["roofline prediction"] * len(t),
                       "speedup": list(t["speedup"]) + list(t["predicted_eager_s"] / t["predicted_compiled_s"])})
    df = _round(df, ["speedup"], 3)
    bars = alt.Chart(df).mark_bar().encode(
        y=alt.Y("case:N", title=None, sort=list(t["case"])), yOffset="what:N",
        x=alt.X("speedup:Q", title="compiled / eager speed-up (×)"),
        color=alt.Color("what:N", title=None, scale=alt.Scale(range=["#4c78a8", "#bab0ac"]),
                        legend=alt.Legend(orient="bottom")),
        tooltip=["case:N", "what:N", alt.Tooltip("speedup:Q", format=".2f")])
    one = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(color="#333").encode(x="x:Q")
    return _svg(alt.layer(bars, one).properties(width="container", height=height, title=title))


def _kind(op: str) -> str:
    if op.endswith("_proj") or op == "lm_head":
        return "matrix-vector (weights)"
    if op in ("fused_attention", "qk_matmul", "sv_matmul", "softmax"):
        return "attention"
    if op in ("repeat_kv", "kv_store", "attn_layout", "embed_tokens"):
        return "copies"
    if op == "python":
        return "Python and dispatch"
    return "elementwise"


def profile_chart(profile: pd.DataFrame, *, title: str = "", height: int = 380) -> alt.LayerChart:
    """One decode step per operator: measured time (bars) and the roofline's prediction (ticks), in ms.

    ``profile`` comes from :func:`unveiled.kernels.decode_step.profile_decode_step`. Introduced in Chapter 8.
    """
    df = profile[profile["time_s"] > 0].copy()
    df["kind"] = df["op"].map(_kind)
    df["measured_ms"] = df["time_s"] * 1e3
    df["predicted_ms"] = df["predicted_s"].fillna(0) * 1e3
    df["GB_s"] = (df["achieved_bytes_s"] / 1e9).fillna(0)
    df = _round(df[["op", "kind", "calls", "measured_ms", "predicted_ms", "GB_s"]], ["measured_ms", "predicted_ms", "GB_s"])
    order = list(df.sort_values("measured_ms", ascending=False)["op"])
    kinds = [k for k in _KIND_COLORS if k in set(df.kind)]
    y = alt.Y("op:N", title=None, sort=order)
    tip = ["op:N", "kind:N", "calls:Q", alt.Tooltip("measured_ms:Q", title="measured (ms)"),
           alt.Tooltip("predicted_ms:Q", title="roofline (ms)"), alt.Tooltip("GB_s:Q", title="achieved (GB/s)")]
    bars = alt.Chart(df).mark_bar().encode(
        y=y, x=alt.X("measured_ms:Q", title="time in one decode step (ms)"),
        color=alt.Color("kind:N", title=None, scale=alt.Scale(domain=kinds, range=[_KIND_COLORS[k] for k in kinds]),
                        legend=alt.Legend(orient="bottom", columns=3)), tooltip=tip)
    ticks = alt.Chart(df[df.predicted_ms > 0]).mark_tick(color="#000", thickness=2, size=14).encode(
        y=y, x="predicted_ms:Q", tooltip=tip)
    return _svg(alt.layer(bars, ticks).properties(width="container", height=height, title=title))


def decode_speed_chart(table: pd.DataFrame, *, goal: float, title: str = "", height: int = 200) -> alt.LayerChart:
    """Fraction of the measured memory roof each decode path reaches, per thread count, with the goal.

    ``table`` comes from :func:`unveiled.kernels.experiments.decode_step_speed` (wall-clock rows); ``goal`` is the
    share of the roof drawn as a dashed rule (the book's is ``unveiled.kernels.experiments.ROOF_GOAL``). Where the
    table has the plain read of the step's weights measured in the same run (``read_bytes_s``), a last bar per
    thread count shows its share of the roof. Introduced in Chapter 8.
    """
    t = table[table["clock"] == "wall"].copy()
    t["pct"] = 100 * t["fraction_of_roof"]
    if "read_bytes_s" in t:
        read = t.drop_duplicates("threads").assign(path=READ_PATH)
        read["pct"] = 100 * read["read_bytes_s"] / read["bandwidth_bytes_s"]
        t = pd.concat([t, read], ignore_index=True)
    t["label"] = t["threads"].astype(int).astype(str) + " thread" + t["threads"].map(lambda n: "s" if n > 1 else "")
    t["tokens_per_s"] = [f"{v:.3g}" if p != READ_PATH else "(a read, not a step)"
                         for p, v in zip(t["path"], t["tokens_per_s"], strict=True)]
    df = _round(t[["label", "path", "pct", "tokens_per_s"]], ["pct"], 3)
    bars = alt.Chart(df).mark_bar().encode(
        y=alt.Y("path:N", title=None, sort=list(dict.fromkeys(t["path"]))), yOffset="label:N",
        x=alt.X("pct:Q", title="achieved / measured bandwidth (%)", scale=alt.Scale(domain=[0, 100])),
        color=alt.Color("label:N", title=None, scale=alt.Scale(range=[BOUND_COLORS["memory"], "#4c78a8"]),
                        legend=alt.Legend(orient="bottom")),
        tooltip=["path:N", "label:N", alt.Tooltip("pct:Q", title="% of roof"),
                 alt.Tooltip("tokens_per_s:N", title="tokens/s")])
    rule = alt.Chart(pd.DataFrame({"x": [100 * goal]})).mark_rule(strokeDash=[4, 3], color="#333").encode(x="x:Q")
    return _svg(alt.layer(bars, rule).properties(width="container", height=height, title=title))
