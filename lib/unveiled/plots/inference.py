"""Charts of LLM inference through the roofline (Chapter 2): operators on a device's roofline, memory
footprints, time versus batch, sequence length and bandwidth (the survey's Figs 7–9, 11, 16, 19, 20), and the
paper-versus-exact comparison.

Every number drawn comes from :mod:`unveiled.analyzer`. Charts that must stay interactive in the static page
use Altair parameters over a small precomputed grid (:func:`operator_grid`), so the page stays light.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from ..analyzer.analysis import Analysis, analyze, resolve_device
from ..hardware import Device
from .roofline import roofline_lines
from .style import BOUND_COLORS, PRECISION_COLORS, STAGE_COLORS, color_scale

__all__ = [
    "bandwidth_chart",
    "conventions_chart",
    "decode_intensity_chart",
    "devices_decode_table",
    "flash_attention_chart",
    "memory_bars_chart",
    "operator_grid",
    "operator_roofline_chart",
    "operator_roofline_explorer_chart",
    "serving_chart",
    "time_lines_chart",
]

_SVG = {"embedOptions": {"renderer": "svg"}}
_X = "arithmetic intensity (FLOPs/byte)"
_Y = "attainable performance (TFLOP/s)"
# label only the powers of ten of a log axis (the minor ticks stay unlabelled)
_DECADES = "abs(log(datum.value) / log(10) - round(log(datum.value) / log(10))) < 1e-6 ? datum.label : ''"


def _svg(chart):
    return chart.properties(usermeta=_SVG)


def _ops_points(a: Analysis) -> pd.DataFrame:
    """One point per operator on the roofline; operators at the same point (q/k/v/o_proj in decode, the two
    norms, the two adds) share one labelled point, so that the labels stay readable."""
    ops = a.ops
    ops = ops[(ops.flops > 0) & (ops.bytes > 0)]  # zero-FLOP copies (embedding, KV append) are off a log axis
    df = pd.DataFrame({
        "op": ops.op, "intensity": ops.intensity, "tflop_s": ops.attainable_flop_s / 1e12,
        "bound": ops.bound, "dtype": ops.compute_dtype, "time_share_pct": 100 * ops.time_share,
        "time_ms": 1e3 * ops.total_time_s,
    })
    key = [df.intensity.map(lambda v: f"{v:.3g}"), df.tflop_s.map(lambda v: f"{v:.3g}"), df.dtype]
    out = df.groupby(key, sort=False, as_index=False).agg(
        op=("op", ", ".join), intensity=("intensity", "first"), tflop_s=("tflop_s", "first"),
        bound=("bound", "first"), dtype=("dtype", "first"), time_share_pct=("time_share_pct", "sum"),
        time_ms=("time_ms", "sum"))
    names = out.op.str.split(", ")
    out["label"] = [", ".join(n) if len(n) <= 2 else f"{n[0]}, {n[1]} +{len(n) - 2}" for n in names]
    # stagger the labels of points that crowd together (within a factor 2 in intensity): the k-th label of a
    # crowd is drawn 2^k higher on the log axis, joined to its point by a thin leader line
    order = out.sort_values("intensity").index
    rank, last, k = {}, None, 0
    for i in order:
        x = out.at[i, "intensity"]
        k = k + 1 if last is not None and x < 2 * last else 0
        rank[i], last = k, (x if k == 0 else last)
    out["label_y"] = out.tflop_s * 2.0 ** out.index.map(rank)
    return out


def operator_roofline_chart(a: Analysis, *, title: str = "", width: int = 480, height: int = 320) -> alt.LayerChart:
    """Every operator of an analysis on its device's roofline (log–log), sized by its share of the pass's time.

    One roofline per compute data type the operators use; colour says memory- or compute-bound; hover for
    the numbers. Operators with no FLOPs (the embedding lookup, the KV-cache append) have no intensity and
    are left out. Introduced in Chapter 2.
    """
    pts = _ops_points(a)
    dtypes = sorted(set(pts.dtype), key=["fp32", "fp16", "bf16", "fp8", "int8", "int4"].index)
    lo = 10.0 ** np.floor(np.log10(max(pts.intensity.min() / 2, 1e-2)))
    hi = 10.0 ** np.ceil(np.log10(max(pts.intensity.max() * 2, 2 * a.device.ridge_point(dtypes[-1]))))
    lines = roofline_lines([(a.device, dt, dt.upper()) for dt in dtypes], x_domain=[lo, hi])
    x = alt.X("intensity:Q", scale=alt.Scale(type="log", domain=[lo, hi]), axis=alt.Axis(title=_X, labelExpr=_DECADES))
    y = alt.Y("tflop_s:Q", scale=alt.Scale(type="log"), axis=alt.Axis(title=_Y, labelExpr=_DECADES))
    roof = alt.Chart(lines).mark_line(strokeWidth=2).encode(
        x=x, y=y, color=alt.Color("label:N", title="roof", scale=color_scale(
            {k.upper(): v for k, v in PRECISION_COLORS.items()}, [d.upper() for d in dtypes])),
        tooltip=["label:N", alt.Tooltip("ridge:Q", format=".1f")])
    points = alt.Chart(pts).mark_circle(opacity=0.85, stroke="black", strokeWidth=0.5).encode(
        x=x, y=y, size=alt.Size("time_share_pct:Q", title="% of time", scale=alt.Scale(range=[30, 600])),
        fill=alt.Fill("bound:N", scale=color_scale(BOUND_COLORS, ["memory", "compute"])),
        tooltip=["op:N", alt.Tooltip("intensity:Q", format=".3~g"), alt.Tooltip("tflop_s:Q", format=".3~g"),
                 "bound:N", "dtype:N", alt.Tooltip("time_share_pct:Q", format=".1f")])
    labels = alt.Chart(pts).mark_text(align="left", dx=7, dy=-4, fontSize=9, color="#333").encode(
        x=x, y=alt.Y("label_y:Q", scale=alt.Scale(type="log")), text="label:N")
    leaders = alt.Chart(pts[pts.label_y > pts.tflop_s]).mark_rule(color="#bbbbbb", strokeWidth=0.8).encode(
        x=x, y="tflop_s:Q", y2="label_y:Q")
    title = title or (f"{a.model.name} on {a.device.display_name}: {a.stage}, batch {a.batch}, seq_len {a.seq_len}, "
                      f"W{a.w_bits}A{a.a_bits}KV{a.kv_bits}")
    return _svg(alt.layer(roof, leaders, points, labels).properties(width=width, height=height, title=title)
                .resolve_scale(color="independent").configure_legend(orient="bottom", direction="horizontal"))


def operator_grid(model: str = "llama-2-7b", devices: Sequence[str] = ("a6000", "h100-sxm"),
                  batches: Sequence[int] = (1, 16, 256), seq_lens: Sequence[int] = (512, 4096),
                  bits: Sequence[str] = ("W16A16", "W4A16", "W8A8"), conventions: str = "exact",
                  flash_attention: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Operators placed on the roofline for a small grid of settings (for :func:`operator_roofline_explorer_chart`).

    Returns ``(ops, settings)``. ``ops`` has one row per (setting, operator) with only what the chart draws,
    in short columns so that the whole grid ships inside the page: ``c`` (the setting's code), ``op``, ``x``
    (intensity), ``y`` (TFLOP/s), ``b`` (bound: "m" or "c"), ``s`` (% of the pass's time). ``settings`` has one
    row per setting: ``c``, ``device``, ``stage``, ``batch``, ``seq_len``, ``bits`` and ``ms`` (the pass).
    ``bits`` are labels ``"W<w>A<a>"`` (the KV cache follows the activations). Introduced in Chapter 2.
    """
    rows, cfgs = [], []
    for i, dev in enumerate(devices):
        name = resolve_device(dev, conventions).name
        for stage in ("prefill", "decode"):
            for b in batches:
                for s in seq_lens:
                    for j, label in enumerate(bits):
                        w, a_ = (int(x) for x in label[1:].split("A"))
                        an = analyze(model, dev, stage=stage, batch=b, seq_len=s, w_bits=w, a_bits=a_,
                                     conventions=conventions, flash_attention=flash_attention, check_context=False)
                        p = _ops_points(an)
                        code = _code(i, stage, b, s, j)
                        cfgs.append({"c": code, "device": name, "stage": stage, "batch": b, "seq_len": s,
                                     "bits": label, "ms": round(an.time_s * 1e3, 4)})
                        rows.append(pd.DataFrame({
                            "c": code, "op": p.label.to_numpy(),
                            "x": [float(f"{v:.3g}") for v in p.intensity],
                            "y": [float(f"{v:.3g}") for v in p.tflop_s],
                            "ly": [float(f"{v:.3g}") for v in p.label_y],
                            "b": p.bound.str[0].to_numpy(),
                            "s": [round(v, 1) for v in p.time_share_pct]}))
    return pd.concat(rows, ignore_index=True), pd.DataFrame(cfgs)


