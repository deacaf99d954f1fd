"""Lab checks of Chapter 10 (hardware and number formats).

The reader implements, with PyTorch and pandas:

* ``e2m1_round(x)``: round every value to the nearest FP4 E2M1 value (±0, 0.5, 1, 1.5, 2, 3, 4, 6), ties to
  even, saturating at ±6 (Lab 10.1, first part);
* ``mxfp4_quantize(x)``: MXFP4 fake quantization along the last dimension, blocks of 32 sharing the scale
  ``2^(⌊log2 max|x|⌋ − 2)`` (OCP MX v1.0), returned dequantized (Lab 10.1, second part);
* ``choose_formats(errors, budget)``: Transformer-Engine-style per-layer choice, the cheapest format whose
  measured error is within the budget, BF16 when none is (Lab 10.2).

The checks compare **bit for bit** with the library (:func:`unveiled.quant.formats.round_to_element`,
:func:`unveiled.quant.formats.quantize_dequantize`, :func:`unveiled.quant.format_choice.choose_formats`) on fixed
cases built to catch the classic mistakes: ties rounded away from zero, no saturation, a scale that is not a
power of two, ``floor(log2(·))`` misjudging a maximum just below a power of two, blocks cut along the wrong axis,
an all-zero block turned into NaN; in the choice, the lowest error instead of the fewest bits, a strict
comparison with the budget, a missing fallback. Introduced in Chapter 10.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch

from ..quant.format_choice import FALLBACK, choose_formats
from ..quant.formats import quantize_dequantize, round_to_element
from . import Case, LabReport, run_cases

__all__ = ["CHECKS", "check_choose_formats", "check_e2m1_round", "check_mxfp4_quantize"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).view(torch.int32)


#: The chapter sections the hints point at (headings without their numbers).
FORMATS_SECTION = "Number formats: range against precision (survey §6.3)"
CHOICE_SECTION = "Per-layer formats, Transformer-Engine style (survey §6.4)"


def _bit_judge(x: torch.Tensor, expected: torch.Tensor, mistakes: dict[str, torch.Tensor]) -> Callable[[object], str | None]:
    """Accept exactly ``expected`` (same float32 bits, so -0 and +0 differ); name a known mistake if it matches."""

    def judge(result) -> str | None:
        if not isinstance(result, torch.Tensor):
            return f"expected a torch.Tensor, got {type(result).__name__}"
        if result.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, got {tuple(result.shape)}"
        if not torch.isfinite(result).all():
            i = int(torch.nonzero(~torch.isfinite(result.flatten()))[0])
            return f"the result has NaN or inf (first at flat index {i}, input {float(x.flatten()[i]):.6g})"
        got = result.to(torch.float32)
        if torch.equal(_bits(got), _bits(expected)):
            return None
        for message, wrong in mistakes.items():
            if wrong.shape == got.shape and torch.equal(_bits(got), _bits(wrong.to(torch.float32))):
                return message
        bad = torch.nonzero(_bits(got).flatten() != _bits(expected).flatten())
        i = int(bad[0])
        return (f"{len(bad)} of {got.numel()} values differ; first at flat index {i}: input "
                f"{float(x.flatten()[i])!r}, expected {float(expected.flatten()[i])!r}, got "
                f"{float(got.flatten()[i])!r}")

    return judge


# --------------------------------------------------------------------------------------------------
# Lab 10.1: FP4 E2M1 and MXFP4
# --------------------------------------------------------------------------------------------------

def _e2m1_wrong(x: torch.Tensor, *, ties_away: bool = False, saturate: bool = True) -> torch.Tensor:
    a = x.abs().to(torch.float64)
    if saturate:
        a = a.clamp(max=6.0)
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    q = torch.floor(a / step + 0.5) if ties_away else torch.round(a / step)
    return torch.copysign(q * step, x.to(torch.float64)).to(torch.float32)


def _e2m1_inputs() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(10)
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    mids = (grid[1:] + grid[:-1]) / 2
    return [
        ("the grid itself, both signs", torch.cat([grid, -grid[1:]])),
        ("every tie (midpoints between neighbours), both signs", torch.cat([mids, -mids])),
        ("values beyond ±6 (saturation)", torch.tensor([6.5, 7.0, 100.0, -9.0, 1e6])),
        ("a seeded random matrix (4×32) spread over [-8, 8]", torch.rand(4, 32, generator=gen) * 16 - 8),
        ("tiny values and signed zeros", torch.tensor([1e-8, -1e-8, 0.2499, 0.2501, -0.0, 0.0])),
    ]


def check_e2m1_round(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``e2m1_round(x)`` -> the nearest FP4 E2M1 values, bit for bit (Lab 10.1, Chapter 10)."""
    cases = []
    for name, x in _e2m1_inputs():
        want = round_to_element(x, "fp4_e2m1", saturate=True)
        mistakes = {
            "Ties go to the value with an even code (0.25 → 0, 0.75 → 1, 2.5 → 2, 5 → 4); yours round them away "
            "from zero.": _e2m1_wrong(x, ties_away=True),
            "Values beyond ±6 must saturate to ±6 (E2M1 has no infinity).": _e2m1_wrong(x, saturate=False),
        }
        cases.append(Case(name, (x.clone(),), judge=_bit_judge(x, want, mistakes), expected=want,
                          hint="How far apart are neighbouring E2M1 values in each binade, and which neighbour "
                               "wins a tie?", section=FORMATS_SECTION))
    return run_cases(fn, cases, "Lab 10.1a: round to FP4 E2M1", raise_on_fail=raise_on_fail, show=show)


