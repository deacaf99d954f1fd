"""GPTQ: second-order post-training weight quantization, one column at a time [Frantar et al. 2023].

For a linear layer with weight ``W [out, in]`` and calibration inputs ``X``, GPTQ minimises the layer's output
error ``‖W X − Ŵ X‖²`` over quantized ``Ŵ``. The error of each row is the quadratic form of the Hessian
``H = 2 X Xᵀ / n``, shared by all rows. GPTQ walks the input columns in order, rounds column ``j`` to the grid,
and spreads the rounding error over the columns not yet quantized, in proportion to row ``j`` of the upper
Cholesky factor ``U`` of ``H⁻¹`` (the Optimal Brain Surgeon update [Hassibi & Stork 1993; Frantar & Alistarh
2022]). *Lazy batch updates* apply the error of a block of ``B`` columns to the rest of the matrix in one
matrix product, which is an exact reorganisation of the same arithmetic: the result does not depend on ``B``.
With ``H = I`` nothing is propagated and GPTQ is round-to-nearest. Introduced in Chapter 3.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from ..models import Decoder
from .hessian import (
    LayerInputs,
    ObsProblem,
    SweepState,
    check_layer,
    layer_error,
    obs_sweep,
    prepare_hessian,
    sequential_calibration,
)
from .layers import QuantLinear, _check_model
from .uniform import (
    QuantizedTensor,
    QuantSpec,
    _check_spec,
    _grouped,
    compute_params,
    dequantize_values,
    fake_quantize,
    quantize_values,
)

__all__ = ["GPTQResult", "gptq_model", "gptq_quantize", "rtn_error"]


@dataclass
class GPTQResult:
    """The quantized layer: codes and scales (``qweight``), its dequantized weight, and the OBS losses.

    ``losses[r]`` is the sum over columns of ``(w − q)² / (2·U_jj²)`` for row ``r``; their total equals
    ``½·tr(ΔW H_damped ΔWᵀ)``, the (damped) layer objective of the final error ``ΔW = W − Ŵ``.
    Introduced in Chapter 3.
    """

    qweight: QuantizedTensor
    weight: torch.Tensor
    losses: torch.Tensor
    perm: torch.Tensor | None

    @property
    def loss(self) -> float:
        return float(self.losses.sum())


def rtn_error(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec) -> float:
    """:func:`~unveiled.quant.hessian.layer_error` of plain round-to-nearest on the same grid (the baseline GPTQ
    improves on). Introduced in Chapter 3."""
    return layer_error(weight, fake_quantize(weight, spec), hessian)


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> GPTQResult:
    """Quantize ``weight [out, in]`` with GPTQ given the Hessian ``[in, in]`` of its inputs.

    Steps: check the arguments; prepare the Hessian (:func:`~unveiled.quant.hessian.prepare_hessian`: dead
    inputs zeroed, columns optionally sorted by decreasing ``H_jj`` with ``act_order``, damping
    ``H += damp·mean(diag H)·I``, ``U = chol(H⁻¹)ᵀ``); set up the grids; run the OBS sweep
    (:func:`~unveiled.quant.hessian.obs_sweep`) with the rounding rule below; restore the stored column order
    and pack the codes. Per-channel/per-tensor grids come from the original weight; a group's grid is fitted
    when its first column is reached, on the error-updated weights (from the original weights when
    ``act_order`` is on, so groups stay contiguous in the stored order). Introduced in Chapter 3.
    """
    spec = _check_gptq_args(weight, hessian, spec, block_size, damp, act_order)
    problem = prepare_hessian(weight, hessian, damp=damp, act_order=act_order)
    grids = _Grids.initial(weight, spec, problem.perm)
    Q, losses = obs_sweep(problem.W, problem.U, grids.round_column, block_size=block_size)
    return _package(weight, spec, problem, grids, Q, losses)


def _check_gptq_args(weight, hessian, spec, block_size, damp, act_order) -> QuantSpec:
    """Validate GPTQ's arguments; returns the spec to use (per-token weights mean per channel)."""
    spec = _check_spec(spec)
    check_layer(weight, hessian, damp, block_size)
    if not isinstance(act_order, bool):
        raise TypeError(f"act_order must be a bool, got {act_order!r}")
    if spec.granularity == "group":
        _grouped(weight, spec)  # checks that the group size divides the columns
    if spec.granularity == "token":
        spec = spec.with_(granularity="channel")
    return spec


