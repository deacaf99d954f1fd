"""Lab checks of Chapter 1 (the roofline model).

The reader implements four small functions in SI units (bytes/s, ops/s, seconds) and checks each here:

* ``attainable(intensity, bandwidth, peak)``: attainable ops/s, ``min(peak, bandwidth × intensity)``;
* ``op_time(flops, nbytes, bandwidth, peak)``: roofline time of an operation, ``max(flops/peak, nbytes/bandwidth)``;
* ``matmul_intensity(m, k, n, bytes_per_element)``: arithmetic intensity of ``(m×k) @ (k×n)``;
* ``critical_tokens(k, n, bandwidth, peak, bytes_per_element)``: the smallest number of tokens ``m`` that
  makes that matmul compute-bound.

Each check compares with the library's reference implementation (:mod:`unveiled.roofline`) on fixed cases,
and recognises the classic mistakes (max for min, the sum of times for their max, a forgotten factor 2 of a
multiply-accumulate, a forgotten output write, bits for bytes, milliseconds for seconds) with a targeted
hint. Introduced in Chapter 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from ..hardware import Device
from ..roofline import attainable_performance, critical_batch_size, matmul_cost, roofline_time
from . import Case, LabReport, close_enough, run_cases

__all__ = ["CHECKS", "check_attainable", "check_critical_tokens", "check_matmul_intensity", "check_op_time"]

# The survey's A6000 (LLM-Viewer's numbers) and a datasheet H100 SXM, in SI units.
A6000 = (768e9, 154.8385e12)
H100 = (3.35e12, 989.4e12)

# The chapter sections the hints point at (headings without their numbers).
_OPERATION = "An operation on a device: load, compute, store"
_ROOFLINE = "The roofline"
_TOUR = "A tour of today's hardware"


def _device(bandwidth: float, peak: float) -> Device:
    return Device(name="lab-device", bandwidth=bandwidth, peaks={"fp16": peak})


def _judge(expected, mistakes: dict[str, object] | None = None, rtol: float = 1e-6) -> Callable[[object], str | None]:
    """Accept ``expected``; when the result matches a known mistake, say which one (else how far off it is)."""
    base = close_enough(expected, rtol=rtol)

    def judge(result):
        problem = base(result)
        if problem is None:
            return None
        # Several mistakes can give the same number on one case: name every candidate.
        matches = [message for message, wrong in (mistakes or {}).items()
                   if close_enough(wrong, rtol=1e-6)(result) is None]
        if matches:
            return " Or: ".join(matches)
        return _off_by(result, expected) or problem

    return judge


def _off_by(result, expected) -> str | None:
    """'wrong by a factor 8.0' for a scalar answer, which often tells which quantity is off."""
    try:
        got, want = float(np.asarray(result, dtype=float)), float(expected)
    except (TypeError, ValueError):
        return None
    if want == 0 or got == 0 or not math.isfinite(got):
        return "wrong value"
    return f"wrong by a factor {got / want:.4g} (your value ÷ the expected one)"


def _explained(fn: Callable, known: dict[type, dict[str, str]]) -> Callable:
    """Wrap the reader's function so that known exceptions carry an explanation (the traceback is kept)."""
    if not callable(fn):
        return fn  # run_cases reports it

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            for text, advice in known.get(type(exc), {}).items():
                if text in str(exc):
                    raise type(exc)(f"{exc}. {advice}").with_traceback(exc.__traceback__) from None
            raise

    return wrapped