def _code(device_index, stage, batch, seq_len, bits_index) -> str:
    return f"{device_index}{stage[0]}{batch}_{seq_len}_{bits_index}"


def operator_roofline_explorer_chart(grid: tuple[pd.DataFrame, pd.DataFrame], *, width: int = 480,
                                     height: int = 320) -> alt.LayerChart:
    """The operators of a model on the roofline, with dropdowns for device, stage, batch, sequence length and
    bits that work in the static page (Altair parameters over :func:`operator_grid`'s precomputed grid).
    Introduced in Chapter 2."""
    ops, cfgs = grid
    devices = list(dict.fromkeys(cfgs.device))
    bits = list(dict.fromkeys(cfgs.bits))
    batches = sorted({int(b) for b in cfgs.batch})
    seqs = sorted({int(s) for s in cfgs.seq_len})
    params = [
        alt.param(name="dev", value=0, bind=alt.binding_select(
            options=list(range(len(devices))), labels=[resolve_device(d).display_name for d in devices],
            name="device ")),
        alt.param(name="stage", value="d", bind=alt.binding_radio(options=["p", "d"], labels=["prefill", "decode"],
                                                                  name="stage ")),
        alt.param(name="batch", value=batches[0], bind=alt.binding_select(options=batches, name="batch ")),
        alt.param(name="seq", value=seqs[0], bind=alt.binding_select(options=seqs, name="sequence length ")),
        alt.param(name="bits", value=0, bind=alt.binding_select(options=list(range(len(bits))), labels=bits,
                                                                name="bits ")),
    ]
    selected = "datum.c == dev + stage + batch + '_' + seq + '_' + bits"
    lo = 10.0 ** np.floor(np.log10(max(ops.x.min() / 2, 1e-2)))
    dtypes = ["fp32", "fp16", "int8", "int4"]
    lines = []
    for i, d in enumerate(devices):
        dev = resolve_device(d)
        use = [dt for dt in dtypes if dt in dev.peaks]
        hi_d = max(ops.x.max() * 2, 2 * dev.ridge_point(use[-1]))
        ln = roofline_lines([(dev, dt, dt.upper()) for dt in use], x_domain=[lo, hi_d])
        lines.append(ln[["label", "intensity", "tflop_s", "ridge"]].assign(dev=i))
    lines = pd.concat(lines, ignore_index=True)
    hi = float(lines.intensity.max())
    x_ax = alt.Axis(title=_X, labelExpr=_DECADES)
    y_ax = alt.Axis(title=_Y, labelExpr=_DECADES)
    x_scale = alt.Scale(type="log", domain=[lo, hi])
    y_scale = alt.Scale(type="log", domain=[1e-3, float(lines.tflop_s.max()) * 2])
    roof = alt.Chart(lines).mark_line(strokeWidth=2).encode(
        x=alt.X("intensity:Q", scale=x_scale, axis=x_ax), y=alt.Y("tflop_s:Q", scale=y_scale, axis=y_ax),
        color=alt.Color("label:N", title="roof", scale=color_scale(
            {k.upper(): v for k, v in PRECISION_COLORS.items()}, [d.upper() for d in dtypes])),
        tooltip=["label:N", alt.Tooltip("ridge:Q", format=".1f")]).transform_filter("datum.dev == dev")
    base = alt.Chart(ops).transform_filter(selected)
    x = alt.X("x:Q", scale=x_scale, axis=x_ax)
    y = alt.Y("y:Q", scale=y_scale, axis=y_ax)
    points = base.mark_circle(opacity=0.85, stroke="black", strokeWidth=0.5).encode(
        x=x, y=y, size=alt.Size("s:Q", title="% of time", scale=alt.Scale(range=[30, 600], domain=[0, 100])),
        fill=alt.Fill("b:N", title="bound", scale=alt.Scale(domain=["m", "c"], range=[
            BOUND_COLORS["memory"], BOUND_COLORS["compute"]]), legend=alt.Legend(labelExpr=(
                "datum.label == 'm' ? 'memory' : 'compute'"))),
        tooltip=[alt.Tooltip("op:N", title="operator"), alt.Tooltip("x:Q", title="FLOPs/byte"),
                 alt.Tooltip("y:Q", title="TFLOP/s"), alt.Tooltip("s:Q", title="% of time")])
    labels = base.mark_text(align="left", dx=7, dy=-4, fontSize=9, color="#333").encode(
        x=x, y=alt.Y("ly:Q", scale=y_scale, axis=y_ax), text="op:N")
    leaders = base.transform_filter("datum.ly > datum.y").mark_rule(color="#bbbbbb", strokeWidth=0.8).encode(
        x=x, y=y, y2="ly:Q")
    total = alt.Chart(cfgs[["c", "ms"]]).transform_filter(selected).transform_calculate(
        text="'one pass: ' + (datum.ms < 1000 ? format(datum.ms, ',.4~g') + ' ms' : format(datum.ms / 1000, ',.4~g') + ' s')").mark_text(
        align="left", x=8, y=12, fontWeight="bold").encode(text="text:N")
    chart = alt.layer(roof, leaders, points, labels, total).add_params(*params).properties(
        width=width, height=height, title="Every operator of one pass on the roofline (pick the setting below)")
    return _svg(chart.resolve_scale(color="independent").configure_legend(orient="bottom", direction="horizontal"))


