"""The survey's Table 1 and the data behind its analyzer figures, recomputed with the analyzer.

Yuan et al. (2024) made Table 1 and Figs 7, 8, 9, 11, 16, 19 and 20 with LLM-Viewer; with
``conventions="paper"`` these functions recompute them (Table 1 to the printed precision), and with
``conventions="exact"`` they show what first-principles accounting changes. Settings come from the survey's
captions and the LLM-Viewer notebooks that drew the figures (``examples/plot_*.ipynb``).
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pandas as pd

from ..datafiles import data_file
from ..hardware import Device
from .analysis import analyze, resolve_device
from .sweep import sweep

__all__ = [
    "compute_bound_batch",
    "devices_now",
    "figure7_data",
    "figure8_data",
    "figure9_data",
    "figure11_data",
    "figure16_data",
    "figure19_data",
    "figure20_data",
    "format_like",
    "parse_printed",
    "survey_table1",
    "table1",
]

_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_ROW_OP = {"norm": "attn_norm", "add": "attn_add"}  # Table 1 prints one row for the two norms / two adds


def survey_table1() -> pd.DataFrame:
    """Table 1 of the survey as printed (strings), from ``data/survey_table1.csv`` (Chapter 2)."""
    return pd.read_csv(io.StringIO(data_file("survey_table1.csv").read_text()), dtype=str)


def parse_printed(text: str) -> tuple[float, float]:
    """A printed number such as ``"69G"``, ``"0.99"`` or ``"1T"`` as ``(value, half of its last digit)``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)\s*", str(text))
    if not m:
        raise ValueError(f"cannot parse the printed number {text!r}")
    digits, unit = m.groups()
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    scale = _UNITS[unit]
    return float(digits) * scale, 0.5 * 10.0 ** (-decimals) * scale


