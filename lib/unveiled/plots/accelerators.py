"""Charts of new hardware (Chapter 10): the survey's Fig. 20 (left), processing in memory placed on the roofline,
and decode time per device and number format with the roof that binds (a static explorer).

Every number drawn comes from :mod:`unveiled.accelerators` and the analyzer. Fig. 20's right panel is Chapter
2's :func:`unveiled.plots.inference.bandwidth_chart`.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from ..accelerators import figure20_left_data, pim_speedup
from .roofline import roofline_chart
from .style import BOUND_COLORS, color_scale

__all__ = ["decode_explorer_chart", "figure20_left_chart", "pim_chart"]

_SVG = {"embedOptions": {"renderer": "svg"}}
_FMT = "format(datum.value, '~g')"
PLACEMENT_COLORS = {"PIM": "#d62728", "host": "#1f77b4"}


def _svg(chart):
    return chart.properties(usermeta=_SVG)


def figure20_left_chart(device: str = "a6000", factor: float = 3.0, intensity: float = 50.0, *, log: bool = False,
                        title: str = "", width: int = 440, height: int = 280) -> alt.LayerChart:
    """The survey's Fig. 20 (left): the FP16 roofline at the device's bandwidth and at ``factor`` times it, an
    operator of ``intensity`` ops/byte marked on both (LLM-Viewer's A6000 numbers by default, linear axes as in
    the survey). Introduced in Chapter 10."""
    lines, points = figure20_left_data(device, factor, intensity)
    ridge = max(d.ridge_point("fp16") for d, _, _ in lines)
    x_domain = [0.0, 1.5 * ridge] if not log else None
    return roofline_chart(lines, points, log=log, x_domain=x_domain, title=title, width=width, height=height)


def pim_chart(table: pd.DataFrame, *, title: str = "", height: int | None = None) -> alt.LayerChart:
    """Speed-up of each decode operator when it runs inside PIM memory rather than on the host (log x), coloured
    by where it runs faster, next to the closed-form curve of speed-up against arithmetic intensity.

    ``table`` from :func:`unveiled.accelerators.pim_decode_table`. Introduced in Chapter 10."""
    d = table[["op", "intensity", "speedup", "placement"]].copy()
    d = d[d["intensity"] > 0]
    d["speedup"] = d["speedup"].map(lambda v: float(f"{v:.4g}"))
    d["intensity"] = d["intensity"].map(lambda v: float(f"{v:.4g}"))
    lo, hi = float(d["intensity"].min()) / 2, max(float(d["intensity"].max()) * 2, 64.0)
    xs = np.geomspace(lo, hi, 60)
    curve = pd.DataFrame({"intensity": xs, "speedup": pim_speedup(xs, table.attrs.get("pim", "hbm-pim-cube"),
                                                                 interface_gb_s=table.attrs.get("interface_gb_s",
                                                                                                307.2))})
    x = alt.X("intensity:Q", scale=alt.Scale(type="log", domain=[lo, hi]), title="arithmetic intensity (FLOP/byte)",
              axis=alt.Axis(labelExpr=_FMT))
    y = alt.Y("speedup:Q", scale=alt.Scale(type="log"), title="speed-up in memory (host time / PIM time)",
              axis=alt.Axis(labelExpr=_FMT))
    order = [p for p in PLACEMENT_COLORS if p in set(d["placement"])]
    line = alt.Chart(curve).mark_line(color="#555", strokeDash=[5, 3]).encode(x=x, y=y)
    one = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(color="black").encode(y="y:Q")
    pts = alt.Chart(d).mark_point(filled=True, size=70).encode(
        x=x, y=y, color=alt.Color("placement:N", sort=order, scale=color_scale(PLACEMENT_COLORS, order),
                                  title="runs faster on", legend=alt.Legend(orient="bottom")),
        tooltip=["op:N", "intensity:Q", "speedup:Q", "placement:N"])
    labels = d.assign(name=d["op"].where(~d["op"].str.endswith(("_proj", "lm_head")), "linear layers"),
                      ix=d["intensity"].map(lambda v: float(f"{v:.1g}")), sy=d["speedup"].map(lambda v: float(f"{v:.1g}")))
    labels = (labels.groupby(["ix", "sy"], sort=False)
              .agg(intensity=("intensity", "median"), speedup=("speedup", "median"),
                   op=("name", lambda n: ", ".join(dict.fromkeys(n))))
              .reset_index(drop=True))
    # Labels point into the plot (left of points in its right half) and list one operator per line, so that
    # no label reaches past a phone's column.
    middle = float(np.sqrt(lo * hi))
    texts = [alt.Chart(labels[side]).mark_text(align=align, dx=dx, dy=-6, fontSize=9, color="#333", lineBreak=", ")
             .encode(x=x, y=y, text="op:N")
             for side, align, dx in ((labels["intensity"] <= middle, "left", 6), (labels["intensity"] > middle,
                                                                                  "right", -6))
             if side.any()]
    return _svg(alt.layer(line, one, pts, *texts).properties(width="container", height=height or 280, title=title))


def decode_explorer_chart(grid: pd.DataFrame, *, device: str | None = None, fmt: str | None = None,
                          title: str = "", height: int = 260) -> alt.VConcatChart:
    """A static-page explorer: pick a device, a number format, a batch and a sequence length (widgets bound to
    Altair parameters); bars show the decode step's time split by the roof that binds each operator, and a line
    of text says the total, the compute roof in use and whether the format is native or storage-only.

    ``grid`` has one row per (device, format, batch, seq_len, bound) with ``time_ms`` and the per-setting
    columns ``total_ms``, ``compute_dtype``, ``support`` (from the format-aware analyzer). Introduced in
    Chapter 10."""
    devices = list(dict.fromkeys(grid["device"]))
    formats = list(dict.fromkeys(grid["format"]))
    batches = sorted(set(int(b) for b in grid["batch"]))
    seqs = sorted(set(int(s) for s in grid["seq_len"]))
    p_dev = alt.param("device", value=device or devices[0],
                      bind=alt.binding_select(options=devices, name="device "))
    p_fmt = alt.param("fmt", value=fmt or formats[0], bind=alt.binding_select(options=formats, name="format "))
    p_b = alt.param("batch", value=batches[0], bind=alt.binding_select(options=batches, name="batch "))
    p_s = alt.param("seq", value=seqs[len(seqs) // 2], bind=alt.binding_select(options=seqs, name="sequence length "))
    sel = ("datum.device == device && datum.format == fmt && datum.batch == batch && datum.seq_len == seq")
    base = alt.Chart(grid).transform_filter(sel)
    bars = base.mark_bar().encode(
        y=alt.Y("bound:N", title=None, sort=["memory", "compute"]),
        x=alt.X("time_ms:Q", title="decode step time (ms)"),
        color=alt.Color("bound:N", scale=color_scale(BOUND_COLORS, ["memory", "compute"]), legend=None),
        tooltip=["device:N", "format:N", "batch:Q", "seq_len:Q", "bound:N", alt.Tooltip("time_ms:Q", format=".4g")])
    text = base.transform_filter("datum.bound == 'memory'").transform_calculate(
        line="format(datum.total_ms, '.3~g') + ' ms per step · ' + format(datum.tokens_per_s, ',.0f') + "
             "' tokens/s|compute roof ' + upper(datum.compute_dtype) + ' (' + datum.support + ')'"
    ).mark_text(align="left", baseline="top", fontSize=12, x=0, y=0, lineBreak="|").encode(text="line:N")
    # Fixed widths that fit the page column; the book's chart fitting narrows them on a phone.
    chart = alt.vconcat(bars.properties(width=330, height=90), text.properties(width=330, height=36))
    return _svg(chart.add_params(p_dev, p_fmt, p_b, p_s).properties(title=title))
