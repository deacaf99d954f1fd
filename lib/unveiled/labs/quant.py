"""Lab checks of Chapter 3 (quantization).

The reader implements two functions with PyTorch and checks each here:

* ``group_quantize(w, bits, group_size)``: per-group asymmetric round-to-nearest quantization of a weight
  matrix ``[out, in]`` (groups of ``group_size`` consecutive inputs of a row), returned dequantized;
* ``gptq_columns(W, U, quantize_column)``: GPTQ's column loop, given the upper Cholesky factor ``U`` of the
  inverse Hessian and a function that rounds one column to the grid [Frantar et al. 2023].

Each check compares with the library (:func:`unveiled.quant.fake_quantize`, :func:`unveiled.quant.gptq_quantize`)
on fixed, seeded cases and recognises the classic mistakes with a targeted hint: a forgotten clamp, groups cut
along the wrong axis, a symmetric grid, floor for round, a zero point that does not keep 0 exact; in GPTQ, the
error not divided by ``U_jj``, the update sent to the wrong columns, a flipped sign, no propagation at all.
Introduced in Chapter 3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..quant.gptq import _inverse_cholesky_upper, gptq_quantize, hessian_from_inputs
from ..quant.uniform import QuantSpec, compute_params, dequantize_values, fake_quantize, quantize_values
from . import Case, LabReport, describe, run_cases

__all__ = ["CHECKS", "check_gptq_columns", "check_group_quantize"]

# The chapter sections the hints point at (headings without their numbers).
_BITS = "Numbers with fewer bits"
_GPTQ = "Better rounding: GPTQ and AWQ"
_GRID_HINT = ("Follow one group through the steps: its range (containing 0), the step size between the 2^bits codes, "
              "the zero point, rounding, staying on the grid, and back to real values.")


def _tensor_judge(expected: torch.Tensor, mistakes: dict[str, torch.Tensor] | None = None, atol: float = 1e-6,
                  rtol: float = 1e-5) -> Callable[[object], str | None]:
    """Accept a tensor close to ``expected``; when it matches a known wrong answer, say which mistake."""

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol))

    def judge(result) -> str | None:
        if not isinstance(result, torch.Tensor):
            return f"expected a torch.Tensor, got {type(result).__name__}"
        if result.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, got {tuple(result.shape)}"
        if not torch.isfinite(result).all():
            return "the result contains NaN or inf (a group whose values are all equal has max − min = 0: guard the scale)"
        if close(result, expected):
            return None
        for message, wrong in (mistakes or {}).items():
            if close(result, wrong):
                return message
        diff = (result.double() - expected.double()).abs()
        idx = tuple(int(i) for i in torch.unravel_index(torch.argmax(diff), diff.shape))
        return (f"largest difference at index {idx}: expected {float(expected[idx]):.6g}, "
                f"got {float(result[idx]):.6g}")

    return judge


# --------------------------------------------------------------------------------------------------
# Lab 3.1: per-group asymmetric quantization
# --------------------------------------------------------------------------------------------------


def _grouped_rtn(w: torch.Tensor, bits: int, g: int, *, sym=False, clamp=True, widen=True, rnd=torch.round,
                 along_rows=False) -> torch.Tensor:
    """A parametrised RTN used to produce the typical wrong answers (and, with defaults, the right one)."""
    x = w.double()
    if along_rows:
        x = x.T
    rows, cols = x.shape
    gx = x.reshape(rows, cols // g, g)
    if sym:
        qmax = 2 ** (bits - 1) - 1
        s = gx.abs().amax(-1, keepdim=True) / qmax
        s = torch.where(s > 0, s, torch.ones_like(s))
        q = rnd(gx / s)
        q = q.clamp(-qmax - 1, qmax) if clamp else q
        out = q * s
    else:
        lo, hi = gx.amin(-1, keepdim=True), gx.amax(-1, keepdim=True)
        if widen:
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        s = (hi - lo) / (2**bits - 1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        z = torch.round(-lo / s)
        q = rnd(gx / s) + z
        q = q.clamp(0, 2**bits - 1) if clamp else q
        out = (q - z) * s
    out = out.reshape(rows, cols)
    return (out.T if along_rows else out).to(w.dtype)


def _lab_weights(seed: int, shape: tuple[int, int], shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.05 + shift
    w[:, 1] *= 8.0  # an outlier input column, as in real LLM weights
    return w


def check_group_quantize(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``group_quantize(w, bits, group_size)`` -> dequantized tensor of ``w``'s shape (Lab 3.1, Chapter 3)."""
    cases = []
    for name, w, bits, g in [
        ("4 bits, groups of 16 along the input dimension (8×64)", _lab_weights(0, (8, 64)), 4, 16),
        ("3 bits, groups of 32 (16×96)", _lab_weights(1, (16, 96)), 3, 32),
        ("8 bits, one group per row (4×64)", _lab_weights(2, (4, 64)), 8, 64),
        ("2 bits, groups of 8 (6×32)", _lab_weights(3, (6, 32)), 2, 8),
        ("all weights positive: the range must be widened to contain 0 (4 bits, g16)", _lab_weights(4, (4, 32), 1.0),
         4, 16),
    ]:
        spec = QuantSpec(bits, granularity="group", group_size=g)
        want = fake_quantize(w, spec)
        mistakes = {
            "Values fall outside the grid: clamp the codes to [0, 2^bits − 1] after adding the zero point.":
                _grouped_rtn(w, bits, g, clamp=False),
            "You used a symmetric grid (zero point 0, scale max|w|/(2^(b−1)−1)); the task is asymmetric (min–max).":
                _grouped_rtn(w, bits, g, sym=True),
            "Rounding down: use torch.round (round to nearest), not floor or truncation.":
                _grouped_rtn(w, bits, g, rnd=torch.floor),
            "The range must contain 0 (lo = min(min, 0), hi = max(max, 0)) so that the integer zero point keeps "
            "0 exact.": _grouped_rtn(w, bits, g, widen=False),
        }
        if w.shape[0] % g == 0:
            mistakes["Your groups run along the output dimension (columns): cut each ROW into groups of "
                     "group_size consecutive inputs."] = _grouped_rtn(w, bits, g, along_rows=True)
        mistakes = {m: v for m, v in mistakes.items() if not torch.allclose(v, want)}
        cases.append(Case(name, (w.clone(), bits, g), judge=_tensor_judge(want, mistakes, atol=1e-9),
                          expected=want, hint=_GRID_HINT, section=_BITS))
    tie = torch.linspace(-1, 1, 16, dtype=torch.float64).repeat(2, 2)
    spec = QuantSpec(4, granularity="group", group_size=16)
    cases.append(Case("a row from −1 to 1 in 16 steps: the top value rounds one code past the grid",
                      (tie.clone(), 4, 16),
                      judge=_tensor_judge(fake_quantize(tie, spec), {
                          "Values fall outside the grid: clamp the codes to [0, 2^bits − 1] after adding the zero "
                          "point.": _grouped_rtn(tie, 4, 16, clamp=False)}, atol=1e-9),
                      expected=fake_quantize(tie, spec), section=_BITS,
                      hint="Work out the zero point and the code of the top value by hand: can a code leave the "
                           "range 0 … 2^bits − 1?"))
    zeros = torch.zeros(3, 32, dtype=torch.float64)
    zeros[0, :16] = torch.linspace(-1, 0.5, 16, dtype=torch.float64)
    cases.append(Case("a group of zeros (max − min = 0) must not produce NaN", (zeros.clone(), 4, 16),
                      judge=_tensor_judge(fake_quantize(zeros, spec)), expected=fake_quantize(zeros, spec),
                      section=_BITS,
                      hint="What is the scale of a group whose range is 0, and what happens when you divide by it?"))
    w = _lab_weights(5, (4, 64))
    want = fake_quantize(w, QuantSpec(4, granularity="group", group_size=16))

    def judge_bound(result, w=w, want=want):
        problem = _tensor_judge(want)(result)
        if problem:
            return problem
        step = (w.reshape(4, 4, 16).amax(-1).clamp(min=0) - w.reshape(4, 4, 16).amin(-1).clamp(max=0)) / 15
        err = (result.double() - w).abs().reshape(4, 4, 16)
        return None if bool((err <= step[..., None] / 2 + 1e-12).all()) else "an error exceeds half a step"

    cases.append(Case("every error is at most half a step", (w.clone(), 4, 16), judge=judge_bound, expected=want,
                      section=_BITS, hint="Round to the nearest code: no weight inside the range is further than "
                                          "half a step from its dequantized value."))

    cases.append(Case("group_size 24 does not divide 64 inputs: raise ValueError",
                      (_lab_weights(6, (4, 64)), 4, 24), {"_expect_error": True},
                      judge=lambda r: None if r == "raised ValueError" else f"expected a ValueError, but it {r}",
                      expected="a ValueError", show_result=lambda r: r, section=_BITS,
                      hint="Check the arguments before quantizing: the groups must tile each row exactly."))

    def call(w, bits, group_size, _expect_error=False):
        if not _expect_error:
            return fn(w, bits, group_size)
        try:
            fn(w, bits, group_size)
        except ValueError:
            return "raised ValueError"
        return "returned a result"

    return run_cases(call if callable(fn) else fn, cases, "Lab 3.1 group_quantize()", raise_on_fail=raise_on_fail,
                     show=show)