def format_like(value: float, printed: str) -> str:
    """``value`` written with the unit and number of decimals of ``printed`` (e.g. 68.7e9 like "69G" → "69G")."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)\s*", str(printed))
    if not m:
        raise ValueError(f"cannot parse the printed number {printed!r}")
    digits, unit = m.groups()
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return f"{value / _UNITS[unit]:.{decimals}f}{unit}"


def table1(conventions: str = "paper", device: str | Device = "a6000") -> pd.DataFrame:
    """Table 1 recomputed: Llama-2-7b on the A6000, batch 1, sequence 2048, FP16, one layer per row.

    Columns: the printed values (``*_printed``), ours written at the same precision (``*_ours``), the raw
    numbers (``flops``, ``bytes``, ``intensity``, ``attainable_flop_s``, ``bound``) and ``match`` (every
    column within half a unit of the printed last digit). ``conventions="exact"`` shows the first-principles
    values next to the printed ones. Introduced in Chapter 2.
    """
    printed = survey_table1()
    rows = []
    for stage in ("prefill", "decode"):
        ops = analyze("llama-2-7b", device, stage=stage, batch=1, seq_len=2048, conventions=conventions).ops
        ops = ops.set_index("op")
        for _, r in printed[printed.stage == stage].iterrows():
            op = _ROW_OP.get(r.layer, r.layer)
            o = ops.loc[op]
            ours = {"ops": o.flops, "memory_access": o.bytes, "arithmetic_intensity": o.intensity,
                    "max_performance": o.attainable_flop_s}
            row = {"stage": stage, "layer": r.layer}
            ok = True
            for col, val in ours.items():
                p_val, tol = parse_printed(r[col])
                row[f"{col}_printed"] = r[col]
                row[f"{col}_ours"] = format_like(val, r[col])
                ok &= abs(val - p_val) <= tol * (1 + 1e-9)
            row.update(bound_printed=r.bound, bound_ours=o.bound, flops=o.flops, bytes=o.bytes,
                       intensity=o.intensity, attainable_flop_s=o.attainable_flop_s)
            row["match"] = bool(ok and r.bound == o.bound)
            rows.append(row)
    return pd.DataFrame(rows)


# ---- figures -------------------------------------------------------------------------------------------
_QUANT7 = {"FP16": (16, 16, 16), "W4": (4, 16, 16), "W4KV4": (4, 16, 4), "W4A4": (4, 4, 4)}
_QUANT11 = {"FP16": (16, 16, 16), "KV4": (16, 16, 4), "W4KV4": (4, 16, 4), "KV2": (16, 16, 2)}


def _memory_rows(settings: dict, groups, stages, conventions, model="llama-2-13b", device="a6000"):
    rows = []
    for stage in stages:
        for batch, seq in groups:
            ref = None
            for label, (w, a, kv) in settings.items():
                m = analyze(model, device, stage=stage, batch=batch, seq_len=seq, w_bits=w, a_bits=a, kv_bits=kv,
                            conventions=conventions, check_context=False).memory
                ref = m.total if ref is None else ref
                for part, val in (("Weight", m.weights), ("KV cache", m.kv_cache), ("Tmp Act", m.activations)):
                    rows.append({"stage": stage, "batch": batch, "seq_len": seq, "setting": label, "part": part,
                                 "bytes": val, "relative": val / ref})
    return pd.DataFrame(rows)


def figure7_data(conventions: str = "paper") -> pd.DataFrame:
    """Fig. 7: memory of Llama-2-13b (weights, KV cache, temporary activations) for FP16, W4, W4KV4 and W4A4,
    relative to FP16, for (batch, sequence) = (1, 1024), (1, 4096), (16, 1024), decode and prefill. Chapter 2."""
    return _memory_rows(_QUANT7, [(1, 1024), (1, 4096), (16, 1024)], ("decode", "prefill"), conventions)


def figure11_data(conventions: str = "paper") -> pd.DataFrame:
    """Fig. 11: decode memory of Llama-2-13b at batch 1 and 10k/50k/200k tokens for FP16, KV4, W4KV4, KV2
    (the survey's settings, beyond the model's 4,096-token context). Chapter 2."""
    return _memory_rows(_QUANT11, [(1, 10_000), (1, 50_000), (1, 200_000)], ("decode",), conventions)


def figure8_data(conventions: str = "paper", device: str | Device = "a6000") -> pd.DataFrame:
    """Fig. 8: decode time per step of Llama-2-13b (sequence 1024) versus batch 1–63 for W16, W8, W4, W2, W1
    with FP16 activations and KV cache. Chapter 2."""
    df = sweep("llama-2-13b", device, stage="decode", batch=list(range(1, 64)), seq_len=1024,
               w_bits=[16, 8, 4, 2, 1], a_bits=16, conventions=conventions)
    df["setting"] = np.where(df.w_bits == 16, "FP16", "W" + df.w_bits.astype(str))
    return df


def figure9_data(conventions: str = "paper", device: str | Device = "a6000") -> pd.DataFrame:
    """Fig. 9: prefill time of Llama-2-13b at batch 1 versus sequence length 16–1023 (W16 … W1). Chapter 2."""
    seqs = np.unique(np.round(np.geomspace(16, 1023, 60)).astype(int)).tolist()
    df = sweep("llama-2-13b", device, stage="prefill", batch=1, seq_len=seqs, w_bits=[16, 8, 4, 2, 1],
               a_bits=16, conventions=conventions)
    df["setting"] = np.where(df.w_bits == 16, "FP16", "W" + df.w_bits.astype(str))
    return df


def figure16_data(conventions: str = "paper", device: str | Device = "a6000") -> pd.DataFrame:
    """Fig. 16: memory-access and time reduction (%) of FlashAttention for Llama-2-13b (FP16) at
    (batch, length) = (1, 1k), (1, 10k), (1, 100k), (16, 1k), (64, 1k), decode and prefill. With
    ``conventions="paper-2024-03"`` the March 2024 formula that produced the survey's bars. Chapter 2."""
    rows = []
    for stage in ("decode", "prefill"):
        for batch, seq in ((1, 1024), (1, 10_240), (1, 102_400), (16, 1024), (64, 1024)):
            kw = dict(stage=stage, batch=batch, seq_len=seq, conventions=conventions, check_context=False)
            raw = analyze("llama-2-13b", device, flash_attention=False, **kw)
            fa = analyze("llama-2-13b", device, flash_attention=True, **kw)
            rows.append({"stage": stage, "batch": batch, "seq_len": seq, "case": f"bs{batch}, {seq // 1024}k",
                         "memory_access_reduction_pct": 100 * (1 - fa.bytes / raw.bytes),
                         "time_reduction_pct": 100 * (1 - fa.time_s / raw.time_s)})
    return pd.DataFrame(rows)


