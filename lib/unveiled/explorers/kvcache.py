"""The KV-cache trade-off explorer: model × attention design × device × context × batch × KV bits.

:func:`explorer_grid` precomputes a small grid with the analyzer's vectorised :func:`~unveiled.sweep` for the
static chart (:func:`unveiled.plots.kvcache.explorer_chart`, whose widgets work with no kernel);
:func:`kv_explorer` is the live ipywidgets version, which re-runs :func:`~unveiled.analyze` on every change
and can reach any configuration. Both answer the same three questions: does it fit, what share of memory and
of a decode step's traffic is the KV cache, and how long does a decode step take on the roofline.
Introduced in Chapter 6.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import pandas as pd

from ..analyzer import analyze, model_names, model_spec, sweep
from ..hardware import get_device
from ..kvcache.sizing import attention_kind, attention_variants
from .live import control_row, live_or_still, slider_layout

__all__ = ["EXPLORER_DEVICES", "explorer_grid", "explorer_models", "kv_explorer", "kv_summary_html"]

#: Devices of the static explorer (memory from 24 GB to 141 GB).
EXPLORER_DEVICES = ("rtx-4090", "a100-80gb", "h100-sxm", "h200")


def explorer_models() -> dict[str, tuple[object, int]]:
    """The models of the static explorer: label -> (analyzer spec, weight bits). Llama-2-7B comes in its four
    attention designs (same model, only the attention changes); Llama-3-70B with 4-bit weights so that it
    fits one device. Introduced in Chapter 6."""
    variants = attention_variants("llama-2-7b")
    return {
        "Llama-2-7B (MHA)": (variants["MHA"], 16),
        "Llama-2-7B as GQA-8": (variants["GQA"], 16),
        "Llama-2-7B as MQA": (variants["MQA"], 16),
        "Llama-2-7B as MLA-512": (variants["MLA"], 16),
        "Llama-3-8B (GQA-8)": (model_spec("llama-3-8b"), 16),
        "Llama-3-70B, 4-bit weights": (model_spec("llama-3-70b"), 4),
        "DeepSeek-V2-Lite (MLA)": (model_spec("deepseek-v2-lite"), 16),
    }


def explorer_grid(devices: Sequence[str] = EXPLORER_DEVICES,
                  seq_lens: Sequence[int] = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072),
                  batches: Sequence[int] = (1, 8, 64), kv_bits: Sequence[int] = (16, 8, 4, 2)) -> pd.DataFrame:
    """Decode-step memory, KV share and roofline time for every combination, from the analyzer's vectorised
    sweep (one call per model). Columns: ``model``, ``device``, ``device_label``, ``batch``, ``seq_len``,
    ``kv_bits``, ``memory_GB``, ``kv_pct`` (KV share of memory), ``time_ms``, ``fits``, ``capacity_GB``.
    Introduced in Chapter 6."""
    frames = []
    for label, (spec, w_bits) in explorer_models().items():
        df = sweep(spec, list(devices), stage="decode", batch=list(batches), seq_len=list(seq_lens), w_bits=w_bits,
                   kv_bits=list(kv_bits), check_context=False)
        frames.append(df.assign(model=label))
    df = pd.concat(frames, ignore_index=True)
    caps = {d: get_device(d).memory_bytes / 1e9 for d in devices}
    return pd.DataFrame({
        "model": df.model, "device": df.device, "device_label": df.device.map(lambda d: get_device(d).display_name),
        "batch": df.batch, "seq_len": df.seq_len, "kv_bits": df.kv_bits, "memory_GB": df.memory_bytes / 1e9,
        "kv_pct": 100 * df.kv_cache_bytes / df.memory_bytes, "time_ms": 1e3 * df.time_s,
        "fits": df.fits.astype(bool), "capacity_GB": df.device.map(caps),
    })


def kv_summary_html(m, device: str, seq_len: int, batch: int, kv_bits: int, w_bits: int = 16) -> str:
    """The explorer's read-out for one configuration: memory (weights, KV, activations) against the device,
    the KV share of a decode step's bytes, and its roofline time. Introduced in Chapter 6."""
    a = analyze(m, device, stage="decode", batch=batch, seq_len=seq_len, w_bits=w_bits, kv_bits=kv_bits,
                check_context=False)
    mem = a.memory
    ops = a.ops
    kv_read = float((ops["count"] * ops["kv_load_bytes"]).sum())
    cap = mem.capacity or float("nan")
    verdict = ("<b style='color:#1a7f37'>fits</b>" if mem.fits
               else "<b style='color:#cf222e'>does NOT fit</b>")
    bar = []
    for part, val, colour in (("weights", mem.weights, "#4c78a8"), ("KV cache", mem.kv_cache, "#f58518"),
                              ("activations", mem.activations, "#54a24b")):
        pct = 100 * val / max(cap, mem.total)
        bar.append(f"<div title='{part}' style='display:inline-block;height:12px;width:{pct:.2f}%;"
                   f"background:{colour}'></div>")
    name = html.escape(a.model.name)
    return (
        f"<div style='font:13px sans-serif;width:560px;max-width:100%'>"
        f"<p><b>{name}</b> ({attention_kind(a.model)}), {html.escape(a.device.display_name)}, batch {batch}, "
        f"{seq_len:,} tokens, W{w_bits} KV{kv_bits}</p>"
        f"<div style='border:1px solid #999;width:100%;background:#f6f6f6'>{''.join(bar)}</div>"
        f"<p>memory {mem.total / 1e9:.3g} GB of {cap / 1e9:.3g} GB: {verdict} · weights {mem.weights / 1e9:.3g} GB, "
        f"KV cache {mem.kv_cache / 1e9:.3g} GB ({100 * mem.kv_cache / mem.total:.3g} % of memory)</p>"
        f"<p>a decode step reads {a.bytes / 1e9:.3g} GB, {100 * kv_read / a.bytes:.3g} % of it KV cache · "
        f"{1e3 * a.time_s:.3g} ms per step on the roofline ({batch / a.time_s:,.0f} tokens/s)</p></div>"
    )


