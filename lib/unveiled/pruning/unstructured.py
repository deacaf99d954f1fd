"""Unstructured and N:M pruning of a whole decoder: magnitude, Wanda and SparseGPT on every block projection.

The pruned model keeps its shapes; pruned weights are stored as zeros in ordinary ``nn.Linear`` layers, which
is how accuracy is measured (a dense kernel multiplies the zeros: no speed-up without a sparse kernel and, for
N:M, sparse tensor cores; :mod:`unveiled.pruning.speed` measures why). Wanda and SparseGPT calibrate block by
block on the outputs of the blocks already pruned (:func:`unveiled.quant.hessian.sequential_calibration`), as
their reference implementations do; magnitude needs no data. The embedding and the head are never pruned.
Introduced in Chapter 5.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from .._validate import check_choice
from ..models import Decoder, linear_names
from ..quant.hessian import LayerInputs, layer_error, sequential_calibration, set_module
from .patterns import (
    COMPARISON_GROUPS,
    SparsityPattern,
    apply_mask,
    keep_mask,
    magnitude_score,
    nm_keep_mask,
    sparsity_of,
    wanda_score,
)
from .sparsegpt import sparsegpt_prune

__all__ = ["METHODS", "compare_layer_methods", "layer_inputs", "prune_layer", "prune_model", "pruned_layer_names"]

#: The unstructured pruning methods, and the comparison group each uses by default.
METHODS = {"magnitude": "layer", "wanda": "row", "sparsegpt": "block"}


def prune_layer(weight: torch.Tensor, method: str, pattern: SparsityPattern | float | str, *,
                inputs: LayerInputs | None = None, per: str | None = None, block_size: int = 128,
                damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one weight ``[out, in]``; returns ``(pruned weight, keep mask)``.

    ``method``: ``"magnitude"`` (no data), ``"wanda"`` or ``"sparsegpt"`` (both need the layer's calibration
    :class:`~unveiled.quant.hessian.LayerInputs`). ``per`` overrides the comparison group of magnitude and Wanda
    (``"row"`` or ``"layer"``; N:M patterns always compare within groups of ``M``). Introduced in Chapter 5.
    """
    check_choice("method", method, tuple(METHODS))
    pattern = SparsityPattern.parse(pattern)
    if method != "magnitude" and inputs is None:
        raise ValueError(f"method {method!r} needs the layer's calibration inputs (LayerInputs)")
    if method == "sparsegpt":
        if per is not None:
            raise ValueError("SparseGPT chooses its mask block by block; per= applies to magnitude and wanda")
        res = sparsegpt_prune(weight, inputs.hessian, pattern, block_size=block_size, damp=damp)
        return res.weight, res.keep
    per = METHODS[method] if per is None else check_choice("per", per, COMPARISON_GROUPS)
    score = magnitude_score(weight) if method == "magnitude" else wanda_score(weight, inputs.input_norms)
    keep = nm_keep_mask(score, pattern.n, pattern.m) if pattern.is_nm else keep_mask(score, pattern.sparsity, per)
    return apply_mask(weight.detach(), keep), keep


def pruned_layer_names(model: Decoder, include: Callable[[str], bool] | Iterable[str] | None = None) -> list[str]:
    """The block projections a pruning call touches (all of them by default; never the embedding or head).

    ``include`` is a predicate on the dotted name or a list of names/suffixes (``["mlp.down_proj"]``); a name
    that matches no layer raises a ValueError naming the layers that exist. Introduced in Chapter 5.
    """
    names = linear_names(model, include_head=False)
    if include is None:
        return names
    if callable(include):
        return [n for n in names if include(n)]
    wanted = [include] if isinstance(include, str) else list(include)
    for w in wanted:
        if not any(n == w or n.endswith("." + w) for n in names):
            raise ValueError(f"no block projection matches {w!r}; names look like {names[:3]} "
                             f"(suffixes such as 'q_proj' or 'mlp.down_proj' work)")
    return [n for n in names if any(n == w or n.endswith("." + w) for w in wanted)]