def check_attainable(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``attainable(intensity, bandwidth, peak)`` -> attainable ops/s (Lab 1.1)."""
    fn = _explained(fn, {ValueError: {"truth value of an array": (
        "Python's min() and max() compare whole arrays; use np.minimum (elementwise) so arrays work too")}})
    cases = []
    for name, (bw, peak), i in [
        ("A6000, decode-like intensity 1 ops/byte (memory-bound)", A6000, 1.0),
        ("A6000, intensity 1000 ops/byte (compute-bound)", A6000, 1000.0),
        ("A6000, exactly at the ridge point", A6000, A6000[1] / A6000[0]),
        ("H100 SXM, intensity 50 ops/byte", H100, 50.0),
        ("H100 SXM, intensity 0.25 ops/byte (an elementwise add)", H100, 0.25),
    ]:
        want = attainable_performance(i, _device(bw, peak))
        mistakes = {
            "You used max() where the roofline takes the min(): performance is capped by the lower roof.":
                max(peak, bw * i),
            "You returned bandwidth × intensity without the compute ceiling: above the ridge the peak caps it.":
                bw * i,
            "You returned the peak: below the ridge point the memory roof (bandwidth × intensity) is lower.": peak,
            "Off by 1e9: keep SI units (bandwidth in bytes/s, not GB/s).": min(peak, bw / 1e9 * i),
        }
        mistakes = {m: v for m, v in mistakes.items() if not math.isclose(v, want, rel_tol=1e-9)}
        cases.append(Case(name, (i, bw, peak), judge=_judge(want, mistakes), expected=want,
                          hint="Which roof is lower at this intensity, the slanted memory roof or the flat compute "
                               "roof? Performance can never exceed either.", section=_ROOFLINE))
    arr = np.array([0.5, 10.0, 200.0, 5000.0])
    want = attainable_performance(arr, _device(*A6000))
    cases.append(Case("an array of intensities", (arr, A6000[0], A6000[1]), judge=_judge(want), expected=want,
                      hint="Python's min() and max() compare whole arrays; NumPy has elementwise versions.",
                      section=_ROOFLINE))
    return run_cases(fn, cases, "Lab 1.1 attainable()", raise_on_fail=raise_on_fail, show=show)


def check_op_time(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``op_time(flops, nbytes, bandwidth, peak)`` -> seconds under the roofline (Lab 1.2)."""
    fn = _explained(fn, {ZeroDivisionError: {"": (
        "A pure copy has no operations: compute the two times directly, max(flops/peak, nbytes/bandwidth), "
        "without dividing by flops")}})
    f_gemv, q_gemv = matmul_cost(1, 4096, 4096, "fp16")
    f_gemm, q_gemm = matmul_cost(2048, 4096, 4096, "fp16")
    specs = [
        ("a decode GEMV (1×4096 @ 4096×4096, FP16) on the A6000", f_gemv, q_gemv, A6000),
        ("a prefill GEMM (2048×4096 @ 4096×4096, FP16) on the A6000", f_gemm, q_gemm, A6000),
        ("the same GEMM on an H100 SXM", f_gemm, q_gemm, H100),
        ("a pure copy of 1 GB (no operations) on the H100", 0.0, 1e9, H100),
    ]
    cases = []
    for name, f, q, (bw, peak) in specs:
        want = roofline_time(f, q, _device(bw, peak))
        mistakes = {
            "You added the compute and memory times: the roofline assumes they overlap, so take the max.":
                f / peak + q / bw,
            "You took the min of the two times: the slower of memory and compute sets the time (max).":
                min(f / peak, q / bw),
            "That is milliseconds: return seconds.": want * 1e3,
        }
        mistakes = {m: v for m, v in mistakes.items() if not math.isclose(v, want, rel_tol=1e-9)}
        hint = ("An operation needs time to move its bytes and time to compute; with the phases overlapped, which "
                "one sets its duration?")
        if f == 0:
            hint = "With no operations the intensity is 0: compute the time without dividing by flops."
        cases.append(Case(name, (f, q, bw, peak), judge=_judge(want, mistakes), expected=want, hint=hint,
                          section=_ROOFLINE))
    return run_cases(fn, cases, "Lab 1.2 op_time()", raise_on_fail=raise_on_fail, show=show)


def check_matmul_intensity(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``matmul_intensity(m, k, n, bytes_per_element)`` -> ops/byte of ``(m×k) @ (k×n)`` (Lab 1.3)."""
    dt = {4: "fp32", 2: "fp16", 1: "int8"}
    cases = []
    for name, m, k, n, b in [
        ("decode GEMV: 1 token through a 4096×4096 FP16 layer", 1, 4096, 4096, 2),
        ("prefill: 2048 tokens through the same layer", 2048, 4096, 4096, 2),
        ("square 1024 FP32 GEMM", 1024, 1024, 1024, 4),
        ("64 tokens, INT8, 8192×28672 MLP weight", 64, 8192, 28672, 1),
        ("a non-square case (m, k, n) = (3, 5, 7), FP16", 3, 5, 7, 2),
    ]:
        f, q = matmul_cost(m, k, n, dt[b])
        want = f / q
        mistakes = {
            "Half the expected value: a multiply-accumulate counts as 2 operations (2·m·k·n).": want / 2,
            "Too high: the output m×n is written to memory too; count m·k + k·n + m·n elements.":
                f / ((m * k + k * n) * b),
            "8× too small: bytes_per_element is in bytes, not bits.": want / 8,
            "Ignored bytes_per_element: multiply the element count by the bytes per element.": f / (q / b),
        }
        mistakes = {msg: v for msg, v in mistakes.items() if not math.isclose(v, want, rel_tol=1e-9)}
        cases.append(Case(name, (m, k, n, b), judge=_judge(want, mistakes), expected=want,
                          hint="Count the operations of the product, then the bytes of every matrix that crosses "
                               "the memory bus (inputs and output).", section=_OPERATION))
    return run_cases(fn, cases, "Lab 1.3 matmul_intensity()", raise_on_fail=raise_on_fail, show=show)


def check_critical_tokens(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``critical_tokens(k, n, bandwidth, peak, bytes_per_element)`` -> smallest compute-bound m (Lab 1.4)."""
    cases = []
    for name, k, n, (bw, peak), b in [
        ("H100 SXM, BF16, an 8192×8192 layer", 8192, 8192, H100, 2),
        ("A6000, FP16, a 4096×11008 MLP layer", 4096, 11008, A6000, 2),
        ("A6000, INT8 peak and 1-byte operands, 4096×4096", 4096, 4096, (A6000[0], 309.7e12), 1),
        ("a tiny 64×64 layer on the A6000 (never compute-bound: return None)", 64, 64, A6000, 2),
    ]:
        dtype = {2: "fp16", 1: "int8"}[b]
        dev = Device(name="lab-device", bandwidth=bw, peaks={dtype: peak})
        want = critical_batch_size(dev, dtype, k, n)

        def judge(result, want=want, k=k, n=n, bw=bw, peak=peak, b=b):
            if want is None:
                return None if result is None else (
                    f"the intensity can never reach the ridge point {peak / bw:.1f} ops/byte here: return None")
            if isinstance(result, bool) or not isinstance(result, (int, np.integer)):
                return f"return an int (a number of tokens), got {type(result).__name__}"
            if result == want:
                return None
            if result == want - 1:
                return f"at m = {result} the matmul is still memory-bound (round up)"
            approx = math.ceil(peak / bw * b / 2)
            if result == approx:
                return ("that is the large-layer approximation ridge·bytes/2; solve with the exact intensity (it "
                        "counts the activations too)")
            return "not the smallest compute-bound number of tokens"

        cases.append(Case(name, (k, n, bw, peak, b), judge=judge, expected=want,
                          hint="The intensity I(m) grows with the number of tokens m towards a limit: compare that "
                               "limit with the ridge point first, then find where I(m) crosses it.",
                          section=_TOUR))
    return run_cases(fn, cases, "Lab 1.4 critical_tokens()", raise_on_fail=raise_on_fail, show=show)


#: The reader's function name -> its check (the lab runner, tests/test_labs.py, reads this).
CHECKS: dict[str, Callable] = {
    "attainable": check_attainable,
    "op_time": check_op_time,
    "matmul_intensity": check_matmul_intensity,
    "critical_tokens": check_critical_tokens,
}
