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

import contextlib
import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from .._validate import check_int, check_number
from ..models import Decoder
from ..session import progress_bar
from .layers import QuantLinear, _check_model
from .uniform import (
    QuantizedTensor,
    QuantSpec,
    _check_spec,
    _grouped,
    check_tensor,
    compute_params,
    dequantize_values,
    quantize_values,
)

__all__ = ["GPTQResult", "gptq_model", "gptq_quantize", "hessian_from_inputs", "layer_error", "rtn_error"]


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


def hessian_from_inputs(x: torch.Tensor) -> torch.Tensor:
    """GPTQ's Hessian ``2·XᵀX/n`` of the layer objective, from inputs ``x [n, in]`` (any leading shape).

    Introduced in Chapter 3.
    """
    x = check_tensor("x", x)
    x = x.reshape(-1, x.shape[-1]).double()
    return 2.0 * (x.T @ x) / x.shape[0]


def layer_error(weight: torch.Tensor, qweight: torch.Tensor, hessian: torch.Tensor) -> float:
    """The layer objective ``tr(ΔW H ΔWᵀ)/2`` = mean squared output error ``‖ΔW x‖²`` over the calibration inputs.

    Introduced in Chapter 3.
    """
    d = weight.detach().double() - qweight.detach().double()
    return float(0.5 * torch.einsum("ri,ij,rj->", d, hessian.double(), d))


def rtn_error(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec) -> float:
    """:func:`layer_error` of plain round-to-nearest on the same grid (the baseline GPTQ improves on).

    Introduced in Chapter 3."""
    from .uniform import fake_quantize

    return layer_error(weight, fake_quantize(weight, spec), hessian)


def _inverse_cholesky_upper(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = Uᵀ U``), computed in float64."""
    try:
        lower = torch.linalg.cholesky(h)
        hinv = torch.cholesky_inverse(lower)
        return torch.linalg.cholesky(hinv, upper=True)
    except torch.linalg.LinAlgError as e:
        raise ValueError(
            "the damped Hessian is not positive definite; use more calibration tokens or a larger damp "
            f"(e.g. damp=0.1): {e}"
        ) from None


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

    Steps: zero the columns of dead inputs (``H_jj = 0``); optionally sort columns by decreasing ``H_jj``
    (``act_order``); dampen ``H += damp·mean(diag H)·I``; take ``U = chol(H⁻¹)ᵀ``; then for each block of
    ``block_size`` columns, quantize column by column, propagate each column's scaled error
    ``(w − q)/U_jj`` to the rest of the block through row ``j`` of ``U``, and finally to all later columns at
    once (the lazy batch update). Per-channel/per-tensor grids come from the original weight; a group's grid
    is fitted when its first column is reached, on the error-updated weights (from the original weights when
    ``act_order`` is on, so groups stay contiguous in the stored order). Introduced in Chapter 3.
    """
    spec = _check_spec(spec)
    weight = check_tensor("weight", weight, dims=(2,))
    hessian = check_tensor("hessian", hessian, dims=(2,))
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must be [{cols}, {cols}] for a weight of shape {tuple(weight.shape)}, "
                         f"got {tuple(hessian.shape)}")
    block_size = check_int("block_size", block_size, minimum=1)
    damp = check_number("damp", damp)
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    if not isinstance(act_order, bool):
        raise TypeError(f"act_order must be a bool, got {act_order!r}")
    if spec.granularity == "group":
        _grouped(weight, spec)  # checks that the group size divides the columns
    if spec.granularity == "token":
        spec = spec.with_(granularity="channel")

    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W = weight.detach().to(work).clone()
    H = hessian.detach().to(torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=torch.float64)
    with _one_thread():  # LAPACK on a few hundred columns: threads cost more than they give on a busy machine
        U = _inverse_cholesky_upper(H).to(work)

    # Grids: [rows, n_groups, 1] scale and zero, indexed by the group of each *original* column.
    g = spec.group_size if spec.granularity == "group" else cols
    n_groups = cols // g if spec.granularity == "group" else 1
    orig = weight.detach().to(work)
    if spec.granularity == "tensor":
        s, z = compute_params(orig.reshape(1, -1), spec)
        scale, zero = s.expand(rows, 1).clone(), z.expand(rows, 1).clone()
    elif spec.granularity == "channel" or act_order:
        s, z = compute_params(orig.reshape(rows, n_groups, g), spec)
        scale, zero = s[..., 0], z[..., 0]
    else:
        scale = torch.zeros(rows, n_groups, dtype=work)
        zero = torch.zeros(rows, n_groups, dtype=work)
    dynamic_groups = spec.granularity == "group" and not act_order
    group_of = (perm if perm is not None else torch.arange(cols)) // g if spec.granularity == "group" else \
        torch.zeros(cols, dtype=torch.long)

    Q = torch.zeros_like(W)
    codes = torch.zeros_like(W)
    losses = torch.zeros(rows, dtype=work)
    with _one_thread():
        _column_loop(W, U, Q, codes, losses, scale, zero, group_of, spec, g, dynamic_groups, block_size)

    if perm is not None:
        inv = torch.argsort(perm)
        Q, codes = Q[:, inv], codes[:, inv]
    if spec.granularity == "tensor":
        scale, zero = scale[:1], zero[:1]
    qt = QuantizedTensor(codes.to(torch.int16), scale[..., None], zero[..., None], spec,
                         tuple(weight.shape))
    return GPTQResult(qweight=qt, weight=Q.to(weight.dtype), losses=losses, perm=perm)


