"""Distillation charts (Chapter 4): divergences on a two-mode teacher, training curves, cost vs quality,
draft acceptance, the roofline view of teacher vs student and a static teacher/student explorer.

Every number drawn comes from :mod:`unveiled.distill` (and, through it, the analyzer). Data are rounded and
aggregated before charting so the page stays small; interactive parts use Altair parameters bound to
widgets, which work in the static page with no kernel.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from .style import color_scale, legible_scale

__all__ = [
    "DIVERGENCE_COLORS",
    "ROLE_COLORS",
    "acceptance_chart",
    "cost_quality_chart",
    "curves_chart",
    "divergence_fit_chart",
    "speedup_chart",
    "teacher_student_explorer_chart",
]

#: One colour per training objective, used by every chart of the chapter.
DIVERGENCE_COLORS: dict[str, str] = {
    "teacher": "#7f7f7f",
    "data only": "#7f7f7f",
    "forward KL": "#1f77b4",
    "forward KL (full logits, live teacher)": "#aec7e8",
    "reverse KL": "#d62728",
    "JSD (β = 0.5)": "#9467bd",
    "JSD (slider β)": "#9467bd",
    "total variation": "#2ca02c",
    "teacher samples (black-box)": "#ff7f0e",
    "on-policy JSD (λ = 0.5)": "#8c564b",
}
#: Teacher and student in the roofline charts.
ROLE_COLORS: dict[str, str] = {"teacher": "#1f77b4", "student": "#ff7f0e"}

_SVG = {"embedOptions": {"renderer": "svg"}}
_LABELS = {"forward_kl": "forward KL", "reverse_kl": "reverse KL", "tv": "total variation"}


def _round(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            vals = out[col].to_numpy(dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                mag = np.where(vals == 0, 0, np.floor(np.log10(np.abs(vals))))
            scale = 10.0 ** (digits - 1 - np.nan_to_num(mag))
            out[col] = np.where(np.isfinite(vals), np.round(vals * scale) / scale, vals)
    return out


def divergence_fit_chart(fits: pd.DataFrame, title: str = "", x_range: tuple[float, float] = (-10.0, 10.0),
                         points: int = 101) -> alt.LayerChart:
    """The two-mode teacher (grey area), the forward- and reverse-KL Gaussian students, and a JSD student
    whose β is set by a slider (from :func:`unveiled.distill.bimodal_fit` with ``losses`` including ``"jsd"``).

    The densities are resampled on ``points`` values of x in ``x_range`` and stored one row per x (the
    browser unfolds them), which keeps the page small. Introduced in Chapter 4.
    """
    grid = np.linspace(x_range[0], x_range[1], points)
    wide = {"x": np.round(grid, 3)}

    def resample(part: pd.DataFrame) -> np.ndarray:
        part = part.sort_values("x")
        return np.interp(grid, part.x.to_numpy(), part.density.to_numpy())

    wide["teacher"] = resample(fits[fits.model == "teacher"])
    fixed = [m for m in ("forward_kl", "reverse_kl") if m in set(fits.model)]
    for m in fixed:
        wide[_LABELS[m]] = resample(fits[fits.model == m])
    betas = sorted(fits.beta.dropna().unique())
    jcols = {f"j{i}": float(b) for i, b in enumerate(betas)}
    for col, b in jcols.items():
        wide[col] = resample(fits[np.isclose(fits.beta, b)])
    df = _round(pd.DataFrame(wide))
    labels = [_LABELS[m] for m in fixed]
    domain = [*labels, "JSD (slider β)"]
    colour = alt.Color("label:N", title="student fitted by", scale=color_scale(DIVERGENCE_COLORS, domain))
    x = alt.X("x:Q", title="x (the teacher's two modes)")
    ytitle = "probability per grid cell"
    y = alt.Y("density:Q", title=ytitle)
    base = alt.Chart(df)
    area = base.mark_area(color="#bbbbbb", opacity=0.6).encode(x=x, y=alt.Y("teacher:Q", title=ytitle))
    lines = base.transform_fold(labels, as_=["label", "density"]).mark_line(strokeWidth=2.5).encode(
        x=x, y=y, color=colour)
    layers = [area, lines]
    if jcols:
        step = float(np.round(np.diff(betas).min(), 6)) if len(betas) > 1 else 0.1
        beta = alt.param(name="beta", value=0.5 if 0.5 in betas else float(betas[len(betas) // 2]),
                         bind=alt.binding_range(min=float(min(betas)), max=float(max(betas)), step=step,
                                                name="JSD β (0 = forward KL, 1 = reverse KL) "))
        lookup = "{" + ",".join(f"'{k}':{v}" for k, v in jcols.items()) + "}"
        layers.append(base.transform_fold(list(jcols), as_=["col", "density"]).transform_calculate(
            b=f"{lookup}[datum.col]", label="'JSD (slider β)'").transform_filter(
            "abs(datum.b - beta) < 1e-6").mark_line(strokeWidth=2, strokeDash=[5, 3]).encode(
            x=x, y=y, color=colour).add_params(beta))
    return alt.layer(*layers).properties(width=560, height=260, title=title, usermeta=_SVG)


def curves_chart(curves: pd.DataFrame, runs: dict[str, str],
                 title: str = "Tiny student S distilled from M: validation loss by objective") -> alt.Chart:
    """Validation loss (first 16,384 characters) against training step for the given runs (``run → label``).

    Introduced in Chapter 4.
    """
    df = curves[curves.run.isin(list(runs)) & curves.val_loss_16k.notna()][["run", "step", "val_loss_16k"]].copy()
    df["method"] = df.run.map(runs)
    domain = list(dict.fromkeys(runs.values()))
    return alt.Chart(_round(df)).mark_line(point=True).encode(
        x=alt.X("step:Q", title="training step (16 × 128 characters each)"),
        y=alt.Y("val_loss_16k:Q", title="validation loss (nats/char)", scale=alt.Scale(zero=False)),
        color=alt.Color("method:N", title="objective", scale=color_scale(DIVERGENCE_COLORS, domain)),
        tooltip=["method", "step", "val_loss_16k"],
    ).properties(width=520, height=260, title=title, usermeta=_SVG)


def cost_quality_chart(points: pd.DataFrame, x: str = "cost_plain_steps",
                       title: str = "Tiny student S: validation loss against training cost") -> alt.LayerChart:
    """Final validation loss against training cost, one point per run (``method``, ``run``, ``val_loss``, ``x``).

    The "data only" runs are joined by a line: the frontier plain training reaches for each cost. A
    distillation run left of that line is worth its teacher at equal cost. Introduced in Chapter 4.
    """
    df = _round(points[["run", "method", "val_loss", x]].copy())
    domain = list(dict.fromkeys(df.method))
    colour = alt.Color("method:N", title="objective", scale=color_scale(DIVERGENCE_COLORS, domain))
    xenc = alt.X(f"{x}:Q", title="training cost (in plain 400-step runs)" if x == "cost_plain_steps" else x,
                 scale=alt.Scale(zero=False))
    yenc = alt.Y("val_loss:Q", title="validation loss (nats/char, full split)", scale=alt.Scale(zero=False))
    frontier = alt.Chart(df[df.method == "data only"]).mark_line(color="#7f7f7f", strokeDash=[4, 3]).encode(
        x=xenc, y=yenc)
    dots = alt.Chart(df).mark_point(size=90, filled=True).encode(x=xenc, y=yenc, color=colour,
                                                                 tooltip=["run", "method", "val_loss", x])
    text = alt.Chart(df).mark_text(dx=8, align="left", fontSize=10).encode(x=xenc, y=yenc, text="run:N")
    return alt.layer(frontier, dots, text).properties(width=520, height=280, title=title, usermeta=_SVG)


def acceptance_chart(report: pd.DataFrame, column: str = "acceptance_samples",
                     title: str = "How often the target accepts each student's draft tokens") -> alt.Chart:
    """Draft acceptance α of each student for the teacher (bars), from :func:`unveiled.distill.student_report`.

    Introduced in Chapter 4.
    """
    df = report[report.student != "teacher"][["student", "method", column]].copy()
    domain = list(dict.fromkeys(df.method))
    return alt.Chart(_round(df)).mark_bar().encode(
        y=alt.Y("student:N", sort=list(df.student), title=None),
        x=alt.X(f"{column}:Q", title="expected acceptance α = E[Σ min(p, q)]", scale=alt.Scale(zero=False)),
        color=alt.Color("method:N", title="objective", scale=color_scale(DIVERGENCE_COLORS, domain)),
        tooltip=["student", "method", column],
    ).properties(width=460, height=24 * len(df), title=title, usermeta=_SVG)


def speedup_chart(costs: pd.DataFrame, device: str, seq_len: int, title: str = "") -> alt.LayerChart:
    """Decode step time of teacher and student against batch on one device (log–log), one panel per pair,
    with the student's speedup as a tooltip; hollow points do not fit in memory. Introduced in Chapter 4.
    """
    df = costs[(costs.device == device) & (costs.seq_len == seq_len)].copy()
    df["tpot_ms"] = df.tpot_s * 1e3
    t = df[df.role == "teacher"].set_index(["pair", "batch"]).tpot_ms
    df["speedup"] = [t[(p, b)] / v for p, b, v in zip(df.pair, df.batch, df.tpot_ms, strict=True)]
    df = _round(df[["pair", "role", "model", "batch", "tpot_ms", "speedup", "fits"]])
    base = alt.Chart(df).encode(
        x=alt.X("batch:Q", scale=alt.Scale(type="log", base=2), title="batch"),
        y=alt.Y("tpot_ms:Q", scale=alt.Scale(type="log"), title="decode step time (ms)"),
        color=alt.Color("role:N", scale=color_scale(ROLE_COLORS), title=None),
        tooltip=["model", "batch", "tpot_ms", "speedup", "fits"],
    )
    chart = alt.layer(base.mark_line(), base.mark_point(size=60).encode(
        fill=alt.condition("datum.fits", alt.Color("role:N", scale=color_scale(ROLE_COLORS)), alt.value("white"))))
    title = title or f"Decode step time of teacher and student against batch ({device}, {seq_len:,}-token context)"
    return chart.properties(width=210, height=170).facet(facet=alt.Facet("pair:N", title=None), columns=2).properties(
        title=title, usermeta=_SVG)


def teacher_student_explorer_chart(costs: pd.DataFrame, limits: pd.DataFrame, title: str = "") -> alt.VConcatChart:
    """Static explorer: pick a teacher/student pair and a device, slide the context length; see decode step
    time and memory against batch (hollow = does not fit) and a table of weights, TTFT, TPOT and the largest
    batch. Built from :func:`unveiled.distill.teacher_student_costs` and ``teacher_student_limits``.

    Each pair's teacher and student share one row of data (the browser unfolds them), which halves the
    page weight. Introduced in Chapter 4.
    """
    pairs = list(dict.fromkeys(costs.pair))
    devices = list(dict.fromkeys(costs.device))
    seq_lens = sorted(costs.seq_len.unique())
    keys = ["pair", "device", "seq_len", "batch"]
    c = costs.assign(ms=costs.tpot_s * 1e3, gb=costs.memory_bytes / 1e9, ok=costs.fits.astype(int))
    wide = c.pivot_table(index=keys, columns="role", values=["ms", "gb", "ok"], aggfunc="first")
    wide.columns = [f"{v}_{r[0]}" for v, r in wide.columns]  # ms_t, ms_s, gb_t, ...
    wide = wide.reset_index()
    cap = c.groupby("device").capacity_bytes.first() / 1e9
    wide["cap"] = wide.device.map(cap)
    wide["ctx"] = np.log2(wide.seq_len).astype(int)
    wide = _round(wide.drop(columns="seq_len"))
    lim = limits.assign(ctx=np.log2(limits.seq_len).astype(int))
    cells = {"model": lambda r: r.model, "weights (GB)": lambda r: f"{r.weights_bytes / 1e9:.3g}",
             "TTFT, batch 1 (ms)": lambda r: f"{r.ttft_s * 1e3:.3g}",
             "TPOT, batch 1 (ms)": lambda r: f"{r.tpot_s * 1e3:.3g}",
             "largest batch": lambda r: f"{int(r.max_batch)}"}
    table = pd.DataFrame([{"pair": r.pair, "device": r.device, "ctx": r.ctx, "role": r.role,
                           **{f"m{i}": fn(r) for i, fn in enumerate(cells.values())}} for r in lim.itertuples()])
    metric_of = "{" + ",".join(f"'m{i}':'{name}'" for i, name in enumerate(cells)) + "}"
    pair = alt.param(name="pair", value=pairs[0], bind=alt.binding_select(options=pairs, name="teacher → student "))
    device = alt.param(name="device", value=devices[0], bind=alt.binding_select(options=devices, name="device "))
    ctx = alt.param(name="ctx", value=int(np.log2(seq_lens[len(seq_lens) // 2])),
                    bind=alt.binding_range(min=int(np.log2(seq_lens[0])), max=int(np.log2(seq_lens[-1])), step=1,
                                           name="context (tokens) = 2^"))
    keep = "datum.pair == pair && datum.device == device && datum.ctx == ctx"
    colour = alt.Color("role:N", scale=color_scale(ROLE_COLORS), title=None)
    fill = alt.condition("datum.fits", alt.Color("role:N", scale=color_scale(ROLE_COLORS)), alt.value("white"))
    xb = alt.X("batch:Q", scale=alt.Scale(type="log", base=2), title="batch")
    unfold = (alt.Chart(wide).transform_filter(keep)
              .transform_fold(["ms_t", "ms_s"], as_=["k", "tpot_ms"])
              .transform_calculate(role="datum.k == 'ms_t' ? 'teacher' : 'student'",
                                   memory_gb="datum.k == 'ms_t' ? datum.gb_t : datum.gb_s",
                                   fits="(datum.k == 'ms_t' ? datum.ok_t : datum.ok_s) == 1"))
    time_chart = alt.layer(
        unfold.mark_line().encode(x=xb, y=alt.Y("tpot_ms:Q", scale=alt.Scale(type="log"), title="decode step (ms)"),
                                  color=colour),
        unfold.mark_point(size=60).encode(x=xb, y="tpot_ms:Q", color=colour, fill=fill,
                                          tooltip=["role:N", "batch:Q", "tpot_ms:Q", "memory_gb:Q", "fits:N"]),
    ).properties(width=260, height=200, title="decode step time")
    mem_chart = alt.layer(
        unfold.mark_line().encode(x=xb, y=alt.Y("memory_gb:Q", scale=alt.Scale(type="log"), title="memory (GB)"),
                                  color=colour),
        unfold.mark_point(size=60).encode(x=xb, y="memory_gb:Q", color=colour, fill=fill,
                                          tooltip=["role:N", "batch:Q", "memory_gb:Q", "cap:Q"]),
        alt.Chart(wide).transform_filter(keep).mark_rule(color="black", strokeDash=[4, 3]).encode(y="max(cap):Q"),
    ).properties(width=260, height=200, title="memory (dashed: device capacity)")
    text = (alt.Chart(table).transform_filter(keep).transform_fold(list(table.columns[4:]), as_=["k", "value"])
            .transform_calculate(metric=f"{metric_of}[datum.k]").mark_text(align="left").encode(
        y=alt.Y("metric:N", sort=list(cells), title=None),
        x=alt.X("role:N", sort=["teacher", "student"], title=None, axis=alt.Axis(orient="top", labelAngle=0)),
        text="value:N", color=alt.Color("role:N", scale=legible_scale(ROLE_COLORS), legend=None),
    ).properties(width=300, height=130))
    top = alt.hconcat(time_chart, mem_chart)
    # the text's darker role colours are a scale of their own (merged with the lines' scale, Vega warns)
    return (alt.vconcat(top, text).add_params(pair, device, ctx).resolve_scale(color="independent")
            .properties(title=title, usermeta=_SVG))