def prune_model(model: Decoder, method: str, pattern: SparsityPattern | float | str,
                calibration: torch.Tensor | None = None, *,
                include: Callable[[str], bool] | Iterable[str] | None = None, per: str | None = None,
                block_size: int = 128, damp: float = 0.01, batch_size: int = 8, inplace: bool = False,
                progress: bool = True) -> tuple[Decoder, pd.DataFrame]:
    """Prune every block projection of ``model`` (or those ``include`` selects) with ``method`` to ``pattern``.

    Returns the pruned model (a copy unless ``inplace``) and one row per layer: ``rows``, ``cols``,
    ``sparsity`` (measured zeros), ``time_s`` and, when calibration tokens ``[N, T]`` were given (required for
    Wanda and SparseGPT), ``layer_error`` = ``tr(ΔW H ΔWᵀ)/2`` on the inputs the layer saw. Introduced in
    Chapter 5.
    """
    from ..quant.layers import _check_model

    model = _check_model(model)
    check_choice("method", method, tuple(METHODS))
    pattern = SparsityPattern.parse(pattern)
    names = pruned_layer_names(model, include)
    if method != "magnitude" and calibration is None:
        raise ValueError(f"method {method!r} needs calibration tokens [num_sequences, seq_len] of training text")

    def process(_name: str, lin: nn.Linear, inputs: LayerInputs | None) -> tuple[nn.Module, dict]:
        t0 = time.perf_counter()
        w, _keep = prune_layer(lin.weight, method, pattern, inputs=inputs, per=per, block_size=block_size,
                               damp=damp)
        row = {"rows": w.shape[0], "cols": w.shape[1], "sparsity": sparsity_of(w),
               "time_s": time.perf_counter() - t0}
        if inputs is not None:
            row["layer_error"] = layer_error(lin.weight, w, inputs.hessian)
        new = nn.Linear(w.shape[1], w.shape[0], bias=False)
        new.weight = nn.Parameter(w.to(lin.weight.dtype), requires_grad=False)
        return new, row

    if calibration is None:
        out = model if inplace else copy.deepcopy(model)
        rows = []
        for n in names:
            lin = out.get_submodule(n)
            new, row = process(n, lin, None)
            rows.append({"layer": n.rsplit(".", 1)[-1], "block": int(n.split(".")[1]), "name": n} | row)
            set_module(out, n, new)
        return out, pd.DataFrame(rows)
    out, rows = sequential_calibration(model, calibration, process, include=set(names).__contains__,
                                       batch_size=batch_size, inplace=inplace, progress=progress,
                                       desc=f"{method} {pattern.label}")
    return out, pd.DataFrame(rows)


def layer_inputs(model: Decoder, calibration: torch.Tensor, name: str) -> LayerInputs:
    """What the block projection ``name`` sees on calibration tokens ``[N, T]`` of the *unpruned* model: its
    ``XᵀX`` and token count (one forward pass). Introduced in Chapter 5."""
    from ..quant.layers import collect_input_stats

    names = linear_names(model, include_head=False)
    if name not in names:
        raise ValueError(f"no block projection named {name!r}; names look like {names[:3]}")
    stats = collect_input_stats(model, calibration, [name], hessian=True)[name]
    return LayerInputs(stats["xtx"], int(stats["count"]))


def compare_layer_methods(weight: torch.Tensor, inputs: LayerInputs,
                          patterns: Sequence[str | float] = ("50%", "2:4")) -> pd.DataFrame:
    """Magnitude, Wanda and SparseGPT on one layer: the layer error ``tr(ΔW H ΔWᵀ)/2`` of each, and its ratio to
    magnitude pruning's, per pattern. Columns: ``pattern``, ``method``, ``layer_error``, ``vs_magnitude``,
    ``time_s``. Introduced in Chapter 5."""
    rows = []
    for p in patterns:
        pat = SparsityPattern.parse(p)
        for method in METHODS:
            t0 = time.perf_counter()
            w, _ = prune_layer(weight, method, pat, inputs=inputs)
            rows.append({"pattern": pat.label, "method": method,
                         "layer_error": layer_error(weight, w, inputs.hessian), "time_s": time.perf_counter() - t0})
    df = pd.DataFrame(rows)
    base = df[df.method == "magnitude"].set_index("pattern")["layer_error"]
    df["vs_magnitude"] = df["layer_error"] / df["pattern"].map(base)
    return df[["pattern", "method", "layer_error", "vs_magnitude", "time_s"]]
