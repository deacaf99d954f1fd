"""A live LLM analyzer (ipywidgets), the notebook counterpart of LLM-Viewer's web view.

Pick a model, a device, the stage, batch, sequence length, bit widths, FlashAttention and the accounting
convention; the explorer re-runs :func:`unveiled.analyze` (well under a millisecond) and redraws the layer's
operator graph (one box per operator in data-flow order, coloured by what bounds it, with its share of the
time), every operator on the device's roofline, the totals and the memory footprint, and the load/store
breakdown of one operator. The figures are small SVG/HTML drawn here, so the widget looks the same in
JupyterLab and Colab; the static book shows a still of the initial state (:mod:`.live`).
"""

from __future__ import annotations

import html
import math

from ..analyzer.analysis import Analysis, analyze
from ..analyzer.configs import model_names
from ..hardware import device_names
from ..plots.style import BOUND_COLORS, PRECISION_COLORS, legible
from .live import control_row, fit_svg, live_or_still

__all__ = ["analyzer_explorer", "operator_graph_html", "operator_roofline_svg"]


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".strip()


def operator_graph_html(a: Analysis, max_height: int | None = 520) -> str:
    """The operators of one pass as a vertical flow of boxes (like LLM-Viewer's layer graph).

    Each box shows the operator, how many times it runs, its FLOPs and bytes, and a bar of its share of the
    pass's time; the border colour says memory- or compute-bound. A flow taller than ``max_height`` pixels
    scrolls (``None``: never). Introduced in Chapter 2.
    """
    boxes = []
    for _, r in a.ops.iterrows():
        colour = BOUND_COLORS[r.bound]
        share = 100 * r.time_share
        boxes.append(
            f'<div style="border:2px solid {colour};border-radius:6px;padding:2px 6px;margin:0 0 2px 0;'
            f'font:11px sans-serif;background:#fff">'
            f'<b>{html.escape(r.op)}</b> ×{r["count"]} &nbsp;<span style="color:#555">{_si(r.flops, "FLOP")}, '
            f'{_si(r.bytes, "B")}, I={r.intensity:.3g}</span>'
            f'<div style="background:#eee;height:5px"><div style="background:{colour};height:5px;'
            f'width:{min(share, 100):.1f}%"></div></div>'
            f'<span style="color:#555">{share:.1f} % of the time ({1e3 * r.total_time_s:.3g} ms)</span></div>'
            '<div style="text-align:center;color:#666;font-size:9px;line-height:9px">▼</div>'
        )
    if boxes:
        boxes[-1] = boxes[-1].rsplit("<div style=\"text-align:center", 1)[0]
    limit = "" if max_height is None else f"max-height:{max_height}px;overflow-y:auto;"
    return f'<div style="{limit}padding-right:4px">' + "".join(boxes) + "</div>"