def figure19_data(devices=("a6000",), conventions: str = "paper", w_bits: int = 8, a_bits: int = 8,
                  kv_bits: int = 8) -> pd.DataFrame:
    """Fig. 19: Llama-2-13b decode throughput (batch / step time), latency (step time) and memory versus batch
    1–127 for sequence lengths 256, 512, 1024, 2048, W8A8KV8 as in LLM-Viewer's notebook. Chapter 2."""
    df = sweep("llama-2-13b", list(devices), stage="decode", batch=list(range(1, 128)),
               seq_len=[256, 512, 1024, 2048], w_bits=w_bits, a_bits=a_bits, kv_bits=kv_bits,
               conventions=conventions)
    df["throughput_tokens_per_s"] = df.batch / df.time_s
    df["latency_s"] = df.time_s
    df["memory_GB"] = df.memory_bytes / 1e9
    return df


def figure20_data(conventions: str = "paper", peak_tflops: float = 200.0, onchip_kb: float = 10240.0,
                  bandwidths_gb_s=None) -> pd.DataFrame:
    """Fig. 20 (right): Llama-2-13b decode time (batch 1, sequence 1024, FP16) on a hypothetical device of
    ``peak_tflops`` FP16 versus memory bandwidth 0.2–4 TB/s, as in LLM-Viewer's ``plot_hardware`` notebook.
    Chapter 2."""
    if bandwidths_gb_s is None:
        bandwidths_gb_s = [200.0 * k for k in range(1, 21)]
    rows = []
    for bw in bandwidths_gb_s:
        dev = Device(name=f"bw{bw:g}", bandwidth=bw * 1e9, peaks={"fp16": peak_tflops * 1e12},
                     onchip_bytes=onchip_kb * 1e3, preset="custom" if conventions == "exact" else "llm-viewer",
                     display_name=f"{peak_tflops:g} TFLOP/s, {bw / 1e3:g} TB/s")
        a = analyze("llama-2-13b", dev, stage="decode", batch=1, seq_len=1024, conventions=conventions)
        rows.append({"bandwidth_GB_s": bw, "time_s": a.time_s, "tokens_per_s": a.tokens_per_s,
                     "memory_bound_share": a.memory_bound_share})
    return pd.DataFrame(rows)


def devices_now(names=None) -> list[Device]:
    """Current datasheet devices for the 'extended to current devices' panels (those the registry has)."""
    from ..hardware import device_names

    names = names or device_names("datasheet")
    out = []
    for n in names:
        try:
            d = resolve_device(n, "exact")
        except ValueError:
            continue
        if d.kind == "gpu" and d.memory_bytes and ("fp16" in d.peaks or "bf16" in d.peaks):
            out.append(d)
    return out


def compute_bound_batch(model_name, device: str | Device, seq_len: int = 1024, conventions: str = "exact",
                        w_bits: int = 16, a_bits: int = 16, kv_bits: int | None = None, limit: int = 1 << 16):
    """Smallest decode batch at which every linear layer of the model (its weight GEMMs) is compute-bound.

    A decode step multiplies each weight matrix by one token per sequence, so its arithmetic intensity is
    about the batch (for 16-bit weights) and crosses the device's ridge point near ``batch = peak/bandwidth``.
    Attention does not follow: each sequence reads its own KV cache, so it stays memory-bound at any batch.
    Returns ``math.inf`` if no batch up to ``limit`` gets there. Introduced in Chapter 2.
    """
    from .analysis import evaluate
    from .configs import model as _model
    from .costs import Setting

    spec = _model(model_name)
    dev = resolve_device(device, conventions)

    def all_compute_bound(batches) -> np.ndarray:
        st = Setting("decode", np.asarray(batches, dtype=float), float(seq_len), float(w_bits), float(a_bits),
                     float(a_bits if kv_bits is None else kv_bits), False, conventions, "last", None, None)
        ev = evaluate(spec, dev, st)
        # routers and gates are tiny GEMMs dominated by their activations: they never become compute-bound
        gemm = np.array([k == "gemm" and nm not in ("lm_head", "router", "shared_expert_gate")
                         for k, nm in zip(ev.kinds, ev.names, strict=True)])
        return ev.compute_bound[gemm].all(axis=0)

    powers = 2 ** np.arange(int(math.log2(limit)) + 1)
    ok = all_compute_bound(powers)
    if not ok.any():
        return math.inf
    hi = int(powers[np.argmax(ok)])
    lo = hi // 2  # not compute-bound (or 0)
    while hi - lo > 1:  # the intensity grows with the batch: bisect
        mid = (lo + hi) // 2
        if all_compute_bound([mid])[0]:
            hi = mid
        else:
            lo = mid
    return hi
