"""Lab checks of Chapter 2 (LLM inference through the roofline).

The reader implements three functions (bytes, FLOPs and seconds in SI units) and checks each here against
the analyzer (:mod:`unveiled.analyzer`):

* ``kv_cache_bytes(num_layers, num_kv_heads, head_dim, seq_len, batch, kv_bits)``: the KV cache of ``batch``
  sequences of ``seq_len`` tokens;
* ``attention_cost(batch, query_len, key_len, num_heads, num_kv_heads, head_dim, act_bytes, kv_bytes)``: the
  FLOPs and bytes of naive attention, operator by operator (``qk_matmul``, ``softmax``, ``sv_matmul``);
* ``linear_time(tokens, in_features, out_features, w_bits, a_bits, bandwidth, peak)``: the roofline time of
  a linear layer.

The cases include grouped-query attention, decode and prefill shapes and low bit widths, and the checks
recognise the classic mistakes (the forgotten factor 2 of a multiply-accumulate or of K *and* V, query
heads used for the K/V loads, a score matrix never written, bits taken for bytes) with a targeted hint.
Introduced in Chapter 2.
"""

from __future__ import annotations

from collections.abc import Callable

from ..analyzer.configs import model_spec
from ..analyzer.costs import attention_cost as _attention_cost
from ..analyzer.costs import linear_cost
from ..hardware import Device
from ..roofline import roofline_time
from . import Case, LabReport, close_enough, run_cases

__all__ = ["CHECKS", "check_attention_cost", "check_kv_cache_bytes", "check_linear_time"]


def _judge(expected, mistakes: dict[str, object] | None = None, rtol: float = 1e-9) -> Callable:
    base = close_enough(expected, rtol=rtol)

    def judge(result):
        problem = base(result)
        if problem is None:
            return None
        hits = [msg for msg, wrong in (mistakes or {}).items() if close_enough(wrong, rtol=1e-9)(result) is None]
        if hits:
            return " Or: ".join(hits)
        try:
            ratio = float(result) / float(expected)
        except (TypeError, ValueError, ZeroDivisionError):
            return problem
        return f"wrong by a factor {ratio:.4g} (your value ÷ the expected one)"

    return judge


# The chapter sections the hints point at (headings without their numbers).
_TABLE1 = "Table 1, reproduced"
_MEMORY = "Memory: weights, KV cache and activations"


# ---- Lab 2.1: the KV cache ----------------------------------------------------------------------------------
_KV_MODELS = [("llama-2-7b", 4096, 1, 16), ("llama-3-8b", 8192, 8, 16), ("mistral-7b", 1000, 4, 8),
              ("gemma-2b", 2048, 2, 4), ("qwen2.5-7b", 32768, 1, 16), ("opt-125m", 100, 64, 2)]


