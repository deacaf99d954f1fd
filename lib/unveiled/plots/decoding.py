"""Charts and diagrams of Chapter 7 (decoding algorithms).

Altair charts for the measurements (verification time vs tokens, acceptance vs draft length, measured vs
predicted speedup, MoE experts vs batch) and the static-page trade-off explorer; the survey's Figures 12
(input-dependent dynamic networks) and 13 (parallel decoding methods) are drawn as SVG by
:func:`figure12_svg` and :func:`figure13_svg`, optionally from real examples produced by the library.
Data are aggregated and rounded before charting so the page stays small. Introduced in Chapter 7.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from .style import STAGE_COLORS, color_scale

__all__ = [
    "DRAFT_COLORS",
    "acceptance_chart",
    "figure12_svg",
    "figure13_svg",
    "moe_chart",
    "speedup_chart",
    "speedup_explorer_chart",
    "verification_chart",
]

#: One colour per draft kind, across the chapter.
DRAFT_COLORS: dict[str, str] = {
    "formula": "#7f7f7f",
    "small model": "#1f77b4",
    "prompt lookup": "#2ca02c",
    "layer skip": "#9467bd",
    "Medusa": "#ff7f0e",
    "Jacobi": "#8c564b",
    "measured": "#d62728",
    "measured, nn.Linear": "#d62728",
    "measured, transposed weights": "#ff7f0e",
    "roofline": "#7f7f7f",
}
_SVG = {"embedOptions": {"renderer": "svg"}}


def _round(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].map(lambda v: float(f"{v:.{digits}g}") if np.isfinite(v) else v)
    return out


def verification_chart(measured: pd.DataFrame, predicted: pd.DataFrame | None = None, title: str = "") -> alt.Chart:
    """Time of one forward pass vs tokens scored in it, relative to one token (log x): measured points (one line
    per ``layout`` when the table has that column) and the roofline prediction. Tables have ``tokens`` and
    ``relative_time`` (see :func:`unveiled.decoding.measure_verification` and
    :func:`unveiled.decoding.verification_cost`)."""
    m = measured.copy()
    m["source"] = ("measured, " + m["layout"]) if "layout" in m else "measured"
    frames = [m[["tokens", "relative_time", "source"]]]
    if predicted is not None:
        frames.append(predicted.assign(source="roofline")[["tokens", "relative_time", "source"]])
    df = _round(pd.concat(frames, ignore_index=True))
    sources = list(dict.fromkeys(df.source))
    enc = {
        "x": alt.X("tokens:Q", scale=alt.Scale(type="log", base=2), title="tokens scored in one pass (T = k + 1)"),
        "y": alt.Y("relative_time:Q", title="time / time of a 1-token pass", scale=alt.Scale(zero=True)),
        "color": alt.Color("source:N", scale=color_scale(DRAFT_COLORS, sources), title=None),
        "tooltip": ["source", "tokens", "relative_time"],
    }
    base = alt.Chart(df).encode(**enc)
    ideal = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(strokeDash=[4, 3], color="#999").encode(y="y:Q")
    return alt.layer(base.mark_line(), base.mark_point(filled=True, size=50), ideal).properties(
        width=420, height=240, title=title, usermeta=_SVG)


def acceptance_chart(df: pd.DataFrame, title: str = "") -> alt.LayerChart:
    """Tokens per target pass vs draft length: measured points per draft and the formula at the measured α.

    ``df`` has ``draft``, ``k``, ``tokens_per_pass`` and ``predicted_tokens_per_pass`` (as returned by
    :func:`unveiled.decoding.compare_decoding` or the cached acceptance experiment)."""
    d = _round(df[["draft", "k", "tokens_per_pass", "predicted_tokens_per_pass", "acceptance_rate"]])
    drafts = list(dict.fromkeys(d.draft))
    colour = alt.Color("draft:N", scale=color_scale(DRAFT_COLORS, drafts), title="draft")
    base = alt.Chart(d).encode(x=alt.X("k:O", title="draft length k", axis=alt.Axis(labelAngle=0)), color=colour,
                               tooltip=["draft", "k", "acceptance_rate", "tokens_per_pass", "predicted_tokens_per_pass"])
    measured = base.mark_point(filled=True, size=70).encode(y=alt.Y("tokens_per_pass:Q", title="tokens per target pass"))
    formula = base.mark_line(strokeDash=[5, 3]).encode(y="predicted_tokens_per_pass:Q")
    return alt.layer(formula, measured).properties(width=380, height=230, title=title, usermeta=_SVG)


def speedup_chart(df: pd.DataFrame, title: str = "") -> alt.LayerChart:
    """Measured wall-clock speedup (bars) and the analytic model's prediction (ticks) per draft and k; the
    rule at 1 is plain decoding. ``df`` comes from :func:`unveiled.decoding.compare_decoding`."""
    d = _round(df[["draft", "k", "speedup", "predicted_speedup", "acceptance_rate", "cost_ratio", "verify_ratio",
                   "identical"]])
    d["config"] = d.draft + ", k=" + d.k.astype(str)
    order = list(d.config)
    bars = alt.Chart(d).mark_bar().encode(
        y=alt.Y("config:N", sort=order, title=None), x=alt.X("speedup:Q", title="speedup over plain decoding"),
        color=alt.Color("draft:N", scale=color_scale(DRAFT_COLORS, list(dict.fromkeys(d.draft))), title="draft"),
        tooltip=["draft", "k", "speedup", "predicted_speedup", "acceptance_rate", "cost_ratio", "verify_ratio",
                 "identical"])
    ticks = alt.Chart(d).mark_tick(color="black", thickness=2, size=14).encode(
        y=alt.Y("config:N", sort=order), x="predicted_speedup:Q")
    one = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(strokeDash=[4, 3]).encode(x="x:Q")
    return alt.layer(bars, ticks, one).properties(width=380, height=alt.Step(16), title=title, usermeta=_SVG)


def speedup_explorer_chart(verify: pd.DataFrame, title: str = "") -> alt.LayerChart:
    """Static explorer of the speedup formula: sliders for the acceptance rate α and the draft/target cost
    ratio c, a dropdown for the device; the curve is ``S(k) = (1 − α^(k+1)) / ((1 − α)(k·c + v(k)))`` with
    the verification cost ``v(k)`` of that device from the analyzer. ``verify`` has ``device``, ``k``,
    ``verify_ratio`` (one row per device and k). The best k is marked. Introduced in Chapter 7."""
    d = _round(verify[["device", "k", "verify_ratio"]])
    devices = list(dict.fromkeys(d.device))
    alpha = alt.param(name="alpha", value=0.7, bind=alt.binding_range(min=0.05, max=0.95, step=0.05,
                                                                      name="acceptance rate α "))
    cost = alt.param(name="c", value=0.05, bind=alt.binding_range(min=0.0, max=1.0, step=0.01,
                                                                  name="draft/target cost ratio c "))
    dev = alt.param(name="device", value=devices[0], bind=alt.binding_select(options=devices, name="device "))
    base = (alt.Chart(d).transform_filter("datum.device == device")
            .transform_calculate(tokens="(1 - pow(alpha, datum.k + 1)) / (1 - alpha)",
                                 speedup="datum.tokens / (datum.k * c + datum.verify_ratio)",
                                 plain="datum.tokens / (datum.k * c + 1)"))
    x = alt.X("k:Q", title="draft length k", scale=alt.Scale(domain=[1, int(d.k.max())]))
    red = STAGE_COLORS["decode"]
    line = base.mark_line(point=alt.OverlayMarkDef(color=red), color=red).encode(
        x=x, y=alt.Y("speedup:Q", title="expected speedup", scale=alt.Scale(domainMin=0)),
        tooltip=[alt.Tooltip("k:Q"), alt.Tooltip("tokens:Q", format=".3f", title="tokens per pass"),
                 alt.Tooltip("verify_ratio:Q", format=".3f", title="v(k)"),
                 alt.Tooltip("speedup:Q", format=".3f")])
    ideal = base.mark_line(strokeDash=[4, 3], color="#999").encode(x=x, y="plain:Q")
    best = (base.transform_window(rank="rank()", sort=[alt.SortField("speedup", order="descending")])
            .transform_filter("datum.rank == 1")
            .mark_point(size=140, shape="diamond", filled=True, color="black")
            .encode(x=x, y="speedup:Q", tooltip=[alt.Tooltip("k:Q", title="best k"),
                                                 alt.Tooltip("speedup:Q", format=".3f")]))
    one = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(color="#bbb").encode(y="y:Q")
    return alt.layer(one, ideal, line, best).add_params(alpha, cost, dev).properties(
        width=430, height=260, title=title, usermeta=_SVG)


def moe_chart(table: pd.DataFrame, title: str = "") -> alt.HConcatChart:
    """Static explorer of an MoE decode step vs batch: experts touched per layer (left) and time per step
    (right) with a batch slider marking one batch and a dropdown for the device. ``table`` is
    :func:`unveiled.decoding.moe_decode_table` for one or more devices. Introduced in Chapter 7."""
    d = table.assign(time_ms=table.time_s * 1e3, lb=np.log2(table.batch).astype(int))
    d = _round(d[["device", "batch", "lb", "experts_touched", "num_experts", "top_k", "time_ms"]])
    devices = list(dict.fromkeys(d.device))
    dev = alt.param(name="moe_device", value=devices[0], bind=alt.binding_select(options=devices, name="device "))
    lb = alt.param(name="lb", value=3, bind=alt.binding_range(min=int(d.lb.min()), max=int(d.lb.max()), step=1,
                                                             name="batch = 2^"))
    base = alt.Chart(d).transform_filter("datum.device == moe_device")
    x = alt.X("batch:Q", scale=alt.Scale(type="log", base=2), title="batch (tokens per decode step)")
    left = alt.layer(
        base.mark_line(point=True).encode(x=x, y=alt.Y("experts_touched:Q", title="experts touched per layer",
                                                       scale=alt.Scale(domainMin=0)),
                                          tooltip=["batch", "experts_touched"]),
        base.transform_filter("datum.lb == lb").mark_point(size=160, filled=True, color="black").encode(
            x=x, y="experts_touched:Q"),
        base.transform_filter("datum.lb == lb").mark_text(dx=10, dy=-12, align="left").encode(
            x=x, y="experts_touched:Q", text=alt.Text("experts_touched:Q", format=".2f")),
    ).properties(width=260, height=200)
    right = alt.layer(
        base.mark_line(point=alt.OverlayMarkDef(color=STAGE_COLORS["decode"]), color=STAGE_COLORS["decode"]).encode(
            x=x, y=alt.Y("time_ms:Q", title="decode step time (ms)", scale=alt.Scale(domainMin=0)),
            tooltip=["device", "batch", "time_ms"]),
        base.transform_filter("datum.lb == lb").mark_point(size=160, filled=True, color="black").encode(
            x=x, y="time_ms:Q"),
        base.transform_filter("datum.lb == lb").mark_text(dx=10, dy=-12, align="left").encode(
            x=x, y="time_ms:Q", text=alt.Text("time_ms:Q", format=".3g")),
    ).properties(width=260, height=200)
    return alt.hconcat(left, right).add_params(dev, lb).properties(title=title, usermeta=_SVG)


# --------------------------------------------------------------------------------------------------
# The survey's Figures 12 and 13, drawn as SVG
# --------------------------------------------------------------------------------------------------

_FONT = "font-family='sans-serif'"
_FILL = {"layer": "#dbe9f6", "ffn": "#fde0c5", "skip": "#eeeeee", "ok": "#c7e9c0", "bad": "#f4b6b6",
         "draft": "#e5dcf2", "head": "#fff2b3", "exit": "#ffffff"}


def _box(x, y, w, h, text, fill="#ffffff", stroke="#555", size=11, dash=False, bold=False) -> str:
    d = " stroke-dasharray='4,3'" if dash else ""
    weight = " font-weight='bold'" if bold else ""
    return (f"<rect x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{h:.1f}' rx='4' fill='{fill}' stroke='{stroke}'{d}/>"
            f"<text x='{x + w / 2:.1f}' y='{y + h / 2 + size / 3:.1f}' text-anchor='middle' font-size='{size}' "
            f"{_FONT}{weight}>{html.escape(str(text))}</text>")


def _text(x, y, text, size=11, anchor="middle", bold=False, color="#222", italic=False) -> str:
    extra = (" font-weight='bold'" if bold else "") + (" font-style='italic'" if italic else "")
    return (f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' font-size='{size}' fill='{color}' "
            f"{_FONT}{extra}>{html.escape(str(text))}</text>")


def _arrow(x1, y1, x2, y2, color="#555", dash=False) -> str:
    d = " stroke-dasharray='4,3'" if dash else ""
    return (f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='{color}' stroke-width='1.3'{d} "
            f"marker-end='url(#arrow)'/>")


def _svg(width: int, height: int, body: list[str]) -> str:
    defs = ("<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='6' markerHeight='6' "
            "orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='#555'/></marker></defs>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}'>{defs}{''.join(body)}</svg>")


def _layer_stack(x: float, y: float, n: int, active: Sequence[bool], label_fn) -> list[str]:
    """A column of ``n`` decoder blocks drawn bottom-up; inactive ones greyed and dashed."""
    out, h, gap, w = [], 26, 8, 120
    for i in range(n):
        yy = y - i * (h + gap)
        out.append(_box(x, yy, w, h, label_fn(i), fill=_FILL["layer"] if active[i] else _FILL["skip"],
                        dash=not active[i]))
        if i < n - 1:
            out.append(_arrow(x + w / 2, yy, x + w / 2, yy - gap + 1))
    return out


def figure12_svg(exit_layer: int = 2, num_layers: int = 4, active_neurons: Sequence[bool] | None = None,
                 experts: int = 6, chosen: Sequence[int] = (1, 4)) -> str:
    """The survey's Figure 12, input-dependent dynamic networks, as SVG: (a) normal decoding runs every
    block; (b) early exit stops after ``exit_layer`` blocks when the shared head is confident; (c) contextual
    sparsity computes only the neurons a predictor selects (``active_neurons``); (d) a mixture of experts
    routes the token to ``chosen`` of ``experts`` experts. Pass real values (e.g. an exit layer measured by
    :func:`unveiled.decoding.early_exit_generate`) to draw an actual case. Introduced in Chapter 7."""
    if active_neurons is None:
        active_neurons = [True, False, False, True, False, True, False, False, True, False, False, False]
    w, hgt = 880, 330
    body = [f"<rect width='{w}' height='{hgt}' fill='white'/>"]
    base_y = 250
    # (a) normal decoding
    body += _layer_stack(40, base_y - 30, num_layers, [True] * num_layers, lambda i: f"block {i + 1}")
    body += [_box(40, base_y + 10, 120, 24, "token 'Take'", fill="#ffffff"), _arrow(100, base_y + 10, 100, base_y - 3),
             _text(100, 22, "(a) normal decoding", bold=True),
             _text(100, 310, "every block, every weight", italic=True)]
    # (b) early exit
    ox = 250
    active = [i < exit_layer for i in range(num_layers)]
    body += _layer_stack(ox, base_y - 30, num_layers, active, lambda i: f"block {i + 1}")
    body += [_box(ox, base_y + 10, 120, 24, "token 'Take'"), _arrow(ox + 60, base_y + 10, ox + 60, base_y - 3)]
    for i in range(num_layers - 1):
        yy = base_y - 30 - i * 34 + 13
        exited = i == exit_layer - 1
        body.append(_box(ox + 128, yy - 9, 62, 18, "exit now?" if not exited else "yes: exit",
                         fill=_FILL["ok"] if exited else "#ffffff", size=9))
        if exited:
            body.append(_arrow(ox + 190, yy, ox + 205, yy - 60))
            body.append(_text(ox + 200, yy - 66, "shared head", size=10))
    body += [_text(ox + 90, 22, "(b) early exit (depth)", bold=True),
             _text(ox + 90, 310, f"{exit_layer} of {num_layers} blocks run", italic=True)]
    # (c) contextual sparsity
    ox = 490
    body.append(_text(ox + 85, 22, "(c) contextual sparsity (width)", bold=True))
    body.append(_box(ox, 150, 70, 26, "predictor", fill=_FILL["head"], size=10))
    body.append(_box(ox, 210, 70, 26, "attention", fill=_FILL["layer"], size=10))
    body.append(_arrow(ox + 35, 210, ox + 35, 177))
    nx = ox + 95
    for i, on in enumerate(active_neurons):
        cy = 60 + i * 17
        dash = "" if on else " stroke-dasharray='2,2'"
        body.append(f"<circle cx='{nx + 25}' cy='{cy}' r='6' fill='{_FILL['ffn'] if on else '#f2f2f2'}' "
                    f"stroke='{'#c05a00' if on else '#bbb'}'{dash}/>")
    body.append(_text(nx + 25, 52 - 4, "MLP neurons", size=10))
    body.append(_arrow(ox + 70, 163, nx + 14, 163))
    body.append(_text(ox + 85, 310, f"{sum(active_neurons)} of {len(active_neurons)} neurons computed",
                      italic=True))
    # (d) mixture of experts
    ox = 700
    body.append(_text(ox + 80, 22, "(d) mixture of experts", bold=True))
    body.append(_box(ox + 40, 230, 80, 26, "router", fill=_FILL["head"], size=10))
    for e in range(experts):
        ex = ox + e * 27
        on = e in chosen
        body.append(_box(ex, 110, 23, 60, f"E{e}", fill=_FILL["ffn"] if on else "#f2f2f2", size=9, dash=not on))
        if on:
            body.append(_arrow(ox + 80, 230, ex + 11, 171))
    body.append(_text(ox + 80, 310, f"top-{len(chosen)} of {experts} experts", italic=True))
    return _svg(w, hgt, body)


def figure13_svg(draft: Sequence[str] = ("With", "my", "kids", "and"), accepted: int = 2, correction: str = "family",
                 jacobi: Sequence[Sequence[str]] | None = None, heads: int = 3) -> str:
    """The survey's Figure 13, parallel decoding, as SVG: (a) speculative decoding — a draft proposes
    ``draft``, one target pass accepts the first ``accepted`` and corrects the next with ``correction``;
    (b) Medusa — extra heads on the last hidden state guess several positions, a tree of guesses is verified
    in one pass; (c) Jacobi iteration — every position of a block is refined in parallel until a fixed point
    (``jacobi``: the iterates, one row each); (d) non-autoregressive decoding — all positions at once.
    Pass a real round (e.g. from :func:`unveiled.decoding.speculative_generate`) to draw it.
    Introduced in Chapter 7."""
    if jacobi is None:
        jacobi = [["the", "the", "the", "the"], ["cat", "the", "on", "mat"], ["cat", "sat", "on", "the"],
                  ["cat", "sat", "on", "the"]]
    w, hgt = 900, 360
    body = [f"<rect width='{w}' height='{hgt}' fill='white'/>"]
    body += _speculative_panel(draft, accepted, correction)
    body += _medusa_panel(250, heads)
    body += _jacobi_panel(520, jacobi)
    body += _non_autoregressive_panel(760)
    return _svg(w, hgt, body)


def _speculative_panel(draft: Sequence[str], accepted: int, correction: str) -> list[str]:
    """(a): the draft's guesses, the target's verdict on each, the correction at the first rejection."""
    body = [_text(115, 22, "(a) speculative decoding", bold=True),
            _box(10, 45, 70, 26, "draft", fill=_FILL["draft"], size=10)]
    cw = 46
    for i, tok in enumerate(draft):
        body.append(_box(90 + i * cw, 45, cw - 4, 26, tok, fill=_FILL["draft"], size=9))
    body.append(_box(10, 120, 70, 26, "target", fill=_FILL["layer"], size=10))
    body.append(_text(12, 165, "one pass scores", size=9, anchor="start", italic=True))
    body.append(_text(12, 177, f"all {len(draft) + 1} positions", size=9, anchor="start", italic=True))
    for i, tok in enumerate(draft):
        x = 90 + i * cw
        body.append(_arrow(x + cw / 2 - 2, 72, x + cw / 2 - 2, 118))
        if i < accepted:
            body.append(_box(x, 120, cw - 4, 26, "✓ " + tok, fill=_FILL["ok"], size=9))
        elif i == accepted:
            body.append(_box(x, 120, cw - 4, 26, "✗", fill=_FILL["bad"], size=10))
            body.append(_box(x, 160, cw - 4, 26, correction, fill=_FILL["ok"], size=9))
            body.append(_arrow(x + cw / 2 - 2, 147, x + cw / 2 - 2, 159))
        else:
            body.append(_box(x, 120, cw - 4, 26, "–", fill=_FILL["skip"], size=10, dash=True))
    body.append(_text(115, 215, f"{accepted + 1} tokens for 1 target pass", italic=True))
    return body


def _medusa_panel(ox: float, heads: int) -> list[str]:
    """(b): extra heads guessing t+2.. next to the LM head, and the tree of candidates one pass verifies."""
    body = [_text(ox + 95, 22, "(b) Medusa heads + tree", bold=True),
            _box(ox, 150, 80, 26, "LLM", fill=_FILL["layer"], size=10)]
    for j in range(heads):
        hy = 45 + j * 34
        body.append(_box(ox + 110, hy, 74, 24, f"head {j + 1}: t+{j + 2}", fill=_FILL["head"], size=9))
        body.append(_arrow(ox + 80, 160, ox + 110, hy + 12))
    body.append(_box(ox + 110, 150, 74, 24, "LM head: t+1", fill=_FILL["layer"], size=9))
    tx, ty = ox + 40, 230  # a small candidate tree; the accepted path is filled
    nodes = {(): (tx + 60, ty), (0,): (tx + 20, ty + 40), (1,): (tx + 100, ty + 40), (0, 0): (tx, ty + 80),
             (0, 1): (tx + 40, ty + 80), (1, 0): (tx + 100, ty + 80)}
    for path, (x, y) in nodes.items():
        if path:
            px, py = nodes[path[:-1]]
            body.append(f"<line x1='{px}' y1='{py + 8}' x2='{x}' y2='{y - 8}' stroke='#888'/>")
        on = path in ((), (0,), (0, 1))
        body.append(f"<circle cx='{x}' cy='{y}' r='8' fill='{_FILL['ok'] if on else '#ffffff'}' stroke='#555'/>")
    for i, line in enumerate(("tree attention:", "one pass verifies", "every path")):
        body.append(_text(tx + 150, ty + 45 + 13 * i, line, size=9, anchor="start"))
    return body


def _jacobi_panel(ox: float, jacobi: Sequence[Sequence[str]]) -> list[str]:
    """(c): the iterates of a block, one row each; a position is filled once it and all before it are fixed."""
    body = [_text(ox + 95, 22, "(c) Jacobi iteration", bold=True)]
    cw = 40
    final = list(jacobi[-1])
    for r, row in enumerate(jacobi):
        y = 45 + r * 34
        body.append(_text(ox + 8, y + 17, f"it {r}", size=9, anchor="start"))
        for i, tok in enumerate(row):
            fixed = all(jacobi[r][j] == final[j] for j in range(i + 1))
            body.append(_box(ox + 40 + i * cw, y, cw - 4, 24, tok, fill=_FILL["ok"] if fixed else "#ffffff", size=9))
    body.append(_text(ox + 110, 45 + len(jacobi) * 34 + 10, "all positions refined in parallel;", size=9, italic=True))
    body.append(_text(ox + 110, 45 + len(jacobi) * 34 + 23, "fixed point = greedy output", size=9, italic=True))
    return body


def _non_autoregressive_panel(ox: float) -> list[str]:
    """(d): a decoder without a causal mask fills every masked position in one pass."""
    body = [_text(ox + 65, 22, "(d) non-autoregressive", bold=True),
            _box(ox, 150, 130, 26, "decoder (no causal mask)", fill=_FILL["layer"], size=9)]
    for i in range(4):
        x = ox + i * 33
        body.append(_box(x, 80, 29, 24, f"y{i + 1}", fill=_FILL["ok"], size=9))
        body.append(_arrow(x + 14, 150, x + 14, 105))
        body.append(_box(x, 205, 29, 24, "[M]", fill="#ffffff", size=9))
        body.append(_arrow(x + 14, 205, x + 14, 177))
    body.append(_text(ox + 65, 260, "all positions at once,", size=9, italic=True))
    body.append(_text(ox + 65, 273, "hard for decoder-only LLMs", size=9, italic=True))
    return body
