"""A live number-format explorer (ipywidgets): what a format buys a model on a device, prefill and decode.

Pick a model, a device, a number format for the linear layers, the batch and the sequence length; the explorer
runs :func:`unveiled.analyze` with ``number_format=`` for both stages and at BF16, and shows the times and speed-ups,
whether the device executes the format natively or only stores it (and so which compute roof the matrix products
get), and the decode operators on the roofline. The static book shows its initial state; the Altair explorer of
:mod:`unveiled.plots.accelerators` works without a kernel. Introduced in Chapter 10.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from ..analyzer.analysis import Analysis, analyze
from ..analyzer.configs import model_names
from ..analyzer.number_formats import NUMBER_FORMATS
from ..hardware import device_names, get_device
from .analyzer import operator_roofline_svg
from .live import ExplorerStill, control_row, fit_svg, live_or_still

if TYPE_CHECKING:
    import ipywidgets

__all__ = ["format_explorer", "format_html"]


def format_html(runs: dict[str, Analysis], base: dict[str, Analysis]) -> str:
    """Both stages in the format next to BF16: time, speed-up, weights in memory, and the format's note.

    ``runs`` and ``base`` map ``"prefill"``/``"decode"`` to analyses. Introduced in Chapter 10."""
    rows = []
    for stage in ("prefill", "decode"):
        r, b = runs[stage], base[stage]
        rows.append(f"<tr><td><b>{stage}</b></td><td>{r.time_s * 1e3:.4g} ms</td><td>{b.time_s * 1e3:.4g} ms</td>"
                    f"<td><b>{b.time_s / r.time_s:.2f}×</b></td><td>{100 * r.memory_bound_share:.0f} %</td></tr>")
    d = runs["decode"]
    note = html.escape(d.format_note) if d.format_roof is not None else "16-bit weights"
    colour = "#1a7f37" if d.format_roof is not None and d.format_roof.native else "#9a6700"
    return ("<div style='font:12px sans-serif'><table><tr><th></th><th>format</th><th>BF16</th><th>speed-up</th>"
            "<th>time memory-bound</th></tr>" + "".join(rows) + "</table>"
            f"<p>Weights: {d.memory.weights / 1e9:.3g} GB (BF16: {base['decode'].memory.weights / 1e9:.3g} GB)</p>"
            f"<p style='color:{colour}'>{note}</p></div>")


def format_explorer(model: str = "llama-2-70b", device: str = "h100-sxm", *, number_format: str = "nvfp4",
                    batch: int = 1, seq_len: int = 4096) -> ipywidgets.VBox | ExplorerStill:
    """The live explorer: dropdowns for model, device, number format, batch and sequence length.

    In the book build it returns a still of its initial state (:func:`.live.live_or_still`).
    Introduced in Chapter 10."""
    get_device(device)  # fail early on an unknown name

    def still() -> str:
        kw = dict(batch=batch, seq_len=seq_len, check_context=False)
        runs = {s: analyze(model, device, stage=s, number_format=number_format, **kw) for s in ("prefill", "decode")}
        base = {s: analyze(model, device, stage=s, **kw) for s in ("prefill", "decode")}
        return format_html(runs, base) + fit_svg(operator_roofline_svg(runs["decode"]),
                                                 f"The decode operators of {model} on {device}'s roofline")

    return live_or_still(
        lambda: _format_widget(model, device, number_format, batch, seq_len), still,
        title="Number-format explorer", call=f"uv.format_explorer({model!r}, {device!r})",
        settings={"model": model, "device": device, "format": number_format, "batch": batch,
                  "sequence": f"{seq_len:,} tokens"},
        description=f"{model} on {device} in {number_format}: prefill and decode times against BF16, and the "
                    "decode operators on the roofline")


def _format_widget(model: str, device: str, number_format: str, batch: int, seq_len: int) -> ipywidgets.VBox:
    import ipywidgets as w

    c = {
        "model": w.Dropdown(options=model_names(), value=model, layout=w.Layout(width="170px")),
        "device": w.Dropdown(options=device_names("datasheet"), value=device, layout=w.Layout(width="150px")),
        "format": w.Dropdown(options=list(NUMBER_FORMATS), value=number_format, layout=w.Layout(width="110px")),
        "batch": w.Dropdown(options=[2**k for k in range(10)], value=batch, layout=w.Layout(width="80px")),
        "seq_len": w.Dropdown(options=[2**k for k in range(7, 18)], value=seq_len, layout=w.Layout(width="100px")),
    }

    def label(text: str, width: str = "60px"):
        return w.HTML(f"<b>{text}</b>", layout=w.Layout(width=width))

    table, roof = w.HTML(), w.HTML()

    def update(_=None):
        v = {k: x.value for k, x in c.items()}
        kw = dict(batch=v["batch"], seq_len=v["seq_len"], check_context=False)
        try:
            runs = {s: analyze(v["model"], v["device"], stage=s, number_format=v["format"], **kw)
                    for s in ("prefill", "decode")}
            base = {s: analyze(v["model"], v["device"], stage=s, **kw) for s in ("prefill", "decode")}
        except ValueError as exc:
            table.value = f"<div style='color:#d62728;font:13px sans-serif'>{html.escape(str(exc))}</div>"
            return
        table.value = format_html(runs, base)
        roof.value = operator_roofline_svg(runs["decode"])

    update()
    for widget in c.values():
        widget.observe(update, names="value")
    controls = w.VBox([
        control_row([label("model"), c["model"], label("device"), c["device"]]),
        control_row([label("format"), c["format"], label("batch"), c["batch"], label("sequence", "70px"),
                     c["seq_len"]]),
    ])
    return w.VBox([controls, table, roof])