def memory_bars_chart(df: pd.DataFrame, *, relative: bool = True, column: str = "stage", title: str = "",
                      width: int = 110, height: int = 180) -> alt.FacetChart:
    """Stacked memory bars (weights, KV cache, temporary activations) per setting, one panel per (batch,
    sequence) group: the survey's Figs 7 and 11 [Yuan et al. 2024]. ``df`` comes from
    ``figure7_data``/``figure11_data``. Introduced in Chapter 2."""
    df = df.assign(group="batch " + df.batch.astype(str) + ", seq " + df.seq_len.astype(str),
                   GB=df.bytes / 1e9)
    value = "relative:Q" if relative else "GB:Q"
    colors = {"Weight": "#4c78a8", "KV cache": "#f58518", "Tmp Act": "#54a24b"}
    chart = alt.Chart(df).mark_bar().encode(
        x=alt.X("setting:N", title=None, sort=list(dict.fromkeys(df.setting))),
        y=alt.Y(value, title="memory relative to FP16" if relative else "memory (GB)", stack="zero"),
        color=alt.Color("part:N", title=None, scale=color_scale(colors), sort=list(colors)),
        order=alt.Order("part_order:Q"),
        tooltip=["setting:N", "part:N", alt.Tooltip("GB:Q", format=".3f"), alt.Tooltip("relative:Q", format=".3f")],
    ).transform_calculate(part_order="indexof(['Weight', 'KV cache', 'Tmp Act'], datum.part)").properties(
        width=width, height=height)
    facet = chart.facet(column=alt.Column("group:N", title=None, sort=list(dict.fromkeys(df.group))),
                        row=alt.Row(f"{column}:N", title=None) if df[column].nunique() > 1 else alt.Undefined)
    return _svg(facet.properties(title=title))


