"""Low-rank factorization: replace a linear layer ``W [out, in]`` by two thin ones, ``W ≈ B A``.

With ``A`` of shape ``[r, in]`` and ``B`` of shape ``[out, r]`` the layer stores ``r·(in + out)`` numbers
instead of ``in·out``, which saves only when ``r < in·out/(in + out)``. The truncated SVD ``W = U Σ Vᵀ`` gives
the best rank-``r`` approximation in Frobenius norm, with error ``Σ_{i>r} σ_i²`` (Eckart–Young). But the
layer's *outputs* matter, not its weights: ASVD [Yuan et al. 2023] first scales each input channel by
``s_j = (mean |x_j|)^α`` (channels that carry large activations count more), factors ``W S``, and folds
``S⁻¹`` back into ``A``. The rank of each layer comes from a budget: the same share of every layer's
parameters (``"uniform"``), or one share of singular-value energy for all layers, set so the whole model
meets the parameter budget (``"energy"``: layers whose spectrum decays fast get lower ranks). The survey
covers factorization in §3.4 without a roofline analysis; the analyzer's ``lowrank`` weight form supplies it.
Introduced in Chapter 5.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import pandas as pd
import torch
from torch import nn

from .._search import first_true
from .._validate import check_choice, check_int, check_number
from ..models import Decoder
from ..quant.hessian import set_module

__all__ = [
    "ALLOCATIONS",
    "FACTORIZATIONS",
    "LowRankLinear",
    "asvd_scale",
    "break_even_rank",
    "lowrank_model",
    "rank_for_energy",
    "rank_for_params",
    "svd_factorize",
]

FACTORIZATIONS = ("svd", "asvd")
ALLOCATIONS = ("uniform", "energy")


class LowRankLinear(nn.Module):
    """``x ↦ (x Aᵀ) Bᵀ`` as two bias-free linears, ``first`` ``[r, in]`` then ``second`` ``[out, r]``.

    ``weight`` is the product ``B A`` (what a dense layer of the same function would store). Introduced in
    Chapter 5.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(f"need A [r, in] and B [out, r], got {tuple(a.shape)} and {tuple(b.shape)}")
        self.first = nn.Linear(a.shape[1], a.shape[0], bias=False)
        self.second = nn.Linear(b.shape[1], b.shape[0], bias=False)
        self.first.weight = nn.Parameter(a.detach().float().contiguous(), requires_grad=False)
        self.second.weight = nn.Parameter(b.detach().float().contiguous(), requires_grad=False)

    @property
    def rank(self) -> int:
        return self.first.weight.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        return self.second.weight @ self.first.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in={self.first.weight.shape[1]}, rank={self.rank}, out={self.second.weight.shape[0]}"


def _check_rank(rank: object, shape: tuple[int, int]) -> int:
    return check_int("rank", rank, minimum=1, maximum=min(shape))