def _mx_wrong(x: torch.Tensor, *, scale: str = "floor", axis_rows: bool = False) -> torch.Tensor:
    """MXFP4 with one classic mistake: scale = amax / 6 ('exact'), ceil instead of floor, log2 in floating
    point ('log2'), or blocks cut down the columns."""
    y = x.T.contiguous() if axis_rows else x
    b = y.reshape(*y.shape[:-1], -1, 32).to(torch.float64)
    amax = b.abs().amax(-1, keepdim=True)
    if scale == "exact":
        s = amax / 6.0
    elif scale == "log2":
        s = torch.exp2(torch.floor(torch.log2(amax.float())).double() - 2)
    else:
        e = torch.frexp(amax)[1].double() - 1
        s = torch.exp2(e - 2 + (1 if scale == "ceil" else 0))
    s = torch.where(amax > 0, s, torch.ones_like(s))
    out = (round_to_element((b / s).float(), "fp4_e2m1").double() * s).reshape(y.shape).float()
    return out.T.contiguous() if axis_rows else out


def _mx_inputs() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(8, 64, generator=gen) * 0.02
    w[2, 5] = 0.7  # an outlier: its block gets a large scale, the rest of the block rounds to zero
    just_below = torch.full((2, 32), 0.01)
    just_below[0, 0] = torch.nextafter(torch.tensor(8.0), torch.tensor(0.0))  # 8 − 1 ulp: floor(log2) is 2, not 3
    just_below[1, 0] = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))
    zeros = torch.randn(2, 64, generator=gen)
    zeros[0, 32:] = 0.0
    return [
        ("a weight matrix 8×64 with an outlier (two blocks per row)", w),
        ("block maxima exactly at powers of two", torch.tensor([[4.0] + [1.5] * 31, [0.25] + [-0.1] * 31])),
        ("block maxima one ulp below a power of two (8 − ulp, 0.5 − ulp)", just_below),
        ("an all-zero block next to a normal one", zeros),
        ("a 3-D activation tensor [2, 3, 64]", torch.randn(2, 3, 64, generator=gen) * 3),
        ("a 32×64 weight whose rows and columns differ in scale", torch.randn(32, 64, generator=gen)
         * torch.logspace(-3, 0, 64)),
    ]