@contextlib.contextmanager
def _one_thread():
    """Run small, sequential tensor ops on one thread: intra-op parallelism only adds synchronisation to
    vector operations of a few hundred elements (tenfold slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _column_loop(W, U, Q, codes, losses, scale, zero, group_of, spec, g, dynamic_groups, block_size) -> None:
    """GPTQ's column-by-column rounding with lazy batch updates, in place on ``W``, ``Q``, ``codes``, ``losses``."""
    cols = W.shape[1]
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            gi = int(group_of[c])
            if dynamic_groups and c % g == 0:
                cur = [W1[:, i : min(c + g, i2) - i1]]
                if c + g > i2:  # columns past this block: apply the lazy updates still pending for them
                    cur.append(W[:, i2 : c + g] - Err1[:, :i] @ U[i1 : i1 + i, i2 : c + g])
                s, z = compute_params(torch.cat(cur, dim=1), spec)
                scale[:, gi], zero[:, gi] = s[:, 0], z[:, 0]
            w = W1[:, i]
            sc, zc = scale[:, gi], zero[:, gi]
            qc = quantize_values(w, sc, zc, spec)
            q = dequantize_values(qc, sc, zc, spec)
            d = U1[i, i]
            codes[:, c] = qc
            Q[:, c] = q
            losses += (w - q) ** 2 / d**2 / 2
            err = (w - q) / d
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]


# --------------------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------------------


def _block_linears(block: nn.Module, prefix: str, select: Callable[[str], bool]) -> dict[str, nn.Linear]:
    return {f"{prefix}.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear) and select(f"{prefix}.{n}")}


def _set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)


def _selector(include: Callable[[str], bool] | Iterable[str] | None) -> Callable[[str], bool]:
    if include is None:
        return lambda n: True
    if callable(include):
        return include
    wanted = [include] if isinstance(include, str) else list(include)
    return lambda n: any(n == w or n.endswith("." + w) for w in wanted)


@torch.inference_mode()
def _run_block(block: nn.Module, model: Decoder, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    positions = torch.arange(x.shape[1])
    return torch.cat([block(x[i : i + batch_size], model.rope, positions) for i in range(0, x.shape[0], batch_size)])


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

    Each block's Hessians are measured on the outputs of the *already quantized* previous blocks, so later
    layers correct for earlier errors, as in the reference implementation. Returns the quantized model and
    a table with, per layer, GPTQ's layer error next to round-to-nearest's on the same Hessian and the time
    spent. Introduced in Chapter 3.
    """
    model = _check_model(model)
    spec = _check_spec(spec)
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2:
        raise ValueError("calibration must be a LongTensor [num_sequences, seq_len] of token ids")
    out = model if inplace else copy.deepcopy(model)
    select = _selector(include)
    rows = []
    with torch.inference_mode():
        x = out.embed_tokens(calibration)
    layers = list(enumerate(out.layers))
    if progress:
        layers = progress_bar(layers, desc=f"GPTQ {spec.label}", leave=False)
    for i, block in layers:
        linears = _block_linears(block, f"layers.{i}", select)
        xtx = {n: None for n in linears}
        count = {n: 0 for n in linears}
        last: dict = {}  # q/k/v (and gate/up) read the same tensor: compute its XᵀX once

        def hook_for(n, xtx=xtx, count=count, last=last):
            def hook(_m, args):
                x = args[0]
                if last.get("input") is not x:
                    a = x.detach().reshape(-1, x.shape[-1]).float()
                    last["input"], last["xtx"], last["n"] = x, (a.T @ a).double(), a.shape[0]
                xtx[n] = last["xtx"] if xtx[n] is None else xtx[n] + last["xtx"]
                count[n] += last["n"]
            return hook

        handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in linears.items()]
        try:
            _run_block(block, out, x, batch_size)
        finally:
            for h in handles:
                h.remove()
        for n, lin in linears.items():
            H = 2.0 * xtx[n] / count[n]
            t0 = time.perf_counter()
            res = gptq_quantize(lin.weight.detach(), H, spec, block_size=block_size, damp=damp, act_order=act_order)
            took = time.perf_counter() - t0
            rows.append({
                "layer": n.removeprefix(f"layers.{i}.").split(".")[-1],
                "block": i,
                "name": n,
                "rows": lin.weight.shape[0],
                "cols": lin.weight.shape[1],
                "gptq_error": layer_error(lin.weight, res.weight, H),
                "rtn_error": rtn_error(lin.weight.detach(), H, spec),
                "time_s": took,
            })
            _set_module(out, n, QuantLinear(res.qweight, res.weight, activations))
        x = _run_block(block, out, x, batch_size)
    return out, pd.DataFrame(rows)
