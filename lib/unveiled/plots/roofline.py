"""Roofline charts (Chapter 1): rooflines of devices and data types, operations placed on them, the survey's
Figs. 4–6, 15, 17 and 18, a static interactive roofline and the measured roofline of this machine.

Every number drawn comes from :mod:`unveiled.roofline`, :mod:`unveiled.hardware` or :mod:`unveiled.measure`.
A roofline is two straight segments on log–log axes, so each line is drawn from three points (start, ridge,
end): the charts stay small in the page. Charts render as SVG (``usermeta.embedOptions``), which keeps them
crisp and lets a browser test read them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import altair as alt
import pandas as pd

from ..datafiles import data_file
from ..hardware import DTYPES, Device, canonical_dtype, get_device, hardware_table
from ..roofline import attainable_performance
from .style import BOUND_COLORS, PRECISION_COLORS, color_scale, label_layout, legible

__all__ = [
    "PHASE_COLORS",
    "SURVEY_FIG15",
    "fusion_chart",
    "interactive_roofline_chart",
    "measured_roofline_chart",
    "memory_hierarchy_chart",
    "memory_hierarchy_table",
    "roofline_chart",
    "roofline_lines",
    "timeline_chart",
]

#: The survey's illustrative intensities in Fig. 15 (before and after fusion), for comparison.
SURVEY_FIG15 = pd.DataFrame({"case": ["memory-bound", "compute-bound"], "intensity_before": [50.0, 250.0],
                             "intensity_after": [180.0, 500.0]})

#: The three phases of an operation (survey Fig. 4).
PHASE_COLORS: dict[str, str] = {"load": "#4c78a8", "compute": "#f58518", "store": "#b279a2"}
#: Vega's "tableau10" scheme, spelled out so that labels can be drawn in a legible shade of each colour.
_TABLEAU10 = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
              "#bab0ac"]

_X_TITLE = "arithmetic intensity (ops/byte)"
_Y_TITLE = "attainable performance (TFLOP/s or TOP/s)"
_SVG = {"embedOptions": {"renderer": "svg"}}


def _svg(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    return chart.properties(usermeta=_SVG)


def _line_spec(item) -> tuple[Device, str, str]:
    """Normalise a line spec: a Device/name, ``(device, dtype)``, ``(device, dtype, label)`` or a dict."""
    if isinstance(item, dict):
        dev = get_device(item["device"], item.get("preset", "datasheet"))
        dtype = canonical_dtype(item.get("dtype", "fp16"))
        return dev, dtype, item.get("label") or f"{dev.display_name}, {dtype.upper()}"
    if isinstance(item, (str, Device)):
        item = (item,)
    if not isinstance(item, tuple) or not 1 <= len(item) <= 3:
        raise TypeError(f"a roofline is a device, (device, dtype) or (device, dtype, label); got {item!r}")
    dev = get_device(item[0])
    dtype = canonical_dtype(item[1]) if len(item) > 1 else ("fp16" if dev.has("fp16") else dev.dtypes[0])
    label = item[2] if len(item) > 2 else f"{dev.display_name}, {dtype.upper()}"
    return dev, dtype, label


# On log axes, label only the powers of ten (Vega's default labels 2 and 20 too, and they collide).
_DECADE_LABELS = "abs(log(datum.value) / log(10) - round(log(datum.value) / log(10))) < 1e-6 ? datum.label : ''"


def _axis(title: str, log: bool) -> alt.Axis:
    return alt.Axis(title=title, labelExpr=_DECADE_LABELS) if log else alt.Axis(title=title)


def _decades(lo: float, hi: float) -> list[float]:
    return [10.0 ** math.floor(math.log10(lo)), 10.0 ** math.ceil(math.log10(hi))]


def roofline_lines(lines: Iterable, x_domain: Sequence[float] | None = None, *, log: bool = True) -> pd.DataFrame:
    """The points that draw each roofline: start, ridge and end of the x range, per (device, dtype, label).

    Columns ``label``, ``device``, ``dtype``, ``intensity``, ``flop_s``, ``tflop_s``, ``ridge``, ``peak_tflop_s``.
    On linear axes the line starts at the origin.
    """
    specs = [_line_spec(item) for item in lines]
    if not specs:
        raise ValueError("give at least one roofline, e.g. [('a6000', 'fp16')]")
    ridges = [dev.ridge_point(dt) for dev, dt, _ in specs]
    if x_domain is None:
        x_domain = _decades(min(ridges) / 50, max(ridges) * 50) if log else [0.0, 3 * max(ridges)]
    lo, hi = float(x_domain[0]), float(x_domain[1])
    rows = []
    for (dev, dtype, label), r in zip(specs, ridges, strict=True):
        xs = [x for x in (lo, r, hi) if lo <= x <= hi]
        for x in xs:
            y = 0.0 if x == 0 else float(attainable_performance(x, dev, dtype))
            rows.append({"label": label, "device": dev.display_name, "dtype": dtype, "intensity": x, "flop_s": y,
                         "tflop_s": y / 1e12, "ridge": r, "peak_tflop_s": dev.peak(dtype) / 1e12})
    return pd.DataFrame(rows)


def roofline_chart(lines: Iterable, points: pd.DataFrame | None = None, *, log: bool = True,
                   x_domain: Sequence[float] | None = None, y_domain: Sequence[float] | None = None,
                   shade: bool = False, annotate_ridges: bool = True, color: str = "label", title: str = "",
                   width: int = 440, height: int = 300, _layers: list | None = None) -> alt.LayerChart:
    """Rooflines of one or more (device, data type) pairs, optionally with operations placed on them.

    ``lines``: devices, ``(device, dtype)``, ``(device, dtype, label)`` or dicts with those keys (and
    ``preset``). ``points``: a DataFrame with ``intensity`` and ``flop_s`` (and optionally ``label``); each is
    drawn and labelled. ``shade`` colours the memory- and compute-bound regions of the first roofline as in
    the survey's Fig. 5. ``color="dtype"`` uses the book's precision palette. Log axes by default; ``log=False``
    gives the survey's linear view. Introduced in Chapter 1.
    """
    df = roofline_lines(lines, x_domain, log=log)
    lo, hi = float(df["intensity"].min()), float(df["intensity"].max())
    xscale = alt.Scale(type="log", domain=[lo, hi]) if log else alt.Scale(domain=[lo, hi], nice=False)
    if y_domain is None:
        top = float(df["tflop_s"].max())
        ys = list(df["tflop_s"][df["tflop_s"] > 0])
        if points is not None and "flop_s" in points:
            ys += [v / 1e12 for v in points["flop_s"] if v > 0]
            top = max(top, max(ys))
        y_domain = _decades(max(min(ys), top / 1e9), top * 1.5) if log else [0.0, top * 1.1]
    yscale = alt.Scale(type="log", domain=list(y_domain)) if log else alt.Scale(domain=list(y_domain), nice=False)
    if color == "dtype":
        dts = list(dict.fromkeys(df["dtype"]))
        cscale, cfield = color_scale(PRECISION_COLORS, dts), "dtype"
    elif color == "label":
        labels = list(dict.fromkeys(df["label"]))
        cscale, cfield = color_scale(dict(zip(labels, _TABLEAU10 * 2, strict=False)), labels), "label"
    else:
        raise ValueError(f"color must be 'label' or 'dtype', got {color!r}")
    legend = alt.Legend(title=None, orient="bottom", columns=1, labelLimit=420)
    x = alt.X("intensity:Q", scale=xscale, axis=_axis(_X_TITLE, log))
    y = alt.Y("tflop_s:Q", scale=yscale, axis=_axis(_Y_TITLE, log))
    tooltip = [alt.Tooltip("label:N", title="roofline"), alt.Tooltip("ridge:Q", title="ridge (ops/byte)",
                                                                     format=".1f"),
               alt.Tooltip("peak_tflop_s:Q", title="peak (TFLOP/s)", format=",.1f")]
    base = alt.Chart(df).encode(x=x, y=y, color=alt.Color(f"{cfield}:N", scale=cscale, legend=legend),
                                detail="label:N", tooltip=tooltip)
    layers = []
    if shade:
        first = df[df["label"] == df["label"].iloc[0]]
        r = float(first["ridge"].iloc[0])
        bands = pd.DataFrame({"x": [lo if log else max(lo, 0.0), r], "x2": [r, hi], "bound": ["memory", "compute"]})
        bands["label"] = ["memory-bound", "compute-bound"]
        fill = alt.Fill("bound:N", scale=color_scale(BOUND_COLORS, ["memory", "compute"]), legend=None)
        layers.append(alt.Chart(bands).mark_rect(opacity=0.12).encode(
            x=alt.X("x:Q", scale=xscale, axis=_axis(_X_TITLE, log)), x2="x2:Q", fill=fill))
        bands["ink"] = [legible(BOUND_COLORS[b]) for b in bands["bound"]]  # text readable on white
        layers.append(alt.Chart(bands).mark_text(baseline="bottom", dy=-6, fontWeight="bold").encode(
            x=alt.X("mid:Q", scale=xscale), y=alt.value(height), text="label:N",
            fill=alt.Fill("ink:N", scale=None),
        ).transform_calculate(mid="sqrt(datum.x * datum.x2)" if log else "(datum.x + datum.x2) / 2"))
    layers.append(base.mark_line(strokeWidth=2.5, clip=True))
    if annotate_ridges:
        ridges = df[df["intensity"] == df["ridge"]].copy()
        # The label sits above and right of its ridge point (never over the y axis), in the line's colour
        # darkened until it is readable on white.
        ink = dict(zip(cscale.domain, cscale.range, strict=True))
        ridges["ink"] = [legible(ink.get(v, "#333333")) for v in ridges[cfield]]
        layers.append(base.transform_filter(alt.datum.intensity == alt.datum.ridge).mark_point(
            filled=True, size=45))
        layers.append(alt.Chart(ridges).mark_text(align="left", dx=6, dy=-9, fontSize=11).encode(
            x=x, y=y, text=alt.Text("ridge:Q", format=",.1f"), fill=alt.Fill("ink:N", scale=None)))
    if points is not None:
        pts = points.copy()
        if "intensity" not in pts or "flop_s" not in pts:
            raise ValueError("points need the columns 'intensity' (ops/byte) and 'flop_s' (ops/s)")
        pts["tflop_s"] = pts["flop_s"] / 1e12
        if "label" not in pts:
            pts["label"] = [f"I = {i:.3g}" for i in pts["intensity"]]
        ptip = [c for c in pts.columns if c not in ("tflop_s",)]
        layers.append(alt.Chart(pts).mark_point(filled=True, size=90, color="black", shape="diamond").encode(
            x=x, y=y, tooltip=ptip))
        taken = [] if not annotate_ridges else list(zip(ridges["intensity"], ridges["tflop_s"],
                                                        ridges["ridge"].map(lambda v: f"{v:,.1f}"), strict=True))
        layers += _point_labels(pts, xscale, yscale, (lo, hi), y_domain, log, width, height, taken)
    # Extra layers are appended here rather than layering this chart again: nested layer charts make Altair
    # deep-copy the whole spec over and over (seconds for a few panels).
    layers += list(_layers or [])
    chart = alt.layer(*layers).properties(width=width, height=height, title=title).resolve_scale(color="shared")
    return chart if _layers is not None else _svg(chart)


def _point_labels(pts: pd.DataFrame, xscale: alt.Scale, yscale: alt.Scale, x_domain: Sequence[float],
                  y_domain: Sequence[float], log: bool, width: int, height: int,
                  taken: Sequence[tuple[float, float, str]] = ()) -> list:
    """Text layers that label the points without overlaps (:func:`.style.label_layout`), one per alignment;
    ``taken`` lists the ridge labels (intensity, TFLOP/s, text) drawn right-above their points."""
    def to_px(v, dom, size):
        if log:
            a, b = math.log10(dom[0]), math.log10(dom[1])
            return size * (math.log10(max(v, 1e-300)) - a) / (b - a)
        return size * (v - dom[0]) / (dom[1] - dom[0])

    def from_px(p, dom, size):
        if log:
            a, b = math.log10(dom[0]), math.log10(dom[1])
            return 10 ** (a + p / size * (b - a))
        return dom[0] + p / size * (dom[1] - dom[0])

    xs = [to_px(v, x_domain, width) for v in pts["intensity"]]
    ys = [height - to_px(v, y_domain, height) for v in pts["tflop_s"]]
    fixed = []
    for ix, iy, text in taken:
        px, py = to_px(ix, x_domain, width) + 6, height - to_px(iy, y_domain, height) - 9
        fixed.append((px, py - 6.5, px + 6.2 * len(text), py + 6.5))
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    spots = dict(zip(order, label_layout([xs[i] for i in order], [ys[i] for i in order],
                                         [pts["label"].iloc[i] for i in order], width=width, height=height,
                                         fixed=fixed), strict=True))
    lab = pd.DataFrame({"label": pts["label"].to_numpy(),
                        "lx": [from_px(xs[i] + spots[i][0], x_domain, width) for i in range(len(xs))],
                        "ly": [from_px(height - ys[i] - spots[i][1], y_domain, height) for i in range(len(xs))],
                        "align": [spots[i][2] for i in range(len(xs))]})
    return [alt.Chart(lab[lab["align"] == a]).mark_text(align=a, baseline="middle", fontSize=11, color="black")
            .encode(x=alt.X("lx:Q", scale=xscale), y=alt.Y("ly:Q", scale=yscale), text="label:N")
            for a in ("left", "right") if (lab["align"] == a).any()]


def timeline_chart(phases: pd.DataFrame, *, unit: str = "us", width: int = 400) -> alt.FacetChart:
    """Load, compute and store of operations as a timeline (survey Fig. 4), serial vs overlapped.

    ``phases`` comes from :func:`unveiled.load_compute_store` (several operations may be concatenated; each
    gets its own panel and time axis). ``unit`` is ``"us"``, ``"ms"`` or ``"s"``. Introduced in Chapter 1.
    """
    scale = {"us": 1e6, "ms": 1e3, "s": 1.0}
    if unit not in scale:
        raise ValueError(f"unit must be one of {list(scale)}, got {unit!r}")
    need = {"schedule", "phase", "start_s", "end_s", "operation"}
    if not need <= set(phases.columns):
        raise ValueError(f"phases needs the columns {sorted(need)} (see unveiled.load_compute_store)")
    shown = unit.replace("us", "µs")
    df = phases.copy()
    df["start"], df["end"] = df["start_s"] * scale[unit], df["end_s"] * scale[unit]
    df["duration"] = df["end"] - df["start"]
    totals = df.groupby(["operation", "schedule"], as_index=False, sort=False)["end"].max()
    totals["text"] = [f"total {v:.3g} {shown}" for v in totals["end"]]
    # Bars and totals share one table: a faceted Altair chart takes a single data source.
    data = pd.concat([df.assign(kind="bar"), totals.assign(kind="total")], ignore_index=True)
    y = alt.Y("schedule:N", sort=["serial", "overlapped"], title=None)
    bars = alt.Chart().mark_bar(size=11).encode(
        x=alt.X("start:Q", title=f"time ({shown})"), x2="end:Q", y=y,
        yOffset=alt.YOffset("phase:N", sort=list(PHASE_COLORS)),
        color=alt.Color("phase:N", scale=color_scale(PHASE_COLORS), legend=alt.Legend(title=None, orient="bottom")),
        tooltip=["operation:N", "schedule:N", "phase:N",
                 alt.Tooltip("duration:Q", format=".3g", title=f"duration ({shown})")],
    ).transform_filter(alt.datum.kind == "bar")
    text = alt.Chart().mark_text(align="left", dx=4, fontSize=11).encode(
        x="end:Q", y=y, text="text:N").transform_filter(alt.datum.kind == "total")
    out = alt.layer(bars, text, data=data).properties(width=width, height=90).facet(
        row=alt.Row("operation:N", title=None, sort=list(dict.fromkeys(df["operation"])),
                    header=alt.Header(labelAngle=0, labelAlign="left", labelLimit=600, labelOrient="top",
                                      labelFontWeight="bold", labelFontSize=12)),
    ).resolve_scale(x="independent").properties(
        description="Load, compute and store of each operation over time, one after the other (serial) and "
                    "overlapped")
    return _svg(out)


def fusion_chart(cases: pd.DataFrame, device: str | Device, dtype: str = "fp16", *, survey: pd.DataFrame | None = None,
                 log: bool = False, width: int = 420, height: int = 210) -> alt.VConcatChart:
    """Operator fusion on a roofline (survey Fig. 15): each case's intensity before and after fusion.

    ``cases`` has one row per case with ``case``, ``intensity_before`` and ``intensity_after`` (rows of
    :func:`unveiled.fusion_gain` with a ``case`` column). Points sit on the roof (the survey's aggregate view).
    ``survey`` optionally adds the survey's own illustrative intensities (columns ``case``,
    ``intensity_before``, ``intensity_after``) as hollow markers. One panel per case, stacked.
    Introduced in Chapter 1.
    """
    dev = get_device(device)
    dtype = canonical_dtype(dtype)
    need = {"case", "intensity_before", "intensity_after"}
    if not need <= set(cases.columns):
        raise ValueError(f"cases needs the columns {sorted(need)}")
    r = dev.ridge_point(dtype)
    panels = []
    for case in cases["case"]:
        row = cases[cases["case"] == case].iloc[0]
        pts = []
        for when in ("before", "after"):
            i = float(row[f"intensity_{when}"])
            pts.append({"source": "this book (uv.fuse)", "when": f"{when} fusion", "intensity": i,
                        "tflop_s": float(attainable_performance(i, dev, dtype)) / 1e12,
                        "label": f"I = {i:.0f}: {attainable_performance(i, dev, dtype) / 1e12:.1f} T"})
        if survey is not None and case in set(survey["case"]):
            srow = survey[survey["case"] == case].iloc[0]
            for when in ("before", "after"):
                i = float(srow[f"intensity_{when}"])
                pts.append({"source": "survey's illustration", "when": f"{when} fusion", "intensity": i,
                            "tflop_s": float(attainable_performance(i, dev, dtype)) / 1e12, "label": ""})
        pts = pd.DataFrame(pts)
        hi = max(3 * r, 1.3 * float(pts["intensity"].max()))
        xdom = [0.0, hi] if not log else _decades(min(1.0, float(pts["intensity"].min()) / 3), hi)
        x = alt.X("intensity:Q")
        y = alt.Y("tflop_s:Q")
        ours = pts[pts["source"] == "this book (uv.fuse)"]
        arrow = alt.Chart(ours).mark_line(color="black", strokeDash=[4, 3]).encode(x=x, y=y)
        dots = alt.Chart(pts).mark_point(size=110, filled=True).encode(
            x=x, y=y, shape=alt.Shape("when:N", scale=alt.Scale(domain=["before fusion", "after fusion"],
                                                                 range=["circle", "diamond"]),
                                      legend=alt.Legend(title=None, orient="bottom")),
            fill=alt.condition(alt.datum.source == "survey's illustration", alt.value("white"), alt.value("black")),
            stroke=alt.value("black"), tooltip=["source:N", "when:N", alt.Tooltip("intensity:Q", format=".1f"),
                                                alt.Tooltip("tflop_s:Q", format=".1f", title="TFLOP/s")])
        before = alt.Chart(ours[ours["when"] == "before fusion"]).mark_text(
            align="left", dx=9, dy=14, fontSize=10).encode(x=x, y=y, text="label:N")
        after = alt.Chart(ours[ours["when"] == "after fusion"]).mark_text(
            align="right", dx=-9, dy=-12, fontSize=10).encode(x=x, y=y, text="label:N")
        panels.append(roofline_chart([(dev, dtype, f"{dev.display_name}, {dtype.upper()}")], log=log, x_domain=xdom,
                                     shade=True, annotate_ridges=True, width=width, height=height,
                                     title=str(case), _layers=[arrow, dots, before, after]))
    return _svg(alt.vconcat(*panels).resolve_scale(shape="shared"))


def memory_hierarchy_table() -> pd.DataFrame:
    """The survey's Fig. 17 memory hierarchy (``data/memory_hierarchy.csv``): capacities and link bandwidths.

    One row per memory level or link with ``kind`` (``"memory"`` or ``"link"``), ranges ``*_min``/``*_max``
    (GB for capacities, GB/s for bandwidths) and the source. Introduced in Chapter 1.
    """
    with data_file("memory_hierarchy.csv").open("r", encoding="utf-8") as f:
        return pd.read_csv(f)


def memory_hierarchy_chart(devices: Iterable[str | Device] = (), *, width: int = 250) -> alt.VConcatChart:
    """The survey's Fig. 17 as two range charts: capacity per memory level, bandwidth per path (log scales).

    ``devices`` adds each device's memory bandwidth (and capacity) from the registry as a dot on the matching
    range (GPUs on "GPU memory (GDDR/HBM)", CPUs on "CPU memory (DDR)"), to compare the survey's 2024 ranges
    with today's parts. Introduced in Chapter 1.
    """
    t = memory_hierarchy_table()
    mem, link = t[t["kind"] == "memory"].copy(), t[t["kind"] == "link"].copy()
    dots = []
    for d in devices:
        dev = get_device(d)
        level = "CPU memory (DDR)" if dev.kind == "cpu" else "GPU memory (GDDR/HBM)"
        path = "CPU ↔ DDR" if dev.kind == "cpu" else "GPU ↔ GDDR/HBM"
        dots.append({"level": path, "value": dev.bandwidth / 1e9, "device": dev.display_name, "kind": "link"})
        if dev.memory_bytes:
            dots.append({"level": level, "value": dev.memory_bytes / 1e9, "device": dev.display_name,
                         "kind": "memory"})
    dots = pd.DataFrame(dots, columns=["level", "value", "device", "kind"])

    def panel(rows: pd.DataFrame, kind: str, title: str, unit: str, domain: list[float]) -> alt.LayerChart:
        rows = rows.assign(name=[f"{lv}: {r}" for lv, r in zip(rows["level"], rows["range"], strict=True)])
        order = list(rows["name"])
        y = alt.Y("name:N", sort=order, title=None, axis=alt.Axis(labelLimit=260))
        x = alt.X("min:Q", scale=alt.Scale(type="log", domain=domain), axis=_axis(unit, True))
        tip = ["level:N", "min:Q", "max:Q", "source:N"]
        rng = alt.Chart(rows).mark_bar(size=14, opacity=0.6, color="#4c78a8").encode(x=x, x2="max:Q", y=y,
                                                                                    tooltip=tip)
        ends = alt.Chart(rows).transform_fold(["min", "max"], as_=["end", "value"]).mark_tick(
            thickness=2, size=18, color="#4c78a8").encode(x=alt.X("value:Q"), y=y, tooltip=tip)
        layers = [rng, ends]
        d = dots[dots["kind"] == kind].merge(rows[["level", "name"]], on="level")
        if len(d):
            layers.append(alt.Chart(d).mark_point(filled=True, color="#d62728", size=30, opacity=0.7).encode(
                x=alt.X("value:Q"), y=alt.Y("name:N", sort=order),
                tooltip=["device:N", alt.Tooltip("value:Q", format=",.1f")]))
        return alt.layer(*layers).properties(width=width, height=30 * len(rows), title=title)

    fmt = lambda lo, hi, u: f"{lo:g}–{hi:g} {u}" if lo != hi else f"~{lo:g} {u}"  # noqa: E731
    mem["range"] = [fmt(a, b, "GB") for a, b in zip(mem["min"], mem["max"], strict=True)]
    link["range"] = [fmt(a, b, "GB/s") for a, b in zip(link["min"], link["max"], strict=True)]
    chart = alt.vconcat(panel(mem, "memory", "capacity of each memory", "GB (log)", [1e-3, 1e3]),
                        panel(link, "link", "bandwidth of each path", "GB/s (log)", [1.0, 2e4]))
    return _svg(chart)


def interactive_roofline_chart(devices: Iterable[str | Device] | None = None, *, device: str = "h100-sxm",
                               dtype: str = "bf16", intensity: float = 50.0, width: int = 440,
                               height: int = 320) -> alt.LayerChart:
    """A roofline explorer that runs in the static page: pick a device and a data type, slide the intensity.

    Altair parameters bound to two dropdowns and a slider (log₁₀ of the intensity); the browser recomputes
    ``min(peak, bandwidth × I)`` and the bound with no kernel. Grey lines show the other devices' roofs for
    the same data type. ``devices`` defaults to every sourced device of the datasheet preset. Introduced in
    Chapter 1.
    """
    devs, start = _explorer_devices(devices, device)
    lo, hi = 0.1, 1e4
    table = _device_dtype_table(devs)
    lines = roofline_lines([(d, dt) for d in devs for dt in d.dtypes], x_domain=[lo, hi])
    lines["device"] = lines["device"].map({d.display_name: d.name for d in devs})
    dev_param = alt.param(name="device", value=start, bind=alt.binding_select(
        options=[d.name for d in devs], labels=[d.display_name for d in devs], name="device "))
    dtype_param = alt.param(name="dtype", value=canonical_dtype(dtype), bind=alt.binding_select(
        options=list(DTYPES), name="data type "))
    slider = alt.param(name="log_intensity", value=round(math.log10(intensity), 2), bind=alt.binding_range(
        min=math.log10(lo), max=math.log10(hi), step=0.01, name="log10 intensity (ops/byte) "))
    x = alt.X("intensity:Q", scale=alt.Scale(type="log", domain=[lo, hi]), axis=_axis(_X_TITLE, True))
    y = alt.Y("tflop_s:Q", scale=alt.Scale(type="log", domain=[1e-3, 2e4]), axis=_axis(_Y_TITLE, True))
    selected = (alt.datum.device == dev_param) & (alt.datum.dtype == dtype_param)
    others = alt.Chart(lines).mark_line(color="#bbbbbb", strokeWidth=1).encode(
        x=x, y=y, detail="device:N", tooltip=["label:N"]).transform_filter(alt.datum.dtype == dtype_param)
    roof = alt.Chart(lines).mark_line(strokeWidth=3.5).encode(
        x=x, y=y, color=alt.value("#1f77b4"), tooltip=["label:N", alt.Tooltip("ridge:Q", format=".1f")],
    ).transform_filter(selected)
    point, label, rule, ridge_text = _operating_point_layers(table, selected, slider, x, y, height)
    missing = alt.Chart(table).transform_filter(selected & ~alt.datum.supported).transform_calculate(
        msg="datum.display + ' has no ' + datum.dtype + ' peak in the table (no such unit, or no source)'",
    ).mark_text(fontSize=14, color="#cf222e", fontWeight="bold").encode(
        x=alt.value(width / 2), y=alt.value(height / 2), text="msg:N")
    chart = alt.layer(others, roof, rule, ridge_text, point, label, missing).add_params(
        dev_param, dtype_param, slider).properties(
        width=width, height=height, description="Interactive roofline: pick a device and a data type, slide the "
                                                "operation's arithmetic intensity").resolve_scale(color="independent")
    return _svg(chart)


def _explorer_devices(devices, device: str) -> tuple[list[Device], str]:
    """The devices of the explorer (default: every sourced datasheet device) and the one shown first."""
    if devices is None:
        table = hardware_table("datasheet")
        devices = [n for n, s in zip(table["name"], table["source"], strict=True) if s.startswith("http")]
    devs = [get_device(d) for d in devices]
    if not devs:
        raise ValueError("give at least one device")
    names = [d.name for d in devs]
    start = get_device(device).name
    if start not in names:
        raise ValueError(f"device {device!r} is not among the devices shown: {names}")
    return devs, start


def _device_dtype_table(devs: list[Device]) -> pd.DataFrame:
    """One row per (device, data type): the bandwidth, peak and ridge point the browser computes with."""
    rows = []
    for d in devs:
        for dt in DTYPES:
            has = d.has(dt)
            rows.append({"device": d.name, "display": d.display_name, "dtype": dt, "supported": has,
                         "bw": d.bandwidth, "peak": d.peak(dt) if has else None,
                         "ridge": d.ridge_point(dt) if has else None})
    return pd.DataFrame(rows)


def _operating_point_layers(table: pd.DataFrame, selected, slider, x, y, height: int) -> tuple:
    """The point at the slider's intensity on the selected roof, its read-out, and the ridge rule and label."""
    point_data = alt.Chart(table).transform_filter(selected & alt.datum.supported).transform_calculate(
        intensity=f"pow(10, {slider.name})",
        tflop_s="min(datum.peak, datum.bw * datum.intensity) / 1e12",
        bound="datum.intensity < datum.ridge ? 'memory-bound' : 'compute-bound'",
        label=("datum.display + ', ' + upper(datum.dtype) + '\\n' + format(datum.tflop_s, ',.3~r')"
               " + ' TFLOP/s at I = ' + format(datum.intensity, ',.3~r') + ' ops/byte\\n' + datum.bound"),
        ridge_label="'ridge ' + format(datum.ridge, ',.1f') + ' ops/byte'",
        peak_tflop_s="datum.peak / 1e12",
    )
    bound_color = alt.Color("bound:N", scale=alt.Scale(domain=["memory-bound", "compute-bound"],
                                                       range=[BOUND_COLORS["memory"], BOUND_COLORS["compute"]]),
                            legend=None)
    point = point_data.mark_point(filled=True, size=160, shape="diamond").encode(
        x=x, y=y, color=bound_color,
        tooltip=["display:N", "dtype:N", alt.Tooltip("intensity:Q", format=".3~r"),
                 alt.Tooltip("tflop_s:Q", format=",.4~r", title="TFLOP/s"), "bound:N"])
    # The read-out sits in the top-left corner (beside the point it would leave the plot at high intensity).
    label = point_data.mark_text(align="left", baseline="top", fontSize=13, fontWeight="bold",
                                 lineBreak="\n").encode(
        x=alt.value(8), y=alt.value(8), text="label:N",
        color=alt.Color("bound:N", scale=alt.Scale(domain=["memory-bound", "compute-bound"],
                                                   range=[legible(BOUND_COLORS["memory"]),
                                                          legible(BOUND_COLORS["compute"])]),
                        legend=None))
    rule = point_data.mark_rule(strokeDash=[4, 4], color="#555555").encode(x=alt.X("ridge:Q"))
    ridge_text = point_data.mark_text(align="left", dx=4, baseline="bottom", fontSize=11, color="#555555").encode(
        x=alt.X("ridge:Q"), y=alt.value(height - 6), text="ridge_label:N")
    return point, label, rule, ridge_text