def break_even_rank(shape: tuple[int, int]) -> int:
    """The largest rank at which two thin layers store fewer numbers than ``[out, in]``: ``⌈o·i/(o+i)⌉ − 1``.

    Introduced in Chapter 5."""
    out_f, in_f = shape
    return -(-out_f * in_f // (out_f + in_f)) - 1


def asvd_scale(input_absmean: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """ASVD's per-input-channel scale ``(mean |x_j|)^α`` [Yuan et al. 2023]; zero channels get scale 1.

    Introduced in Chapter 5."""
    alpha = check_number("alpha", alpha)
    s = input_absmean.double().clamp(min=0) ** alpha
    return torch.where(s > 0, s, torch.ones_like(s))


def _svd(weight: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``weight·diag(scale)`` in the weight's precision (float64 stays float64)."""
    w = weight.detach()
    w = w if w.dtype == torch.float64 else w.float()
    if scale is not None:
        if scale.shape != (w.shape[1],):
            raise ValueError(f"scale must have one entry per input channel ({w.shape[1]}), got {tuple(scale.shape)}")
        w = w * scale.to(w.dtype)[None, :]
    return torch.linalg.svd(w, full_matrices=False)


def _factors(svd, rank: int, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = svd
    root = s[:rank].sqrt()
    a = root[:, None] * vh[:rank]
    if scale is not None:
        a = a / scale.to(a.dtype)[None, :]
    return a, u[:, :rank] * root[None, :]


def svd_factorize(weight: torch.Tensor, rank: int, *, scale: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors ``(A [r, in], B [out, r])`` with ``B A ≈ weight``, from the truncated SVD.

    Plain SVD minimises ``‖W − B A‖_F`` (the error is the sum of the discarded ``σ_i²``); with ``scale`` (ASVD,
    :func:`asvd_scale`) it factors ``W·diag(scale)`` and returns ``A = V_rᵀ·diag(1/scale)``, minimising the
    error weighted by the input channels' magnitudes. ``√σ`` goes to each factor. Introduced in Chapter 5.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D tensor [out, in], got {getattr(weight, 'shape', type(weight))}")
    rank = _check_rank(rank, tuple(weight.shape))
    a, b = _factors(_svd(weight, scale), rank, scale)
    return a.to(weight.dtype), b.to(weight.dtype)


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values hold at least ``energy`` of ``Σ σ_i²`` (``energy`` in (0, 1]).

    Introduced in Chapter 5."""
    energy = check_number("energy", energy)
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    e = singular_values.double() ** 2
    cum = torch.cumsum(e, 0) / e.sum()
    return min(int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=torch.float64))) + 1, len(e))


def rank_for_params(shape: tuple[int, int], keep: float) -> int:
    """The rank whose two factors store at most ``keep`` of the ``out·in`` parameters (at least 1).

    Introduced in Chapter 5."""
    keep = check_number("keep", keep)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep (the fraction of parameters kept) must be in (0, 1], got {keep}")
    out_f, in_f = shape
    return max(1, min(min(shape), int(keep * out_f * in_f // (out_f + in_f))))


def _layers(model: Decoder, include: Callable[[str], bool] | Iterable[str] | None) -> list[str]:
    from .unstructured import pruned_layer_names

    return pruned_layer_names(model, include)


def _energy_ranks(spectra: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], keep: float) -> dict[str, int]:
    """One energy share for all layers, the largest that fits the parameter budget (bisection on a grid)."""
    budget = keep * sum(o * i for o, i in shapes.values())

    def ranks_at(e: float) -> dict[str, int]:
        out = {}
        for n, s in spectra.items():
            r = rank_for_energy(s, e)
            out[n] = r if r <= break_even_rank(shapes[n]) else 0  # 0: stays dense
        return out

    def params(ranks: dict[str, int]) -> float:
        return sum(r * sum(shapes[n]) if r else shapes[n][0] * shapes[n][1] for n, r in ranks.items())

    grid = [(k + 1) / 2000 for k in range(2000)]

    def over(k: int) -> bool:
        return params(ranks_at(grid[k])) > budget

    if not over(len(grid) - 1):
        return ranks_at(1.0)
    k = first_true(over, -1, len(grid) - 1)
    return ranks_at(grid[max(k - 1, 0)])


def lowrank_model(model: Decoder, keep: float, *, method: str = "svd", allocation: str = "uniform",
                  calibration: torch.Tensor | None = None, alpha: float = 0.5,
                  include: Callable[[str], bool] | Iterable[str] | None = None, inplace: bool = False,
                  input_absmean: dict[str, torch.Tensor] | None = None) -> tuple[Decoder, pd.DataFrame]:
    """Factor the block projections of ``model`` into :class:`LowRankLinear` pairs under a parameter budget.

    ``keep`` is the fraction of the selected layers' parameters to keep. ``method``: ``"svd"`` or ``"asvd"``
    (needs calibration tokens of training text for the input magnitudes, or their ``input_absmean`` per layer
    computed before, e.g. by :func:`unveiled.quant.collect_input_stats`). ``allocation``: ``"uniform"``
    (every layer at ``keep``, :func:`rank_for_params`) or ``"energy"`` (one singular-value energy share for
    all layers, the largest that meets the budget; a layer whose rank would not save parameters stays dense).
    Each layer is decomposed once, in its weight's precision. Returns the model and one row per layer
    (``rank``, ``params``, ``dense_params``, ``energy`` kept). Introduced in Chapter 5.
    """
    from ..quant.layers import _check_model, collect_input_stats

    model = _check_model(model)
    check_choice("method", method, FACTORIZATIONS)
    check_choice("allocation", allocation, ALLOCATIONS)
    rank_for_params((2, 2), keep)  # validates keep
    names = _layers(model, include)
    scales: dict[str, torch.Tensor | None] = dict.fromkeys(names)
    if method == "asvd":
        if input_absmean is None:
            if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2:
                raise ValueError("method 'asvd' needs calibration tokens [num_sequences, seq_len] of training text")
            stats = collect_input_stats(model, calibration, names)
            input_absmean = {n: stats[n]["absmean"] for n in names}
        scales = {n: asvd_scale(input_absmean[n], alpha) for n in names}
    out = model if inplace else copy.deepcopy(model)
    weights = {n: out.get_submodule(n).weight.detach() for n in names}
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    svds = {n: _svd(w, scales[n]) for n, w in weights.items()}
    spectra = {n: svd[1] for n, svd in svds.items()}
    if allocation == "uniform":
        ranks = {n: rank_for_params(shapes[n], keep) for n in names}
    else:
        ranks = _energy_ranks(spectra, shapes, keep)
    rows = []
    for n in names:
        r, (o, i) = ranks[n], shapes[n]
        e = spectra[n].double() ** 2
        if r:
            a, b = _factors(svds[n], r, scales[n])
            set_module(out, n, LowRankLinear(a.to(weights[n].dtype), b.to(weights[n].dtype)))
        rows.append({"layer": n.rsplit(".", 1)[-1], "block": int(n.split(".")[1]), "name": n, "rank": r,
                     "params": r * (o + i) if r else o * i, "dense_params": o * i,
                     "energy": float(e[:r].sum() / e.sum()) if r else 1.0})
    return out, pd.DataFrame(rows)
