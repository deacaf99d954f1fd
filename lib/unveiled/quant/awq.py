"""AWQ: activation-aware weight quantization by a per-channel scale search [Lin et al. 2024].

A few input channels carry much larger activations than the rest; the weights that multiply them matter most
for the layer's output. AWQ scales those weight columns up before quantizing (so they round more finely
relative to their size) and divides the activations by the same factor, folded into the previous op exactly
as SmoothQuant does. The scale is ``s = mean|X_j|^α`` (normalised so that ``max(s)·min(s) = 1``) with ``α``
picked from a grid by the output error on calibration data. Because ``α = 0`` (no scaling, plain RTN) is on
the grid, AWQ's calibration error can never exceed round-to-nearest's. The error of a candidate is computed
from the inputs' second moment ``XᵀX``, which gives the exact output MSE of the group's linears without
touching the tokens again. The original also searches a weight-clipping ratio; that step is left out here.
Introduced in Chapter 3.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import pandas as pd
import torch

from .._validate import check_int
from ..models import Decoder
from ..session import progress_bar
from .layers import _check_model, collect_input_stats, quantize_model
from .smoothing import INPUT_GROUPS, _linear, fold_input_scales, input_groups
from .uniform import QuantSpec, _check_spec, check_tensor, fake_quantize

__all__ = ["awq_model", "awq_search"]


def _output_error(weights: list[torch.Tensor], xtx: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> float:
    err = 0.0
    for w in weights:
        d = w - fake_quantize(w * s[None, :], spec) / s[None, :]
        err += float(torch.einsum("ri,ij,rj->", d, xtx, d))
    return err


def awq_search(
    weights: list[torch.Tensor],
    act_absmean: torch.Tensor,
    xtx: torch.Tensor,
    spec: QuantSpec,
    n_grid: int = 20,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Search AWQ's scale exponent for linears sharing one input; return the best scales and the grid.

    ``weights`` are ``[out, in]`` matrices reading the same input, ``act_absmean`` its per-channel mean
    magnitude, ``xtx`` its ``Σ x xᵀ`` ``[in, in]``. For each ``α`` in ``0, 1/n_grid, ..., (n_grid−1)/n_grid``
    the candidate ``s = act_absmean^α`` is normalised, every weight is quantized as ``Q(W·s)/s`` and the total
    output squared error ``Σ tr(ΔW XᵀX ΔWᵀ)`` is recorded. Introduced in Chapter 3.
    """
    spec = _check_spec(spec)
    n_grid = check_int("n_grid", n_grid)
    if not weights:
        raise ValueError("weights must list at least one [out, in] matrix")
    ws = [check_tensor("weight", w, dims=(2,)).detach().double() for w in weights]
    a = check_tensor("act_absmean", act_absmean, dims=(1,)).detach().double().clamp(min=1e-8)
    x2 = xtx.detach().double()
    if any(w.shape[1] != a.numel() for w in ws) or x2.shape != (a.numel(), a.numel()):
        raise ValueError("weights, act_absmean and xtx must agree on the number of input channels")
    rows = []
    best, best_s = None, torch.ones_like(a)
    for k in range(n_grid):
        alpha = k / n_grid
        s = a.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = _output_error(ws, x2, s, spec)
        rows.append({"alpha": alpha, "output_error": err})
        if best is None or err < best:
            best, best_s = err, s
    return best_s.float(), pd.DataFrame(rows)


def awq_model(
    model: Decoder,
    calibration: torch.Tensor,
    spec: QuantSpec,
    *,
    kinds: Iterable[str] = INPUT_GROUPS,
    n_grid: int = 20,
    inplace: bool = False,
    progress: bool = True,
) -> tuple[Decoder, pd.DataFrame]:
    """AWQ on a decoder: search and fold a scale per input group, then round-to-nearest every projection.

    Statistics come from one pass of the floating-point model over ``calibration`` tokens ``[N, T]`` (the
    folds preserve the function, so they stay valid). Returns the quantized model and a table with, per
    group, the chosen ``α`` and the output error of AWQ next to that of plain RTN (``α = 0``).
    Introduced in Chapter 3.
    """
    model = _check_model(model)
    spec = _check_spec(spec)
    out = model if inplace else copy.deepcopy(model)
    groups = input_groups(out, kinds)
    stats = collect_input_stats(out, calibration, [g.linears[0] for g in groups], hessian=True)
    rows = []
    it = groups
    if progress:
        it = progress_bar(groups, desc=f"AWQ {spec.label}", leave=False)
    for g in it:
        st = stats[g.linears[0]]
        weights = [_linear(out, n).weight.detach() for n in g.linears]
        s, grid = awq_search(weights, st["absmean"], st["xtx"] / st["count"], spec, n_grid)
        best = grid.loc[grid["output_error"].idxmin()]
        rows.append({"block": g.block, "group": g.kind, "alpha": float(best["alpha"]),
                     "awq_error": float(best["output_error"]), "rtn_error": float(grid["output_error"].iloc[0])})
        fold_input_scales(out, g, s)
    quantize_model(out, spec, inplace=True)
    return out, pd.DataFrame(rows)