def measured_roofline_chart(measured: str | Device, kernels: pd.DataFrame | None = None, *,
                            compare: Iterable = (("i9-13900k", "fp32"),), title: str = "",
                            width: int = 440, height: int = 320) -> alt.LayerChart:
    """The measured roofline of this machine (one line per measured data type) next to datasheet rooflines,
    with the timed kernels of :func:`unveiled.measure_kernels` placed at their achieved rate.

    Introduced in Chapter 1.
    """
    dev = get_device(measured)
    lines = [(dev, dt, f"measured: this machine, {dt.upper()}") for dt in dev.dtypes]
    lines += [_line_spec(c) for c in compare]
    pts = None
    if kernels is not None:
        pts = pd.DataFrame({
            "intensity": kernels["intensity"], "flop_s": kernels["achieved_flop_s"],
            "label": [f"{k}, {d}: {100 * f:.0f}%" for k, d, f in
                      zip(kernels["kernel"], kernels["dtype"], kernels["fraction_of_roofline"], strict=True)],
            "fraction_of_roofline": kernels["fraction_of_roofline"].round(3),
        })
    allr = [d.ridge_point(dt) for d, dt, _ in (_line_spec(item) for item in lines)]
    xmin = min([*allr, *(pts["intensity"] if pts is not None else [])])
    xmax = max([*allr, *(pts["intensity"] if pts is not None else [])])
    return roofline_chart(lines, pts, x_domain=_decades(xmin / 5, xmax * 5), title=title, width=width,
                          height=height)

