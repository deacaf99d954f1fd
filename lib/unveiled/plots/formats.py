"""Charts of number formats (Chapter 10): the grids of FP8/FP6/FP4 next to integer grids, error and perplexity
against stored bits per weight, and a per-layer format choice.

Every number drawn comes from :mod:`unveiled.quant.formats` and the cached tables of
:mod:`unveiled.quant.format_experiments`. Charts take the page's width (``width="container"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

from ..quant.formats import ELEMENTS

__all__ = ["FAMILY_COLORS", "FORMAT_COLORS", "bits_quality_chart", "format_grid_chart", "layer_choice_chart"]

_SVG = {"embedOptions": {"renderer": "svg"}}
_FMT = "format(datum.value, '~g')"
#: One colour per family of formats (integer, minifloat with fp16 scales, block formats with shared scales).
FAMILY_COLORS = {"FP16": "#000000", "integer": "#2ca02c", "floating point": "#1f77b4",
                 "block FP (MX/NVFP4)": "#ff7f0e", "per-layer choice": "#d62728"}
#: One colour per format of the per-layer choice, cheapest (warm) to widest (grey).
FORMAT_COLORS = {"MXFP4": "#d62728", "NVFP4": "#ff7f0e", "MXFP6": "#bcbd22", "FP8 E4M3": "#9467bd",
                 "MXFP8": "#1f77b4", "BF16": "#7f7f7f"}


def _svg(chart):
    return chart.properties(usermeta=_SVG)


def _scale(mapping: dict[str, str], domain: Sequence[str]) -> alt.Scale:
    return alt.Scale(domain=list(domain), range=[mapping.get(d, "#333333") for d in domain])


def format_grid_chart(elements: Sequence[str] = ("fp8_e5m2", "fp8_e4m3", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1"),
                      integers: Sequence[int] = (8, 4), *, title: str = "", height: int | None = None) -> alt.Chart:
    """The positive values of each element format, scaled so that its largest value is 1, on a log axis; next to
    symmetric integer grids scaled the same way. Floats spread their values evenly per binade (range), integers
    evenly on a linear scale (precision near the top, nothing near zero). Introduced in Chapter 10."""
    rows = []
    for name in elements:
        e = ELEMENTS[name]
        g = e.grid()
        for v in g[g > 0].tolist():
            rows.append({"format": name.upper().replace("_", " "), "value": v / e.max_finite, "bits": e.bits})
    for b in integers:
        top = 2 ** (b - 1) - 1
        for q in range(1, top + 1):
            rows.append({"format": f"INT{b}", "value": q / top, "bits": b})
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df["format"]))
    chart = alt.Chart(df).mark_tick(thickness=1.5, size=14).encode(
        x=alt.X("value:Q", scale=alt.Scale(type="log"), title="representable value / largest value (log)",
                axis=alt.Axis(labelExpr=_FMT)),
        y=alt.Y("format:N", sort=order, title=None),
        color=alt.Color("bits:O", title="bits", scale=alt.Scale(scheme="viridis"),
                        legend=alt.Legend(orient="bottom")),
        tooltip=["format:N", alt.Tooltip("value:Q", format=".4g")])
    return _svg(chart.properties(width="container", height=height or 26 * len(order), title=title))


def bits_quality_chart(df: pd.DataFrame, *, y: str = "perplexity", x: str = "linear_bits",
                       baseline: float | None = None, log_y: bool = True, title: str = "",
                       height: int = 300) -> alt.LayerChart:
    """Quality against stored bits per weight (scales included), one point per format, coloured by family.

    ``df`` has ``label``, ``family``, the ``x`` and ``y`` columns (a cached format sweep, or an error table with
    ``bits_per_weight`` and ``mse``). A dashed rule marks ``baseline``. Introduced in Chapter 10."""
    d = df[["label", "family", x, y]].copy()
    d[y] = d[y].map(lambda v: float(f"{v:.5g}"))
    d[x] = d[x].round(3)
    order = [f for f in FAMILY_COLORS if f in set(d["family"])]
    values = list(d[y]) + ([baseline] if baseline is not None else [])
    lo, hi = min(values), max(values)
    domain = [lo / 1.1, hi * 1.1] if log_y else [lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)]
    enc_y = alt.Y(f"{y}:Q", title=y.replace("_", " ") + (" (log)" if log_y else ""),
                  scale=alt.Scale(type="log", domain=domain) if log_y else alt.Scale(domain=domain),
                  axis=alt.Axis(labelExpr=_FMT))
    enc_x = alt.X(f"{x}:Q", title="stored bits per weight (codes + scales)", scale=alt.Scale(zero=False))
    color = alt.Color("family:N", title=None, sort=order, scale=_scale(FAMILY_COLORS, order),
                      legend=alt.Legend(orient="bottom", columns=2))
    pts = alt.Chart(d).mark_point(filled=True, size=60).encode(
        x=enc_x, y=enc_y, color=color, shape=alt.Shape("family:N", sort=order, legend=None),
        tooltip=["label:N", "family:N", alt.Tooltip(f"{x}:Q", format=".3f"), alt.Tooltip(f"{y}:Q", format=".4g")])
    layers = [pts]
    if baseline is not None:
        layers.append(alt.Chart(pd.DataFrame({"b": [float(f"{baseline:.5g}")]})).mark_rule(
            strokeDash=[4, 3], color="black").encode(y="b:Q"))
    return _svg(alt.layer(*layers).properties(width="container", height=height, title=title))


def layer_choice_chart(choice: pd.DataFrame, *, title: str = "", height: int | None = None) -> alt.Chart:
    """The format chosen for each linear layer: blocks down, projection kinds across, one colour per format.

    ``choice`` from :func:`unveiled.quant.format_choice.choose_formats` (columns ``block``, ``kind``,
    ``format``, ``rel_error``). Introduced in Chapter 10."""
    kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    kinds = [k for k in kinds if k in set(choice["kind"])] + sorted(set(choice["kind"]) - set(kinds))
    order = [f for f in FORMAT_COLORS if f in set(choice["format"])]
    d = choice[["block", "kind", "format", "rel_error"]].copy()
    d["rel_error"] = d["rel_error"].map(lambda v: float(f"{v:.3g}"))
    chart = alt.Chart(d).mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("kind:N", sort=kinds, title=None, axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("block:O", title="block"),
        color=alt.Color("format:N", sort=order, scale=_scale(FORMAT_COLORS, order), title=None,
                        legend=alt.Legend(orient="bottom", columns=3)),
        tooltip=["block:O", "kind:N", "format:N", alt.Tooltip("rel_error:Q", format=".3g", title="relative error")])
    n = choice["block"].nunique()
    return _svg(chart.properties(width="container", height=height or max(160, 9 * n), title=title))
