"""The live FlashAttention traffic explorer: sequence length × head width × on-chip buffer × device.

Every change counts again: the naive traffic with a ByteCounter on meta tensors, the tiled traffic over the
tile schedule of the chapter's kernel (:func:`unveiled.kernels.io.attention_traffic`), and prices both on the
chosen device's roofline. The static page shows its initial state; the Altair explorer of the chapter
(:func:`unveiled.plots.kernels.traffic_explorer_chart`) works without a kernel over a precomputed grid.
Introduced in Chapter 8.
"""

from __future__ import annotations

import html

from ..hardware import device_names, get_device
from ..kernels.io import attention_traffic
from .live import control_row, live_or_still, slider_layout

__all__ = ["flash_explorer", "flash_summary_html"]


def flash_summary_html(seq_len: int, head_dim: int, buffer_kb: float, device: str = "a6000", *,
                       heads: int = 1, causal: bool = True) -> str:
    """The explorer's read-out for one setting: tile size, traffic naive / tiled / Θ(N²d²/M), roofline times.

    Introduced in Chapter 8."""
    t = attention_traffic(seq_len, head_dim, buffer_kb * 1e3, num_heads=heads, causal=causal, device=device)
    dev = get_device(device)
    saved = 100 * (1 - t["flash_bytes"] / t["naive_bytes"])
    faster = t["naive_s"] / t["flash_s"]
    return (
        f"<div style='font:13px sans-serif;max-width:560px'>"
        f"<p><b>{heads} head{'s' if heads > 1 else ''}, N = {seq_len:,}, d = {head_dim}</b>, FP16, "
        f"{'causal' if causal else 'full'} prefill attention; on-chip buffer {buffer_kb:g} KB → square tiles of "
        f"{t['tile']} rows</p>"
        f"<p>traffic: naive {t['naive_bytes'] / 1e6:,.3g} MB · tiled {t['flash_bytes'] / 1e6:,.3g} MB "
        f"({saved:.3g} % less) · Θ(N²d²/M) term {t['bound_bytes'] / 1e6:,.3g} MB · compulsory "
        f"{t['compulsory_bytes'] / 1e6:,.3g} MB</p>"
        f"<p>roofline on {html.escape(dev.display_name)}: naive {t['naive_s'] * 1e6:,.3g} µs, tiled "
        f"{t['flash_s'] * 1e6:,.3g} µs ({faster:.3g}× faster)</p></div>"
    )


def flash_explorer(device: str = "a6000"):
    """A live explorer (ipywidgets): sequence length, head width, on-chip buffer, heads, causal, device.

    In the book build it returns a still of its initial state (:func:`.live.live_or_still`).
    Introduced in Chapter 8.
    """
    gpus = [n for n in device_names() if get_device(n).kind == "gpu"]
    start = device if device in gpus else gpus[0]
    return live_or_still(
        lambda: _flash_widget(start, gpus),
        lambda: flash_summary_html(4096, 128, 100, start),
        title="FlashAttention traffic explorer", call=f"uv.flash_explorer({device!r})",
        settings={"N": "4,096 tokens", "head width": 128, "buffer": "100 KB", "heads": 1, "causal": "yes",
                  "device": start},
        description=f"Attention traffic, naive against tiled, and roofline times on {start}")


def _flash_widget(device: str, gpus: list[str]):
    import ipywidgets as w

    seq_w = w.SelectionSlider(options=[2**k for k in range(8, 18)], value=4096, description="N (tokens)",
                              layout=slider_layout())
    dim_w = w.ToggleButtons(options=[64, 128, 256], value=128, description="head width",
                            style={"button_width": "48px"})
    buf_w = w.SelectionSlider(options=[4, 8, 16, 32, 64, 100, 164, 228, 512, 1024, 4096], value=100,
                              description="buffer (KB)", layout=slider_layout())
    heads_w = w.SelectionSlider(options=[1, 8, 32, 64], value=1, description="heads", layout=slider_layout())
    causal_w = w.Checkbox(value=True, description="causal")
    dev_w = w.Dropdown(options=gpus, value=device, description="device")
    out = w.HTML()

    def redraw(*_):
        out.value = flash_summary_html(seq_w.value, dim_w.value, buf_w.value, dev_w.value, heads=heads_w.value,
                                       causal=causal_w.value)

    for widget in (seq_w, dim_w, buf_w, heads_w, causal_w, dev_w):
        widget.observe(redraw, names="value")
    redraw()
    return w.VBox([control_row([seq_w, buf_w]), control_row([dim_w, causal_w]), control_row([heads_w, dev_w]),
                   out])
