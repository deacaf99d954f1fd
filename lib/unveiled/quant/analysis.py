"""The survey's roofline use case for quantization (§3.1.1), computed with the analyzer.

Quantization changes two things the roofline sees [Yuan et al. 2024, §3.1.1]. *Computation*: a device with
low-bit units has a higher compute roof, but only when **every** operand is low-bit (W8A8 runs on INT8 units;
W8A16 dequantizes to FP16 and computes there). *Memory access*: fewer bits per weight, activation or cached
key/value move fewer bytes, which raises the arithmetic intensity. Three cases follow: an operator that stays
memory-bound gets faster in proportion to the bytes saved (decode); one that crosses the ridge point gets
faster until it hits the compute roof; one already compute-bound gains nothing from fewer bytes (prefill, or
decode at large batch). Every number here comes from :func:`unveiled.analyze` and :func:`unveiled.sweep`.
Introduced in Chapter 3.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._search import first_true
from .._validate import check_int
from ..analyzer import analyze, sweep
from ..hardware import Device

__all__ = [
    "BIT_SETTINGS",
    "compute_roof_table",
    "memory_access_cases",
    "operator_bounds",
    "predicted_decode_time",
    "w4a16_speedup_vs_batch",
]

#: Weight/activation/KV settings the chapter compares (the survey's notation: W4 = 4-bit weights, FP16 rest).
BIT_SETTINGS: dict[str, tuple[int, int, int]] = {
    "FP16": (16, 16, 16),
    "W8": (8, 16, 16),
    "W8A8": (8, 8, 8),
    "W4": (4, 16, 16),
    "W4A8": (4, 8, 8),
    "W4A4": (4, 4, 4),
}


def compute_roof_table(model: str = "llama-2-13b", device: str | Device = "a6000", *, batch: int = 1,
                       seq_len: int = 1024, conventions: str = "paper",
                       settings: dict[str, tuple[int, int, int]] | None = None) -> pd.DataFrame:
    """Prefill and decode time per bit setting, with the compute data type the GEMMs run in.

    Shows the survey's *computation* point: W8 (weight-only) keeps the FP16 roof, W8A8 gets the INT8 roof,
    so only the latter speeds up compute-bound prefill. Columns: ``setting``, ``stage``, ``w_bits``,
    ``a_bits``, ``kv_bits``, ``gemm_dtype``, ``time_s``, ``speedup_vs_fp16``. Introduced in Chapter 3.
    """
    settings = BIT_SETTINGS if settings is None else settings
    rows = []
    for stage in ("prefill", "decode"):
        base = None
        for label, (w, a, kv) in settings.items():
            an = analyze(model, device, stage=stage, batch=batch, seq_len=seq_len, w_bits=w, a_bits=a, kv_bits=kv,
                         conventions=conventions)
            ops = an.ops
            gemm = ops.loc[ops["op"] == "q_proj", "compute_dtype"].iloc[0]
            base = an.time_s if base is None else base
            rows.append({"setting": label, "stage": stage, "w_bits": w, "a_bits": a, "kv_bits": kv,
                         "gemm_dtype": gemm, "time_s": an.time_s, "speedup_vs_fp16": base / an.time_s})
    return pd.DataFrame(rows)


def _first_compute_bound_batch(model, device, op, w_bits, seq_len, conventions, max_batch) -> int | None:
    """Smallest decode batch at which ``op`` is compute-bound (intensity grows with the batch: bisect)."""

    def compute_bound(b: int) -> bool:
        ops = analyze(model, device, stage="decode", batch=b, seq_len=seq_len, w_bits=w_bits,
                      conventions=conventions).ops
        return ops.loc[ops["op"] == op, "bound"].iloc[0] == "compute"

    if not compute_bound(max_batch):
        return None
    return first_true(compute_bound, 0, max_batch)


def memory_access_cases(model: str = "llama-2-13b", device: str | Device = "a6000", *, op: str = "q_proj",
                        seq_len: int = 1024, low_bits: int = 4, conventions: str = "paper") -> pd.DataFrame:
    """The survey's three memory-access cases for one operator, FP16 weights against ``low_bits`` weights.

    Case 1: decode at batch 1, memory-bound before and after (time falls with the bytes). Case 2: decode at a
    batch where FP16 is memory-bound but the quantized operator crosses the ridge (found by search). Case 3:
    prefill of ``seq_len`` tokens, compute-bound before and after (no gain). Columns: ``case``, ``stage``,
    ``batch``, ``w_bits``, ``intensity``, ``bound``, ``time_s`` (one instance of the operator) and
    ``speedup`` (FP16 time / quantized time, on the quantized row). Introduced in Chapter 3.
    """
    low_bits = check_int("low_bits", low_bits)
    b16 = _first_compute_bound_batch(model, device, op, 16, seq_len, conventions, 1024)
    blow = _first_compute_bound_batch(model, device, op, low_bits, seq_len, conventions, 1024)
    if b16 is None or blow is None or blow >= b16:
        raise ValueError(f"no batch makes {op} cross the ridge between W16 and W{low_bits} on this device")
    cross = round(float(np.sqrt(blow * b16)))
    cross = min(max(cross, blow), b16 - 1)
    cases = [
        ("1: memory-bound before and after", "decode", 1, seq_len),
        ("2: memory-bound -> compute-bound", "decode", cross, seq_len),
        ("3: compute-bound before and after", "prefill", 1, seq_len),
    ]
    rows = []
    for case, stage, batch, s in cases:
        t16 = None
        for w in (16, low_bits):
            ops = analyze(model, device, stage=stage, batch=batch, seq_len=s, w_bits=w, conventions=conventions).ops
            r = ops.loc[ops["op"] == op].iloc[0]
            t16 = r["time_s"] if t16 is None else t16
            rows.append({"case": case, "stage": stage, "batch": batch, "seq_len": s, "w_bits": w,
                         "intensity": r["intensity"], "bound": r["bound"], "time_s": r["time_s"],
                         "speedup": t16 / r["time_s"]})
    return pd.DataFrame(rows)


def w4a16_speedup_vs_batch(model: str = "llama-2-13b", device: str | Device = "a6000", *, seq_len: int = 1024,
                           batches=None, low_bits: int = 4, conventions: str = "exact") -> pd.DataFrame:
    """Decode-step speedup of ``low_bits``-bit weights (FP16 activations) over FP16, for each batch size.

    Weight-only quantization only shrinks the weight bytes; as the batch grows the KV-cache reads and the
    compute (unchanged, on the FP16 roof) take over, and the speedup decays towards 1. Columns: ``batch``,
    ``time_fp16_s``, ``time_low_s``, ``speedup``, ``low_memory_bound_share``. Introduced in Chapter 3.
    """
    batches = list(range(1, 257)) if batches is None else list(batches)
    df = sweep(model, device, stage="decode", batch=batches, seq_len=seq_len, w_bits=[16, low_bits], a_bits=16,
               conventions=conventions)
    hi = df[df["w_bits"] == 16].set_index("batch")
    lo = df[df["w_bits"] == low_bits].set_index("batch")
    return pd.DataFrame({
        "batch": hi.index.to_numpy(),
        "time_fp16_s": hi["time_s"].to_numpy(),
        "time_low_s": lo["time_s"].to_numpy(),
        "speedup": (hi["time_s"] / lo["time_s"]).to_numpy(),
        "low_memory_bound_share": lo["memory_bound_share"].to_numpy(),
    })


def operator_bounds(model: str, device: str | Device, *, stages=("prefill", "decode"), batches=(1, 16, 64),
                    seq_lens=(1024, 4096), w_bits=(16, 8, 4), a_bits=(16, 8), kv_bits=(16, 4),
                    conventions: str = "exact") -> pd.DataFrame:
    """Per-operator roofline verdict over a small grid of settings (for the trade-off explorer).

    One row per (setting, operator): ``stage``, ``batch``, ``seq_len``, ``w_bits``, ``a_bits``, ``kv_bits``,
    ``op``, ``bound``, ``time_share`` (of the pass) and ``intensity``. Introduced in Chapter 3.
    """
    frames = []
    for stage in stages:
        for b in batches:
            for s in seq_lens:
                for w in w_bits:
                    for a in a_bits:
                        for kv in kv_bits:
                            ops = analyze(model, device, stage=stage, batch=b, seq_len=s, w_bits=w, a_bits=a,
                                          kv_bits=kv, conventions=conventions).ops
                            frames.append(pd.DataFrame({
                                "stage": stage, "batch": b, "seq_len": s, "w_bits": w, "a_bits": a,
                                "kv_bits": kv, "op": ops["op"], "bound": ops["bound"],
                                "time_share": ops["time_share"], "intensity": ops["intensity"]}))
    return pd.concat(frames, ignore_index=True)


def predicted_decode_time(model: str, device: str | Device, *, w_bits: int, a_bits: int = 16, seq_len: int = 64,
                          batch: int = 1, group_size: int | None = None, head_bits: int | None = None) -> float:
    """The roofline's time for one decode step (seconds), for comparison with a measured step.

    Introduced in Chapter 3.
    """
    return analyze(model, device, stage="decode", batch=batch, seq_len=seq_len, w_bits=w_bits, a_bits=a_bits,
                   kv_bits=a_bits, group_size=group_size, head_bits=head_bits).time_s
