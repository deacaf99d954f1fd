"""FlashAttention's IO claim made concrete: counted traffic against sequence length and on-chip buffer size.

Dao et al. (2022, Theorem 2) show that standard attention moves Θ(Nd + N²) elements between device memory
and the chip, while FlashAttention moves Θ(N²d²/M) for an on-chip buffer of M elements, and that no exact
attention algorithm does asymptotically better for all M (their Proposition 3). Here both sides are counted,
not derived: the naive side by a :class:`~unveiled.kernels.traffic.ByteCounter` running eager attention on
``meta`` tensors (shapes only, so 100k tokens cost nothing), the tiled side by
:func:`~unveiled.kernels.attention.flash_attention_traffic`, the tile schedule of the kernel built in this
chapter, with the largest square tiles that fit the buffer (:func:`tile_for_buffer`).

:func:`figure16_measured` revisits the survey's Fig. 16 (FlashAttention's memory and time savings for
Llama-2-13B on an A6000) with these counts in place of formulas. Introduced in Chapter 8.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .._validate import check_int
from ..hardware import Device, get_device
from .attention import flash_attention_traffic, naive_attention
from .traffic import ByteCounter

__all__ = ["attention_traffic", "figure16_measured", "naive_traffic", "tile_for_buffer", "traffic_sweep"]

_DTYPES = {2: torch.float16, 4: torch.float32}


def tile_for_buffer(buffer_bytes: float, head_dim: int, element_bytes: int = 2, acc_bytes: int = 4) -> int:
    """The largest square tile ``b`` (query rows = key columns) whose working set fits an on-chip buffer.

    One step of the tiled kernel holds a query tile, a key tile and a value tile (``3·b·d`` elements of
    ``element_bytes``), the output accumulator (``b·d`` of ``acc_bytes``) and the score tile (``b²`` of
    ``acc_bytes``): ``b·d·(3e + a) + a·b² <= M``. For small buffers ``b ≈ M/(d(3e+a))``, so K and V are
    re-read ``N/b`` times: the Θ(N²d²/M) of Dao et al. (2022). At least 1. Introduced in Chapter 8.
    """
    d = check_int("head_dim", head_dim, minimum=1)
    if not (isinstance(buffer_bytes, (int, float, np.integer, np.floating)) and buffer_bytes > 0):
        raise ValueError(f"buffer_bytes must be a positive number of bytes, got {buffer_bytes!r}")
    lin = d * (3 * element_bytes + acc_bytes)
    b = (-lin + math.sqrt(lin * lin + 4 * acc_bytes * float(buffer_bytes))) / (2 * acc_bytes)
    return max(1, int(b))


def naive_traffic(batch: int, num_heads: int, num_kv_heads: int, q_len: int, k_len: int, head_dim: int, *,
                  causal: bool = True, element_bytes: int = 2) -> dict[str, float]:
    """Bytes eager attention moves (:func:`~unveiled.kernels.attention.naive_attention`), counted on meta tensors.

    Returns ``{"bytes": ..., "matmul_bytes": ..., "other_bytes": ..., "kernels": ...}``: the two batched
    matrix products are separated because they are the compute-heavy kernels. Introduced in Chapter 8.
    """
    dtype = _DTYPES.get(element_bytes)
    if dtype is None:
        raise ValueError(f"element_bytes must be 2 (fp16) or 4 (fp32), got {element_bytes!r}")
    with torch.device("meta"):
        q = torch.empty(batch, num_heads, q_len, head_dim, dtype=dtype)
        k = torch.empty(batch, num_kv_heads, k_len, head_dim, dtype=dtype)
        v = torch.empty(batch, num_kv_heads, k_len, head_dim, dtype=dtype)
    with ByteCounter() as bc:
        naive_attention(q, k, v, causal=causal)
    mm = sum(r.bytes for r in bc.records if r.op == "aten.bmm")
    return {"bytes": float(bc.total_bytes), "matmul_bytes": float(mm), "other_bytes": float(bc.total_bytes - mm),
            "kernels": len(bc.records)}


def attention_traffic(seq_len: int, head_dim: int, buffer_bytes: float, *, batch: int = 1, num_heads: int = 1,
                      num_kv_heads: int | None = None, causal: bool = True, element_bytes: int = 2,
                      device: str | Device | None = None, naive: dict | None = None) -> dict[str, float]:
    """Prefill attention of ``seq_len`` tokens: naive and tiled traffic, the IO bounds and roofline times.

    ``flash_bytes`` uses the tile :func:`tile_for_buffer` gives for ``buffer_bytes``; ``bound_bytes`` is
    ``B·H·N²d²/M`` elements (the Θ(N²d²/M) term, constant 1) and ``naive_bound_bytes`` ``B·H·(Nd + N²)``
    elements. With a ``device``, ``naive_s`` and ``flash_s`` are roofline times (each matrix product
    ``max(flops/peak, bytes/bandwidth)``, the other naive kernels memory-bound) at its fp16 peak. ``naive``
    may pass the :func:`naive_traffic` of the same shape (it does not depend on the buffer).
    Introduced in Chapter 8.
    """
    N, d = check_int("seq_len", seq_len, minimum=1), check_int("head_dim", head_dim, minimum=1)
    K = num_heads if num_kv_heads is None else num_kv_heads
    tile = tile_for_buffer(buffer_bytes, d, element_bytes)
    flash = flash_attention_traffic(batch, num_heads, K, N, N, d, causal=causal, block_q=tile, block_k=tile,
                                    element_bytes=element_bytes)
    if naive is None:
        naive = naive_traffic(batch, num_heads, K, N, N, d, causal=causal, element_bytes=element_bytes)
    M = float(buffer_bytes) / element_bytes
    out = {"seq_len": N, "head_dim": d, "buffer_bytes": float(buffer_bytes), "tile": tile,
           "naive_bytes": naive["bytes"], "flash_bytes": float(flash.total_bytes),
           "compulsory_bytes": float(batch * (2 * num_heads + 2 * K) * N * d * element_bytes),
           "bound_bytes": batch * num_heads * N * N * d * d / M * element_bytes,
           "naive_bound_bytes": float(batch * num_heads * (N * d + N * N) * element_bytes)}
    if device is not None:
        dev = get_device(device)
        dtype = "fp16" if dev.has("fp16") else dev.dtypes[0]
        peak, bw = dev.peak(dtype), dev.bandwidth
        pairs = batch * num_heads * N * N * (0.5 if causal else 1.0)  # query-key pairs the tiled kernel computes
        flops_each = 2.0 * batch * num_heads * N * N * d  # the naive kernels compute every pair
        out["naive_s"] = 2 * max(flops_each / peak, naive["matmul_bytes"] / 2 / bw) + naive["other_bytes"] / bw
        out["flash_s"] = max(4.0 * pairs * d / peak, flash.total_bytes / bw)
    return out


def traffic_sweep(seq_lens=(256, 512, 1024, 2048, 4096, 8192, 16384), head_dims=(64, 128),
                  buffers_kb=(16, 64, 100, 164, 228), *, device: str | Device = "a6000", causal: bool = True,
                  element_bytes: int = 2) -> pd.DataFrame:
    """:func:`attention_traffic` over a grid (one head, batch 1): the data of the chapter's traffic charts.

    ``buffers_kb`` are on-chip buffer sizes in KB (1 KB = 1000 B here; the shared memory per SM of the
    registry's GPUs is 100–228 KB). Columns as :func:`attention_traffic` plus ``buffer_kb``.
    Introduced in Chapter 8.
    """
    rows = []
    for d in head_dims:
        for N in seq_lens:
            naive = naive_traffic(1, 1, 1, N, N, d, causal=causal, element_bytes=element_bytes)
            for kb in buffers_kb:
                row = attention_traffic(N, d, kb * 1e3, causal=causal, element_bytes=element_bytes, device=device,
                                        naive=naive)
                row["buffer_kb"] = float(kb)
                rows.append(row)
    return pd.DataFrame(rows)


def figure16_measured(device: str | Device = "a6000", model: str = "llama-2-13b") -> pd.DataFrame:
    """The survey's Fig. 16 with counted attention traffic: memory and time saved by FlashAttention.

    Same cases as the survey ((batch, length) = (1, 1k), (1, 10k), (1, 100k), (16, 1k), (64, 1k); decode and
    prefill; FP16). Every operator except attention is taken from the analyzer (exact convention); attention
    is *counted*: unfused, the eager kernels of :func:`~unveiled.kernels.attention.naive_attention` under a
    ByteCounter (scores, scale, mask, softmax, ``P·V``); fused, the tile traffic of this chapter's kernel with
    the device's FlashAttention tile (:func:`~unveiled.analyzer.costs.flash_tile`). Times are roofline times
    on ``device``. Columns: ``stage, batch, seq_len, case, unfused_bytes, fused_bytes,
    memory_access_reduction_pct, time_reduction_pct``. Introduced in Chapter 8.
    """
    from ..analyzer import analyze
    from ..analyzer import model as get_model
    from ..analyzer.costs import flash_tile

    dev = get_device(device)
    spec = get_model(model)
    H, K, d, n = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.num_layers
    tile = flash_tile(dev, d, 2.0, 2.0)
    dtype = "fp16" if dev.has("fp16") else dev.dtypes[0]
    attention = {"qk_matmul", "softmax", "sv_matmul", "fused_attention"}
    rows = []
    for stage in ("decode", "prefill"):
        for batch, seq in ((1, 1024), (1, 10_240), (1, 102_400), (16, 1024), (64, 1024)):
            a = analyze(spec, dev, stage=stage, batch=batch, seq_len=seq, check_context=False)
            ops = a.ops
            rest = ~ops["op"].isin(attention)
            rest_bytes = float((ops["bytes"] * ops["count"])[rest].sum())
            rest_s = float(ops["total_time_s"][rest].sum())
            q = seq if stage == "prefill" else 1
            causal = stage == "prefill"
            naive = naive_traffic(batch, H, K, q, seq, d, causal=causal)
            fused = flash_attention_traffic(batch, H, K, q, seq, d, causal=causal, block_q=tile, block_k=tile)
            flops = 4.0 * batch * H * q * seq * d
            peak, bw = dev.peak(dtype), dev.bandwidth
            naive_s = 2 * max(flops / 2 / peak, naive["matmul_bytes"] / 2 / bw) + naive["other_bytes"] / bw
            pairs = batch * H * (q * (q + 1) / 2 if causal else q * seq)
            fused_s = max(4.0 * pairs * d / peak, fused.total_bytes / bw)
            unfused_bytes = rest_bytes + n * naive["bytes"]
            fused_bytes = rest_bytes + n * fused.total_bytes
            rows.append({"stage": stage, "batch": batch, "seq_len": seq, "case": f"bs{batch}, {seq // 1024}k",
                         "unfused_bytes": unfused_bytes, "fused_bytes": fused_bytes,
                         "memory_access_reduction_pct": 100 * (1 - fused_bytes / unfused_bytes),
                         "time_reduction_pct": 100 * (1 - (rest_s + n * fused_s) / (rest_s + n * naive_s))})
    return pd.DataFrame(rows)
