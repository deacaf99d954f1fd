"""The roofline's estimate of a whole generation: one prefill plus every decode step, summed in closed form.

This is an estimate of time, not text: :func:`estimate_generation` says how long a device would take to
generate ``gen_len`` tokens; :func:`unveiled.generation.generate` samples them from a real model.

Each decode operator's FLOPs and bytes are affine in the KV-cache length L (constant past a sliding window),
so its roofline time ``max(flops(L)/peak, bytes(L)/bandwidth)`` is the maximum of two affine functions:
affine on either side of one crossing point. Summing it over L = L0 .. L1 is two arithmetic series, so a
4,096-token generation costs the same as a 1-token one (LLM-Viewer re-ran its analysis for every token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._validate import check_int
from ..hardware import Device
from .analysis import Analysis, MemoryFootprint, analyze, evaluate, resolve_device, setting
from .configs import ModelSpec, model_spec
from .costs import Setting
from .precision import Precision

__all__ = ["Generation", "GenerationEstimate", "estimate_generation", "generate", "sum_max_affine"]


def sum_max_affine(p1, q1, p2, q2, lo, hi):
    """``Σ_{L=lo}^{hi} max(p1 + q1·L, p2 + q2·L)`` in closed form (arrays broadcast; empty range → 0)."""
    p1, q1, p2, q2 = (np.asarray(x, dtype=float) for x in (p1, q1, p2, q2))
    lo, hi = float(lo), float(hi)

    def series(p, q, a, b):  # Σ_{L=a}^{b} (p + qL), zero when b < a
        count = np.maximum(b - a + 1, 0)
        return np.where(count > 0, p * count + q * (a + b) * count / 2, 0.0)

    dp, dq = p1 - p2, q1 - q2
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.where(dq != 0, -dp / dq, 0.0)
    # dq > 0: line 1 is above from ceil(cross) on; dq < 0: line 1 is above up to floor(cross)
    k_up = np.clip(np.ceil(cross), lo, hi + 1)
    k_dn = np.clip(np.floor(cross), lo - 1, hi)
    rising = series(p2, q2, lo, k_up - 1) + series(p1, q1, k_up, hi)
    falling = series(p1, q1, lo, k_dn) + series(p2, q2, k_dn + 1, hi)
    flat = np.where(dp >= 0, series(p1, q1, lo, hi), series(p2, q2, lo, hi))
    return np.where(dq > 0, rising, np.where(dq < 0, falling, flat))


@dataclass(frozen=True)
class GenerationEstimate:
    """The roofline's timing of one generation: ``batch`` prompts of ``prompt_len`` tokens, ``gen_len`` new tokens each.

    ``ttft_s`` is the prefill (time to first token); ``tpot_s`` the mean time per output token after it;
    ``total_s = ttft_s + decode_s``; ``tokens_per_s`` counts generated tokens of all sequences per second of
    ``total_s``. ``memory`` is the footprint of the last decode step (the largest KV cache).
    Introduced in Chapter 2.
    """

    prefill: Analysis
    decode_s: float
    decode_steps: int
    batch: int
    prompt_len: int
    gen_len: int
    memory: MemoryFootprint

    @property
    def ttft_s(self) -> float:
        return self.prefill.time_s

    @property
    def tpot_s(self) -> float:
        return self.decode_s / self.decode_steps if self.decode_steps else math.nan

    @property
    def total_s(self) -> float:
        return self.ttft_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.gen_len / self.total_s

    def summary(self) -> pd.Series:
        """The timings as a Series."""
        return pd.Series({"batch": self.batch, "prompt_len": self.prompt_len, "gen_len": self.gen_len,
                          "ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "decode_s": self.decode_s,
                          "total_s": self.total_s, "tokens_per_s": self.tokens_per_s,
                          "memory_bytes": self.memory.total, "fits": self.memory.fits})

    def __repr__(self) -> str:
        return (f"GenerationEstimate({self.prefill.model.name} on {self.prefill.device.display_name}, batch {self.batch}, "
                f"{self.prompt_len}+{self.gen_len} tokens: TTFT {self.ttft_s * 1e3:.4g} ms, "
                f"TPOT {self.tpot_s * 1e3:.4g} ms, total {self.total_s:.4g} s, {self.tokens_per_s:.4g} tokens/s)")


def decode_time_sum(spec: ModelSpec, device: Device, st: Setting, lo: int, hi: int) -> float:
    """Total time of decode steps with KV-cache lengths ``lo .. hi`` (inclusive), in closed form."""
    if hi < lo:
        return 0.0
    pieces = [(lo, hi)]
    w = spec.sliding_window if st.conventions == "exact" else None
    if w is not None and lo <= w - 1 and w <= hi:
        pieces = [(lo, w - 1), (w, hi)]  # attention stops growing once the cache reaches the window
    total = 0.0
    for a, b in pieces:
        st2 = Setting(**{**st.__dict__, "seq_len": np.array([a, a + 1], dtype=float)})
        ev = evaluate(spec, device, st2)
        peaks = ev.peaks[:, 0]
        f0, f1 = ev.flops[:, 0], ev.flops[:, 1]
        q0, q1 = ev.bytes[:, 0], ev.bytes[:, 1]
        # time(L) = max(F(L)/peak, Q(L)/bw) with F, Q affine: write both in terms of L
        tf0, tfs = f0 / peaks, (f1 - f0) / peaks
        tq0, tqs = q0 / device.bandwidth, (q1 - q0) / device.bandwidth
        per_op = sum_max_affine(tf0 - tfs * a, tfs, tq0 - tqs * a, tqs, a, b)
        total += float(ev.counts @ per_op)
    return total


def estimate_generation(m: str | ModelSpec, hw: str | Device, *, batch: int = 1, prompt_len: int = 1024,
                        gen_len: int = 128, precision: Precision | str | None = None, w_bits: int | None = None,
                        a_bits: int | None = None, kv_bits: int | None = None, flash_attention: bool = False,
                        conventions: str = "exact", check_context: bool | None = None,
                        group_size: int | None = None, head_bits: int | None = None) -> GenerationEstimate:
    """Estimate the time of a generation: prefill ``prompt_len`` tokens, then decode until ``gen_len`` are out.

    The prefill produces the first token (its time is the TTFT); each of the ``gen_len - 1`` decode steps
    processes one token, the ``prompt_len + 1``-th to the ``prompt_len + gen_len - 1``-th (the last token
    generated is never fed back), with a KV cache of that many tokens. Their times are summed
    in closed form (see the module docstring), so the cost does not grow with ``gen_len``. With
    ``conventions="paper"`` it follows LLM-Viewer's ``analyze_generate_task``: ``gen_len`` decode steps at
    cache lengths ``prompt_len .. prompt_len + gen_len - 1`` [Yuan et al. 2024]. The precision is given as
    in :func:`unveiled.analyze` (``precision="W4A16"`` or the flat keywords). Introduced in Chapter 2.
    """
    spec = model_spec(m)
    prompt_len = check_int("prompt_len", prompt_len)
    gen_len = check_int("gen_len", gen_len)
    p = Precision.resolve(precision, w_bits=w_bits, a_bits=a_bits, kv_bits=kv_bits, head_bits=head_bits,
                          group_size=group_size)
    exact = conventions == "exact"
    if check_context is None:
        check_context = exact
    if check_context and prompt_len + gen_len > spec.max_context:
        raise ValueError(
            f"a prompt of {prompt_len} tokens plus {gen_len} generated tokens exceeds the context of {spec.name} "
            f"({spec.max_context} tokens); pass check_context=False to analyse it anyway"
        )
    common = dict(batch=batch, precision=p, flash_attention=flash_attention, conventions=conventions)
    pre = analyze(spec, hw, stage="prefill", seq_len=prompt_len, check_context=check_context, **common)
    device = resolve_device(hw, conventions)
    lo = prompt_len + (1 if exact else 0)
    hi = prompt_len + gen_len - 1
    st = setting("decode", pre.batch, 0, p, pre.flash_attention, conventions)
    decode_s = decode_time_sum(spec, device, st, lo, hi)
    steps = max(hi - lo + 1, 0)
    memory = pre.memory
    if steps:
        memory = analyze(spec, hw, stage="decode", seq_len=hi, check_context=False, **common).memory
    return GenerationEstimate(pre, decode_s, steps, pre.batch, prompt_len, gen_len, memory)


# ---- deprecated spellings ------------------------------------------------------------------------------
#: Deprecated alias of :func:`estimate_generation`: ``uv.generate`` read like text generation
#: (:func:`unveiled.generation.generate`); kept so that older notebooks run.
generate = estimate_generation
#: Deprecated alias of :class:`GenerationEstimate`.
Generation = GenerationEstimate
