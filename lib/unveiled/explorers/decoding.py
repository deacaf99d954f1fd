"""Live explorers of Chapter 7: the speculative-decoding trade-off and an MoE layer's decode cost vs batch.

:func:`speculative_explorer` recomputes, as you move the sliders, the expected tokens per target pass and the
wall-clock speedup ``(1 − α^(k+1)) / ((1 − α)(k·c + v(k)))`` for an acceptance rate ``α``, a draft length
``k``, a draft/target cost ratio ``c`` and a device, with the verification cost ``v(k)`` of that model on
that device from the analyzer. :func:`moe_explorer` shows, for a mixture-of-experts model and a device, how
many experts a decode step of batch ``B`` touches and what the step costs. :func:`decoding_explorer` puts
both in tabs. Introduced in Chapter 7.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Sequence

import numpy as np

from ..decoding.analytic import (
    expected_speedup,
    expected_tokens_per_pass,
    moe_decode_table,
    verification_cost,
)

__all__ = ["decoding_explorer", "moe_explorer", "speculative_explorer"]

_DEVICES = ("a6000", "h100-sxm", "l4", "rtx-4090", "m2-ultra", "i9-13900k")


@functools.lru_cache(maxsize=64)
def _verify_ratios(model: str, device: str, context_len: int, k_max: int) -> tuple[float, ...]:
    df = verification_cost(model, device, tokens=tuple(range(1, k_max + 2)), context_len=context_len)
    return tuple(float(x) for x in df.set_index("tokens").relative_time.loc[list(range(2, k_max + 2))])


def _labelled(w, text: str, control):
    # Labels are HTML widgets, not `description=`: the static page's widget manager typesets descriptions
    # with the MathJax 2 API, which the book's MathJax 3 lacks.
    return w.HBox([w.HTML(f"<b>{html.escape(text)}</b>", layout=w.Layout(width="170px")), control])


def _speedup_table(alpha: float, c: float, v: Sequence[float], chosen: int) -> str:
    ks = np.arange(1, len(v) + 1)
    s = np.asarray(expected_speedup(alpha, ks, c, np.asarray(v)))
    best = int(ks[np.argmax(s)])
    cells = []
    for k, sk in zip(ks, s, strict=True):
        style = "background:#fde0c5;" if k == chosen else ""
        style += "font-weight:bold;" if k == best else ""
        cells.append(f"<td style='{style}padding:2px 6px'>{sk:.2f}</td>")
    head = "".join(f"<th style='padding:2px 6px'>{k}</th>" for k in ks)
    return (f"<table style='font-size:12px'><tr><th>k</th>{head}</tr><tr><th>speedup</th>{''.join(cells)}</tr>"
            f"</table><p style='font-size:12px'>bold: best k = {best}; shaded: your k.</p>")


def speculative_explorer(model: str = "llama-2-7b", devices: Sequence[str] = _DEVICES, context_len: int = 1024,
                         k_max: int = 12):
    """A live explorer of speculative decoding's expected speedup (returns an ``ipywidgets.VBox``).

    Sliders: acceptance rate α, draft length k, cost ratio c; dropdown: device. The verification cost
    ``v(k)`` (time of a ``k + 1``-token pass over a 1-token pass, batch 1, ``context_len`` cached tokens)
    comes from :func:`unveiled.decoding.verification_cost`. Introduced in Chapter 7.
    """
    import ipywidgets as w

    devices = list(devices)
    if not devices:
        raise ValueError("give at least one device name, e.g. ['a6000']")
    _verify_ratios(model, devices[0], context_len, k_max)  # fail early on a bad model or device name
    alpha = w.FloatSlider(value=0.7, min=0.0, max=0.98, step=0.02, continuous_update=True)
    k = w.IntSlider(value=4, min=1, max=k_max)
    c = w.FloatSlider(value=0.05, min=0.0, max=1.0, step=0.01, continuous_update=True)
    dev = w.Dropdown(options=devices, value=devices[0])
    out = w.HTML()

    def redraw(*_):
        v = _verify_ratios(model, dev.value, context_len, k_max)
        tokens = float(expected_tokens_per_pass(alpha.value, k.value))
        s = float(expected_speedup(alpha.value, k.value, c.value, v[k.value - 1]))
        out.value = (f"<p>{html.escape(model)} on {html.escape(dev.value)}, batch 1, {context_len} cached tokens: "
                     f"a pass scoring k + 1 = {k.value + 1} tokens costs <b>v = {v[k.value - 1]:.3f}</b> "
                     f"one-token passes; expected <b>{tokens:.2f} tokens per target pass</b>; expected speedup "
                     f"<b>{s:.2f}×</b>.</p>" + _speedup_table(alpha.value, c.value, v, k.value))

    for control in (alpha, k, c, dev):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([_labelled(w, "acceptance rate α", alpha), _labelled(w, "draft length k", k),
                   _labelled(w, "draft/target cost ratio c", c), _labelled(w, "device", dev), out])


@functools.lru_cache(maxsize=32)
def _moe_table(model: str, device: str, seq_len: int):
    return moe_decode_table(model, device, batches=tuple(2 ** i for i in range(0, 9)), seq_len=seq_len)


def moe_explorer(model: str = "mixtral-8x7b", devices: Sequence[str] = ("a6000", "h100-sxm", "mi300x"),
                 seq_len: int = 1024):
    """A live explorer of one MoE decode step vs batch (returns an ``ipywidgets.VBox``): experts touched per
    layer, step time, time per token and the expert weights read, from the analyzer. Introduced in Chapter 7."""
    import ipywidgets as w

    devices = list(devices)
    if not devices:
        raise ValueError("give at least one device name, e.g. ['a6000']")
    _moe_table(model, devices[0], seq_len)
    lb = w.IntSlider(value=3, min=0, max=8)
    dev = w.Dropdown(options=devices, value=devices[0])
    out = w.HTML()

    def redraw(*_):
        t = _moe_table(model, dev.value, seq_len)
        r = t.iloc[lb.value]
        one = t.iloc[0]
        out.value = (f"<p>{html.escape(model)} on {html.escape(dev.value)}, batch <b>{int(r.batch)}</b>: each MoE "
                     f"layer touches <b>{r.experts_touched:.2f}</b> of {int(r.num_experts)} experts (top-"
                     f"{int(r.top_k)} routing); expert weights read per step {r.expert_weight_bytes / 1e9:.3g} GB "
                     f"(batch 1: {one.expert_weight_bytes / 1e9:.3g} GB); decode step <b>{r.time_s * 1e3:.3g} ms</b>, "
                     f"{r.time_per_token_s * 1e3:.3g} ms per token (batch 1: {one.time_s * 1e3:.3g} ms).</p>")

    for control in (lb, dev):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([_labelled(w, "batch = 2^", lb), _labelled(w, "device", dev), out])


def decoding_explorer():
    """Both explorers of Chapter 7 in two tabs (returns an ``ipywidgets.Tab``). Introduced in Chapter 7."""
    import ipywidgets as w

    tab = w.Tab(children=[speculative_explorer(), moe_explorer()])
    tab.set_title(0, "speculative decoding")
    tab.set_title(1, "mixture of experts")
    return tab
