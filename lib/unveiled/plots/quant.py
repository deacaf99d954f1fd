"""Charts of quantization (Chapter 3): error and perplexity versus bits, granularity and method, model size,
the survey's Fig. 10 timeline, activation outliers, measured decode speed next to the roofline, and the
static-page trade-off explorer.

Every number drawn comes from :mod:`unveiled.quant` or :mod:`unveiled.analyzer`. The survey's Figs 7–9 and 11
reuse Chapter 2's charts (:mod:`unveiled.plots.inference`), so the same colours mean the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from ..analyzer.analysis import resolve_device
from ..analyzer.sweep import sweep
from ..hardware import Device
from .style import BOUND_COLORS, PRECISION_COLORS, color_scale, csv_data, legible_scale

__all__ = [
    "activation_profile_chart",
    "decode_speed_chart",
    "error_vs_bits_chart",
    "gptq_layers_chart",
    "methods_timeline_chart",
    "perplexity_bars_chart",
    "perplexity_vs_bits_chart",
    "size_vs_perplexity_chart",
    "tradeoff_explorer_chart",
    "tradeoff_grid",
]

_SVG = {"embedOptions": {"renderer": "svg"}}
_FMT = "format(datum.value, '~g')"
GRANULARITY_COLORS = {"per-tensor": "#7f7f7f", "tensor": "#7f7f7f", "channel": "#1f77b4", "per-channel": "#1f77b4",
                      "g128": "#9467bd", "g64": "#ff7f0e", "g32": "#2ca02c", "g16": "#d62728"}
METHOD_COLORS = {"RTN": "#7f7f7f", "GPTQ": "#1f77b4", "AWQ": "#ff7f0e"}
CLASS_COLORS = {"PTQ": "#4c78a8", "QAT": "#2ca02c", "Q-PEFT": "#d62728"}


def _svg(chart):
    return chart.properties(usermeta=_SVG)


def _round(df: pd.DataFrame, cols: Sequence[str], digits: int = 4) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        out[c] = out[c].map(lambda v: float(f"{v:.{digits}g}") if pd.notna(v) else v)
    return out


def error_vs_bits_chart(df: pd.DataFrame, *, title: str = "", width: int = 380, height: int = 240) -> alt.Chart:
    """Mean squared quantization error versus bits, one line per granularity (log y).

    ``df`` has columns ``bits``, ``granularity``, ``mse`` (e.g. from :func:`unveiled.quant.error_table`).
    Introduced in Chapter 3."""
    order = list(dict.fromkeys(df["granularity"]))
    chart = alt.Chart(_round(df[["bits", "granularity", "mse"]], ["mse"])).mark_line(point=True).encode(
        x=alt.X("bits:O", title="bits per weight (codes only)"),
        y=alt.Y("mse:Q", scale=alt.Scale(type="log"), title="mean squared error", axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color("granularity:N", title="granularity", sort=order,
                        scale=color_scale(GRANULARITY_COLORS, order)),
        tooltip=["granularity:N", "bits:O", alt.Tooltip("mse:Q", format=".3g")])
    return _svg(chart.properties(width=width, height=height, title=title))


def perplexity_vs_bits_chart(df: pd.DataFrame, *, baseline: float | None = None, title: str = "",
                             width: int = 380, height: int = 260) -> alt.LayerChart:
    """Perplexity versus weight bits, one line per granularity, log y, with the floating-point baseline.

    ``df`` is a cached RTN table (columns ``w_bits``, ``granularity``, ``perplexity``, ``size_bytes``,
    ``label``). Introduced in Chapter 3."""
    d = df[df["method"] == "rtn"].copy()
    d = d[(d["zero_point"] == "integer") & (d["symmetric"] == False)]  # noqa: E712 (pandas column)
    d["size_MB"] = d["size_bytes"] / 1e6
    d = _round(d[["w_bits", "granularity", "perplexity", "size_MB", "label"]], ["perplexity", "size_MB"])
    order = list(dict.fromkeys(d["granularity"]))
    lines = alt.Chart(d).mark_line(point=alt.OverlayMarkDef(size=40)).encode(
        x=alt.X("w_bits:O", title="weight bits", sort="descending"),
        y=alt.Y("perplexity:Q", scale=alt.Scale(type="log"), title="perplexity (log)", axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color("granularity:N", sort=order, scale=color_scale(GRANULARITY_COLORS, order)),
        tooltip=["label:N", alt.Tooltip("perplexity:Q", format=".4g"), alt.Tooltip("size_MB:Q", format=".1f")])
    layers = [lines]
    if baseline is not None:
        layers.append(alt.Chart(pd.DataFrame({"y": [round(baseline, 3)]})).mark_rule(strokeDash=[4, 3]).encode(
            y="y:Q", tooltip=[alt.Tooltip("y:Q", title="floating point")]))
    return _svg(alt.layer(*layers).properties(width=width, height=height, title=title))


def perplexity_bars_chart(df: pd.DataFrame, *, color: str = "method", baseline: float | None = None,
                          title: str = "", width: int = 380, palette: dict[str, str] | None = None) -> alt.LayerChart:
    """Perplexity per recipe as a dot on a log axis, labelled with its value, coloured by ``color``; a dashed
    rule at the baseline.

    Dots, not bars: a bar's length starts at zero, which a log axis cannot show (Vega then draws nothing).
    Introduced in Chapter 3."""
    d = df.copy()
    d["size_MB"] = d["size_bytes"] / 1e6
    d = _round(d[["label", color, "perplexity", "size_MB"]], ["perplexity", "size_MB"])
    d = d[d["perplexity"] > 0]
    order = list(dict.fromkeys(d[color]))
    pal = palette or {m: c for m, c in zip(order, ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                                    "#9467bd", "#8c564b"], strict=False)}
    lower = {k.lower(): v for k, v in pal.items()}
    pal = {m: pal.get(m) or lower.get(str(m).lower(), "#333333") for m in order}
    lo, hi = float(d["perplexity"].min()), float(d["perplexity"].max())
    if baseline is not None:
        lo, hi = min(lo, baseline), max(hi, baseline)
    scale = alt.Scale(type="log", domain=[lo / 1.3, hi * 2.5])
    dots = alt.Chart(d).mark_circle(size=90, opacity=0.9).encode(
        y=alt.Y("label:N", sort=list(d["label"]), title=None),
        x=alt.X("perplexity:Q", scale=scale, title="perplexity (log)", axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color(f"{color}:N", title=color, sort=order, scale=color_scale(pal, order)),
        tooltip=["label:N", alt.Tooltip("perplexity:Q", format=".4g"), alt.Tooltip("size_MB:Q", format=".1f")])
    # value labels beside their dot, on the side with room (left of the dots in the upper part of the axis)
    span = math.log10(hi * 2.5) - math.log10(lo / 1.3)
    d["side"] = ["left" if (math.log10(v) - math.log10(lo / 1.3)) / span > 0.6 else "right" for v in d["perplexity"]]
    texts = [alt.Chart(d[d["side"] == side]).mark_text(align="left" if side == "right" else "right",
                                                        dx=8 if side == "right" else -8, fontSize=10).encode(
        y=alt.Y("label:N", sort=list(d["label"]), title=None), x=alt.X("perplexity:Q", scale=scale),
        text=alt.Text("perplexity:Q", format=",.3~r"), color=alt.value("#333"))
        for side in ("right", "left") if (d["side"] == side).any()]
    layers = [dots, *texts]
    if baseline is not None:
        layers.insert(0, alt.Chart(pd.DataFrame({"x": [round(baseline, 3)]})).mark_rule(
            strokeDash=[4, 3], color="#555").encode(x=alt.X("x:Q", scale=scale)))
    return _svg(alt.layer(*layers).properties(width=width, height=max(120, 18 * len(d)), title=title))


def size_vs_perplexity_chart(df: pd.DataFrame, *, color: str = "granularity", title: str = "", width: int = 380,
                             height: int = 260) -> alt.Chart:
    """Perplexity against the size of the packed checkpoint, one point per recipe (the size/quality trade-off).

    Introduced in Chapter 3."""
    d = df.copy()
    d["size_MB"] = d["size_bytes"] / 1e6
    d[color] = d[color].fillna("").astype(str).replace("", "floating point")
    d = _round(d[["label", color, "perplexity", "size_MB"]], ["perplexity", "size_MB"])
    order = list(dict.fromkeys(d[color]))
    chart = alt.Chart(d).mark_circle(size=80, opacity=0.85).encode(
        x=alt.X("size_MB:Q", title="checkpoint size (MB, packed safetensors)"),
        y=alt.Y("perplexity:Q", scale=alt.Scale(type="log"), title="perplexity (log)", axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color(f"{color}:N", sort=order, scale=color_scale({**GRANULARITY_COLORS, "floating point": "#000"},
                                                                    order)),
        tooltip=["label:N", alt.Tooltip("size_MB:Q", format=".1f"), alt.Tooltip("perplexity:Q", format=".4g")])
    return _svg(chart.properties(width=width, height=height, title=title))


def methods_timeline_chart(methods: pd.DataFrame, *, title: str = "", width: int = 720) -> alt.LayerChart:
    """The survey's Fig. 10: methods by month, coloured PTQ / QAT / Q-PEFT; the three boxed in the figure in bold.

    ``methods`` comes from :func:`unveiled.quant.quant_methods`. Introduced in Chapter 3."""
    d = methods.copy()
    d["month"] = d["date"].dt.strftime("%Y-%m")
    d["slot"] = d.groupby("month").cumcount()
    d["weight"] = np.where(d["boxed"], "bold", "normal")
    d["short"] = d["method"].str.replace("Outlier Suppression", "Outlier Supp.", regex=False)
    d = d[["method", "short", "month", "slot", "figure_class", "family", "first_author", "year", "arxiv", "weight"]]
    months = sorted(d["month"].unique())
    base = alt.Chart(d).encode(
        x=alt.X("month:O", title=None, sort=months, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("slot:O", title=None, axis=None, sort="descending"),
        tooltip=["method:N", "first_author:N", "year:Q", "figure_class:N", "family:N", "arxiv:N"])
    band = width / max(1, len(months))
    boxes = base.mark_rect(cornerRadius=3, opacity=0.18, width=band - 4, height=14).encode(
        color=alt.Color("figure_class:N", title=None, scale=color_scale(CLASS_COLORS)))
    color = alt.Color("figure_class:N", scale=legible_scale(CLASS_COLORS), legend=None)  # text readable on white
    text = base.transform_filter("datum.weight == 'normal'").mark_text(fontSize=9).encode(text="short:N", color=color)
    bold = base.transform_filter("datum.weight == 'bold'").mark_text(fontSize=9, fontWeight="bold").encode(
        text="short:N", color=color)
    height = 16 * (int(d["slot"].max()) + 1)
    return _svg(alt.layer(boxes, text, bold).properties(width=width, height=height, title=title)
                .resolve_scale(color="independent"))


def gptq_layers_chart(report: pd.DataFrame, *, title: str = "", width: int = 360, height: int = 300) -> alt.LayerChart:
    """GPTQ's layer error against round-to-nearest's, one point per linear layer (log–log; the diagonal is
    'no gain'). ``report`` comes from :func:`unveiled.quant.gptq_model`. Introduced in Chapter 3."""
    d = _round(report[["name", "layer", "block", "gptq_error", "rtn_error"]], ["gptq_error", "rtn_error"])
    lo = float(min(d["gptq_error"].min(), d["rtn_error"].min())) / 2
    hi = float(max(d["gptq_error"].max(), d["rtn_error"].max())) * 2
    scale = alt.Scale(type="log", domain=[lo, hi])
    pts = alt.Chart(d).mark_circle(size=40, opacity=0.8).encode(
        x=alt.X("rtn_error:Q", scale=scale, title="layer error, round-to-nearest", axis=alt.Axis(labelExpr=_FMT)),
        y=alt.Y("gptq_error:Q", scale=scale, title="layer error, GPTQ", axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color("layer:N", title="projection"),
        tooltip=["name:N", alt.Tooltip("rtn_error:Q", format=".3g"), alt.Tooltip("gptq_error:Q", format=".3g")])
    diag = alt.Chart(pd.DataFrame({"x": [lo, hi], "y": [lo, hi]})).mark_line(strokeDash=[4, 3], color="#999").encode(
        x=alt.X("x:Q", scale=scale), y=alt.Y("y:Q", scale=scale))
    return _svg(alt.layer(diag, pts).properties(width=width, height=height, title=title))


def activation_profile_chart(df: pd.DataFrame, *, title: str = "", width: int = 420, height: int = 110) -> alt.FacetChart:
    """Per-channel maximum |activation| of one layer's input, sorted, one panel per transform (log y, a step
    line: channels whose maximum is zero cannot be drawn on a log axis and are left out; beyond the first 64
    channels every 8th is drawn).

    ``df`` has columns ``transform``, ``rank`` (channel rank by magnitude) and ``absmax``. Introduced in
    Chapter 3."""
    d = _round(df[["transform", "rank", "absmax"]], ["absmax"], 3)
    order = list(dict.fromkeys(d["transform"]))
    d = d[d["absmax"] > 0]  # a log axis cannot show a zero (an area's baseline would be one)
    # The sorted maxima fall smoothly after the first outliers: every channel of the first 64, then every 8th
    # (and the last), which draws the same curve with a fifth of the points.
    last = d.groupby("transform")["rank"].transform("max")
    d = d[(d["rank"] < 64) | (d["rank"] % 8 == 0) | (d["rank"] == last)]
    chart = alt.Chart(csv_data(d)).mark_line(interpolate="step-after", strokeWidth=1.5).encode(
        x=alt.X("rank:Q", title="input channels, sorted by max |x|"),
        y=alt.Y("absmax:Q", scale=alt.Scale(type="log"), title="max |x|", axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color("transform:N", legend=None, sort=order),
        tooltip=["transform:N", "rank:Q", alt.Tooltip("absmax:Q", format=".3g")]).properties(width=width, height=height)
    return _svg(chart.facet(row=alt.Row("transform:N", title=None, sort=order)).properties(title=title))


def decode_speed_chart(df: pd.DataFrame, *, title: str = "", width: int = 360, height: int = 200) -> alt.Chart:
    """Measured and roofline-predicted time per decoded token, side by side for each weight format.

    ``df`` has columns ``kind``, ``measured_s`` and ``predicted_s``. Introduced in Chapter 3."""
    long = df.melt(id_vars=["kind"], value_vars=["measured_s", "predicted_s"], var_name="source", value_name="s")
    long["ms"] = (1e3 * long["s"]).map(lambda v: float(f"{v:.4g}"))
    long["source"] = long["source"].map({"measured_s": "measured", "predicted_s": "roofline"})
    order = list(dict.fromkeys(df["kind"]))
    chart = alt.Chart(long[["kind", "source", "ms"]]).mark_bar().encode(
        y=alt.Y("kind:N", sort=order, title=None),
        yOffset=alt.YOffset("source:N", sort=["measured", "roofline"]),
        x=alt.X("ms:Q", title="time per decoded token (ms)"),
        color=alt.Color("source:N", title=None, scale=alt.Scale(domain=["measured", "roofline"],
                                                                range=["#d62728", "#bbbbbb"])),
        tooltip=["kind:N", "source:N", alt.Tooltip("ms:Q", format=".3g")])
    return _svg(chart.properties(width=width, height=height, title=title))


# --------------------------------------------------------------------------------------------------
# The static-page trade-off explorer
# --------------------------------------------------------------------------------------------------

_BATCHES = (1, 4, 16, 64, 256)


def tradeoff_grid(model: str = "llama-2-13b", devices: Sequence[str | Device] = ("a6000", "h100-sxm"), *,
                  batches: Sequence[int] = _BATCHES, seq_lens: Sequence[int] = (512, 4096),
                  w_bits: Sequence[int] = (16, 8, 4, 2), a_bits: Sequence[int] = (16, 8, 4),
                  kv_bits: Sequence[int] = (16, 8, 4), conventions: str = "exact") -> tuple[pd.DataFrame, list[str]]:
    """Every combination of the explorer's controls, analysed (vectorised), in short columns for the page.

    Returns ``(grid, ops)``: one row per setting with ``d`` (device index), ``st`` (``p``/``d``), ``b``, ``s``,
    ``w``, ``a``, ``kv``, ``ms`` (time of the pass), ``wg``/``kg``/``ag`` (GB of weights, KV cache,
    activations), ``mb`` (% of the time in memory-bound operators) and ``bound`` (one letter per operator,
    ``m`` or ``c``, in the order of ``ops``). The defaults keep the page light (about 1,400 settings).
    Introduced in Chapter 3."""
    from ..analyzer.analysis import evaluate
    from ..analyzer.configs import model_spec
    from ..analyzer.costs import Setting

    spec = model_spec(model)
    frames = []
    ops_order: list[str] = []
    for i, dev in enumerate(devices):
        device = resolve_device(dev, conventions)
        for stage in ("prefill", "decode"):
            df = sweep(model, device, stage=stage, batch=list(batches), seq_len=list(seq_lens), w_bits=list(w_bits),
                       a_bits=list(a_bits), kv_bits=list(kv_bits), conventions=conventions, check_context=False)
            # Per-operator verdicts for the same grid, in one vectorised evaluation (same order as the sweep).
            grids = np.meshgrid(*(np.asarray(v, dtype=float) for v in (batches, seq_lens, w_bits, a_bits, kv_bits)),
                                indexing="ij")
            b, sq, w, a, kv = (g.ravel() for g in grids)
            ev = evaluate(spec, device, Setting(stage, b, sq, w, a, kv, False, conventions))
            ops_order = list(ev.names)
            letters = np.where(ev.compute_bound.reshape(len(ops_order), -1), "c", "m")
            bounds = ["".join(col) for col in letters.T]
            frames.append(pd.DataFrame({
                "d": i, "st": stage[0], "b": df["batch"], "s": df["seq_len"], "w": df["w_bits"], "a": df["a_bits"],
                "kv": df["kv_bits"], "ms": (1e3 * df["time_s"]).map(lambda v: float(f"{v:.4g}")),
                "wg": (df["weights_bytes"] / 1e9).round(3), "kg": (df["kv_cache_bytes"] / 1e9).round(3),
                "ag": (df["activation_bytes"] / 1e9).round(3), "mb": (100 * df["memory_bound_share"]).round(1),
                "bound": bounds}))
    return pd.concat(frames, ignore_index=True), ops_order


def tradeoff_explorer_chart(grid: tuple[pd.DataFrame, list[str]], devices: Sequence[str | Device],
                            *, model: str = "", width: int = 330, height: int = 220) -> alt.VConcatChart:
    """Quantization's hardware trade-offs with controls that work in the static page (no kernel).

    Controls: device, stage, sequence length, weight / activation / KV bits and batch. Panels: time of one pass
    versus batch for each weight width (the selected one bold, the selected batch marked), the memory of the
    selected setting against the device's capacity, and which operators are memory- or compute-bound.
    ``grid`` comes from :func:`tradeoff_grid`. Introduced in Chapter 3."""
    df, ops = grid
    devs = [resolve_device(d) for d in devices]
    def pick(name, values, label, labels=None):
        bind = alt.binding_select(options=list(values), name=label, **({"labels": labels} if labels else {}))
        return alt.param(name=name, value=values[0], bind=bind)

    params = [
        pick("dev", list(range(len(devs))), "device ", [d.display_name for d in devs]),
        alt.param(name="stg", value="d", bind=alt.binding_radio(options=["p", "d"], labels=["prefill", "decode"],
                                                                name="stage ")),
        pick("seq", sorted(df["s"].unique().tolist()), "sequence length (prompt or KV cache) "),
        pick("wb", sorted(df["w"].unique().tolist(), reverse=True), "weight bits "),
        pick("ab", sorted(df["a"].unique().tolist(), reverse=True), "activation bits "),
        pick("kvb", sorted(df["kv"].unique().tolist(), reverse=True), "KV bits "),
        pick("bat", sorted(df["b"].unique().tolist()), "batch "),
    ]
    common = "datum.d == dev && datum.st == stg && datum.s == seq && datum.a == ab && datum.kv == kvb"
    sel = common + " && datum.w == wb && datum.b == bat"
    w_order = [str(w) for w in sorted(df["w"].unique(), reverse=True)]
    w_colors = {str(w): PRECISION_COLORS.get("fp16" if w == 16 else f"w{w}", "#333") for w in df["w"].unique()}
    weights = df.drop_duplicates(["d", "w"])[["d", "w", "wg"]].assign(key=lambda t: t.d.astype(str) + "_" + t.w.astype(str))
    df = df.drop(columns=["wg"])
    tps = "(datum.st == 'p' ? datum.b * datum.s : datum.b) * 1000 / datum.ms"
    data = csv_data(df)  # about 1,400 settings: as CSV, half the bytes of JSON records
    base = alt.Chart(data).transform_filter(common).transform_calculate(wl="'' + datum.w", tps=tps)
    lines = base.mark_line(point=alt.OverlayMarkDef(size=18)).encode(
        x=alt.X("b:Q", scale=alt.Scale(type="log", base=2), title="batch", axis=alt.Axis(labelExpr=_FMT)),
        y=alt.Y("ms:Q", scale=alt.Scale(type="log"), title="time of one pass (ms)", axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color("wl:N", title="weight bits", sort=w_order, scale=color_scale(w_colors, w_order)),
        strokeWidth=alt.condition("datum.w == wb", alt.value(3.5), alt.value(1.2)),
        tooltip=[alt.Tooltip("wl:N", title="weight bits"), alt.Tooltip("b:Q", title="batch"),
                 alt.Tooltip("ms:Q", title="ms"), alt.Tooltip("tps:Q", title="tokens/s"),
                 alt.Tooltip("mb:Q", title="% time memory-bound")])
    marker = alt.Chart(data).transform_filter(sel).mark_rule(strokeDash=[4, 3], color="#555").encode(x="b:Q")
    time_panel = alt.layer(lines, marker).properties(width=width, height=height,
                                                     title="Time vs batch (bold: the chosen weight bits)")
    parts = ["weights", "KV cache", "activations"]
    mem = alt.Chart(data).transform_filter(sel).transform_calculate(key="datum.d + '_' + datum.w").transform_lookup(
        lookup="key", from_=alt.LookupData(weights, "key", ["wg"])).transform_fold(
        ["wg", "kg", "ag"], as_=["part", "GB"]).transform_calculate(
        part="datum.part == 'wg' ? 'weights' : datum.part == 'kg' ? 'KV cache' : 'activations'",
        rank="datum.part == 'weights' ? 0 : datum.part == 'KV cache' ? 1 : 2").mark_bar().encode(
        x=alt.X("sum(GB):Q", title="memory (GB)"), color=alt.Color("part:N", sort=parts, title=None, scale=color_scale(
            {"weights": "#4c78a8", "KV cache": "#f58518", "activations": "#54a24b"}, parts)),
        order=alt.Order("rank:Q"), tooltip=["part:N", alt.Tooltip("GB:Q", format=".3f")])
    caps = pd.DataFrame({"d": list(range(len(devs))), "cap": [d.memory_bytes / 1e9 if d.memory_bytes else None
                                                            for d in devs]})
    cap = alt.Chart(caps).transform_filter("datum.d == dev").mark_rule(color="#d62728", strokeDash=[4, 3]).encode(
        x="cap:Q", tooltip=[alt.Tooltip("cap:Q", title="device memory (GB)")])
    mem_panel = alt.layer(mem, cap).properties(width=width, height=50, title="Memory of the chosen setting")
    summary = alt.Chart(data).transform_filter(sel).transform_calculate(tps=tps).transform_calculate(
        text="'one pass: ' + format(datum.ms, ',.4~g') + ' ms, ' + format(datum.tps, ',.4~g') + ' tokens/s,\\n' + "
             "format(datum.mb, '.0f') + ' % of the time memory-bound'").mark_text(
        align="left", baseline="top", x=0, y=0, fontWeight="bold", lineBreak="\n").encode(
        text="text:N").properties(width=width, height=30)
    ops_js = "[" + ",".join(f"'{o}'" for o in ops) + "]"
    op_panel = alt.Chart(data).transform_filter(sel).transform_calculate(letters="split(datum.bound, '')").transform_flatten(
        ["letters"]).transform_window(i="row_number()").transform_calculate(
        op=f"{ops_js}[datum.i - 1]", verdict="datum.letters == 'm' ? 'memory' : 'compute'").mark_rect(
        stroke="white").encode(
        y=alt.Y("op:N", sort=ops, title=None), x=alt.value(0), x2=alt.value(90),
        color=alt.Color("verdict:N", title="bound", scale=color_scale(BOUND_COLORS, ["memory", "compute"])),
        tooltip=["op:N", "verdict:N"]).properties(width=90, height=14 * len(ops), title="Operators")
    left = alt.vconcat(summary, time_panel, mem_panel).resolve_scale(color="independent")
    title = f"Quantization trade-offs{' for ' + model if model else ''} (pick a setting below)"
    chart = alt.hconcat(left, op_panel).add_params(*params).properties(title=title)
    return _svg(chart.resolve_scale(color="independent"))

