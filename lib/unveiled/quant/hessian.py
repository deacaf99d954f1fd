"""The layer Hessian and the Optimal Brain Surgeon column sweep: what GPTQ and SparseGPT share.

Both methods compress one linear layer ``W [out, in]`` at a time so that its outputs on calibration inputs
``X`` change as little as possible. The error of every row is the quadratic form of one matrix, the layer
Hessian ``H = 2 XᵀX / n`` [Frantar et al. 2023]. Both walk the input columns in order, replace column ``j``
by its compressed value (a grid point for GPTQ, zero or kept for SparseGPT [Frantar & Alistarh 2023]) and
spread the error over the columns not yet visited, in proportion to row ``j`` of the upper Cholesky factor
``U`` of ``H⁻¹``: the Optimal Brain Surgeon update [Hassibi & Stork 1993]. This module holds that shared
machinery once:

* :func:`hessian_from_inputs`, :class:`LayerInputs`: ``XᵀX`` and the Hessian (and Wanda's input norms);
* :func:`prepare_hessian`: zero dead inputs, optionally reorder columns, dampen, and factor ``H⁻¹ = UᵀU``;
* :func:`obs_sweep`: the column loop with lazy batch updates, parametrised by a *column rule*;
* :func:`sequential_calibration`: the whole-model driver that measures each block's inputs on the outputs
  of the already-compressed earlier blocks, calls a per-layer function and swaps the result in.

GPTQ (:mod:`unveiled.quant.gptq`, Chapter 3) and SparseGPT (:mod:`unveiled.pruning`, Chapter 5) are each
a column rule plus a few lines around these functions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .._validate import check_int, check_number
from ..models import Decoder
from ..session import progress_bar
from ..threads import torch_threads

__all__ = [
    "LayerInputs",
    "ObsProblem",
    "SweepState",
    "hessian_from_inputs",
    "inverse_cholesky_upper",
    "layer_error",
    "obs_sweep",
    "prepare_hessian",
    "sequential_calibration",
]


def hessian_from_inputs(x: torch.Tensor) -> torch.Tensor:
    """GPTQ's Hessian ``2·XᵀX/n`` of the layer objective, from inputs ``x [n, in]`` (any leading shape).

    Introduced in Chapter 3.
    """
    from .uniform import check_tensor

    x = check_tensor("x", x)
    x = x.reshape(-1, x.shape[-1]).double()
    return 2.0 * (x.T @ x) / x.shape[0]


def layer_error(weight: torch.Tensor, qweight: torch.Tensor, hessian: torch.Tensor) -> float:
    """The layer objective ``tr(ΔW H ΔWᵀ)/2`` = mean squared output error ``‖ΔW x‖²`` over the calibration inputs.

    Introduced in Chapter 3.
    """
    d = weight.detach().double() - qweight.detach().double()
    return float(0.5 * torch.einsum("ri,ij,rj->", d, hessian.double(), d))


@dataclass(frozen=True)
class LayerInputs:
    """What a calibration pass saw at one linear layer's input: ``xtx = Σ x xᵀ`` (float64) over ``count`` tokens.

    ``hessian`` is the layer Hessian ``2·xtx/count`` (GPTQ, SparseGPT); ``input_norms`` is ``‖X_j‖₂`` per
    input channel over all calibration tokens (Wanda's activation factor [Sun et al. 2024]). Introduced in
    Chapter 3.
    """

    xtx: torch.Tensor
    count: int

    @property
    def hessian(self) -> torch.Tensor:
        return 2.0 * self.xtx / self.count

    @property
    def input_norms(self) -> torch.Tensor:
        return torch.sqrt(torch.diag(self.xtx)).float()


def inverse_cholesky_upper(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = Uᵀ U``), computed in float64. Introduced in Chapter 3."""
    try:
        lower = torch.linalg.cholesky(h)
        hinv = torch.cholesky_inverse(lower)
        return torch.linalg.cholesky(hinv, upper=True)
    except torch.linalg.LinAlgError as e:
        raise ValueError(
            "the damped Hessian is not positive definite; use more calibration tokens or a larger damp "
            f"(e.g. damp=0.1): {e}"
        ) from None


@dataclass
class ObsProblem:
    """A layer ready for the OBS sweep: the working weight ``W`` (dead inputs zeroed, columns in sweep order),
    the upper factor ``U`` of the damped ``H⁻¹`` in the same order, the column order ``perm`` (None = as
    stored) and the mask of dead inputs. Introduced in Chapter 3."""

    W: torch.Tensor
    U: torch.Tensor
    perm: torch.Tensor | None
    dead: torch.Tensor


def check_layer(weight: torch.Tensor, hessian: torch.Tensor, damp: float, block_size: int) -> tuple[int, float]:
    """Validate a (weight, Hessian) pair and the sweep options; returns ``(block_size, damp)``."""
    from .uniform import check_tensor

    weight = check_tensor("weight", weight, dims=(2,))
    hessian = check_tensor("hessian", hessian, dims=(2,))
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must be [{cols}, {cols}] for a weight of shape {tuple(weight.shape)}, "
                         f"got {tuple(hessian.shape)}")
    block_size = check_int("block_size", block_size, minimum=1)
    damp = check_number("damp", damp)
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    return block_size, damp