def time_lines_chart(df: pd.DataFrame, x: str, y: str = "time_s", color: str = "setting", *, log_x: bool = False,
                     title: str = "", x_title: str | None = None, y_title: str = "time (s)", width: int = 420,
                     height: int = 260) -> alt.Chart:
    """Lines of ``y`` versus ``x``, one per ``color`` value in the book's precision palette: the survey's Figs 8
    and 9 [Yuan et al. 2024]. Introduced in Chapter 2."""
    order = list(dict.fromkeys(df[color]))
    palette = {s: PRECISION_COLORS.get(str(s).lower(), "#333333") for s in order}
    df = df[[x, y, color]].assign(**{y: df[y].map(lambda v: float(f"{v:.4g}"))})  # only what is drawn
    chart = alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X(f"{x}:Q", title=x_title or x, scale=alt.Scale(type="log", base=2) if log_x else alt.Undefined),
        y=alt.Y(f"{y}:Q", title=y_title),
        color=alt.Color(f"{color}:N", title=None, scale=color_scale(palette, order), sort=order),
        tooltip=[f"{color}:N", f"{x}:Q", alt.Tooltip(f"{y}:Q", format=".4~g")])
    return _svg(chart.properties(width=width, height=height, title=title))


def serving_chart(df: pd.DataFrame, *, memory_limit_gb: float | None = 48.0, title: str = "",
                  width: int = 420, height: int = 150) -> alt.VConcatChart:
    """Throughput, latency and memory versus batch, one line per sequence length (the survey's Fig. 19).

    ``df`` comes from ``figure19_data``; with several devices, a dropdown (working in the static page) picks
    one. A dashed rule marks the device memory (``memory_limit_gb``, or each device's own with several).
    Introduced in Chapter 2."""
    devices = list(dict.fromkeys(df.device))
    param = None
    fields = ["throughput_tokens_per_s", "latency_s", "memory_GB"]
    df = df[["device", "batch", "seq_len", *fields]].copy()
    for f in fields:
        df[f] = df[f].map(lambda v: float(f"{v:.4g}"))
    base = alt.Chart(df)
    if len(devices) > 1:
        param = alt.param(name="serving_device", value=devices[0], bind=alt.binding_select(
            options=devices, labels=[resolve_device(d).display_name for d in devices], name="device "))
        base = base.transform_filter(alt.datum.device == param)
    color = alt.Color("seq_len:O", title="sequence length", scale=alt.Scale(scheme="viridis"))
    x = alt.X("batch:Q", title="batch size")
    panels = []
    for field, ytitle in (("throughput_tokens_per_s", "throughput (tokens/s)"), ("latency_s", "latency per step (s)"),
                          ("memory_GB", "memory (GB)")):
        line = base.mark_line().encode(x=x, y=alt.Y(f"{field}:Q", title=ytitle), color=color,
                                       tooltip=["seq_len:O", "batch:Q", alt.Tooltip(f"{field}:Q", format=".4~g")])
        if field == "memory_GB":
            if len(devices) > 1:
                caps = pd.DataFrame({"device": devices, "GB": [resolve_device(d).memory_bytes / 1e9 for d in devices]})
                rule = alt.Chart(caps).transform_filter(alt.datum.device == param).mark_rule(
                    strokeDash=[6, 4], color="black").encode(y="GB:Q")
                line = alt.layer(line, rule)
            elif memory_limit_gb:
                rule = alt.Chart(pd.DataFrame({"GB": [memory_limit_gb]})).mark_rule(
                    strokeDash=[6, 4], color="black").encode(y="GB:Q")
                line = alt.layer(line, rule)
        panels.append(line.properties(width=width, height=height))
    chart = alt.vconcat(*panels).properties(title=title)
    if param is not None:
        chart = chart.add_params(param)
    return _svg(chart)