def check_mxfp4_quantize(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``mxfp4_quantize(x)`` -> MXFP4 fake quantization along the last dimension, bit for bit (Lab 10.1)."""
    cases = []
    for name, x in _mx_inputs():
        want = quantize_dequantize(x, "mxfp4")
        mistakes = {
            "Your scale is not a power of two: an E8M0 scale stores only an exponent.": _mx_wrong(x, scale="exact"),
            "Your shared exponent is rounded up where the specification rounds it down.": _mx_wrong(x, scale="ceil"),
            "Your exponent is one too large for a block maximum just below a power of two: floating-point log2 "
            "rounds such a value up to the integer.": _mx_wrong(x, scale="log2"),
        }
        if x.dim() == 2 and x.shape[0] % 32 == 0:
            mistakes["Blocks run along the last dimension (32 consecutive values of a row); yours run down the "
                     "columns."] = _mx_wrong(x, axis_rows=True)
        cases.append(Case(name, (x.clone(),), judge=_bit_judge(x, want, mistakes), expected=want,
                          hint="Which power of two is the largest not above the block's maximum, and how far down "
                               "does E2M1's largest exponent move it?", section=FORMATS_SECTION))
    return run_cases(fn, cases, "Lab 10.1b: MXFP4 block quantization", raise_on_fail=raise_on_fail, show=show)


# --------------------------------------------------------------------------------------------------
# Lab 10.2: per-layer format choice
# --------------------------------------------------------------------------------------------------

def _toy_errors() -> pd.DataFrame:
    bits = {"MXFP4": 4.25, "NVFP4": 4.5, "MXFP6": 6.25, "MXFP8": 8.25}
    errs = {  # layer -> error per format (an exact tie with the budget 0.01 in layer c; nothing fits in layer d)
        "a": [0.002, 0.001, 0.0005, 0.0001],
        "b": [0.05, 0.004, 0.02, 0.0003],  # NVFP4 fits but MXFP6 does not: bits, not format order, decide
        "c": [0.03, 0.01, 0.008, 0.0002],
        "d": [0.4, 0.3, 0.2, 0.05],
    }
    rows = [{"layer": layer, "block": i, "kind": "mlp", "format": f, "bits_per_weight": bits[f], "rel_error": e,
             "params": 1000 * (i + 1)} for i, (layer, es) in enumerate(errs.items()) for f, e in zip(bits, es, strict=True)]
    return pd.DataFrame(rows)


def _wrong_choice(errors: pd.DataFrame, budget: float, mistake: str) -> list[str]:
    out = []
    for _, g in errors.groupby("layer", sort=False):
        fits = g[g["rel_error"] < budget] if mistake == "strict" else g[g["rel_error"] <= budget]
        if mistake == "lowest-error":
            fits = g.sort_values("rel_error").head(1)
        if fits.empty:
            out.append(FALLBACK)
            continue
        out.append(fits.sort_values(["bits_per_weight", "rel_error"]).iloc[0]["format"])
    return out


def check_choose_formats(fn: Callable, errors: pd.DataFrame | None = None, *, raise_on_fail: bool = True,
                         show: bool = True) -> LabReport:
    """Check ``choose_formats(errors, budget)`` -> one row per layer with its ``format`` (Lab 10.2).

    ``errors`` (optional) adds cases on a real per-layer error table, e.g. the cached SmolLM2 one."""
    tables = [("a toy table of 4 layers", _toy_errors(), b) for b in (0.01, 0.001, 0.0)]
    if errors is not None:
        tables += [(f"{errors['layer'].nunique()} real layers", errors, b) for b in (1e-3, 1e-2)]
    cases = []
    for name, table, budget in tables:
        want = list(choose_formats(table, budget)["format"])
        layers = list(dict.fromkeys(table["layer"]))

        def judge(result, want=want, layers=layers, table=table, budget=budget) -> str | None:
            if not isinstance(result, pd.DataFrame) or not {"layer", "format"} <= set(result.columns):
                return f"expected a DataFrame with columns 'layer' and 'format', got {type(result).__name__}"
            got = dict(zip(result["layer"], result["format"], strict=False))
            if list(result["layer"]) != layers:
                return f"expected one row per layer in the table's order ({len(layers)} rows), got {len(result)}"
            chosen = [got[layer] for layer in layers]
            if chosen == want:
                return None
            for message, mistake in (
                ("You chose the most accurate format; the task asks for the FEWEST bits whose error is within the "
                 "budget.", "lowest-error"),
                ("An error equal to the budget is within it; yours excludes it.", "strict"),
            ):
                if chosen == _wrong_choice(table, budget, mistake):
                    return message
            i = next(k for k, (a, b) in enumerate(zip(chosen, want, strict=True)) if a != b)
            return (f"layer {layers[i]!r} at budget {budget:g}: expected {want[i]!r}, got {chosen[i]!r}; a layer "
                    f"where nothing fits keeps {FALLBACK!r}")

        shown = f"errors: {table['layer'].nunique()} layers × {table['format'].nunique()} formats, budget={budget:g}"
        cases.append(Case(f"{name}, budget {budget:g}", (table.copy(), budget), judge=judge,
                          expected=f"formats {want[:6]}{' ...' if len(want) > 6 else ''}", input=shown,
                          hint="Which formats meet the budget, and which of those stores the least?",
                          section=CHOICE_SECTION))
    return run_cases(fn, cases, "Lab 10.2: per-layer format choice", raise_on_fail=raise_on_fail, show=show)


#: The checks of this chapter's labs, by the function the reader writes.
CHECKS = {"e2m1_round": check_e2m1_round, "mxfp4_quantize": check_mxfp4_quantize,
          "choose_formats": check_choose_formats}
