"""Charts of pruning, sparsity and low-rank factorization (Chapter 5).

Perplexity against the share of block parameters removed, per method; the static accuracy–speed frontier
explorer (controls bound to Altair parameters: they work in the static page); the predicted speedup of each
weight form over batch sizes and devices; the CPU's sparse-matmul break-even next to the roofline's; measured
decode speed of smaller models next to the prediction; and the published anchors next to SmolLM2. Every
number drawn comes from :mod:`unveiled.pruning` or :mod:`unveiled.analyzer`. Introduced in Chapter 5.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

from .style import color_scale

__all__ = [
    "METHOD_COLORS",
    "anchors_chart",
    "csr_break_even_chart",
    "decode_speed_chart",
    "forms_speedup_chart",
    "frontier_explorer_chart",
    "recovery_chart",
    "sparsity_curves_chart",
]

_SVG = {"embedOptions": {"renderer": "svg"}}
_FMT = "format(datum.value, '~g')"
#: One colour per pruning method, factorization or structured score, used in every chart of the chapter.
METHOD_COLORS = {"magnitude": "#7f7f7f", "wanda": "#ff7f0e", "sparsegpt": "#1f77b4", "activation": "#2ca02c",
                 "taylor": "#d62728", "svd": "#9467bd", "asvd": "#8c564b", "dense": "#000000"}
FORM_COLORS = {"50% unstructured, CSR int32": "#7f7f7f", "50% unstructured, bitmask": "#bcbd22", "2:4": "#1f77b4",
               "low rank, 50% of parameters": "#9467bd"}


def _svg(chart, description: str):
    return chart.properties(usermeta=_SVG, description=description)


def _log_scale(values) -> alt.Scale:
    """A log scale fitted to the data (no empty decades down to 1)."""
    v = pd.Series(values, dtype=float).dropna()
    v = v[v > 0]
    if v.empty:
        return alt.Scale(type="log")
    return alt.Scale(type="log", domain=[float(v.min()) / 1.08, float(v.max()) * 1.08], nice=False)


#: Solid for the first variant of each family, dashed for the second.
_DASHES = {"unstructured": [1, 0], "MLP channels": [1, 0], "1 KV group + MLP": [6, 3], "uniform ranks": [1, 0],
           "energy ranks": [6, 3], "pruned": [1, 0], "after LoRA": [6, 3]}


def _dash_scale(domain) -> alt.Scale:
    domain = [v for v in _DASHES if v in set(domain)]
    return alt.Scale(domain=domain, range=[_DASHES[v] for v in domain])


def _round(df: pd.DataFrame, cols: Sequence[str], digits: int = 4) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        out[c] = out[c].map(lambda v: float(f"{v:.{digits}g}") if pd.notna(v) else v)
    return out


def sparsity_curves_chart(sweep: pd.DataFrame, *, families: Sequence[str] = ("unstructured", "semi-structured"),
                          ood: bool = False, title: str = "", height: int = 260) -> alt.LayerChart:
    """Perplexity (log) against the share of block parameters removed, one line per method of ``families``
    (per method and pattern for structured and low-rank rows: MLP channels and uniform ranks solid, one KV group
    plus channels and energy ranks dashed), N:M patterns as labelled points, the dense model as a dashed rule. ``ood`` plots the out-of-domain text
    (``perplexity_ood``) instead of the validation split. Introduced in Chapter 5."""
    col = "perplexity_ood" if ood else "perplexity"
    d = sweep[sweep["family"].isin(families) & (sweep["recover_steps"] == 0 if "recover_steps" in sweep.columns else True)].copy()
    d["removed_pct"] = 100 * d["sparsity"]
    d = _round(d[["label", "family", "method", "pattern", "removed_pct", col]].rename(columns={col: "ppl"}),
               ["ppl", "removed_pct"])
    order = [m for m in METHOD_COLORS if m in set(d["method"])]
    dense_val = sweep.loc[sweep["family"] == "dense", col]
    enc = {"x": alt.X("removed_pct:Q", title="block parameters removed (%)"),
           "y": alt.Y("ppl:Q", scale=_log_scale(list(d["ppl"]) + list(dense_val)), title="perplexity (log)",
                      axis=alt.Axis(labelExpr=_FMT)),
           "color": alt.Color("method:N", sort=order, scale=color_scale(METHOD_COLORS, order), title="method"),
           "tooltip": ["label:N", alt.Tooltip("removed_pct:Q", title="% removed", format=".1f"),
                       alt.Tooltip("ppl:Q", title="perplexity", format=".4g")]}
    curves = d[~d["pattern"].str.contains(":")]
    nm = d[d["pattern"].str.contains(":")]
    dashed = curves["pattern"].isin(["kv+mlp", "energy"])
    curves = curves.assign(variant=curves["pattern"].map(
        {"mlp": "MLP channels", "kv+mlp": "1 KV group + MLP", "uniform": "uniform ranks", "energy": "energy ranks"}
    ).fillna("unstructured"))
    curves = curves.assign(series=curves["method"] + " " + curves["variant"])
    line_enc = dict(enc, detail="series:N")
    if dashed.any() or curves["variant"].nunique() > 1:
        line_enc["strokeDash"] = alt.StrokeDash("variant:N", legend=None, scale=_dash_scale(curves["variant"]))
    layers = [alt.Chart(curves).mark_line(point=alt.OverlayMarkDef(size=30)).encode(**line_enc)]
    if len(nm):
        layers.append(alt.Chart(nm).mark_point(shape="diamond", size=90, filled=True).encode(
            **enc, shape=alt.Shape("pattern:N", title="N:M pattern")))
    dense = sweep.loc[sweep["family"] == "dense", col]
    if len(dense):
        layers.append(alt.Chart(pd.DataFrame({"y": [round(float(dense.iloc[0]), 3)]})).mark_rule(
            strokeDash=[4, 3], color="#000").encode(y="y:Q", tooltip=[alt.Tooltip("y:Q", title="dense")]))
    what = "out-of-domain (pydoc)" if ood else "validation"
    chart = alt.layer(*layers).properties(width="container", height=height, title=title)
    return _svg(chart, f"Line chart: {what} perplexity on a log scale against the percentage of block parameters "
                       f"removed, one line per pruning method, N:M patterns as diamonds, dense as a dashed line.")


def frontier_explorer_chart(frontier: pd.DataFrame, *, title: str = "", height: int = 300) -> alt.LayerChart:
    """The accuracy–speed frontier with controls that work in the static page: device, method family, method
    and the largest share of parameters removed. x: predicted speedup over the dense model on the chosen
    device; y: perplexity (log). ``frontier`` comes from :func:`unveiled.pruning.roofline.frontier_table`.
    Introduced in Chapter 5."""
    d = frontier[frontier["family"] != "dense"].copy()
    d["removed_pct"] = (100 * d["sparsity"]).round(1)
    d = _round(d[["label", "family", "method", "pattern", "device", "removed_pct", "perplexity", "speedup",
                  "weights_MB"]], ["perplexity", "speedup", "weights_MB"])
    devices = list(dict.fromkeys(d["device"]))
    families = ["all", *dict.fromkeys(d["family"])]
    methods = ["all", *dict.fromkeys(d["method"])]
    dev = alt.param(name="dev", value=devices[0], bind=alt.binding_select(options=devices, name="device "))
    fam = alt.param(name="fam", value="all", bind=alt.binding_select(options=families, name="family "))
    meth = alt.param(name="meth", value="all", bind=alt.binding_select(options=methods, name="method "))
    most = alt.param(name="most", value=70, bind=alt.binding_range(min=10, max=70, step=10,
                                                                   name="at most this % of parameters removed "))
    keep = ("datum.device == dev && (fam == 'all' || datum.family == fam) && "
            "(meth == 'all' || datum.method == meth) && datum.removed_pct <= most + 0.5")
    order = [m for m in METHOD_COLORS if m in set(d["method"])]
    points = alt.Chart(d).mark_point(filled=True, size=70).encode(
        x=alt.X("speedup:Q", scale=_log_scale([*list(d["speedup"]), 1.0]), title="predicted speedup over dense (log)",
                axis=alt.Axis(labelExpr=_FMT)),
        y=alt.Y("perplexity:Q", scale=_log_scale(d["perplexity"]), title="perplexity (log)",
                axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color("method:N", sort=order, scale=color_scale(METHOD_COLORS, order)),
        shape=alt.Shape("family:N", title="family"),
        tooltip=["label:N", "family:N", alt.Tooltip("removed_pct:Q", title="% removed"),
                 alt.Tooltip("perplexity:Q", format=".4g"), alt.Tooltip("speedup:Q", format=".3g"),
                 alt.Tooltip("weights_MB:Q", title="weights (MB)", format=".4g")],
    ).add_params(dev, fam, meth, most).transform_filter(keep)
    one = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(strokeDash=[4, 3], color="#555").encode(x="x:Q")
    chart = alt.layer(points, one).properties(width="container", height=height, title=title)
    return _svg(chart, "Interactive scatter plot: each pruned, factorized or structurally pruned model at its "
                       "predicted decode speedup (log x) and its measured perplexity (log y); controls choose the "
                       "device, family, method and the largest share of parameters removed.")


def forms_speedup_chart(table: pd.DataFrame, *, title: str = "", height: int = 220) -> alt.LayerChart:
    """Predicted speedup of each weight form over dense against batch, for the device and stage chosen with
    controls (static page). ``table`` comes from :func:`unveiled.pruning.roofline.forms_speedup_table`.
    Introduced in Chapter 5."""
    d = _round(table[["device", "form", "stage", "batch", "speedup", "sparse_cores"]], ["speedup"])
    devices = list(dict.fromkeys(d["device"]))
    dev = alt.param(name="fdev", value=devices[0], bind=alt.binding_select(options=devices, name="device "))
    stg = alt.param(name="fstg", value="decode", bind=alt.binding_radio(options=["decode", "prefill"], name="stage "))
    order = list(dict.fromkeys(d["form"]))
    lines = alt.Chart(d).mark_line(point=alt.OverlayMarkDef(size=30)).encode(
        x=alt.X("batch:Q", scale=alt.Scale(type="log", base=2), title="batch", axis=alt.Axis(labelExpr=_FMT)),
        y=alt.Y("speedup:Q", scale=_log_scale([*list(d["speedup"]), 1.0]), title="predicted speedup over dense (log)",
                axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color("form:N", sort=order, scale=color_scale(FORM_COLORS, order), title="weight form"),
        tooltip=["device:N", "form:N", "stage:N", "batch:Q", alt.Tooltip("speedup:Q", format=".3g"),
                 alt.Tooltip("sparse_cores:N", title="2:4 sparse tensor cores")],
    ).add_params(dev, stg).transform_filter("datum.device == fdev && datum.stage == fstg")
    one = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(strokeDash=[4, 3], color="#555").encode(y="y:Q")
    chart = alt.layer(lines, one).properties(width="container", height=height, title=title)
    return _svg(chart, "Interactive line chart: the roofline's predicted speedup of four weight forms over the "
                       "dense model against batch size, for a chosen device and stage; 1 means no gain.")


def csr_break_even_chart(df: pd.DataFrame, *, title: str = "", height: int = 220) -> alt.LayerChart:
    """Measured and predicted speedup of the CSR matmul over the dense one against sparsity (log y), with the
    break-even line at 1. ``df`` comes from :func:`unveiled.pruning.speed.csr_vs_dense` with a device.
    Introduced in Chapter 5."""
    d = df.assign(sparsity_pct=100 * df["sparsity"])
    long = pd.concat([
        d[["sparsity_pct"]].assign(source="measured on this CPU", speedup=d["speedup"]),
        d[["sparsity_pct"]].assign(source="roofline prediction", speedup=d["predicted_speedup"]),
    ], ignore_index=True)
    long = _round(long, ["speedup", "sparsity_pct"])
    lines = alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("sparsity_pct:Q", title="sparsity (% of weights zero)", scale=alt.Scale(zero=False)),
        y=alt.Y("speedup:Q", scale=_log_scale([*list(long["speedup"]), 1.0]), title="CSR speedup over dense (log)",
                axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color("source:N", title=None, scale=color_scale(
            {"measured on this CPU": "#d62728", "roofline prediction": "#1f77b4"})),
        strokeDash=alt.StrokeDash("source:N", legend=None, scale=alt.Scale(
            domain=["measured on this CPU", "roofline prediction"], range=[[1, 0], [5, 3]])),
        tooltip=["source:N", alt.Tooltip("sparsity_pct:Q", title="% zero", format=".1f"),
                 alt.Tooltip("speedup:Q", format=".3g")])
    one = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(color="#555").encode(y="y:Q")
    chart = alt.layer(lines, one).properties(width="container", height=height, title=title)
    return _svg(chart, "Line chart: speedup of PyTorch's CSR sparse matrix-vector product over the dense one "
                       "against sparsity, measured on this CPU and predicted by the roofline; above 1 CSR wins.")


def decode_speed_chart(df: pd.DataFrame, *, title: str = "", height: int | None = None) -> alt.Chart:
    """Measured and predicted decode speedup of each compressed model over the dense one (grouped bars).

    ``df`` has ``model``, ``speedup`` (measured) and ``predicted_speedup``. Introduced in Chapter 5."""
    long = pd.concat([df[["model"]].assign(source="measured", speedup=df["speedup"]),
                      df[["model"]].assign(source="roofline prediction", speedup=df["predicted_speedup"])],
                     ignore_index=True)
    long = _round(long, ["speedup"])
    chart = alt.Chart(long).mark_bar().encode(
        y=alt.Y("model:N", sort=list(df["model"]), title=None),
        yOffset=alt.YOffset("source:N"),
        x=alt.X("speedup:Q", title="decode speedup over dense"),
        color=alt.Color("source:N", title=None, scale=color_scale({"measured": "#d62728",
                                                                   "roofline prediction": "#1f77b4"}),
                        legend=alt.Legend(orient="bottom")),  # a side legend would not fit a phone
        tooltip=["model:N", "source:N", alt.Tooltip("speedup:Q", format=".3g")],
    ).properties(width="container", height=height or 36 * len(df), title=title)
    return _svg(chart, "Grouped bar chart: decode speedup over the dense model of each compressed SmolLM2, "
                       "measured on this CPU and predicted by the roofline.")


def anchors_chart(ordering: pd.DataFrame, *, title: str = "", width: int = 300, height: int = 150) -> alt.Chart:
    """Perplexity relative to the dense model (log) of magnitude, Wanda and SparseGPT at 50 %, 4:8 and 2:4,
    one panel per pattern (stacked, so the chart fits a phone), one row of points per model (largest first).
    ``ordering`` comes from :func:`unveiled.pruning.roofline.ordering_table`. Introduced in Chapter 5."""
    methods = [c.removesuffix("_x_dense") for c in ordering.columns if c.endswith("_x_dense")]
    long = ordering.melt(id_vars=["model", "params_b", "pattern"], value_vars=[f"{m}_x_dense" for m in methods],
                         var_name="method", value_name="x_dense")
    long["method"] = long["method"].str.removesuffix("_x_dense")
    long = _round(long, ["x_dense"])
    models = list(ordering.sort_values("params_b", ascending=False)["model"].drop_duplicates())
    chart = alt.Chart(long).mark_point(filled=True, size=70).encode(
        y=alt.Y("model:N", sort=models, title=None),
        x=alt.X("x_dense:Q", scale=_log_scale([*list(long["x_dense"]), 1.0]), title="perplexity ÷ dense (log)",
                axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color("method:N", sort=methods, scale=color_scale(METHOD_COLORS, methods)),
        row=alt.Row("pattern:N", sort=["50%", "4:8", "2:4"], title=None),
        tooltip=["model:N", "pattern:N", "method:N", alt.Tooltip("x_dense:Q", title="× dense", format=".3g")],
    ).properties(width=width, height=height, title=title)
    return _svg(chart, "Dot plot: perplexity relative to the dense model for magnitude, Wanda and SparseGPT at "
                       "50 % unstructured, 4:8 and 2:4, published LLaMA and BLOOM results next to SmolLM2-135M.")


def recovery_chart(tiny: pd.DataFrame, *, title: str = "", width: int = 300, height: int = 200) -> alt.Chart:
    """Structured pruning of the tiny models before and after LoRA recovery: perplexity (log) against the
    share of block parameters removed, one panel per model (stacked), solid before and dashed after recovery.
    Introduced in Chapter 5."""
    d = tiny[tiny["family"] == "structured"].copy()
    d["removed_pct"] = (100 * d["sparsity"]).round(1)
    d["stage"] = d["recover_steps"].map(lambda s: "after LoRA" if s else "pruned")
    d["what"] = d["pattern"].map({"mlp": "MLP channels", "kv+mlp": "1 KV group + MLP"})
    d["series"] = d["method"] + ", " + d["what"] + " (" + d["stage"] + ")"
    d = _round(d[["model", "method", "what", "stage", "series", "removed_pct", "perplexity"]], ["perplexity"])
    order = [m for m in METHOD_COLORS if m in set(d["method"])]
    chart = alt.Chart(d).mark_line(point=True).encode(
        x=alt.X("removed_pct:Q", title="block parameters removed (%)"),
        y=alt.Y("perplexity:Q", scale=_log_scale(d["perplexity"]), title="perplexity (log)",
                axis=alt.Axis(labelExpr=_FMT)),
        color=alt.Color("method:N", sort=order, scale=color_scale(METHOD_COLORS, order), title="score"),
        strokeDash=alt.StrokeDash("stage:N", legend=None, scale=_dash_scale(["pruned", "after LoRA"])),
        shape=alt.Shape("what:N", title="structures"),
        detail="series:N",
        row=alt.Row("model:N", title=None),
        tooltip=["series:N", alt.Tooltip("removed_pct:Q", title="% removed"),
                 alt.Tooltip("perplexity:Q", format=".4g")],
    ).properties(width=width, height=height, title=title)
    return _svg(chart, "Line chart per tiny model: perplexity after structured pruning by three importance "
                       "scores, before (solid) and after (dashed) a short LoRA recovery.")