def bandwidth_chart(df: pd.DataFrame, devices: pd.DataFrame | None = None, *, title: str = "",
                    width: int = 420, height: int = 260) -> alt.LayerChart:
    """Decode time versus memory bandwidth (the survey's Fig. 20, right), with real devices as labelled points
    when ``devices`` (columns ``device``, ``bandwidth_GB_s``, ``time_s``) is given. Introduced in Chapter 2."""
    x = alt.X("bandwidth_TB_s:Q", title="memory bandwidth (TB/s)")
    y = alt.Y("time_s:Q", title="decode time per token (s)")
    line = alt.Chart(df.assign(bandwidth_TB_s=df.bandwidth_GB_s / 1e3)).mark_line(point=True, color="#4c78a8").encode(
        x=x, y=y, tooltip=[alt.Tooltip("bandwidth_TB_s:Q", format=".2f"), alt.Tooltip("time_s:Q", format=".4~g")])
    layers = [line]
    if devices is not None:
        d = devices.sort_values("bandwidth_GB_s").assign(bandwidth_TB_s=devices.bandwidth_GB_s / 1e3)
        d["side"] = [i % 2 for i in range(len(d))]  # alternate labels above and below their points
        pts = alt.Chart(d).mark_point(filled=True, size=70, color=STAGE_COLORS["decode"]).encode(
            x=x, y=y, tooltip=["device:N", alt.Tooltip("bandwidth_TB_s:Q", format=".2f"),
                               alt.Tooltip("time_s:Q", format=".4~g")])
        text = alt.Chart(d).encode(x=x, y=y, text="device:N")
        layers += [pts, text.transform_filter("datum.side == 0").mark_text(
                       align="left", dx=5, dy=-9, fontSize=9, color="#333"),
                   text.transform_filter("datum.side == 1").mark_text(
                       align="left", dx=5, dy=12, fontSize=9, color="#333")]
    return _svg(alt.layer(*layers).properties(width=width, height=height, title=title))


