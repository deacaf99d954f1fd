"""One palette for the whole book: the same colour means the same stage or precision in every chapter."""

from __future__ import annotations

import altair as alt
import pandas as pd

THEME = "unveiled"


@alt.theme.register(THEME, enable=True)
def unveiled_theme() -> alt.theme.ThemeConfig:
    """Altair's default theme plus legibility: axis labels keep a gap between them (overlapping ones are
    dropped, also on log axes) and legend labels are never truncated. Enabled when :mod:`unveiled.plots`
    is imported. Introduced in Chapter 1."""
    return {"config": {"view": {"continuousWidth": 300, "continuousHeight": 300},
                       "axis": {"labelOverlap": "greedy", "labelSeparation": 4},
                       "legend": {"labelLimit": 0}}}


#: Inference stages.
STAGE_COLORS: dict[str, str] = {"prefill": "#1f77b4", "decode": "#d62728"}

#: Numeric precisions, from wide to narrow (used for weights, activations or KV cache alike).
PRECISION_COLORS: dict[str, str] = {
    "fp32": "#7f7f7f",
    "fp16": "#1f77b4",
    "bf16": "#17becf",
    "fp8": "#9467bd",
    "int8": "#2ca02c",
    "w8": "#2ca02c",
    "int4": "#ff7f0e",
    "w4": "#ff7f0e",
    "int3": "#8c564b",
    "w3": "#8c564b",
    "int2": "#e377c2",
    "w2": "#e377c2",
    "int1": "#bcbd22",
    "w1": "#bcbd22",
}

#: What limits an operator on the roofline.
BOUND_COLORS: dict[str, str] = {"memory": "#d62728", "compute": "#2ca02c"}


def color_scale(mapping: dict[str, str], domain: list[str] | None = None) -> alt.Scale:
    """An Altair colour scale that applies one of the palettes above to the given domain (in order)."""
    domain = list(mapping) if domain is None else list(domain)
    return alt.Scale(domain=domain, range=[mapping.get(d, "#333333") for d in domain])


def log_axis(title: str, **kwargs) -> dict:
    """Keyword arguments for an Altair positional encoding on a base-10 log scale (rooflines are log-log)."""
    return {"title": title, "scale": alt.Scale(type="log"), **kwargs}


def _luminance(color: str) -> float:
    h = color.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    if len(h) != 6:
        raise ValueError(f"expected a colour as #rrggbb, got {color!r}")
    chans = [int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in chans]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast_ratio(foreground: str, background: str = "#ffffff") -> float:
    """WCAG 2 contrast ratio of two ``#rrggbb`` colours (1 to 21; text needs 4.5, large text 3)."""
    a, b = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def legible(color: str, background: str = "#ffffff", ratio: float = 4.5) -> str:
    """``color`` darkened in steps (same hue) until text drawn in it reaches ``ratio`` contrast on ``background``.

    Use it for labels and annotations drawn in a palette colour: the palette's lines and areas keep their
    colour, the text that names them stays readable. Introduced in Chapter 1."""
    h = color.lstrip("#")
    rgb = [int(h[i:i + 2], 16) for i in (0, 2, 4)] if len(h) == 6 else None
    if rgb is None:
        raise ValueError(f"expected a colour as #rrggbb, got {color!r}")
    out = color
    for step in range(21):
        out = "#" + "".join(f"{round(c * (1 - step / 20)):02x}" for c in rgb)
        if contrast_ratio(out, background) >= ratio:
            return out
    return out


def legible_scale(mapping: dict[str, str], domain: list[str] | None = None) -> alt.Scale:
    """Like :func:`color_scale`, with every colour made :func:`legible` on white: for text marks."""
    return color_scale({k: legible(v) for k, v in mapping.items()}, domain)


def label_layout(x_px: list[float], y_px: list[float], texts: list[str], *, width: float, height: float,
                 char_px: float = 6.2, line_px: float = 13.0, gap: float = 7.0,
                 fixed: list[tuple[float, float, float, float]] = ()) -> list[tuple[float, float, str]]:
    """Where to put each point's label so that no two labels overlap (greedy, in pixels).

    Each label, in the order given, takes the first of: right-above, right-below, left-above, left-below of
    its point, that stays inside the plot and overlaps no label placed before it (the last candidate if none
    does). ``fixed`` lists boxes ``(left, top, right, bottom)`` already taken (other labels). Returns
    ``(dx, dy, align)`` per label: pixel offsets from the point (y grows downwards) and the text alignment.
    Text width is estimated as ``char_px`` per character. Introduced in Chapter 1."""
    boxes: list[tuple[float, float, float, float]] = list(fixed)
    out = []
    for x, y, text in zip(x_px, y_px, texts, strict=True):
        w = char_px * len(str(text))
        choice = None
        for dx, dy, align in ((gap, -gap, "left"), (gap, gap + 2, "left"), (-gap, -gap, "right"),
                              (-gap, gap + 2, "right")):
            left = x + dx if align == "left" else x + dx - w
            box = (left, y + dy - line_px / 2, left + w, y + dy + line_px / 2)
            inside = box[0] >= 0 and box[2] <= width and box[1] >= -line_px and box[3] <= height + line_px
            clear = all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3] for b in boxes)
            choice = (dx, dy, align, box)
            if inside and clear:
                break
        boxes.append(choice[3])
        out.append(choice[:3])
    return out


def csv_data(df: pd.DataFrame) -> alt.InlineData:
    """``df`` as inline CSV for an Altair chart: the page carries each column name once instead of once per
    row (a third to a half of the JSON records Altair writes by default). Numbers and booleans are parsed
    back in the browser, so filters and calculations see the same values. Use it for charts with thousands
    of rows (the static explorers). Introduced in Chapter 1."""
    parse, out = {}, df.copy()
    for col, kind in df.dtypes.items():
        if pd.api.types.is_bool_dtype(kind):
            parse[str(col)] = "boolean"
            out[col] = out[col].map({True: "true", False: "false"})  # Vega reads only lower case
        elif pd.api.types.is_numeric_dtype(kind):
            parse[str(col)] = "number"
    return alt.InlineData(values=out.to_csv(index=False, lineterminator="\n"),
                          format=alt.DataFormat(type="csv", parse=parse))