def operator_roofline_svg(a: Analysis, *, width: int = 560, height: int = 330) -> str:
    """An SVG of every operator of an analysis on its device's roofline (log–log). Operators at the same point
    share a label; crowded labels are staggered upwards with a leader line. Introduced in Chapter 2."""
    from ..plots.inference import _ops_points

    pts = _ops_points(a)
    dtypes = [d for d in ("fp32", "fp16", "int8", "int4") if d in set(pts.dtype)] or ["fp16"]
    dev = a.device
    lo_x = 10.0 ** math.floor(math.log10(max(pts.intensity.min() / 2, 1e-2)))
    hi_x = 10.0 ** math.ceil(math.log10(max(pts.intensity.max() * 2, 2 * max(dev.ridge_point(d) for d in dtypes))))
    top = max(max(dev.peak(d) for d in dtypes) / 1e12, pts.label_y.max())
    hi_y = 10.0 ** math.ceil(math.log10(top * 1.5))
    lo_y = 10.0 ** math.floor(math.log10(max(min(dev.bandwidth * lo_x / 1e12, pts.tflop_s.min()), 1e-6)))
    ml, mr, mt, mb = 56, 12, 12, 38
    pw, ph = width - ml - mr, height - mt - mb

    def sx(x):
        return ml + pw * (math.log10(x) - math.log10(lo_x)) / (math.log10(hi_x) - math.log10(lo_x))

    def sy(y):
        y = min(max(y, lo_y), hi_y)
        return mt + ph * (1 - (math.log10(y) - math.log10(lo_y)) / (math.log10(hi_y) - math.log10(lo_y)))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="10"><rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="white" stroke="#999"/>']
    for e in range(round(math.log10(lo_x)), round(math.log10(hi_x)) + 1):
        out.append(f'<text x="{sx(10.0 ** e):.1f}" y="{mt + ph + 13}" text-anchor="middle">{10.0 ** e:g}</text>')
    for e in range(round(math.log10(lo_y)), round(math.log10(hi_y)) + 1):
        out.append(f'<text x="{ml - 4}" y="{sy(10.0 ** e) + 3:.1f}" text-anchor="end">{10.0 ** e:g}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle">arithmetic intensity (FLOPs/byte)</text>')
    out.append(f'<text transform="translate(12,{mt + ph / 2}) rotate(-90)" text-anchor="middle">TFLOP/s</text>')
    for i, d in enumerate(dtypes):
        r, peak = dev.ridge_point(d), dev.peak(d) / 1e12
        pts_line = [(lo_x, dev.bandwidth * lo_x / 1e12), (r, peak), (hi_x, peak)]
        c = PRECISION_COLORS.get(d, "#333")
        out.append('<polyline fill="none" stroke-width="2" stroke="' + c + '" points="'
                   + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts_line) + '"/>')
        out.append(f'<text x="{ml + pw - 4}" y="{sy(peak) - 3 - 10 * i:.1f}" text-anchor="end" fill="{legible(c)}">'
                   f'{d.upper()} roof, ridge {r:.0f}</text>')
    for _, r in pts.iterrows():
        x, y, ly = sx(r.intensity), sy(r.tflop_s), sy(r.label_y)
        rad = 3 + 9 * math.sqrt(r.time_share_pct / 100)
        if ly < y - 1:
            out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{ly:.1f}" stroke="#bbb" stroke-width="0.8"/>')
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{rad:.1f}" fill="{BOUND_COLORS[r.bound]}" '
                   f'fill-opacity="0.75" stroke="black" stroke-width="0.5"><title>{html.escape(r.op)}: '
                   f'{r.intensity:.3g} FLOPs/byte, {r.tflop_s:.3g} TFLOP/s, '
                   f'{r.time_share_pct:.1f} % of the time</title></circle>')
        out.append(f'<text x="{x + 6:.1f}" y="{ly - 3:.1f}" font-size="9" fill="#333">{html.escape(r.label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _summary_html(a: Analysis) -> str:
    m = a.memory
    fits = "" if m.fits is None else (" — fits" if m.fits else " — <b style='color:#d62728'>does not fit</b>")
    cap = "" if m.capacity is None else f" of {m.capacity / 1e9:.0f} GB"
    return (f"<div style='font:13px sans-serif'><b>{html.escape(a.model.name)}</b> on "
            f"<b>{html.escape(a.device.display_name)}</b>, {a.stage}, batch {a.batch}, sequence {a.seq_len}, "
            f"W{a.w_bits}A{a.a_bits}KV{a.kv_bits}{', FlashAttention' if a.flash_attention else ''} "
            f"({a.conventions} convention)<br>"
            f"one pass: <b>{a.time_s * 1e3:.4g} ms</b> ({a.tokens_per_s:,.0f} tokens/s), {_si(a.flops, 'FLOP')}, "
            f"{_si(a.bytes, 'B')} moved, intensity {a.intensity:.3g} FLOPs/byte, "
            f"{100 * a.memory_bound_share:.0f} % of the time memory-bound<br>"
            f"memory: weights {m.weights / 1e9:.2f} GB + KV cache {m.kv_cache / 1e9:.2f} GB + activations "
            f"{m.activations / 1e9:.3f} GB = <b>{m.total / 1e9:.2f} GB</b>{cap}{fits}</div>")


def _detail_html(a: Analysis, op: str) -> str:
    r = a.ops.set_index("op").loc[op]
    rows = [("instances per pass", f"{r['count']}"), ("FLOPs (one)", _si(r.flops, "FLOP")),
            ("weights read", _si(r.weight_bytes, "B")), ("activations read", _si(r.act_load_bytes, "B")),
            ("activations written", _si(r.act_store_bytes, "B")), ("KV cache read", _si(r.kv_load_bytes, "B")),
            ("KV cache written", _si(r.kv_store_bytes, "B")), ("intensity", f"{r.intensity:.4g} FLOPs/byte"),
            ("runs in", r.compute_dtype.upper()), ("attainable", _si(r.attainable_flop_s, "FLOP/s")),
            ("bound", r.bound), ("time (one)", f"{r.time_s * 1e6:.4g} µs"),
            ("time (all)", f"{r.total_time_s * 1e3:.4g} ms")]
    body = "".join(f"<tr><td style='padding:0 8px 0 0'>{k}</td><td><b>{html.escape(str(v))}</b></td></tr>"
                   for k, v in rows)
    return f"<div style='font:12px sans-serif'><b>{html.escape(op)}</b><table>{body}</table></div>"


def analyzer_explorer(model: str = "llama-2-7b", device: str = "a6000", *, stage: str = "decode", batch: int = 1,
                      seq_len: int = 2048, w_bits: int = 16, a_bits: int = 16, kv_bits: int = 16,
                      flash_attention: bool = False, conventions: str = "exact"):
    """A live analyzer: controls for every argument of :func:`unveiled.analyze`, then the operator graph,
    the roofline, the totals and one operator's details, recomputed on every change. Introduced in Chapter 2."""
    first = analyze(model, device, stage=stage, batch=batch, seq_len=seq_len, w_bits=w_bits, a_bits=a_bits,
                    kv_bits=kv_bits, flash_attention=flash_attention, conventions=conventions, check_context=False)
    settings = {"model": first.model.name, "device": first.device.name, "stage": stage, "batch": batch,
                "sequence": seq_len, "bits": f"W{w_bits}A{a_bits}KV{kv_bits}",
                "attention": "FlashAttention" if flash_attention else "naive", "counting": conventions}
    call = f"uv.analyzer_explorer({first.model.name!r}, {device!r}, stage={stage!r}, batch={batch}, seq_len={seq_len})"
    return live_or_still(lambda: _analyzer_widget(first, device), lambda: _still(first), title="LLM analyzer",
                         call=call, settings=settings,
                         description=f"Analysis of {first.model.name} on {first.device.display_name}: totals, "
                                     "every operator on the roofline, the layer's operator graph and the "
                                     "slowest operator's loads and stores")


def _roof_label(a: Analysis) -> str:
    return (f"Operators of {a.model.name} ({a.stage}, batch {a.batch}, sequence {a.seq_len}) on the roofline of "
            f"{a.device.display_name}, sized by their share of the time")


def _still(a: Analysis) -> str:
    top = a.ops.sort_values("time_share").op.iloc[-1]
    return (_summary_html(a) + fit_svg(operator_roofline_svg(a), _roof_label(a))
            + "<div style='display:flex;flex-wrap:wrap;gap:12px;max-width:100%'>"
            + f"<div style='flex:1 1 300px;max-width:100%'>{operator_graph_html(a, max_height=None)}</div>"
            + f"<div style='flex:1 1 240px'>{_detail_html(a, top)}</div></div>")


def _analyzer_widget(first: Analysis, device: str):
    import ipywidgets as w

    stage, batch, seq_len = first.stage, first.batch, first.seq_len
    w_bits, a_bits, kv_bits = first.w_bits, first.a_bits, first.kv_bits
    flash_attention, conventions = first.flash_attention, first.conventions
    bits = [1, 2, 3, 4, 8, 16]
    powers = [2**k for k in range(0, 11)]
    lengths = [2**k for k in range(4, 18)]
    narrow = w.Layout(width="80px")
    # Dropdowns with separate HTML labels only: the static page's widget manager typesets descriptions, button
    # and slider labels with the MathJax 2 API, which the book's MathJax 3 lacks.
    c = {
        "model": w.Dropdown(options=model_names(), value=first.model.name, layout=w.Layout(width="170px")),
        "device": w.Dropdown(options=device_names("datasheet"), value=first.device.name if first.device.preset
                             == "datasheet" else device, layout=w.Layout(width="150px")),
        "stage": w.Dropdown(options=["prefill", "decode"], value=stage, layout=w.Layout(width="100px")),
        "batch": w.Dropdown(options=sorted({*powers, batch}), value=batch, layout=narrow),
        "seq_len": w.Dropdown(options=sorted({*lengths, seq_len}), value=seq_len, layout=w.Layout(width="100px")),
        "w_bits": w.Dropdown(options=bits, value=w_bits, layout=narrow),
        "a_bits": w.Dropdown(options=[4, 8, 16, 32], value=a_bits, layout=narrow),
        "kv_bits": w.Dropdown(options=bits, value=kv_bits, layout=narrow),
        "flash_attention": w.Dropdown(options=[("naive", False), ("FlashAttention", True)], value=flash_attention,
                                      layout=w.Layout(width="140px")),
        "conventions": w.Dropdown(options=["exact", "paper"], value=conventions, layout=w.Layout(width="90px")),
    }

    def label(text: str, width: str = "70px"):
        return w.HTML(f"<b>{text}</b>", layout=w.Layout(width=width))

    summary = w.HTML(_summary_html(first))
    graph = w.HTML(operator_graph_html(first), layout=w.Layout(width="330px", max_width="100%"))
    roof = w.HTML(fit_svg(operator_roofline_svg(first), _roof_label(first)))
    op_pick = w.Dropdown(options=list(first.ops.op), value=first.ops.sort_values("time_share").op.iloc[-1],
                         layout=w.Layout(width="200px"))
    detail = w.HTML(_detail_html(first, op_pick.value))
    state = {"a": first}

    def update(_=None):
        try:
            a = analyze(c["model"].value, c["device"].value, stage=c["stage"].value, batch=c["batch"].value,
                        seq_len=c["seq_len"].value, w_bits=c["w_bits"].value, a_bits=c["a_bits"].value,
                        kv_bits=c["kv_bits"].value, flash_attention=c["flash_attention"].value,
                        conventions=c["conventions"].value, check_context=False)
        except ValueError as exc:  # e.g. the paper convention on an MLA model
            summary.value = f"<div style='color:#d62728;font:13px sans-serif'>{html.escape(str(exc))}</div>"
            return
        state["a"] = a
        summary.value = _summary_html(a)
        graph.value = operator_graph_html(a)
        roof.value = fit_svg(operator_roofline_svg(a), _roof_label(a))
        keep = op_pick.value if op_pick.value in set(a.ops.op) else a.ops.sort_values("time_share").op.iloc[-1]
        op_pick.options = list(a.ops.op)
        op_pick.value = keep
        detail.value = _detail_html(a, keep)

    for widget in c.values():
        widget.observe(update, names="value")
    op_pick.observe(lambda _: setattr(detail, "value", _detail_html(state["a"], op_pick.value)), names="value")
    controls = w.VBox([
        control_row([label("model"), c["model"], label("device"), c["device"], label("counting", "80px"),
                     c["conventions"]]),
        control_row([label("stage"), c["stage"], label("attention", "80px"), c["flash_attention"]]),
        control_row([label("batch"), c["batch"], label("sequence", "80px"), c["seq_len"]]),
        control_row([label("W bits"), c["w_bits"], label("A bits"), c["a_bits"], label("KV bits"), c["kv_bits"]]),
    ])
    details = w.VBox([control_row([label("operator", "80px"), op_pick]), detail])
    return w.VBox([controls, summary, roof, control_row([graph, details], align_items="flex-start")])
