"""The analytic model of speculative decoding, and the roofline reason it works.

With per-token acceptance rate ``α`` (i.i.d.) and ``k`` draft tokens per round, a target pass emits on average
``(1 − α^(k+1)) / (1 − α)`` tokens [Leviathan et al. 2023] (:func:`expected_tokens_per_pass`, introduced with
distillation in Chapter 4 and re-exported here). A round costs ``k`` draft steps (``c`` each,
relative to one target decode step) plus one verification pass that scores ``k + 1`` positions, which costs
``v(k)`` target steps. The speedup over plain decoding is therefore

    S(α, k, c) = (1 − α^(k+1)) / ((1 − α) · (k·c + v(k))).

Leviathan et al. take ``v = 1``. That is the roofline argument: at batch 1 a decode pass is memory-bound (it
reads every weight to do two FLOPs per weight), so scoring ``k + 1`` tokens reads the same bytes and finishes
in about the same time, until ``k + 1`` approaches the device's ridge point. :func:`verification_cost` computes
``v(k)`` with the book's analyzer, for any model and device, and the chapter measures it on this CPU.

The same analyzer explains the survey's §4.1.4 [Yuan et al. 2024]: early exit, contextual sparsity and
mixture-of-experts skip parameters per token, so they cut FLOPs and bytes in proportion and leave the
arithmetic intensity, and hence the bound, nearly unchanged (:func:`dynamic_reduction_table`); but an MoE
layer at batch ``B`` touches ``E·(1 − (1 − k/E)^B)`` distinct experts, so decode gets memory-heavier with
batch (:func:`moe_decode_table`). Introduced in Chapter 7.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._validate import check_int, check_number
from ..analyzer import analyze, model_spec
from ..analyzer.analysis import resolve_device
from ..analyzer.costs import distinct_experts
from ..distill.acceptance import expected_tokens_per_pass

__all__ = [
    "best_draft_length",
    "dynamic_reduction_table",
    "expected_distinct_experts",
    "expected_speedup",
    "expected_tokens_per_pass",
    "moe_decode_table",
    "simulate_distinct_experts",
    "simulate_tokens_per_pass",
    "verification_cost",
]


def _alpha(alpha) -> np.ndarray:
    a = np.asarray(check_number("alpha (acceptance rate)", alpha, allow_array=True), dtype=float)
    if np.any((a < 0) | (a > 1)):
        raise ValueError(f"alpha (acceptance rate) must be in [0, 1], got {alpha}")
    return a


def _k(k, minimum: int = 1) -> np.ndarray:
    if isinstance(k, bool):
        raise TypeError(f"k (draft length) must be an int, got {k!r}")
    arr = np.asarray(k)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"k (draft length) must hold integers, got dtype {arr.dtype}")
    if np.any(arr < minimum):
        raise ValueError(f"k (draft length) must be >= {minimum}, got {arr.min()}")
    return arr


def _out(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x


def expected_speedup(alpha, k, cost_ratio, verify_ratio=1.0):
    """Wall-clock speedup of speculative over plain decoding: tokens per pass / cost of a round.

    A round costs ``k·cost_ratio + verify_ratio`` target decode steps, where ``cost_ratio`` ``c`` is a draft
    step's time over a target step's, and ``verify_ratio`` ``v`` is a ``k + 1``-token verification pass over a
    1-token pass (1 while memory-bound; see :func:`verification_cost`). Above 1 means faster. All arguments
    broadcast. Introduced in Chapter 7 [Leviathan et al. 2023].
    """
    c = np.asarray(check_number("cost_ratio", cost_ratio, allow_array=True), dtype=float)
    v = np.asarray(check_number("verify_ratio", verify_ratio, allow_array=True), dtype=float)
    if np.any(c < 0):
        raise ValueError(f"cost_ratio must be >= 0, got {cost_ratio}")
    if np.any(v <= 0):
        raise ValueError(f"verify_ratio must be > 0, got {verify_ratio}")
    kk = _k(k)
    return _out(np.asarray(expected_tokens_per_pass(alpha, kk)) / (kk * c + v))


def best_draft_length(alpha: float, cost_ratio: float, k_max: int = 16, verify_ratio=None) -> int:
    """The draft length ``k`` in ``1..k_max`` that maximises :func:`expected_speedup`.

    ``verify_ratio`` may be a number or an array of length ``k_max`` (``v(k)`` for ``k = 1..k_max``).
    Introduced in Chapter 7.
    """
    k_max = check_int("k_max", k_max)
    ks = np.arange(1, k_max + 1)
    v = 1.0 if verify_ratio is None else np.asarray(verify_ratio, dtype=float)
    if np.ndim(v) == 1 and len(v) != k_max:
        raise ValueError(f"verify_ratio must have k_max = {k_max} entries (k = 1..k_max), got {len(v)}")
    s = np.asarray(expected_speedup(alpha, ks, cost_ratio, v))
    return int(ks[int(np.argmax(s))])


def simulate_tokens_per_pass(alpha: float, k: int, rounds: int = 100_000, seed: int = 0) -> float:
    """Monte-Carlo estimate of tokens per target pass: accept each draft token independently with ``α``.

    A round emits its accepted prefix plus one token (the correction or the bonus). The estimate checks the
    closed form of :func:`expected_tokens_per_pass`. Introduced in Chapter 7.
    """
    a = float(_alpha(alpha))
    k = int(_k(k))
    rounds = check_int("rounds", rounds)
    rng = np.random.default_rng(seed)
    accepted = rng.random((rounds, k)) < a
    prefix = np.cumprod(accepted, axis=1).sum(axis=1)
    return float((prefix + 1).mean())


# --------------------------------------------------------------------------------------------------
# Roofline: what a verification pass costs
# --------------------------------------------------------------------------------------------------

def verification_cost(m, hw, tokens: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 12, 16, 32, 64), context_len: int = 256,
                      **analyze_kwargs) -> pd.DataFrame:
    """Roofline cost of one target pass that scores ``T`` new tokens against a cache of ``context_len``.

    One row per ``T`` with ``flops``, ``bytes``, ``time_s``, ``intensity`` and ``relative_time`` (time over
    the 1-token pass: the ``v(k)`` of :func:`expected_speedup` for ``T = k + 1``). Each row is the analyzer's
    decode step of one sequence with ``new_tokens=T`` (:func:`unveiled.analyze`): the token-wise operators
    see ``T`` rows that share one weight read, and attention follows the model (grouped or latent heads,
    sliding window, causality among the new tokens), so ``T = 1`` is exactly a decode step. While the pass is
    memory-bound, ``relative_time`` stays near 1. ``m`` and ``hw`` are anything :func:`unveiled.analyze`
    accepts; extra keyword arguments (``precision``, ``w_bits``, ``flash_attention``, ...) are passed on.
    Introduced in Chapter 7.
    """
    spec = model_spec(m)
    device = resolve_device(hw, analyze_kwargs.get("conventions", "exact"))
    context_len = check_int("context_len", context_len, minimum=0)
    ts = sorted({check_int("tokens", int(t)) for t in tokens} | {1})
    rows = []
    for t in ts:
        a = analyze(spec, device, stage="decode", batch=1, seq_len=context_len + t, new_tokens=t,
                    check_context=False, **analyze_kwargs)
        rows.append({"tokens": t, "context_len": context_len, "flops": a.flops, "bytes": a.bytes,
                     "time_s": a.time_s, "intensity": a.intensity})
    df = pd.DataFrame(rows)
    df["relative_time"] = df["time_s"] / df.loc[df["tokens"] == 1, "time_s"].iloc[0]
    df["model"] = spec.name
    df["device"] = device.display_name
    return df[df["tokens"].isin([int(t) for t in tokens])].reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Dynamic parameter reduction (survey §4.1.4)
# --------------------------------------------------------------------------------------------------


def expected_distinct_experts(num_experts: int, top_k: int, tokens):
    """Expected distinct experts a batch of ``tokens`` touches in one MoE layer: ``E·(1 − (1 − k/E)^B)``.

    Assumes each token picks its ``k`` experts uniformly at random (no load imbalance). ``tokens`` may be an
    array. At ``B = 1`` it is ``k``; it tends to ``E`` as the batch grows. The analyzer charges MoE weight
    reads with the same formula (:func:`unveiled.analyzer.distinct_experts`). Introduced in Chapter 7.
    """
    e = check_int("num_experts", num_experts)
    k = check_int("top_k", top_k, maximum=e)
    b = np.asarray(tokens, dtype=float)
    if np.any(b < 0):
        raise ValueError("tokens must be >= 0")
    return _out(distinct_experts(e, k, b))


def simulate_distinct_experts(num_experts: int, top_k: int, tokens: int, trials: int = 2000, seed: int = 0) -> float:
    """Monte-Carlo count of distinct experts touched by ``tokens`` tokens routed uniformly to ``top_k`` of
    ``num_experts`` distinct experts each (the check of :func:`expected_distinct_experts`). Chapter 7."""
    e = check_int("num_experts", num_experts)
    k = check_int("top_k", top_k, maximum=e)
    b = check_int("tokens", tokens)
    rng = np.random.default_rng(seed)
    keys = rng.random((trials, b, e))
    chosen = np.argsort(keys, axis=-1)[..., :k]  # k distinct experts per token, uniformly
    touched = np.zeros((trials, e), dtype=bool)
    np.put_along_axis(touched, chosen.reshape(trials, -1), True, axis=1)
    return float(touched.sum(axis=1).mean())


def moe_decode_table(m="mixtral-8x7b", hw="a6000", batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
                     seq_len: int = 1024, **analyze_kwargs) -> pd.DataFrame:
    """Decode step of an MoE model vs batch size: experts touched per layer, bytes, time, time per token.

    Also the same model's "active-only" lower bound (as if each step read only ``k`` experts) and "dense"
    upper bound (all ``E`` experts read), so the table shows decode sliding from active-parameter cost to
    total-parameter cost as the batch grows. Uses the analyzer's uniform-routing expert count.
    Introduced in Chapter 7.
    """
    spec = model_spec(m)
    if not spec.is_moe:
        raise ValueError(f"{spec.name} is not a mixture-of-experts model; try 'mixtral-8x7b' or 'qwen3-30b-a3b'")
    rows = []
    for b in batches:
        b = check_int("batch", int(b))
        a = analyze(spec, hw, stage="decode", batch=b, seq_len=seq_len, **analyze_kwargs)
        ops = a.ops
        expert = ops[ops["op"].str.startswith("experts.")]
        rows.append({
            "model": spec.name, "device": a.device.display_name, "batch": b, "seq_len": seq_len,
            "experts_touched": float(expected_distinct_experts(spec.num_experts, spec.experts_per_token, b)),
            "num_experts": spec.num_experts, "top_k": spec.experts_per_token,
            "flops": a.flops, "bytes": a.bytes, "time_s": a.time_s, "time_per_token_s": a.time_s / b,
            "expert_weight_bytes": float((expert["count"] * expert["weight_bytes"]).sum()),
            "intensity": a.intensity,
        })
    return pd.DataFrame(rows)


def dynamic_reduction_table(m="llama-2-7b", hw="a6000", keep: float = 0.5, seq_len: int = 1024,
                            batch: int = 1, **analyze_kwargs) -> pd.DataFrame:
    """Survey §4.1.4 in numbers: decode cost when each token uses only part of the parameters.

    Rows: the dense model; early exit after ``keep`` of the layers [Schuster et al. 2022]; contextual sparsity
    computing ``keep`` of the MLP neurons [Liu et al. 2023] (and of the attention heads too);
    :func:`moe_decode_table` covers mixture-of-experts models. Columns: ``flops``,
    ``bytes``, ``time_s``, ``intensity``, and each relative to the dense row. FLOPs and bytes shrink together,
    so the intensity, and therefore the bound, barely moves. Introduced in Chapter 7.
    """
    spec = model_spec(m)
    keep = check_number("keep", keep)
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    n_keep = max(1, round(spec.num_layers * keep))
    inter = max(1, round(spec.intermediate_size * keep))
    kv_groups = spec.num_heads // spec.num_kv_heads
    kv_keep = max(1, round(spec.num_kv_heads * keep))
    variants = [
        ("dense", spec),
        (f"early exit ({n_keep}/{spec.num_layers} layers)", spec.with_(num_layers=n_keep)),
        (f"contextual sparsity (MLP {keep:.0%})", spec.with_(intermediate_size=inter)),
        (f"contextual sparsity (MLP + heads {keep:.0%})",
         spec.with_(intermediate_size=inter, num_kv_heads=kv_keep, num_heads=kv_keep * kv_groups)),
    ]
    rows = []
    for label, s in variants:
        a = analyze(s, hw, stage="decode", batch=batch, seq_len=seq_len, **analyze_kwargs)
        rows.append({"variant": label, "model": spec.name, "flops": a.flops, "bytes": a.bytes, "time_s": a.time_s,
                     "intensity": a.intensity, "memory_bound_share": a.memory_bound_share})
    df = pd.DataFrame(rows)
    for col in ("flops", "bytes", "time_s"):
        df[f"{col}_ratio"] = df[col] / df[col].iloc[0]
    return df