def check_kv_cache_bytes(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``kv_cache_bytes(num_layers, num_kv_heads, head_dim, seq_len, batch, kv_bits)`` against
    :meth:`unveiled.analyzer.ModelSpec.kv_cache_bytes` on shipped models (with GQA and low bits)."""
    cases = []
    for name, seq, batch, bits in _KV_MODELS:
        m = model_spec(name)
        seq_in = seq if m.sliding_window is None else min(seq, m.sliding_window)
        want = m.kv_cache_bytes(seq_in, batch, bits)
        args = (m.num_layers, m.num_kv_heads, m.head_dim, seq_in, batch, bits)
        mistakes = {
            "Keys AND values are cached: did you forget the factor 2?": want / 2,
            f"Bits are not bytes: divide kv_bits by 8 ({bits} bits = {bits / 8:g} bytes).": want * 8,
            "The cache holds every layer: multiply by num_layers.": want / m.num_layers,
            "The cache holds every sequence of the batch: multiply by batch.": want / batch,
        }
        if m.num_kv_heads != m.num_heads:
            mistakes["GQA: only the num_kv_heads key/value heads are cached, not the query heads."] = \
                want * m.num_heads / m.num_kv_heads
        cases.append(Case(f"{name}: {seq_in} tokens × batch {batch} at {bits} bits", args=args,
                          judge=_judge(want, mistakes), expected=want, section=_MEMORY,
                          hint="List what the cache stores for one token of one sequence in one layer, then count "
                               "how many of those there are; bits are not bytes."))
    return run_cases(fn, cases, "Lab 2.1 — kv_cache_bytes", raise_on_fail=raise_on_fail, show=show)


# ---- Lab 2.2: attention -------------------------------------------------------------------------------------
_ATTN_CASES = [  # (label, batch, query_len, key_len, heads, kv_heads, head_dim, act_bytes, kv_bytes)
    ("Llama-2-7b decode, 2,048 cached tokens", 1, 1, 2048, 32, 32, 128, 2.0, 2.0),
    ("Llama-2-7b prefill of 512 tokens", 1, 512, 512, 32, 32, 128, 2.0, 2.0),
    ("Llama-3-8b decode (GQA 32/8), batch 4", 4, 1, 1000, 32, 8, 128, 2.0, 2.0),
    ("Llama-3-8b decode with a 4-bit KV cache", 2, 1, 4096, 32, 8, 128, 2.0, 0.5),
    ("Gemma-2b prefill (MQA, head_dim 256)", 3, 100, 100, 8, 1, 256, 2.0, 2.0),
]


def _attention_mistakes(b, q, k, H, K, d, ab, kvb, want) -> dict[str, dict]:
    out: dict[str, dict] = {}

    def variant(message: str, **changes):
        got = {n: tuple(v) for n, v in want.items()}
        for name, (f, by) in changes.items():
            got[name] = (f, by)
        out[message] = got

    qk_f, qk_b = want["qk_matmul"]
    sv_f, sv_b = want["sv_matmul"]
    variant("A multiply-accumulate is 2 FLOPs: both matmuls are 2 · B · H · q · k · d.",
            qk_matmul=(qk_f / 2, qk_b), sv_matmul=(sv_f / 2, sv_b))
    if H != K:
        extra = b * (H - K) * k * d * kvb
        variant("GQA: K and V are read once per key/value head (num_kv_heads), not once per query head.",
                qk_matmul=(qk_f, qk_b + extra), sv_matmul=(sv_f, sv_b + extra))
    scores = b * H * q * k * ab
    variant("Naive attention writes the score matrix (qk_matmul) and reads it back (sv_matmul).",
            qk_matmul=(qk_f, qk_b - scores), sv_matmul=(sv_f, sv_b - scores))
    return out


def _attention_judge(want: dict, mistakes: dict[str, dict]) -> Callable:
    def as_dict(result):
        if not isinstance(result, dict):
            raise TypeError
        return {k: (float(result[k][0]), float(result[k][1])) for k in want}

    def same(a, b):
        return all(close_enough(list(b[k]), rtol=1e-9)(list(a[k])) is None for k in b)

    def judge(result):
        try:
            got = as_dict(result)
        except (TypeError, KeyError, IndexError, ValueError):
            return ("return a dict {'qk_matmul': (flops, bytes), 'softmax': (flops, bytes), "
                    f"'sv_matmul': (flops, bytes)}}, got {type(result).__name__}: {result!r}"[:300])
        if same(got, want):
            return None
        wrong = [f"{k}: expected (flops, bytes) = ({want[k][0]:.6g}, {want[k][1]:.6g}), got ({got[k][0]:.6g}, "
                 f"{got[k][1]:.6g})" for k in want if not same({k: got[k]}, {k: want[k]})]
        hits = [msg for msg, wr in mistakes.items() if same(got, wr)]
        return "; ".join(wrong) + (". " + " Or: ".join(hits) if hits else "")

    return judge


def check_attention_cost(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``attention_cost(batch, query_len, key_len, num_heads, num_kv_heads, head_dim, act_bytes,
    kv_bytes)`` against :func:`unveiled.analyzer.attention_cost` (naive attention) on decode and prefill
    shapes, with MHA, GQA and MQA and a 4-bit KV cache."""
    cases = []
    for label, b, q, k, H, K, d, ab, kvb in _ATTN_CASES:
        want = {n: (float(f), float(by)) for n, (f, by) in _attention_cost(b, q, k, H, K, d, None, ab, kvb).items()}
        cases.append(Case(label, args=(b, q, k, H, K, d, ab, kvb),
                          judge=_attention_judge(want, _attention_mistakes(b, q, k, H, K, d, ab, kvb, want)),
                          expected=want, section=_TABLE1,
                          hint="For each operator, list the tensors it reads and writes (with how many heads each "
                               "has) and the operations per score; naive attention stores the score matrix."))
    return run_cases(fn, cases, "Lab 2.2 — attention_cost", raise_on_fail=raise_on_fail, show=show)


# ---- Lab 2.3: a linear layer on the roofline ----------------------------------------------------------------
_LINEAR_CASES = [  # (label, tokens, in, out, w_bits, a_bits, bandwidth, peak)
    ("decode q_proj of Llama-2-7b on the A6000", 1, 4096, 4096, 16, 16, 768e9, 154.8385e12),
    ("prefill gate_proj of Llama-2-7b, 2,048 tokens", 2048, 4096, 11008, 16, 16, 768e9, 154.8385e12),
    ("decode down_proj, 4-bit weights, batch 8", 8, 11008, 4096, 4, 16, 768e9, 154.8385e12),
    ("decode, batch 512 on an H100 (compute-bound)", 512, 8192, 28672, 16, 16, 3.35e12, 989.4e12),
]


def check_linear_time(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``linear_time(tokens, in_features, out_features, w_bits, a_bits, bandwidth, peak)``: the roofline
    time of a linear layer (read the weight once, read the input, write the output) against the library."""
    cases = []
    for label, n, i, o, wb, ab, bw, peak in _LINEAR_CASES:
        flops, nbytes = linear_cost(n, i, o, wb / 8, ab / 8)
        dev = Device(name="lab-device", bandwidth=bw, peaks={"fp16": peak})
        want = roofline_time(flops, nbytes, dev)
        mistakes = {
            "A multiply-accumulate is 2 FLOPs.": roofline_time(flops / 2, nbytes, dev),
            "Bits are not bytes: divide by 8.": roofline_time(flops, nbytes * 8, dev),
            "The roofline time is the max of compute and memory time, not their sum.": flops / peak + nbytes / bw,
            "Count the activations too: the input is read and the output written.":
                roofline_time(flops, i * o * wb / 8, dev),
        }
        cases.append(Case(label, args=(n, i, o, wb, ab, bw, peak), judge=_judge(want, mistakes), expected=want,
                          section=_TABLE1,
                          hint="Count the layer's operations and every byte it moves (weight, input, output, each "
                               "at its own bit width), then apply Chapter 1's roofline time."))
    return run_cases(fn, cases, "Lab 2.3 — linear_time", raise_on_fail=raise_on_fail, show=show)


CHECKS = {
    "kv_cache_bytes": check_kv_cache_bytes,
    "attention_cost": check_attention_cost,
    "linear_time": check_linear_time,
}
