"""Charts of the KV cache (Chapter 6): the memory wall, what a decode step reads, key outlier channels,
perplexity versus KV bits, block size versus sequences served, eviction policies, and the static trade-off
explorer.

Every number drawn comes from :mod:`unveiled.kvcache` or :mod:`unveiled.analyzer`; data are aggregated and
rounded before charting so the page stays light. KV bit widths use the book's precision palette.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from .style import PRECISION_COLORS, color_scale, csv_data

__all__ = [
    "KV_BIT_COLORS",
    "block_size_chart",
    "decode_traffic_chart",
    "eviction_chart",
    "explorer_chart",
    "key_outliers_chart",
    "kv_quant_chart",
    "memory_wall_chart",
]

_SVG = {"embedOptions": {"renderer": "svg"}}
_DECADES = "abs(log(datum.value) / log(10) - round(log(datum.value) / log(10))) < 1e-6 ? datum.label : ''"

#: Colour of each KV bit width (the book's precision palette).
KV_BIT_COLORS: dict[str, str] = {
    "16": PRECISION_COLORS["fp16"], "8": PRECISION_COLORS["int8"], "4": PRECISION_COLORS["int4"],
    "3": PRECISION_COLORS["int3"], "2": PRECISION_COLORS["int2"],
}


def _svg(chart):
    return chart.properties(usermeta=_SVG)


def _round(df: pd.DataFrame, cols, digits: int = 4) -> pd.DataFrame:
    df = df.copy()
    for c in cols:
        df[c] = df[c].map(lambda v: float(f"{v:.{digits}g}"))
    return df


def _log_x(field: str, title: str) -> alt.X:
    return alt.X(field, title=title, scale=alt.Scale(type="log", nice=False), axis=alt.Axis(labelExpr=_DECADES))


def memory_wall_chart(wall: pd.DataFrame, capacities: dict[str, float], *, title: str = "", width: int = 460,
                      height: int = 280) -> alt.LayerChart:
    """Weights + KV cache versus context length, one line per model, with device capacities as rules.

    ``wall`` comes from :func:`~unveiled.kvcache.memory_wall` (possibly several batches: a dropdown, working
    in the static page, picks one); ``capacities`` maps a device label to its memory in bytes. Log–log.
    Introduced in Chapter 6.
    """
    df = wall.assign(total_GB=wall.total_bytes / 1e9, kv_GB=wall.kv_bytes / 1e9, weights_GB=wall.weights_bytes / 1e9)
    df = _round(df[["model", "attention", "seq_len", "batch", "total_GB", "kv_GB", "weights_GB"]],
                ["total_GB", "kv_GB", "weights_GB"])
    base = alt.Chart(df)
    batches = sorted(df.batch.unique())
    if len(batches) > 1:
        param = alt.param(name="wall_batch", value=int(batches[0]), bind=alt.binding_select(
            options=[int(b) for b in batches], name="batch "))
        base = base.transform_filter(alt.datum.batch == param).add_params(param)
    order = list(dict.fromkeys(df.model))
    lines = base.mark_line(point=alt.OverlayMarkDef(size=14)).encode(
        x=_log_x("seq_len:Q", "context length (tokens per sequence)"),
        y=alt.Y("total_GB:Q", title="weights + KV cache (GB)", scale=alt.Scale(type="log"),
                axis=alt.Axis(labelExpr=_DECADES)),
        color=alt.Color("model:N", title=None, sort=order),
        tooltip=["model:N", "attention:N", "batch:Q", "seq_len:Q", alt.Tooltip("weights_GB:Q", format=".3~g"),
                 alt.Tooltip("kv_GB:Q", format=".3~g"), alt.Tooltip("total_GB:Q", format=".3~g")])
    caps = pd.DataFrame({"device": list(capacities), "GB": [v / 1e9 for v in capacities.values()]})
    rules = alt.Chart(caps).mark_rule(strokeDash=[4, 3], color="#555").encode(y="GB:Q")
    labels = alt.Chart(caps).mark_text(align="left", dx=4, dy=-6, fontSize=10, color="#555").encode(
        y="GB:Q", x=alt.value(2), text="device:N")
    return _svg(alt.layer(lines, rules, labels).properties(width=width, height=height, title=title))


def decode_traffic_chart(traffic: pd.DataFrame, *, title: str = "", width: int = 270,
                         height: int = 200) -> alt.HConcatChart:
    """Share of a decode step's bytes that are KV cache, and the step's time, versus context length.

    ``traffic`` comes from :func:`~unveiled.kvcache.decode_traffic` with a ``label`` column naming each
    line (attention design and KV bits). Introduced in Chapter 6.
    """
    df = traffic.assign(kv_pct=100 * traffic.kv_share, time_ms=1e3 * traffic.time_s)
    df = _round(df[["label", "seq_len", "kv_pct", "time_ms"]], ["kv_pct", "time_ms"])
    order = list(dict.fromkeys(df.label))
    color = alt.Color("label:N", title=None, sort=order, legend=alt.Legend(orient="bottom", columns=3))
    x = _log_x("seq_len:Q", "context length (tokens)")
    share = alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=x, y=alt.Y("kv_pct:Q", title="KV share of bytes read (%)", scale=alt.Scale(domain=[0, 100])),
        color=color, tooltip=["label:N", "seq_len:Q", alt.Tooltip("kv_pct:Q", format=".3~g")])
    half = alt.Chart(pd.DataFrame({"y": [50]})).mark_rule(strokeDash=[4, 3], color="#888").encode(y="y:Q")
    time = alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=x, y=alt.Y("time_ms:Q", title="decode step (ms, roofline)"), color=color,
        tooltip=["label:N", "seq_len:Q", alt.Tooltip("time_ms:Q", format=".3~g")])
    return _svg(alt.hconcat((share + half).properties(width=width, height=height),
                            time.properties(width=width, height=height)).properties(title=title))


def key_outliers_chart(stats: pd.DataFrame, layer: int, *, title: str = "", width: int = 160,
                       height: int = 130) -> alt.FacetChart:
    """Mean |key| and |value| per channel of one layer, one panel per key/value head and tensor.

    ``stats`` comes from :func:`~unveiled.kvcache.key_channel_stats`. Introduced in Chapter 6.
    """
    df = stats[stats.layer == layer]
    long = pd.concat([
        df.assign(tensor="keys", mean_abs=df.key_mean_abs, ratio=df.key_outlier_ratio),
        df.assign(tensor="values", mean_abs=df.value_mean_abs, ratio=df.value_outlier_ratio),
    ])[["tensor", "head", "channel", "mean_abs", "ratio"]]
    long = _round(long, ["mean_abs", "ratio"], 3)
    chart = alt.Chart(long).mark_bar(width=2).encode(
        x=alt.X("channel:Q", title="channel", scale=alt.Scale(domain=[0, int(long.channel.max()) + 1])),
        y=alt.Y("mean_abs:Q", title="mean |x| over tokens"),
        color=alt.Color("tensor:N", title=None, scale=color_scale({"keys": "#d62728", "values": "#1f77b4"}),
                        legend=None),
        tooltip=["tensor:N", "head:Q", "channel:Q", "mean_abs:Q", alt.Tooltip("ratio:Q", title="× median channel")],
    ).properties(width=width, height=height)
    return _svg(chart.facet(row=alt.Row("tensor:N", title=None), column=alt.Column("head:N", title="key/value head"))
                .resolve_scale(y="independent").properties(title=title))


def kv_quant_chart(sweep: pd.DataFrame, *, title: str = "", width: int = 420, height: int = 240) -> alt.LayerChart:
    """Perplexity versus KV bits, one line per quantization layout, the full-precision cache as a rule.

    ``sweep`` is the cached table ``kvcache.experiments.smollm2_kv_quant``. Log y. Introduced in Chapter 6.
    """
    q = sweep[sweep.scheme != "full precision"]
    base_ppl = float(sweep.loc[sweep.scheme == "full precision", "perplexity"].iloc[0])
    df = _round(q[["scheme", "kv_bits", "perplexity"]], ["perplexity"])
    order = list(dict.fromkeys(df.scheme))
    lo, hi = min(df.perplexity.min(), base_ppl), df.perplexity.max()
    lines = alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=30)).encode(
        x=alt.X("kv_bits:O", title="KV bits", sort="descending", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("perplexity:Q", title="perplexity (log scale)",
                scale=alt.Scale(type="log", nice=False, domain=[0.9 * lo, 1.1 * hi])),
        color=alt.Color("scheme:N", title=None, sort=order, legend=alt.Legend(orient="bottom", columns=2, labelLimit=320)),
        tooltip=["scheme:N", "kv_bits:O", alt.Tooltip("perplexity:Q", format=".4~g")])
    rule = alt.Chart(pd.DataFrame({"perplexity": [round(base_ppl, 3)], "label": ["full precision"]}))
    rule_line = rule.mark_rule(strokeDash=[4, 3], color="#333").encode(y="perplexity:Q", tooltip=["label:N", "perplexity:Q"])
    return _svg(alt.layer(lines, rule_line).properties(width=width, height=height, title=title))


def block_size_chart(sweep: pd.DataFrame, *, title: str = "", width: int = 380, height: int = 220) -> alt.LayerChart:
    """Sequences that fit versus paged block size, with the two contiguous layouts as labelled rules.

    ``sweep`` comes from :func:`~unveiled.kvcache.block_size_sweep`. Introduced in Chapter 6.
    """
    paged = sweep[sweep.layout == "paged"].assign(waste_pct=lambda d: 100 * d.waste_fraction)
    paged = _round(paged[["block_size", "sequences", "waste_pct"]], ["waste_pct"], 3)
    paged["block_size"] = paged.block_size.astype(int)
    bars = alt.Chart(paged).mark_bar(color="#4c78a8").encode(
        x=alt.X("block_size:O", title="block size (tokens)"),
        y=alt.Y("sequences:Q", title="sequences that fit"),
        tooltip=["block_size:O", "sequences:Q", alt.Tooltip("waste_pct:Q", title="wasted slots (%)")])
    other = sweep[sweep.layout != "paged"][["layout", "sequences"]]
    rules = alt.Chart(other).mark_rule(strokeDash=[4, 3]).encode(
        y="sequences:Q", color=alt.Color("layout:N", title="contiguous",
                                         scale=color_scale({"reserve-max": "#d62728", "reserve-exact": "#2ca02c"})),
        tooltip=["layout:N", "sequences:Q"])
    return _svg(alt.layer(bars, rules).properties(width=width, height=height, title=title))


def eviction_chart(curves: pd.DataFrame, *, title: str = "", width: int = 520, height: int = 240,
                   limit: float | None = None) -> alt.LayerChart:
    """Smoothed per-token loss versus position, one line per cache policy (long text, fixed budget).

    ``curves`` has columns ``policy``, ``position`` and ``nll`` (already smoothed and thinned); ``limit``
    draws a rule at the model's training context. Introduced in Chapter 6.
    """
    df = _round(curves[["policy", "position", "nll"]], ["nll"], 3)
    order = list(dict.fromkeys(df.policy))
    chart = alt.Chart(df).mark_line().encode(
        x=alt.X("position:Q", title="position in the stream (tokens)"),
        y=alt.Y("nll:Q", title="loss (nats/token, moving average)", scale=alt.Scale(zero=False)),
        color=alt.Color("policy:N", title=None, sort=order,
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=300)),
        tooltip=["policy:N", "position:Q", "nll:Q"])
    layers = [chart]
    if limit is not None:
        layers.append(alt.Chart(pd.DataFrame({"x": [limit]})).mark_rule(strokeDash=[4, 3], color="#888")
                      .encode(x="x:Q"))
    return _svg(alt.layer(*layers).properties(width=width, height=height, title=title))


def explorer_chart(grid: pd.DataFrame, *, width: int = 265, height: int = 220) -> alt.HConcatChart:
    """The static hardware trade-off explorer: pick a model, a device and a batch (widgets that work in the
    static page); see memory (weights + KV) against the device's capacity and the roofline decode time
    versus context length, one line per KV bit width. Filled points fit the device, hollow ones do not.

    ``grid`` comes from :func:`unveiled.explorers.kvcache.explorer_grid`; it is stored in the page with
    integer codes for model and device (names are restored in the browser) to keep the page light.
    Introduced in Chapter 6.
    """
    models = list(dict.fromkeys(grid.model))
    devices = list(dict.fromkeys(grid.device))
    labels = dict(zip(grid.device, grid.device_label, strict=False))
    caps = dict(zip(grid.device, grid.capacity_GB, strict=False))
    batches = sorted(int(b) for b in grid.batch.unique())
    df = pd.DataFrame({
        "m": grid.model.map({m: i for i, m in enumerate(models)}),
        "d": grid.device.map({d: i for i, d in enumerate(devices)}),
        "b": grid.batch.astype(int), "s": grid.seq_len.astype(int), "k": grid.kv_bits.astype(str),
        "mem": grid.memory_GB, "kv": grid.kv_pct, "t": grid.time_ms, "f": grid.fits.astype(bool),
    })
    df = _round(df, ["mem", "kv", "t"], 3)
    p_model = alt.param(name="kv_model", value=0,
                        bind=alt.binding_select(options=list(range(len(models))), labels=models, name="model "))
    p_device = alt.param(name="kv_device", value=0, bind=alt.binding_select(
        options=list(range(len(devices))), labels=[labels[d] for d in devices], name="device "))
    p_batch = alt.param(name="kv_batch", value=batches[0],
                        bind=alt.binding_select(options=batches, name="batch "))
    names = "[" + ",".join(repr(m) for m in models) + "]"
    dnames = "[" + ",".join(repr(labels[d]) for d in devices) + "]"
    base = alt.Chart(csv_data(df)).transform_filter(  # thousands of rows: CSV is half the bytes of JSON
        (alt.datum.m == p_model) & (alt.datum.d == p_device) & (alt.datum.b == p_batch)
    ).transform_calculate(model=f"{names}[datum.m]", device=f"{dnames}[datum.d]",
                          fits="datum.f ? 'yes' : 'no'")
    order = [b for b in ("16", "8", "4", "2") if b in set(df.k)]
    color = alt.Color("k:N", title="KV bits", scale=color_scale(KV_BIT_COLORS, order), sort=order,
                      legend=alt.Legend(orient="bottom", direction="horizontal"))
    x = _log_x("s:Q", "context length (tokens)")
    tip = ["model:N", "device:N", alt.Tooltip("b:Q", title="batch"), alt.Tooltip("s:Q", title="context"),
           alt.Tooltip("k:N", title="KV bits"), alt.Tooltip("mem:Q", title="memory (GB)"),
           alt.Tooltip("kv:Q", title="KV share of memory (%)"), alt.Tooltip("t:Q", title="decode step (ms)"),
           "fits:N"]
    panels = []
    for field, ytitle, ptitle in (("mem", "weights + KV cache (GB)", "memory (dashed: device capacity)"),
                                  ("t", "decode step, roofline (ms)", "decode step time")):
        line = base.mark_line().encode(x=x, y=alt.Y(f"{field}:Q", title=ytitle, scale=alt.Scale(type="log")),
                                       color=color)
        fit = base.transform_filter(alt.datum.f).mark_point(size=36, filled=True, opacity=1).encode(
            x=x, y=f"{field}:Q", color=color, tooltip=tip)
        no_fit = base.transform_filter(~alt.datum.f).mark_point(size=36, filled=False).encode(
            x=x, y=f"{field}:Q", color=color, tooltip=tip)
        layers = [line, fit, no_fit]
        if field == "mem":
            cap = pd.DataFrame({"d": list(range(len(devices))), "cap": [round(caps[d], 1) for d in devices]})
            layers.append(alt.Chart(cap).transform_filter(alt.datum.d == p_device)
                          .mark_rule(strokeDash=[4, 3], color="#333").encode(y="cap:Q"))
        panels.append(alt.layer(*layers).properties(width=width, height=height, title=ptitle))
    return _svg(alt.hconcat(*panels).add_params(p_model, p_device, p_batch))