# --------------------------------------------------------------------------------------------------
# Lab 3.2: GPTQ's column update
# --------------------------------------------------------------------------------------------------


def _gptq_problem(seed: int, rows: int, cols: int, bits: int, identity: bool = False):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    if identity:
        h = torch.eye(cols, dtype=torch.float64)
    else:
        mix = torch.eye(cols, dtype=torch.float64) + torch.randn(cols, cols, generator=gen, dtype=torch.float64) / cols**0.5
        x = torch.randn(8 * cols, cols, generator=gen, dtype=torch.float64) @ mix
        x[:, 0] *= 10.0
        h = hessian_from_inputs(x)
    damp = 0.01
    hd = h + damp * torch.diag(h).mean() * torch.eye(cols, dtype=torch.float64)
    u = _inverse_cholesky_upper(hd)
    spec = QuantSpec(bits)
    scale, zero = compute_params(w, spec)  # per-channel grid from the original weights, as GPTQ does
    scale, zero = scale[:, 0], zero[:, 0]

    def quantize_column(col: torch.Tensor) -> torch.Tensor:
        """Round one column (one weight per output row) to its row's grid; returns the dequantized column."""
        return dequantize_values(quantize_values(col.double(), scale, zero, spec), scale, zero, spec)

    want = gptq_quantize(w, h, spec, damp=damp, block_size=1).weight
    return w, u, quantize_column, want


