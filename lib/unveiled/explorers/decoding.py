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
from .live import labelled, live_or_still, slider_layout

__all__ = ["decoding_explorer", "moe_explorer", "speculative_explorer"]

_DEVICES = ("a6000", "h100-sxm", "l4", "rtx-4090", "m2-ultra", "i9-13900k")


@functools.lru_cache(maxsize=64)
def _verify_ratios(model: str, device: str, context_len: int, k_max: int) -> tuple[float, ...]:
    df = verification_cost(model, device, tokens=tuple(range(1, k_max + 2)), context_len=context_len)
    return tuple(float(x) for x in df.set_index("tokens").relative_time.loc[list(range(2, k_max + 2))])


def _speedup_table(alpha: float, c: float, v: Sequence[float], chosen: int) -> str:
    ks = np.arange(1, len(v) + 1)
    s = np.asarray(expected_speedup(alpha, ks, c, np.asarray(v)))
    best = int(ks[np.argmax(s)])
    rows = []
    for k, sk in zip(ks, s, strict=True):
        style = "background:#fde0c5;" if k == chosen else ""
        style += "font-weight:bold;" if k == best else ""
        rows.append(f"<tr style='{style}'><td style='padding:0 8px'>{k}</td><td style='padding:0 8px'>{sk:.2f}</td></tr>")
    # One row per draft length: a long, narrow table that fits a phone.
    return ("<table style='font-size:12px'><tr><th style='padding:0 8px'>k</th>"
            f"<th style='padding:0 8px'>speedup (×)</th></tr>{''.join(rows)}"
            f"</table><p style='font-size:12px'>bold: best k = {best}; shaded: your k.</p>")


def _speculative_html(model: str, device: str, context_len: int, k_max: int, alpha: float, k: int, c: float) -> str:
    v = _verify_ratios(model, device, context_len, k_max)
    tokens = float(expected_tokens_per_pass(alpha, k))
    s = float(expected_speedup(alpha, k, c, v[k - 1]))
    return (f"<p>{html.escape(model)} on {html.escape(device)}, batch 1, {context_len} cached tokens: "
            f"a pass scoring k + 1 = {k + 1} tokens costs <b>v = {v[k - 1]:.3f}</b> "
            f"one-token passes; expected <b>{tokens:.2f} tokens per target pass</b>; expected speedup "
            f"<b>{s:.2f}×</b>.</p>" + _speedup_table(alpha, c, v, k))


def speculative_explorer(model: str = "llama-2-7b", devices: Sequence[str] = _DEVICES, context_len: int = 1024,
                         k_max: int = 12):
    """A live explorer of speculative decoding's expected speedup (returns an ``ipywidgets.VBox``; a still of
    the initial state in the book build, :func:`.live.live_or_still`).

    Sliders: acceptance rate α, draft length k, cost ratio c; dropdown: device. The verification cost
    ``v(k)`` (time of a ``k + 1``-token pass over a 1-token pass, batch 1, ``context_len`` cached tokens)
    comes from :func:`unveiled.decoding.verification_cost`. Introduced in Chapter 7.
    """
    devices = list(devices)
    if not devices:
        raise ValueError("give at least one device name, e.g. ['a6000']")
    _verify_ratios(model, devices[0], context_len, k_max)  # fail early on a bad model or device name
    first = dict(alpha=0.7, k=4, c=0.05)
    return live_or_still(
        lambda: _speculative_widget(model, devices, context_len, k_max, **first),
        lambda: _speculative_html(model, devices[0], context_len, k_max, **first),
        title="Speculative-decoding explorer", call="uv.decoding_explorer()",
        settings={"model": model, "device": devices[0], "α": first["alpha"], "k": first["k"], "c": first["c"]},
        description=f"Expected tokens per pass and speedup of speculative decoding for {model} on {devices[0]}")


def _speculative_widget(model: str, devices: list[str], context_len: int, k_max: int, alpha: float, k: int,
                        c: float):
    import ipywidgets as w

    alpha_w = w.FloatSlider(value=alpha, min=0.0, max=0.98, step=0.02, continuous_update=True,
                            layout=slider_layout())
    k_w = w.IntSlider(value=k, min=1, max=k_max, layout=slider_layout())
    c_w = w.FloatSlider(value=c, min=0.0, max=1.0, step=0.01, continuous_update=True, layout=slider_layout())
    dev = w.Dropdown(options=devices, value=devices[0])
    out = w.HTML()

    def redraw(*_):
        out.value = _speculative_html(model, dev.value, context_len, k_max, alpha_w.value, k_w.value, c_w.value)

    for control in (alpha_w, k_w, c_w, dev):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([labelled("acceptance rate α", alpha_w, "170px"), labelled("draft length k", k_w, "170px"),
                   labelled("draft/target cost ratio c", c_w, "170px"), labelled("device", dev, "170px"), out])


