"""Sparsity patterns and pruning masks: which weights of a linear layer to keep, by which score.

Unstructured pruning zeroes any weights; semi-structured **N:M** sparsity keeps at most ``N`` non-zeros in
every group of ``M`` consecutive inputs of an output row (2:4 is what NVIDIA's sparse tensor cores run, since
Ampere [Mishra et al. 2021]). Either way a *score* ranks the weights and a *comparison group* says among which
weights the lowest-scoring are removed:

* magnitude ``|W_ij|``, compared over the whole layer (the classic baseline [Han et al. 2015]);
* Wanda ``|W_ij|·‖X_j‖₂`` (the weight times the norm of its input channel over the calibration tokens),
  compared within each output row [Sun et al. 2024];
* SparseGPT's OBS saliency ``W_ij² / [H⁻¹]_jj²``, compared within blocks of columns while the weights are
  being updated (:mod:`unveiled.pruning.sparsegpt`) [Frantar & Alistarh 2023].

Masks here are boolean ``keep`` tensors of the weight's shape (True = the weight stays). Counts are exact:
a row-wise mask at sparsity ``s`` removes exactly ``⌊s·in⌋`` weights of every row (ties broken by position,
so results never depend on luck). Introduced in Chapter 5.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .._validate import check_choice, check_int, check_number

__all__ = [
    "COMPARISON_GROUPS",
    "SparsityPattern",
    "apply_mask",
    "check_sparsity",
    "is_nm_sparse",
    "keep_mask",
    "magnitude_score",
    "nm_keep_mask",
    "prune_count",
    "sparsity_of",
    "wanda_score",
]

#: Where the lowest scores are removed: each output row, or the whole layer.
COMPARISON_GROUPS = ("row", "layer")


def check_sparsity(sparsity: object) -> float:
    """A sparsity (fraction of weights removed) in ``[0, 1)``; anything else is a ValueError. Chapter 5."""
    s = check_number("sparsity", sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights removed), got {s}")
    return s


def _check_nm(n: object, m: object) -> tuple[int, int]:
    n = check_int("n", n)
    m = check_int("m", m)
    if n > m:
        raise ValueError(f"an N:M pattern keeps N of every M weights, so N <= M; got {n}:{m}")
    return n, m


@dataclass(frozen=True)
class SparsityPattern:
    """What is removed: ``sparsity`` of the weights anywhere (``n`` = ``m`` = None), or all but ``n`` of every
    ``m`` consecutive inputs of a row (N:M; its sparsity is ``1 − n/m``).

    :meth:`parse` reads ``0.5``, ``"50%"``, ``"2:4"`` or a pattern. ``label`` is ``"50%"`` or ``"2:4"``.
    Introduced in Chapter 5.
    """

    sparsity: float = 0.0
    n: int | None = None
    m: int | None = None

    def __post_init__(self) -> None:
        if (self.n is None) != (self.m is None):
            raise ValueError("give both n and m for an N:M pattern, or neither for unstructured sparsity")
        if self.n is not None:
            n, m = _check_nm(self.n, self.m)
            object.__setattr__(self, "sparsity", 1.0 - n / m)
        else:
            object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))

    @classmethod
    def parse(cls, value: SparsityPattern | float | str) -> SparsityPattern:
        if isinstance(value, SparsityPattern):
            return value
        if isinstance(value, str):
            text = value.strip()
            nm = re.fullmatch(r"(\d+)\s*:\s*(\d+)", text)
            if nm:
                return cls(n=int(nm.group(1)), m=int(nm.group(2)))
            pct = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
            if pct:
                return cls(float(pct.group(1)) / 100)
            raise ValueError(f"a sparsity pattern is a fraction (0.5), a percentage ('50%') or 'N:M' ('2:4'), "
                             f"got {value!r}")
        return cls(check_sparsity(value))

    @property
    def is_nm(self) -> bool:
        return self.n is not None

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{100 * self.sparsity:g}%"


def prune_count(size: int, sparsity: float) -> int:
    """How many of ``size`` weights a sparsity removes: ``⌊sparsity·size⌋`` (robust to float round-off)."""
    return math.floor(sparsity * size + 1e-9)


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """``|W|``: magnitude pruning's score [Han et al. 2015]. Introduced in Chapter 5."""
    return weight.detach().abs().float()


def wanda_score(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's score ``|W_ij|·‖X_j‖₂`` [Sun et al. 2024]: ``input_norms[j]`` is the L2 norm of input channel ``j``
    over all calibration tokens. A small weight on a large-activation channel outranks a larger weight on a
    quiet one. Introduced in Chapter 5."""
    if input_norms.dim() != 1 or input_norms.shape[0] != weight.shape[1]:
        raise ValueError(f"input_norms must be a vector of {weight.shape[1]} input-channel norms, "
                         f"got shape {tuple(input_norms.shape)}")
    return weight.detach().abs().float() * input_norms.float()[None, :]


def _lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest entries of each row of ``score`` (stable: ties go to the first)."""
    return torch.sort(score, dim=-1, stable=True).indices[..., :k]


def keep_mask(score: torch.Tensor, sparsity: float, per: str = "row") -> torch.Tensor:
    """Keep all but the lowest-scoring ``sparsity`` of the weights, within each row (``per="row"``) or over
    the whole layer (``per="layer"``). Exactly ``⌊s·in⌋`` per row, or ``⌊s·out·in⌋`` per layer, are removed.

    Introduced in Chapter 5.
    """
    sparsity = check_sparsity(sparsity)
    check_choice("per", per, COMPARISON_GROUPS)
    if score.dim() != 2:
        raise ValueError(f"score must be 2-D [out, in], got shape {tuple(score.shape)}")
    keep = torch.ones_like(score, dtype=torch.bool)
    if per == "row":
        k = prune_count(score.shape[1], sparsity)
        keep.scatter_(1, _lowest(score, k), False)
    else:
        k = prune_count(score.numel(), sparsity)
        keep.view(-1)[_lowest(score.reshape(-1), k)] = False
    return keep


def nm_keep_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest-scoring of every ``m`` consecutive inputs in each row (N:M sparsity).

    ``m`` must divide the number of inputs. Introduced in Chapter 5.
    """
    n, m = _check_nm(n, m)
    if score.dim() != 2:
        raise ValueError(f"score must be 2-D [out, in], got shape {tuple(score.shape)}")
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"an {n}:{m} pattern needs the number of inputs ({cols}) to be a multiple of {m}")
    groups = score.reshape(rows, cols // m, m)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(2, _lowest(groups, m - n), False)
    return keep.reshape(rows, cols)


def apply_mask(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``weight`` with the weights outside ``keep`` set to zero (a new tensor). Introduced in Chapter 5."""
    if keep.shape != weight.shape or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor of the weight's shape {tuple(weight.shape)}")
    return torch.where(keep, weight, torch.zeros_like(weight))


def sparsity_of(weight: torch.Tensor) -> float:
    """Fraction of exact zeros in ``weight``. Introduced in Chapter 5."""
    return float((weight == 0).sum()) / weight.numel()


def is_nm_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive inputs of every row has at most ``n`` non-zeros. Chapter 5."""
    n, m = _check_nm(n, m)
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight != 0).reshape(rows, cols // m, m).sum(-1) <= n).all())