def prepare_hessian(weight: torch.Tensor, hessian: torch.Tensor, *, damp: float = 0.01,
                    act_order: bool = False) -> ObsProblem:
    """The sweep's inputs: dead inputs (``H_jj = 0``) zeroed in ``W`` and set to 1 on ``H``'s diagonal;
    columns optionally sorted by decreasing ``H_jj`` (GPTQ's ``act_order``); ``H += damp·mean(diag H)·I``;
    ``U = chol(H⁻¹)ᵀ`` in float64, cast to the working precision (float32, or float64 for a float64 weight).

    Introduced in Chapter 3.
    """
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
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=torch.float64)
    with torch_threads(1):  # LAPACK on a few hundred columns: threads cost more than they give on a busy machine
        U = inverse_cholesky_upper(H).to(work)
    return ObsProblem(W=W, U=U, perm=perm, dead=dead)


@dataclass
class SweepState:
    """Where the sweep is, handed to a column rule: the whole working weight ``W`` (later blocks not yet
    updated by the current one), ``U``, the current block ``W1 = W[:, i1:i2]`` (updated column by column) and
    the scaled errors ``Err1`` of the block's columns done so far. Introduced in Chapter 3."""

    W: torch.Tensor
    U: torch.Tensor
    W1: torch.Tensor
    Err1: torch.Tensor
    i1: int
    i2: int


#: A column rule: given the sweep state and the column's offset ``i`` in the block, the compressed column.
ColumnRule = Callable[[SweepState, int], torch.Tensor]


