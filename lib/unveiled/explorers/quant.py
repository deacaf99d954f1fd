"""A live quantization trade-off explorer (ipywidgets): bits against time, memory and bottlenecks.

Pick a model, a device, the weight / activation / KV-cache bit widths, the batch and the sequence length; the
explorer runs :func:`unveiled.analyze` for prefill and decode at those bits *and* at FP16, and shows the
speedups, the memory footprint against the device's capacity, which operators are memory- or compute-bound
in each stage, the decode operators on the roofline, and how the decode speedup of the chosen bits decays as
the batch grows. The static book shows a still of its initial state; the Altair version in :mod:`unveiled.plots.quant`
works without a kernel. Introduced in Chapter 3.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from ..analyzer.analysis import Analysis, analyze
from ..analyzer.configs import model_names
from ..analyzer.sweep import sweep
from ..hardware import device_names
from ..plots.style import BOUND_COLORS
from .analyzer import operator_roofline_svg
from .live import ExplorerStill, control_row, fit_svg, live_or_still

if TYPE_CHECKING:
    import ipywidgets

__all__ = ["quant_explorer", "speedup_svg", "tradeoff_html"]


def _gb(x: float) -> str:
    return f"{x / 1e9:.3g} GB"


def tradeoff_html(quant: dict[str, Analysis], base: dict[str, Analysis]) -> str:
    """Both stages at the chosen bits next to FP16: time, speedup, memory and each operator's bound.

    ``quant`` and ``base`` map ``"prefill"``/``"decode"`` to analyses. Introduced in Chapter 3."""
    rows = []
    for stage in ("prefill", "decode"):
        q, b = quant[stage], base[stage]
        rows.append(f"<tr><td><b>{stage}</b></td><td>{q.time_s * 1e3:.4g} ms</td><td>{b.time_s * 1e3:.4g} ms</td>"
                    f"<td><b>{b.time_s / q.time_s:.2f}×</b></td><td>{q.tokens_per_s:,.4g}</td>"
                    f"<td>{100 * q.memory_bound_share:.0f} %</td></tr>")
    m = quant["decode"].memory
    cap = m.capacity if getattr(m, "capacity", None) else quant["decode"].device.memory_bytes
    fits = "fits" if (cap is None or m.total <= cap) else "<span style='color:#d62728'>does NOT fit</span>"
    total = max(m.total, 1.0)
    bar = "".join(
        f"<div title='{name}: {_gb(v)}' style='display:inline-block;height:12px;background:{col};"
        f"width:{100 * v / total:.1f}%'></div>"
        for name, v, col in (("weights", m.weights, "#4c78a8"), ("KV cache", m.kv_cache, "#f58518"),
                             ("activations", m.activations, "#54a24b")))
    ops_p = quant["prefill"].ops.set_index("op")["bound"]
    ops_d = quant["decode"].ops.set_index("op")["bound"]
    cells = "".join(
        f"<tr><td>{html.escape(op)}</td>"
        f"<td style='background:{BOUND_COLORS[ops_p.get(op, 'memory')]};width:14px'></td>"
        f"<td style='background:{BOUND_COLORS[ops_d[op]]};width:14px'></td></tr>" for op in ops_d.index)
    return (
        "<div style='font:12px sans-serif;display:flex;flex-wrap:wrap;gap:18px;max-width:100%'><div>"
        "<table><tr><th></th><th>chosen bits</th><th>FP16</th><th>speedup</th><th>tokens/s</th>"
        "<th>time memory-bound</th></tr>" + "".join(rows) + "</table>"
        f"<p>Decode memory: weights {_gb(m.weights)}, KV cache {_gb(m.kv_cache)}, activations "
        f"{_gb(m.activations)} = <b>{_gb(m.total)}</b> ({fits}"
        + (f" {_gb(cap)}" if cap else "") + f")</p><div style='width:300px;max-width:100%;font-size:0'>{bar}</div></div>"
        "<div><table><tr><th>operator</th><th>P</th><th>D</th></tr>" + cells + "</table>"
        f"<span style='display:inline-block;width:0.8em;height:0.8em;background:{BOUND_COLORS['memory']}'></span> "
        "memory-bound "
        f"<span style='display:inline-block;width:0.8em;height:0.8em;background:{BOUND_COLORS['compute']}'></span> "
        "compute-bound</div></div>")


def speedup_svg(model: str, device: str, *, w_bits: int, a_bits: int, kv_bits: int, seq_len: int,
                width: int = 420, height: int = 200) -> str:
    """An SVG of the decode speedup of the chosen bits over FP16 versus batch 1–256 (log x).

    Introduced in Chapter 3."""
    batches = [2**k for k in range(9)]
    df = sweep(model, device, stage="decode", batch=batches, seq_len=seq_len, w_bits=sorted({16, w_bits}),
               a_bits=sorted({16, a_bits}), kv_bits=sorted({16, kv_bits}), check_context=False)
    base = df[(df.w_bits == 16) & (df.a_bits == 16) & (df.kv_bits == 16)].set_index("batch")["time_s"]
    q = df[(df.w_bits == w_bits) & (df.a_bits == a_bits) & (df.kv_bits == kv_bits)].set_index("batch")["time_s"]
    sp = (base / q).reindex(batches)
    top = max(1.5, float(sp.max()) * 1.1)
    pad = 36

    def sx(b):
        return pad + (width - pad - 10) * math.log2(b) / 8

    def sy(v):
        return height - 24 - (height - 34) * v / top

    pts = " ".join(f"{sx(b):.1f},{sy(v):.1f}" for b, v in sp.items())
    ticks = "".join(f"<text x='{sx(b):.1f}' y='{height - 8}' font-size='10' text-anchor='middle'>{b}</text>"
                    for b in batches)
    one = f"<line x1='{pad}' x2='{width - 10}' y1='{sy(1):.1f}' y2='{sy(1):.1f}' stroke='#999' stroke-dasharray='4 3'/>"
    return (f"<svg width='{width}' height='{height}' style='font-family:sans-serif'>{one}"
            f"<polyline points='{pts}' fill='none' stroke='#ff7f0e' stroke-width='2.5'/>{ticks}"
            f"<text x='4' y='12' font-size='11'>decode speedup over FP16 (×), max {float(sp.max()):.2f}</text>"
            f"<text x='{width / 2}' y='{height}' font-size='10' text-anchor='middle'>batch</text></svg>")


def _views(v: dict) -> tuple[str, str, str]:
    """The explorer's three read-outs for one setting: the trade-off table, the decode roofline, the speedup."""
    kw = dict(batch=v["batch"], seq_len=v["seq_len"], check_context=False)
    quant = {s: analyze(v["model"], v["device"], stage=s, w_bits=v["w_bits"], a_bits=v["a_bits"],
                        kv_bits=v["kv_bits"], **kw) for s in ("prefill", "decode")}
    base = {s: analyze(v["model"], v["device"], stage=s, **kw) for s in ("prefill", "decode")}
    bits = f"W{v['w_bits']}A{v['a_bits']}KV{v['kv_bits']}"
    dev = quant["decode"].device.display_name
    roof = fit_svg(operator_roofline_svg(quant["decode"]),
                   f"Decode operators of {v['model']} at {bits} on the roofline of {dev}")
    curve = fit_svg(speedup_svg(v["model"], v["device"], w_bits=v["w_bits"], a_bits=v["a_bits"],
                                kv_bits=v["kv_bits"], seq_len=v["seq_len"]),
                    f"Decode speedup of {bits} over FP16 against the batch, {v['model']} on {dev}")
    return tradeoff_html(quant, base), roof, curve