@dataclass
class _Grids:
    """GPTQ's quantization grids during the sweep: ``scale``/``zero`` ``[rows, n_groups]``, the group of each
    swept column, and the codes chosen so far (the column rule fills them)."""

    spec: QuantSpec
    scale: torch.Tensor
    zero: torch.Tensor
    group_of: torch.Tensor
    group_size: int
    dynamic: bool
    codes: torch.Tensor

    @classmethod
    def initial(cls, weight: torch.Tensor, spec: QuantSpec, perm: torch.Tensor | None) -> _Grids:
        rows, cols = weight.shape
        work = torch.float64 if weight.dtype == torch.float64 else torch.float32
        g = spec.group_size if spec.granularity == "group" else cols
        n_groups = cols // g if spec.granularity == "group" else 1
        orig = weight.detach().to(work)
        if spec.granularity == "tensor":
            s, z = compute_params(orig.reshape(1, -1), spec)
            scale, zero = s.expand(rows, 1).clone(), z.expand(rows, 1).clone()
        elif spec.granularity == "channel" or perm is not None:
            s, z = compute_params(orig.reshape(rows, n_groups, g), spec)
            scale, zero = s[..., 0], z[..., 0]
        else:
            scale = torch.zeros(rows, n_groups, dtype=work)
            zero = torch.zeros(rows, n_groups, dtype=work)
        if spec.granularity == "group":
            group_of = (perm if perm is not None else torch.arange(cols)) // g
        else:
            group_of = torch.zeros(cols, dtype=torch.long)
        dynamic = spec.granularity == "group" and perm is None
        return cls(spec, scale, zero, group_of, g, dynamic, torch.zeros(rows, cols, dtype=work))

    def round_column(self, st: SweepState, i: int) -> torch.Tensor:
        """GPTQ's column rule: fit a group's grid at its first column if needed, then round to the grid."""
        c, g, spec = st.i1 + i, self.group_size, self.spec
        gi = int(self.group_of[c])
        if self.dynamic and c % g == 0:
            cur = [st.W1[:, i : min(c + g, st.i2) - st.i1]]
            if c + g > st.i2:  # columns past this block: apply the lazy updates still pending for them
                cur.append(st.W[:, st.i2 : c + g] - st.Err1[:, :i] @ st.U[st.i1 : st.i1 + i, st.i2 : c + g])
            s, z = compute_params(torch.cat(cur, dim=1), spec)
            self.scale[:, gi], self.zero[:, gi] = s[:, 0], z[:, 0]
        sc, zc = self.scale[:, gi], self.zero[:, gi]
        qc = quantize_values(st.W1[:, i], sc, zc, spec)
        self.codes[:, c] = qc
        return dequantize_values(qc, sc, zc, spec)


def _package(weight: torch.Tensor, spec: QuantSpec, problem: ObsProblem, grids: _Grids, Q: torch.Tensor,
             losses: torch.Tensor) -> GPTQResult:
    """Undo the column order and pack codes, scales and zero points into a :class:`QuantizedTensor`."""
    codes, scale, zero = grids.codes, grids.scale, grids.zero
    if problem.perm is not None:
        inv = torch.argsort(problem.perm)
        Q, codes = Q[:, inv], codes[:, inv]
    if spec.granularity == "tensor":
        scale, zero = scale[:1], zero[:1]
    qt = QuantizedTensor(codes.to(torch.int16), scale[..., None], zero[..., None], spec, tuple(weight.shape))
    return GPTQResult(qweight=qt, weight=Q.to(weight.dtype), losses=losses, perm=problem.perm)


# --------------------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------------------


def gptq_model(
    model: Decoder,
    calibration: torch.Tensor,
    spec: QuantSpec,
    *,
    activations: QuantSpec | None = None,
    include: Callable[[str], bool] | Iterable[str] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    batch_size: int = 8,
    inplace: bool = False,
    progress: bool = True,
) -> tuple[Decoder, pd.DataFrame]:
    """GPTQ on every block projection of a decoder, block after block, with calibration tokens ``[N, T]``.

    Each block's Hessians are measured on the outputs of the *already quantized* previous blocks
    (:func:`~unveiled.quant.hessian.sequential_calibration`), so later layers correct for earlier errors, as in
    the reference implementation. Returns the quantized model and a table with, per layer, GPTQ's layer error
    next to round-to-nearest's on the same Hessian and the time spent. Introduced in Chapter 3.
    """
    model = _check_model(model)
    spec = _check_spec(spec)

    def process(_name: str, lin: nn.Linear, inputs: LayerInputs) -> tuple[nn.Module, dict]:
        H = inputs.hessian
        t0 = time.perf_counter()
        res = gptq_quantize(lin.weight.detach(), H, spec, block_size=block_size, damp=damp, act_order=act_order)
        took = time.perf_counter() - t0
        row = {"rows": lin.weight.shape[0], "cols": lin.weight.shape[1],
               "gptq_error": layer_error(lin.weight, res.weight, H),
               "rtn_error": rtn_error(lin.weight.detach(), H, spec), "time_s": took}
        return QuantLinear(res.qweight, res.weight, activations), row

    out, rows = sequential_calibration(model, calibration, process, include=include, batch_size=batch_size,
                                       inplace=inplace, progress=progress, desc=f"GPTQ {spec.label}")
    return out, pd.DataFrame(rows)