def obs_sweep(W: torch.Tensor, U: torch.Tensor, rule: ColumnRule, *, block_size: int = 128,
              on_block: Callable[[SweepState], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The OBS column loop with lazy batch updates, in place on ``W``; returns ``(Q, losses)``.

    For each block of ``block_size`` columns, ``on_block(state)`` runs first (SparseGPT picks the block's mask
    there); then each column ``j`` is replaced by ``q = rule(state, i)``, its error scaled by ``U_jj`` is
    subtracted from the rest of the block through row ``j`` of ``U``, and once the block is done all later
    columns receive the block's errors in one matrix product (an exact reorganisation: the result does not
    depend on ``block_size``). ``losses[r] = Σ_j (w_rj − q_rj)² / (2·U_jj²)``. Introduced in Chapter 3.
    """
    cols = W.shape[1]
    Q = torch.zeros_like(W)
    losses = torch.zeros(W.shape[0], dtype=W.dtype)
    with torch_threads(1):  # vector operations of a few hundred elements: threads only add synchronisation
        for i1 in range(0, cols, block_size):
            i2 = min(i1 + block_size, cols)
            W1 = W[:, i1:i2].clone()
            state = SweepState(W=W, U=U, W1=W1, Err1=torch.zeros_like(W1), i1=i1, i2=i2)
            U1 = U[i1:i2, i1:i2]
            if on_block is not None:
                on_block(state)
            for i in range(i2 - i1):
                w = W1[:, i]
                q = rule(state, i)
                d = U1[i, i]
                Q[:, i1 + i] = q
                losses += (w - q) ** 2 / d**2 / 2
                err = (w - q) / d
                W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
                state.Err1[:, i] = err
            W[:, i2:] -= state.Err1 @ U[i1:i2, i2:]
    return Q, losses


# --------------------------------------------------------------------------------------------------
# Whole model: block after block, each measured on the outputs of the compressed blocks before it
# --------------------------------------------------------------------------------------------------


def _selector(include: Callable[[str], bool] | Iterable[str] | None) -> Callable[[str], bool]:
    if include is None:
        return lambda n: True
    if callable(include):
        return include
    wanted = [include] if isinstance(include, str) else list(include)
    return lambda n: any(n == w or n.endswith("." + w) for w in wanted)


def set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    """Replace the sub-module at ``dotted`` (``"layers.3.mlp.up_proj"``) by ``new``. Introduced in Chapter 3."""
    parent_name, _, attr = dotted.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)


@torch.inference_mode()
def _run_block(block: nn.Module, model: Decoder, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    positions = torch.arange(x.shape[1])
    return torch.cat([block(x[i : i + batch_size], model.rope, positions) for i in range(0, x.shape[0], batch_size)])


def _block_inputs(block: nn.Module, model: Decoder, x: torch.Tensor, linears: dict[str, nn.Linear],
                  batch_size: int) -> dict[str, LayerInputs]:
    """Run ``block`` on ``x`` once, summing ``XᵀX`` at each linear's input (q/k/v and gate/up read one tensor:
    its product is computed once)."""
    xtx = {n: None for n in linears}
    count = {n: 0 for n in linears}
    last: dict = {}

    def hook_for(n):
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
        _run_block(block, model, x, batch_size)
    finally:
        for h in handles:
            h.remove()
    return {n: LayerInputs(xtx[n], count[n]) for n in linears}


LayerFn = Callable[[str, nn.Linear, LayerInputs], tuple[nn.Module, dict]]


def sequential_calibration(model: Decoder, calibration: torch.Tensor, process: LayerFn, *,
                           include: Callable[[str], bool] | Iterable[str] | None = None, batch_size: int = 8,
                           inplace: bool = False, progress: bool = True, desc: str = "layers") -> tuple[Decoder, list[dict]]:
    """Compress every selected block projection of ``model``, block after block, with calibration tokens ``[N, T]``.

    For block ``i``: run it on the current hidden states and record each selected linear's :class:`LayerInputs`;
    call ``process(name, linear, inputs) -> (module, row)`` and swap ``module`` in; then recompute the block's
    outputs *with the compressed layers*, so block ``i + 1`` is calibrated on what it will really see (as the
    GPTQ and SparseGPT reference implementations do). Returns the model and the rows (``layer``, ``block`` and
    ``name`` put first). Introduced in Chapter 3.
    """
    from .layers import _check_model

    model = _check_model(model)
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2:
        raise ValueError("calibration must be a LongTensor [num_sequences, seq_len] of token ids")
    out = model if inplace else copy.deepcopy(model)
    select = _selector(include)
    rows = []
    with torch.inference_mode():
        x = out.embed_tokens(calibration)
    layers = list(enumerate(out.layers))
    if progress:
        layers = progress_bar(layers, desc=desc, leave=False)
    for i, block in layers:
        prefix = f"layers.{i}"
        linears = {f"{prefix}.{n}": m for n, m in block.named_modules()
                   if isinstance(m, nn.Linear) and select(f"{prefix}.{n}")}
        inputs = _block_inputs(block, out, x, linears, batch_size)
        for n, lin in linears.items():
            module, row = process(n, lin, inputs[n])
            rows.append({"layer": n.rsplit(".", 1)[-1], "block": i, "name": n} | row)
            set_module(out, n, module)
        x = _run_block(block, out, x, batch_size)
    return out, rows
