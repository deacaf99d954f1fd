"""A live roofline explorer (ipywidgets): devices, data type, an operation's intensity, bandwidth what-ifs.

The chart is a small SVG drawn here (no plotting library), so the widget renders identically in JupyterLab,
Colab and the static book (which shows a still of the initial state). Every number comes from :mod:`unveiled.roofline`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

from ..hardware import DTYPES, Device, canonical_dtype, get_device
from ..plots.style import legible
from ..roofline import attainable_performance, bound
from .live import control_row, fit_svg, labelled, live_or_still, slider_layout

__all__ = ["roofline_explorer", "roofline_svg"]

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _fmt(v: float) -> str:
    return f"{v:,.3g}"


def roofline_svg(devices: Sequence[Device], dtype: str, intensity: float, *, width: int = 560, height: int = 330,
                 x_range: tuple[float, float] = (0.1, 1e4)) -> str:
    """An SVG roofline (log–log) of ``devices`` for ``dtype`` with an operation at ``intensity`` on each.

    Devices without a peak for ``dtype`` are listed as such instead of drawn. Introduced in Chapter 1.
    """
    dtype = canonical_dtype(dtype)
    drawn = [d for d in devices if d.has(dtype)]
    lo_x, hi_x = x_range
    peaks = [d.peak(dtype) / 1e12 for d in drawn] or [1.0]
    lo_y = 10 ** math.floor(math.log10(min(d.bandwidth * lo_x for d in drawn) / 1e12)) if drawn else 1e-3
    hi_y = 10 ** math.ceil(math.log10(max(peaks) * 1.5))
    ml, mr, mt, mb = 62, 16, 14, 40
    pw, ph = width - ml - mr, height - mt - mb

    def sx(x: float) -> float:
        return ml + pw * (math.log10(x) - math.log10(lo_x)) / (math.log10(hi_x) - math.log10(lo_x))

    def sy(y: float) -> float:
        y = max(y, lo_y)
        return mt + ph * (1 - (math.log10(y) - math.log10(lo_y)) / (math.log10(hi_y) - math.log10(lo_y)))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="white" stroke="#999"/>']
    for e in range(round(math.log10(lo_x)), round(math.log10(hi_x)) + 1):
        x = sx(10.0**e)
        parts.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{mt + ph + 14}" text-anchor="middle">{10.0**e:g}</text>')
    for e in range(round(math.log10(lo_y)), round(math.log10(hi_y)) + 1):
        y = sy(10.0**e)
        parts.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{ml - 4}" y="{y + 4:.1f}" text-anchor="end">{10.0**e:g}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle">arithmetic intensity '
                 f'(ops/byte)</text>')
    parts.append(f'<text transform="translate(13,{mt + ph / 2}) rotate(-90)" text-anchor="middle">'
                 f'{dtype.upper()} TFLOP/s (log)</text>')
    for i, d in enumerate(drawn):
        c = _PALETTE[i % len(_PALETTE)]
        r = d.ridge_point(dtype)
        xs = [x for x in (lo_x, r, hi_x) if lo_x <= x <= hi_x]
        pts = " ".join(f"{sx(x):.1f},{sy(float(attainable_performance(x, d, dtype)) / 1e12):.1f}" for x in xs)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2.5"/>')
        perf = float(attainable_performance(intensity, d, dtype)) / 1e12
        parts.append(f'<circle cx="{sx(intensity):.1f}" cy="{sy(perf):.1f}" r="5" fill="{c}" stroke="black"/>')
        parts.append(f'<text x="{ml + 8}" y="{mt + 16 + 14 * i}" fill="{legible(c)}">{html.escape(d.display_name)}: '
                     f'ridge {r:,.1f}, peak {_fmt(d.peak(dtype) / 1e12)} T</text>')
    x = sx(intensity)
    parts.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#555" stroke-dasharray="4,3"/>')
    parts.append("</svg>")
    return "".join(parts)


def _summary(devices: Sequence[Device], dtype: str, intensity: float, flops: float) -> str:
    rows = []
    for d in devices:
        if not d.has(dtype):
            rows.append(f"<tr><td>{html.escape(d.display_name)}</td><td colspan='4'>no {dtype} peak in the "
                        f"table</td></tr>")
            continue
        perf = float(attainable_performance(intensity, d, dtype))
        b = bound(intensity, d, dtype)
        colour = legible("#d62728" if b == "memory" else "#2ca02c")
        rows.append(f"<tr><td>{html.escape(d.display_name)}</td><td>{_fmt(perf / 1e12)} T</td>"
                    f"<td>{100 * perf / d.peak(dtype):.0f}%</td><td style='color:{colour}'>{b}-bound</td>"
                    f"<td>{_fmt(flops / perf * 1e6)} µs</td></tr>")
    return ("<table style='font-size:12px'><tr><th>device</th><th>attainable</th><th>of peak</th><th>bound</th>"
            f"<th>time of {_fmt(flops / 1e9)} GFLOP</th></tr>{''.join(rows)}</table>")


def roofline_explorer(devices: Iterable[str | Device] = ("a6000", "h100-sxm", "l4"), *, dtype: str = "fp16",
                      intensity: float = 50.0, flops: float = 1e9):
    """A live roofline explorer: choose devices and a data type, move the intensity, scale the bandwidth.

    Returns an ``ipywidgets.VBox`` in a live session (display it in Jupyter or Colab) and a still of its
    initial state in the book build (:func:`unveiled.explorers.live.live_or_still`). The table below the chart gives, per
    device, the attainable performance, its fraction of the peak, the bound and the time of an operation of
    ``flops`` operations at that intensity. The "bandwidth ×" slider multiplies every device's bandwidth, a
    what-if study of faster memory (survey Fig. 20). Introduced in Chapter 1.
    """
    devs = [get_device(d) for d in devices]
    if not devs:
        raise ValueError("give at least one device, e.g. roofline_explorer(['a6000', 'h100'])")
    dtype = canonical_dtype(dtype)
    if not (isinstance(intensity, (int, float)) and 0.1 <= intensity <= 1e4):
        raise ValueError(f"intensity must be a number between 0.1 and 10000 ops/byte, got {intensity!r}")
    from .._validate import check_positive

    flops = check_positive("flops", flops)
    return live_or_still(
        lambda: _roofline_widget(devs, dtype, float(intensity), flops),
        lambda: _view(devs, dtype, float(intensity), flops),
        title="Roofline explorer", call=f"uv.roofline_explorer({[d.name for d in devs]!r}, dtype={dtype!r}, "
        f"intensity={intensity:g})",
        settings={"devices": [d.name for d in devs], "data type": dtype, "intensity": f"{intensity:g} ops/byte",
                  "bandwidth": "×1"},
        description=f"Roofline of {', '.join(d.display_name for d in devs)} for {dtype.upper()} with an operation "
                    f"at {intensity:g} ops/byte, and a table of its attainable performance on each device")


def _view(devs: Sequence[Device], dtype: str, intensity: float, flops: float) -> str:
    names = ", ".join(d.display_name for d in devs)
    svg = fit_svg(roofline_svg(devs, dtype, intensity),
                  f"Roofline of {names} for {dtype.upper()}, an operation at {intensity:g} ops/byte marked")
    return svg + _summary(devs, dtype, intensity, flops)


def _roofline_widget(devs: Sequence[Device], dtype: str, intensity: float, flops: float):
    import ipywidgets as w

    all_names = sorted({*[d.name for d in devs], "a6000", "h100-sxm", "h200", "b200", "l4", "mi300x",
                        "tpu-v6e", "rtx-4090", "i9-13900k"})
    # Labels are separate HTML widgets, not `description=`: the static page's widget manager typesets
    # descriptions with the MathJax 2 API, which the book's MathJax 3 lacks.
    pick = w.SelectMultiple(options=all_names, value=tuple(d.name for d in devs), rows=5)
    dt = w.Dropdown(options=list(DTYPES), value=dtype)
    inten = w.FloatLogSlider(value=intensity, base=10, min=-1, max=4, step=0.02, readout_format=".3g",
                             continuous_update=True, layout=slider_layout())
    bw = w.FloatSlider(value=1.0, min=0.25, max=4.0, step=0.25, layout=slider_layout())
    chart = w.HTML()
    table = w.HTML()
    extra = {d.name: d for d in devs}

    def redraw(*_):
        chosen = [extra.get(n) or get_device(n) for n in pick.value]
        chosen = [d.with_(bandwidth=d.bandwidth * bw.value) if bw.value != 1.0 else d for d in chosen]
        names = ", ".join(d.display_name for d in chosen)
        chart.value = fit_svg(roofline_svg(chosen, dt.value, inten.value),
                              f"Roofline of {names} for {dt.value.upper()}")
        table.value = _summary(chosen, dt.value, inten.value, flops)

    for control in (pick, dt, inten, bw):
        control.observe(redraw, names="value")
    redraw()
    controls = w.VBox([labelled("data type", dt, "125px"), labelled("intensity", inten, "125px"),
                       labelled("bandwidth ×", bw, "125px")])
    return w.VBox([control_row([labelled("devices", pick, "125px"), controls]), chart, table])
