"""SparseGPT: prune a layer and update the weights that stay, with the layer Hessian [Frantar & Alistarh 2023].

Removing a weight ``W_rj`` changes the layer's outputs by ``W_rj·x_j``; the Optimal Brain Surgeon update
[Hassibi & Stork 1993] moves the row's remaining weights to absorb as much of that change as the calibration
inputs allow. SparseGPT makes this affordable for LLMs with GPTQ's trick: visit the columns in one fixed
order shared by all rows, so one Cholesky factor ``U`` of ``H⁻¹`` serves every row, and propagate each
column's error to the columns not yet visited. The mask is chosen *while* sweeping ("adaptive mask
selection"): at the start of every block of columns (or every ``M`` columns for N:M), the weights with the
smallest saliency ``w² / U_jj²`` on the *already updated* weights are marked for removal.

The machinery (Hessian, damping, ``U``, the column sweep with lazy batch updates, the block-by-block model
driver) is GPTQ's, shared through :mod:`unveiled.quant.hessian`; SparseGPT is a column rule: a pruned weight
becomes 0, a kept one stays. Introduced in Chapter 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant.hessian import ObsProblem, SweepState, check_layer, obs_sweep, prepare_hessian
from .patterns import SparsityPattern, prune_count

__all__ = ["SparseGPTResult", "sparsegpt_prune"]


@dataclass
class SparseGPTResult:
    """The pruned layer: its updated weight (zeros where pruned), the ``keep`` mask, and the OBS losses
    ``Σ_j (w_rj − q_rj)² / (2·U_jj²)`` per row (the damped layer objective). Introduced in Chapter 5."""

    weight: torch.Tensor
    keep: torch.Tensor
    losses: torch.Tensor

    @property
    def loss(self) -> float:
        return float(self.losses.sum())


class _MaskRule:
    """SparseGPT's column rule with adaptive mask selection (per block, or per M columns for N:M)."""

    def __init__(self, problem: ObsProblem, pattern: SparsityPattern, keep: torch.Tensor | None):
        self.pattern = pattern
        self.fixed = keep is not None
        self.keep = keep.clone() if keep is not None else torch.ones_like(problem.W, dtype=torch.bool)
        self.diag = torch.diag(problem.U)
        self.rows, self.cols = problem.W.shape

    def _saliency(self, st: SweepState, a: int, b: int) -> torch.Tensor:
        return st.W1[:, a:b] ** 2 / self.diag[st.i1 + a : st.i1 + b][None, :] ** 2

    def on_block(self, st: SweepState) -> None:
        if self.pattern.is_nm or self.fixed:
            return
        s = self.pattern.sparsity
        # cumulative rounding: the blocks together remove exactly ⌊s·out·in⌋ weights
        k = prune_count(self.rows * st.i2, s) - prune_count(self.rows * st.i1, s)
        sal = self._saliency(st, 0, st.i2 - st.i1).reshape(-1)
        drop = torch.sort(sal, stable=True).indices[:k]
        block = self.keep[:, st.i1 : st.i2].clone().reshape(-1)
        block[drop] = False
        self.keep[:, st.i1 : st.i2] = block.reshape(self.rows, -1)

    def column(self, st: SweepState, i: int) -> torch.Tensor:
        c = st.i1 + i
        if self.pattern.is_nm and not self.fixed and c % self.pattern.m == 0:
            m = self.pattern.m
            sal = self._saliency(st, i, i + m)
            drop = torch.sort(sal, dim=1, stable=True).indices[:, : m - self.pattern.n]
            self.keep[:, c : c + m].scatter_(1, drop, False)
        w = st.W1[:, i]
        return torch.where(self.keep[:, c], w, torch.zeros_like(w))


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, pattern: SparsityPattern | float | str = 0.5, *,
                    keep: torch.Tensor | None = None, block_size: int = 128, damp: float = 0.01) -> SparseGPTResult:
    """Prune ``weight [out, in]`` to ``pattern`` with SparseGPT, given the Hessian ``[in, in]`` of its inputs.

    ``pattern``: a sparsity (``0.5``, ``"50%"``: exactly ``⌊s·out·in⌋`` weights removed, chosen block by block)
    or ``"N:M"`` (``"2:4"``: every ``M`` consecutive inputs of a row keep ``N``; ``block_size`` must then be a
    multiple of ``M``). Dead inputs (``H_jj = 0``) are zeroed and counted as pruned only if the mask picks
    them. With ``H ∝ I`` no error is propagated and the result is magnitude pruning within each block.
    ``keep`` fixes the mask instead (a bool ``[out, in]``, True = stays; ``pattern`` is then ignored): only the
    OBS update runs, which is how the Wanda paper's ablation pairs other masks with SparseGPT's update.
    Introduced in Chapter 5.
    """
    pattern = SparsityPattern.parse(pattern)
    block_size, damp = check_layer(weight, hessian, damp, block_size)
    if pattern.is_nm and keep is None:
        if weight.shape[1] % pattern.m:
            raise ValueError(f"an {pattern.label} pattern needs the number of inputs ({weight.shape[1]}) to be a "
                             f"multiple of {pattern.m}")
        if block_size % pattern.m:
            raise ValueError(f"block_size ({block_size}) must be a multiple of M = {pattern.m} for {pattern.label}")
    if keep is not None and (keep.shape != weight.shape or keep.dtype != torch.bool):
        raise ValueError(f"keep must be a bool tensor of the weight's shape {tuple(weight.shape)}")
    problem = prepare_hessian(weight, hessian, damp=damp)
    rule = _MaskRule(problem, pattern, keep)
    Q, losses = obs_sweep(problem.W, problem.U, rule.column, block_size=block_size, on_block=rule.on_block)
    return SparseGPTResult(weight=Q.to(weight.dtype), keep=rule.keep, losses=losses)