def quant_explorer(model: str = "llama-2-13b", device: str = "a6000", *, w_bits: int = 4, a_bits: int = 16,
                   kv_bits: int = 16, batch: int = 1, seq_len: int = 1024) -> ipywidgets.VBox | ExplorerStill:
    """The live explorer: dropdowns for model, device, bits, batch and sequence length (a still of the initial
    state in the book build, :func:`.live.live_or_still`). Introduced in Chapter 3."""
    start = dict(model=model, device=device, w_bits=w_bits, a_bits=a_bits, kv_bits=kv_bits, batch=batch,
                 seq_len=seq_len)
    call = (f"qexplorer.quant_explorer({model!r}, {device!r}, w_bits={w_bits}, a_bits={a_bits}, kv_bits={kv_bits}, "
            f"batch={batch}, seq_len={seq_len})")

    def still() -> str:
        table, roof, curve = _views(start)
        return (table + "<div style='display:flex;flex-wrap:wrap;gap:8px;max-width:100%'>"
                f"<div style='flex:1 1 320px;max-width:100%'>{roof}</div>"
                f"<div style='flex:1 1 280px;max-width:100%'>{curve}</div></div>")

    return live_or_still(
        lambda: _quant_widget(start), still, title="Quantization trade-off explorer", call=call,
        settings={"model": model, "device": device, "bits": f"W{w_bits}A{a_bits}KV{kv_bits}", "batch": batch,
                  "sequence": seq_len},
        description=f"{model} on {device} at W{w_bits}A{a_bits}KV{kv_bits} against FP16: time, speedup and "
                    "memory per stage, each operator's bound, the decode roofline and the speedup against the batch")


def _quant_widget(start: dict) -> ipywidgets.VBox:
    import ipywidgets as w

    bits = [2, 3, 4, 8, 16]
    narrow = w.Layout(width="80px")
    # Dropdowns with separate HTML labels: the static page's widget manager cannot typeset widget descriptions.
    c = {
        "model": w.Dropdown(options=model_names(), value=start["model"], layout=w.Layout(width="170px")),
        "device": w.Dropdown(options=device_names("datasheet"), value=start["device"], layout=w.Layout(width="150px")),
        "w_bits": w.Dropdown(options=bits, value=start["w_bits"], layout=narrow),
        "a_bits": w.Dropdown(options=[4, 8, 16], value=start["a_bits"], layout=narrow),
        "kv_bits": w.Dropdown(options=bits, value=start["kv_bits"], layout=narrow),
        "batch": w.Dropdown(options=[2**k for k in range(10)], value=start["batch"], layout=narrow),
        "seq_len": w.Dropdown(options=[2**k for k in range(7, 18)], value=start["seq_len"],
                              layout=w.Layout(width="100px")),
    }

    def label(text: str, width: str = "70px"):
        return w.HTML(f"<b>{text}</b>", layout=w.Layout(width=width))

    table, roof, curve = w.HTML(), w.HTML(), w.HTML()

    def update(_=None):
        try:
            table.value, roof.value, curve.value = _views({k: x.value for k, x in c.items()})
        except ValueError as exc:
            table.value = f"<div style='color:#d62728;font:13px sans-serif'>{html.escape(str(exc))}</div>"

    update()
    for widget in c.values():
        widget.observe(update, names="value")
    controls = w.VBox([
        control_row([label("model"), c["model"], label("device"), c["device"]]),
        control_row([label("W bits"), c["w_bits"], label("A bits"), c["a_bits"], label("KV bits"), c["kv_bits"]]),
        control_row([label("batch"), c["batch"], label("sequence", "80px"), c["seq_len"]]),
    ])
    return w.VBox([controls, table, control_row([roof, curve], align_items="flex-start")])