@functools.lru_cache(maxsize=32)
def _moe_table(model: str, device: str, seq_len: int):
    return moe_decode_table(model, device, batches=tuple(2 ** i for i in range(0, 9)), seq_len=seq_len)


def _moe_html(model: str, device: str, seq_len: int, log_batch: int) -> str:
    t = _moe_table(model, device, seq_len)
    r = t.iloc[log_batch]
    one = t.iloc[0]
    return (f"<p>{html.escape(model)} on {html.escape(device)}, batch <b>{int(r.batch)}</b>: each MoE "
            f"layer touches <b>{r.experts_touched:.2f}</b> of {int(r.num_experts)} experts (top-"
            f"{int(r.top_k)} routing); expert weights read per step {r.expert_weight_bytes / 1e9:.3g} GB "
            f"(batch 1: {one.expert_weight_bytes / 1e9:.3g} GB); decode step <b>{r.time_s * 1e3:.3g} ms</b>, "
            f"{r.time_per_token_s * 1e3:.3g} ms per token (batch 1: {one.time_s * 1e3:.3g} ms).</p>")


def moe_explorer(model: str = "mixtral-8x7b", devices: Sequence[str] = ("a6000", "h100-sxm", "mi300x"),
                 seq_len: int = 1024):
    """A live explorer of one MoE decode step vs batch (returns an ``ipywidgets.VBox``; a still in the book
    build): experts touched per layer, step time, time per token and the expert weights read, from the
    analyzer. Introduced in Chapter 7."""
    devices = list(devices)
    if not devices:
        raise ValueError("give at least one device name, e.g. ['a6000']")
    _moe_table(model, devices[0], seq_len)
    return live_or_still(
        lambda: _moe_widget(model, devices, seq_len, 3), lambda: _moe_html(model, devices[0], seq_len, 3),
        title="Mixture-of-experts explorer", call="uv.decoding_explorer()",
        settings={"model": model, "device": devices[0], "batch": 2**3},
        description=f"Experts touched and decode-step time of {model} on {devices[0]} at batch 8")


def _moe_widget(model: str, devices: list[str], seq_len: int, log_batch: int):
    import ipywidgets as w

    lb = w.IntSlider(value=log_batch, min=0, max=8, layout=slider_layout())
    dev = w.Dropdown(options=devices, value=devices[0])
    out = w.HTML()

    def redraw(*_):
        out.value = _moe_html(model, dev.value, seq_len, lb.value)

    for control in (lb, dev):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([labelled("batch = 2^", lb, "170px"), labelled("device", dev, "170px"), out])


def decoding_explorer():
    """Both explorers of Chapter 7 in two tabs (returns an ``ipywidgets.Tab``; in the book build, a still of
    both, one under the other). Introduced in Chapter 7."""

    def build():
        import ipywidgets as w

        tab = w.Tab(children=[speculative_explorer(), moe_explorer()])
        tab.set_title(0, "speculative decoding")
        tab.set_title(1, "mixture of experts")
        return tab

    spec = dict(model="llama-2-7b", device=_DEVICES[0])
    moe = dict(model="mixtral-8x7b", device="a6000")

    def still() -> str:
        return ("<p><b>Speculative decoding</b> (α 0.7, k 4, c 0.05)</p>"
                + _speculative_html(spec["model"], spec["device"], 1024, 12, 0.7, 4, 0.05)
                + "<p><b>Mixture of experts</b> (batch 8)</p>" + _moe_html(moe["model"], moe["device"], 1024, 3))

    return live_or_still(
        build, still, title="Decoding explorer (two tabs)", call="uv.decoding_explorer()",
        settings={"speculative": f"{spec['model']} on {spec['device']}", "MoE": f"{moe['model']} on {moe['device']}"},
        description="Speculative decoding's expected speedup for Llama-2-7B and an MoE decode step of Mixtral-8x7B")