def conventions_chart(exact: Analysis, paper: Analysis, *, title: str = "", width: int = 420) -> alt.Chart:
    """Time of each operator kind (all its instances) under the paper and the exact conventions, side by side.
    Introduced in Chapter 2."""
    rows = []
    for label, a in (("paper (LLM-Viewer)", paper), ("exact", exact)):
        for _, r in a.ops.iterrows():
            rows.append({"op": r.op, "conventions": label, "time_ms": 1e3 * r.total_time_s})
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(exact.ops.op.tolist() + paper.ops.op.tolist()))
    chart = alt.Chart(df).mark_bar().encode(
        y=alt.Y("op:N", sort=order, title=None), x=alt.X("time_ms:Q", title="time of all instances (ms)"),
        yOffset="conventions:N",
        color=alt.Color("conventions:N", title=None, scale=alt.Scale(
            domain=["paper (LLM-Viewer)", "exact"], range=["#bab0ac", "#4c78a8"]), sort=["paper (LLM-Viewer)", "exact"]),
        tooltip=["op:N", "conventions:N", alt.Tooltip("time_ms:Q", format=".4~g")])
    return _svg(chart.properties(width=width, height=alt.Step(16), title=title))


def flash_attention_chart(df: pd.DataFrame, *, title: str = "", width: int = 150, height: int = 160) -> alt.FacetChart:
    """Reduction (%) of memory access and time from FlashAttention per case and convention (the survey's
    Fig. 16) [Yuan et al. 2024; Dao et al. 2022]. ``df``: ``figure16_data`` outputs concatenated with a
    ``conventions`` column. Introduced in Chapter 2."""
    long = df.melt(id_vars=["stage", "case", "conventions"],
                   value_vars=["memory_access_reduction_pct", "time_reduction_pct"], var_name="what",
                   value_name="reduction_pct")
    long["what"] = long["what"].map({"memory_access_reduction_pct": "memory access", "time_reduction_pct": "time"})
    chart = alt.Chart(long).mark_bar().encode(
        x=alt.X("case:N", title=None, sort=list(dict.fromkeys(df.case))),
        xOffset="what:N", y=alt.Y("reduction_pct:Q", title="reduction (%)"),
        color=alt.Color("what:N", title=None, scale=alt.Scale(range=["#f58518", "#4c78a8"])),
        tooltip=["conventions:N", "stage:N", "case:N", "what:N", alt.Tooltip("reduction_pct:Q", format=".1f")],
    ).properties(width=width, height=height)
    return _svg(chart.facet(column=alt.Column("conventions:N", title=None, sort=list(dict.fromkeys(df.conventions))),
                            row=alt.Row("stage:N", title=None)).properties(title=title))


def devices_decode_table(model: str, devices: Sequence[str | Device], **kw) -> pd.DataFrame:
    """Decode time per token of ``model`` on each device (exact convention): for Fig. 20's real-device points.
    Introduced in Chapter 2."""
    rows = []
    for d in devices:
        a = analyze(model, d, stage="decode", **kw)
        rows.append({"device": a.device.display_name, "bandwidth_GB_s": a.device.bandwidth / 1e9,
                     "time_s": a.time_s})
    return pd.DataFrame(rows)


def decode_intensity_chart(df: pd.DataFrame, ridge: float | None = None, *, title: str = "", width: int = 420,
                           height: int = 260) -> alt.LayerChart:
    """Arithmetic intensity of decode operators versus batch (log–log), with the device's ridge point as a
    dashed line: ``df`` from ``survey.decode_intensity_table``. Introduced in Chapter 2."""
    x = alt.X("batch:Q", scale=alt.Scale(type="log", base=2), title="batch size (sequences)")
    y = alt.Y("intensity:Q", scale=alt.Scale(type="log"), title=_X, axis=alt.Axis(labelExpr=_DECADES))
    lines = alt.Chart(df).mark_line(point=True).encode(
        x=x, y=y, color=alt.Color("op:N", title="operator", scale=alt.Scale(scheme="tableau10")),
        tooltip=["op:N", "batch:Q", alt.Tooltip("intensity:Q", format=".3~g"), "bound:N"])
    layers = [lines]
    if ridge:
        rule = alt.Chart(pd.DataFrame({"ridge": [ridge], "label": [f"ridge point {ridge:.0f}"]}))
        layers += [rule.mark_rule(strokeDash=[6, 4], color="black").encode(y="ridge:Q"),
                   rule.mark_text(align="left", x=4, dy=-6, fontSize=10).encode(y="ridge:Q", text="label:N")]
    return _svg(alt.layer(*layers).properties(width=width, height=height, title=title))
