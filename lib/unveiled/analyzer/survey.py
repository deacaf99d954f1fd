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

from .._search import first_true
from ..datafiles import data_file
from ..hardware import Device, device_names
from .analysis import analyze, evaluate, resolve_device
from .configs import model_spec
from .costs import Setting
from .sweep import sweep

__all__ = [
    "OP_NOTES",
    "compute_bound_batch",
    "conventions_diff",
    "decode_intensity_table",
    "devices_now",
    "errata",
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
    spec = model_spec(model_name)
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
    # the intensity grows with the batch: bisect between the last power of two that is not compute-bound (or 0)
    return first_true(lambda b: bool(all_compute_bound([b])[0]), hi // 2, hi)


# ---- conventions: the paper next to first principles ----------------------------------------------------
#: Why the two conventions differ, per operator (shown next to the numbers in Chapter 2's errata).
OP_NOTES: dict[str, str] = {
    "q_proj": "same in both when head_dim = h/H (a bias adds its FLOPs and bytes in exact)",
    "k_proj": "paper writes K straight to the cache at kv_bits; exact writes the activation, then kv_store",
    "v_proj": "as k_proj",
    "o_proj": "same in both when head_dim = h/H",
    "gate_proj": "same in both for a gated MLP (paper also invents one for plain MLPs such as OPT's)",
    "up_proj": "same in both for a gated MLP",
    "down_proj": "same in both for a gated MLP",
    "qk_matmul": "paper reads Q with the KV-head count in prefill (under-counts Q under GQA)",
    "sv_matmul": "same in both (naive attention)",
    "softmax": "same in both (5 operations per score)",
    "fused_attention": ("paper writes the s×s scores twice and reads K/V with the query-head count and no causal "
                        "skipping; exact writes the output once, reads K/V per query tile, skips masked tiles"),
    "attn_norm": "paper: 7 ops/element, no weight read; exact RMSNorm: 4 ops/element and reads its weight",
    "mlp_norm": "as attn_norm",
    "attn_add": "paper reads one operand; exact reads both (and writes the sum)",
    "mlp_add": "as attn_add",
    "mlp_act": "paper sizes SwiGLU with the hidden width h; exact with the intermediate width I",
    "lm_head": ("paper: B·h·V operations (no factor 2), activations not scaled by the batch; exact: 2 FLOPs per "
                "MAC, last position of each sequence, fp32 logits"),
    "embed_tokens": "missing in paper (the lookup reads one table row per token)",
    "rope": "missing in paper (rotary embedding of queries and keys)",
    "kv_store": "missing in paper as an operator (the append of new K/V to the cache)",
    "final_norm": "missing in paper",
}


def conventions_diff(model_name: str = "llama-2-7b", device: str | Device = "a6000", *, stage: str = "prefill",
                     **kw) -> pd.DataFrame:
    """The same pass under the paper and the exact conventions, operator by operator (all instances).

    Columns: ``op``, then ``flops``, ``bytes`` and ``time_s`` (count × per instance) under each convention
    (``_paper``, ``_exact``), ``time_ratio`` (exact / paper) and ``why`` (:data:`OP_NOTES`); the last row is
    the total. Each convention uses its own hardware numbers (LLM-Viewer's, the datasheet's) unless a
    :class:`~unveiled.hardware.Device` is passed. Introduced in Chapter 2.
    """
    tables = {}
    for conv in ("paper", "exact"):
        dev = device if isinstance(device, Device) else resolve_device(device, conv)
        ops = analyze(model_name, dev, stage=stage, conventions=conv, **kw).ops
        tables[conv] = pd.DataFrame({"op": ops.op, "flops": ops["count"] * ops.flops,
                                     "bytes": ops["count"] * ops.bytes, "time_s": ops.total_time_s})
    df = tables["paper"].merge(tables["exact"], on="op", how="outer", suffixes=("_paper", "_exact"), sort=False)
    order = list(dict.fromkeys(tables["exact"].op.tolist() + tables["paper"].op.tolist()))
    df = df.set_index("op").loc[order].fillna(0.0).reset_index()
    total = df.drop(columns="op").sum().to_frame().T.assign(op="total")
    df = pd.concat([df, total[df.columns]], ignore_index=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        df["time_ratio"] = np.where(df.time_s_paper > 0, df.time_s_exact / df.time_s_paper, np.inf)
    df["why"] = df.op.map(OP_NOTES).fillna("")
    return df


def _op(model_name, device, conv, col="bytes", op=None, **kw):
    a = analyze(model_name, device, conventions=conv, check_context=False, **kw)
    if op is None:
        return getattr(a, col) if col != "weights" else a.memory.weights
    row = a.ops.set_index("op").loc[op]
    return float(row["count"] * row[col])


def errata() -> pd.DataFrame:
    """LLM-Viewer's accounting errors that the exact convention fixes, each measured on an example.

    One row per item: what LLM-Viewer (commit 472f71f) does, what first principles say, the example, the
    quantity compared, its value under each convention and their ratio. All values come from
    :func:`analyze`; the items follow the research notes' list of formula errors. Introduced in Chapter 2.
    """
    a6000 = "a6000"
    rows = []

    def add(item, llm_viewer, first_principles, example, metric, paper, exact):
        rows.append({"item": item, "LLM-Viewer": llm_viewer, "first principles": first_principles,
                     "example": example, "metric": metric, "paper": paper, "exact": exact,
                     "exact / paper": exact / paper if paper else np.inf})

    pre = dict(stage="prefill", seq_len=2048)
    add("SwiGLU width", "mlp_act sized with the hidden width h", "the gate and up outputs have width I",
        "Llama-2-7b prefill, 2048 tokens", "mlp_act bytes", _op("llama-2-7b", a6000, "paper", op="mlp_act", **pre),
        _op("llama-2-7b", a6000, "exact", op="mlp_act", **pre))
    dec16 = dict(stage="decode", seq_len=2048, batch=16)
    add("lm_head FLOPs", "B·h·V operations", "2·B·h·V (a MAC is 2 FLOPs)", "Llama-2-7b decode, batch 16",
        "lm_head FLOPs", _op("llama-2-7b", a6000, "paper", "flops", op="lm_head", **dec16),
        _op("llama-2-7b", a6000, "exact", "flops", op="lm_head", **dec16))
    add("residual add", "reads one operand", "reads both operands", "Llama-2-7b prefill, 2048 tokens",
        "attn_add bytes", _op("llama-2-7b", a6000, "paper", op="attn_add", **pre),
        _op("llama-2-7b", a6000, "exact", op="attn_add", **pre))
    fa = dict(stage="prefill", seq_len=4096, flash_attention=True)
    add("FlashAttention output", "stores the s×s scores twice", "writes the output once",
        "Llama-2-7b prefill, 4096 tokens", "fused_attention bytes",
        _op("llama-2-7b", a6000, "paper", op="fused_attention", **fa),
        _op("llama-2-7b", a6000, "exact", op="fused_attention", **fa))
    add("causal masking", "full s×s attention work", "skips the tiles above the diagonal",
        "Llama-2-7b prefill, 4096 tokens", "fused_attention FLOPs",
        _op("llama-2-7b", a6000, "paper", "flops", op="fused_attention", **fa),
        _op("llama-2-7b", a6000, "exact", "flops", op="fused_attention", **fa))
    fad = dict(stage="decode", seq_len=4096, batch=8, flash_attention=True)
    add("FlashAttention K/V heads (GQA)", "reads K/V for every query head", "reads K/V once per KV head",
        "Llama-2-70b decode, batch 8, 4096 cached", "fused_attention bytes",
        _op("llama-2-70b", a6000, "paper", op="fused_attention", **fad),
        _op("llama-2-70b", a6000, "exact", op="fused_attention", **fad))
    add("FlashAttention K/V (March 2024 code)", "counts K or V, not both (paper-2024-03)", "reads K and V",
        "Llama-2-13b decode, 102400 cached", "fused_attention bytes",
        _op("llama-2-13b", a6000, "paper-2024-03", op="fused_attention", stage="decode", seq_len=102_400,
            flash_attention=True),
        _op("llama-2-13b", a6000, "exact", op="fused_attention", stage="decode", seq_len=102_400,
            flash_attention=True))
    gq = dict(stage="prefill", seq_len=2048)
    add("Q load under GQA", "qk_matmul reads Q with the KV-head count", "Q has the query heads",
        "Llama-3-8b prefill, 2048 tokens", "qk_matmul bytes", _op("llama-3-8b", a6000, "paper", op="qk_matmul", **gq),
        _op("llama-3-8b", a6000, "exact", op="qk_matmul", **gq))
    add("weights in memory", "linear layers only", "embeddings, lm_head and norms too", "Llama-3-8b, FP16",
        "weight bytes", _op("llama-3-8b", a6000, "paper", "weights", stage="decode", seq_len=1),
        _op("llama-3-8b", a6000, "exact", "weights", stage="decode", seq_len=1))
    act = dict(stage="prefill", seq_len=4096)
    add("activation memory", "sum of every stored activation of a layer", "peak of the live activations",
        "Llama-2-7b prefill, 4096 tokens", "activation bytes",
        analyze("llama-2-7b", a6000, conventions="paper", **act).memory.activations,
        analyze("llama-2-7b", a6000, conventions="exact", **act).memory.activations)
    add("explicit head_dim", "head size h/H and q/o projections h×h", "head_dim from the config (H·d ≠ h)",
        "Gemma-7b, FP16", "weight bytes", _op("gemma-7b", a6000, "paper", "weights", stage="decode", seq_len=1),
        _op("gemma-7b", a6000, "exact", "weights", stage="decode", seq_len=1))
    add("mixture of experts", "Mixtral analysed as a dense model", "top-k of E experts, distinct experts touched",
        "Mixtral-8x7B decode, batch 1", "bytes of one step",
        _op("mixtral-8x7b", a6000, "paper", stage="decode", seq_len=1024),
        _op("mixtral-8x7b", a6000, "exact", stage="decode", seq_len=1024))
    add("plain MLP", "a gate_proj for OPT too", "OPT's MLP is fc1, ReLU, fc2", "OPT-6.7b, FP16", "weight bytes",
        _op("opt-6.7b", a6000, "paper", "weights", stage="decode", seq_len=1),
        _op("opt-6.7b", a6000, "exact", "weights", stage="decode", seq_len=1))
    w8 = dict(stage="prefill", seq_len=2048, w_bits=8, a_bits=8, kv_bits=16)
    add("compute peak per operator", "INT8 roof only if w, a and kv bits are all <= 8, for all operators",
        "each matmul runs in the type of its operands (W8A8 GEMMs in INT8)", "Llama-2-7b prefill, W8A8KV16",
        "time of one pass (s)", _op("llama-2-7b", a6000, "paper", "time_s", **w8),
        _op("llama-2-7b", a6000, "exact", "time_s", **w8))
    return pd.DataFrame(rows)


def decode_intensity_table(model_name: str = "llama-2-7b", device: str | Device = "a6000", seq_len: int = 1024,
                           batches=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                           ops=("q_proj", "down_proj", "qk_matmul", "lm_head"), **kw) -> pd.DataFrame:
    """Arithmetic intensity of a few decode operators versus the batch: linear layers climb with it,
    attention over each sequence's own KV cache does not. Introduced in Chapter 2."""
    rows = []
    for b in batches:
        a = analyze(model_name, device, stage="decode", batch=b, seq_len=seq_len, **kw).ops.set_index("op")
        for op in ops:
            if op in a.index:
                rows.append({"batch": b, "op": op, "intensity": float(a.loc[op, "intensity"]),
                             "bound": a.loc[op, "bound"]})
    return pd.DataFrame(rows)
