"""Function-preserving per-channel scaling: SmoothQuant's outlier migration and the folding it relies on.

A linear layer computes ``y = x Wᵀ``. For any positive vector ``s`` over its input channels,
``y = (x / s)(W·diag(s))ᵀ``: dividing the activations by ``s`` and multiplying the weight's columns by ``s``
changes nothing in exact arithmetic. The division is folded into whatever produced ``x`` (the RMSNorm gain
before q/k/v and gate/up, or the rows of ``up_proj`` before ``down_proj``), so it costs nothing at run time.
SmoothQuant [Xiao et al. 2023] chooses ``s_j = max|X_j|^α / max|W_j|^(1−α)``: activation outlier channels are
divided down and their difficulty moves into the weights, which quantize easily; ``α`` sets how much moves
(0.5 balances the two maxima exactly). AWQ uses the same folding with a searched ``s`` (see
:mod:`unveiled.quant.awq`). Introduced in Chapter 3.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .._validate import check_choice, check_number
from ..models import Decoder
from .layers import _check_model, collect_input_stats

__all__ = ["INPUT_GROUPS", "InputGroup", "fold_input_scales", "input_groups", "smooth_model", "smooth_scales"]

#: The kinds of linear groups that share one input and whose input scale can be folded into a previous op.
INPUT_GROUPS = ("attn_in", "mlp_in", "mlp_down")


@dataclass(frozen=True)
class InputGroup:
    """Linear layers of one block that read the same input, and the op whose output scale absorbs ``1/s``.

    ``kind`` is ``"attn_in"`` (q/k/v after ``input_layernorm``), ``"mlp_in"`` (gate/up after
    ``post_attention_layernorm``) or ``"mlp_down"`` (``down_proj`` after the rows of ``up_proj``: the MLP's
    product ``silu(gate)·up`` is linear in ``up``). ``o_proj`` is left out: with grouped-query attention its
    input channels cannot be rescaled independently through ``v_proj``. Introduced in Chapter 3.
    """

    block: int
    kind: str
    previous: str
    linears: tuple[str, ...]


def input_groups(model: Decoder, kinds: Iterable[str] = INPUT_GROUPS) -> list[InputGroup]:
    """The foldable input groups of every block, in execution order. Introduced in Chapter 3."""
    model = _check_model(model)
    kinds = [check_choice("kind", k, INPUT_GROUPS) for k in kinds]
    out = []
    for i in range(model.config.num_layers):
        p = f"layers.{i}"
        table = {
            "attn_in": (f"{p}.input_layernorm", tuple(f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj"))),
            "mlp_in": (f"{p}.post_attention_layernorm", (f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj")),
            "mlp_down": (f"{p}.mlp.up_proj", (f"{p}.mlp.down_proj",)),
        }
        for k in INPUT_GROUPS:
            if k in kinds:
                out.append(InputGroup(i, k, *table[k]))
    return out


def _linear(model: nn.Module, name: str) -> nn.Linear:
    mod = model.get_submodule(name)
    if not isinstance(mod, nn.Linear):
        raise ValueError(f"{name} is a {type(mod).__name__}, not an nn.Linear: apply scaling before quantizing")
    return mod


@torch.no_grad()
def fold_input_scales(model: Decoder, group: InputGroup, scales: torch.Tensor) -> None:
    """Multiply the group's weight columns by ``scales`` and divide the previous op's output by them, in place.

    The model computes the same function afterwards (up to float rounding). Introduced in Chapter 3.
    """
    s = scales.detach().to(torch.float64)
    if s.dim() != 1 or not torch.all(s > 0) or not torch.isfinite(s).all():
        raise ValueError("scales must be a 1-D tensor of finite positive numbers")
    prev = model.get_submodule(group.previous)
    if group.kind == "mlp_down":
        prev = _linear(model, group.previous)
        prev.weight.copy_((prev.weight.double() / s[:, None]).to(prev.weight.dtype))
    else:
        prev.weight.copy_((prev.weight.double() / s).to(prev.weight.dtype))
    for n in group.linears:
        lin = _linear(model, n)
        if lin.weight.shape[1] != s.numel():
            raise ValueError(f"{n} has {lin.weight.shape[1]} input channels, scales have {s.numel()}")
        lin.weight.copy_((lin.weight.double() * s[None, :]).to(lin.weight.dtype))


def smooth_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's migration scales ``s_j = max|X_j|^α / max|W_j|^(1−α)`` [Xiao et al. 2023].

    After scaling, the per-channel maxima are ``max|X_j|/s_j = (max|X_j|·max|W_j|)^(1−α)`` for activations and
    ``max|W_j|·s_j = (max|X_j|·max|W_j|)^α`` for weights: equal at ``α = 0.5``; ``α → 1`` moves the whole
    quantization difficulty into the weights, ``α → 0`` into the activations.
    Introduced in Chapter 3.
    """
    alpha = check_number("alpha", alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if act_absmax.shape != weight_absmax.shape or act_absmax.dim() != 1:
        raise ValueError(f"act_absmax and weight_absmax must be 1-D of the same length, got "
                         f"{tuple(act_absmax.shape)} and {tuple(weight_absmax.shape)}")
    a = act_absmax.double().clamp(min=1e-5)
    w = weight_absmax.double().clamp(min=1e-5)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).float()


def smooth_model(
    model: Decoder,
    calibration: torch.Tensor,
    alpha: float = 0.5,
    *,
    kinds: Iterable[str] = ("attn_in", "mlp_in"),
    inplace: bool = False,
) -> Decoder:
    """SmoothQuant: migrate activation outliers into the weights, then quantize weights and activations.

    Measures each group's per-channel input maxima on ``calibration`` tokens ``[N, T]``, computes
    :func:`smooth_scales` against the group's weight maxima (taken over all its linears) and folds them in.
    The result computes the same function in floating point; quantize it afterwards, e.g. with
    ``quantize_model(smoothed, W8, A8)``. By default q/k/v and gate/up are smoothed, as in the reference
    implementation for LLaMA models. Introduced in Chapter 3.
    """
    model = _check_model(model)
    kinds = list(kinds)
    out = model if inplace else copy.deepcopy(model)
    groups = input_groups(out, kinds)
    stats = collect_input_stats(out, calibration, [g.linears[0] for g in groups])
    for g in groups:
        wmax = torch.stack([_linear(out, n).weight.detach().abs().amax(0) for n in g.linears]).amax(0)
        fold_input_scales(out, g, smooth_scales(stats[g.linears[0]]["absmax"], wmax, alpha))
    return out