def kv_explorer(m: str = "llama-2-7b", device: str = "h100-sxm", *, seq_len: int = 4096, batch: int = 1):
    """A live explorer (ipywidgets): choose model, attention design, device, context, batch, weight and KV bits.

    Every change re-runs the analyzer; the read-out says whether it fits, the KV share of memory and of a
    decode step's bytes, and the step's roofline time. In the book build it returns a still of its initial
    state (:func:`.live.live_or_still`). Introduced in Chapter 6.
    """
    spec = model_spec(m)
    get_device(device)  # fail early on an unknown device
    return live_or_still(
        lambda: _kv_widget(m, device, seq_len, batch),
        lambda: kv_summary_html(spec, device, seq_len, batch, 16, 16),
        title="KV-cache explorer", call=f"uv.kv_explorer({m!r}, {device!r})",
        settings={"model": m, "attention": "as shipped", "device": device, "context": f"{seq_len:,} tokens",
                  "batch": batch, "bits": "W16 KV16"},
        description=f"KV cache of {m} on {device}: memory against the device, KV share and decode-step time")


def _kv_widget(m: str, device: str, seq_len: int, batch: int):
    import ipywidgets as w

    from ..hardware import device_names

    names = model_names()
    wide = w.Layout(width="280px", max_width="100%")
    model_w = w.Dropdown(options=names, value=m, description="model", layout=wide)
    design_w = w.Dropdown(options=["as shipped", "MHA", "GQA", "MQA", "MLA"], value="as shipped",
                          description="attention", layout=wide)
    device_w = w.Dropdown(options=device_names(), value=device, description="device", layout=wide)
    contexts = sorted({2**k for k in range(9, 21)} | {seq_len})
    batches = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256} | {batch})
    ctx_w = w.SelectionSlider(options=contexts, value=seq_len, description="context", layout=slider_layout())
    batch_w = w.SelectionSlider(options=batches, value=batch, description="batch", layout=slider_layout())
    wbits_w = w.ToggleButtons(options=[16, 8, 4], value=16, description="W bits",
                              style={"button_width": "48px"})
    kvbits_w = w.ToggleButtons(options=[16, 8, 4, 2], value=16, description="KV bits",
                               style={"button_width": "48px"})
    out = w.HTML()

    def redraw(*_):
        spec = model_spec(model_w.value)
        if design_w.value != "as shipped":
            try:
                spec = attention_variants(spec)[design_w.value]
            except ValueError as exc:
                out.value = f"<p style='color:#cf222e'>{html.escape(str(exc))}</p>"
                return
        out.value = kv_summary_html(spec, device_w.value, ctx_w.value, batch_w.value, kvbits_w.value, wbits_w.value)

    for widget in (model_w, design_w, device_w, ctx_w, batch_w, wbits_w, kvbits_w):
        widget.observe(redraw, names="value")
    redraw()
    return w.VBox([control_row([model_w, design_w, device_w]), control_row([ctx_w, batch_w]), wbits_w, kvbits_w,
                   out])