def _gptq_variant(w, u, quant, *, divide=True, cols="from_j", sign=-1.0, propagate=True):
    w = w.clone()
    q_all = torch.zeros_like(w)
    n = w.shape[1]
    for j in range(n):
        q = quant(w[:, j])
        q_all[:, j] = q
        if not propagate:
            continue
        err = (w[:, j] - q) / (u[j, j] if divide else 1.0)
        sl = slice(j, n) if cols == "from_j" else slice(0, n)
        w[:, sl] += sign * err[:, None] * u[j, sl][None, :]
    return q_all


def check_gptq_columns(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``gptq_columns(W, U, quantize_column)`` -> quantized ``W``, dequantized values (Lab 3.2, Chapter 3)."""
    cases = []
    for name, seed, rows, cols, bits, identity in [
        ("correlated inputs, 4 bits, 16×32", 0, 16, 32, 4, False),
        ("correlated inputs, 3 bits, 24×48", 1, 24, 48, 3, False),
        ("identity Hessian: GPTQ must equal round-to-nearest", 2, 8, 16, 4, True),
    ]:
        w, u, quant, want = _gptq_problem(seed, rows, cols, bits, identity)
        mistakes = {
            "Divide the rounding error by the diagonal of the Cholesky factor: err = (w_j − q_j) / U[j, j].":
                _gptq_variant(w, u, quant, divide=False),
            "Only the columns from j onwards may change: update W[:, j:] (earlier columns are already quantized).":
                _gptq_variant(w, u, quant, cols="all"),
            "Sign error: subtract the update, W[:, j:] -= err ⊗ U[j, j:].": _gptq_variant(w, u, quant, sign=1.0),
            "No error feedback: after rounding column j, update the remaining columns (otherwise this is RTN).":
                _gptq_variant(w, u, quant, propagate=False),
        }
        mistakes = {m: v for m, v in mistakes.items() if not torch.allclose(v, want)}
        cases.append(Case(name, (w.clone(), u.clone(), quant), judge=_tensor_judge(want, mistakes, atol=1e-9),
                          expected=want, section=_GPTQ,
                          hint="Compare your loop with GPTQ's update step by step: which error is scaled by what, "
                               "and which columns receive it?"))
    w, u, quant, want = _gptq_problem(3, 8, 16, 4)
    w_before = w.clone()

    def judge_no_mutation(result, w=w, w_before=w_before, want=want):
        if not torch.equal(w, w_before):
            return "your function modified the caller's W in place: work on a copy (W = W.clone())"
        return _tensor_judge(want, atol=1e-9)(result)

    def show_mutation(result, w=w, w_before=w_before) -> str:
        return "W changed in place" if not torch.equal(w, w_before) else f"W unchanged; returned {describe(result)}"

    cases.append(Case("the caller's W is left unchanged (and the result is right)", (w, u, quant),
                      judge=judge_no_mutation, expected="W as it was before the call, and GPTQ's result",
                      show_result=show_mutation, section=_GPTQ,
                      hint="Your loop updates W as it goes: whose tensor is it updating?"))
    return run_cases(fn, cases, "Lab 3.2 gptq_columns()", raise_on_fail=raise_on_fail, show=show)


#: The reader's function name -> its check (the lab runner, tests/test_labs.py, reads this).
CHECKS: dict[str, Callable] = {
    "group_quantize": check_group_quantize,
    "gptq_columns": check_gptq_columns,
}
