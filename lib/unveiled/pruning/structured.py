"""Structured pruning: remove whole attention heads and MLP channels, leaving a smaller dense decoder.

Unstructured zeros need special kernels to save time; removed *structures* do not: a decoder with fewer
heads and a narrower MLP is an ordinary dense model with smaller matrices [Ma et al. 2023 (LLM-Pruner);
Xia et al. 2024 (Sheared LLaMA)]. The structures are coupled: an MLP channel ``c`` is row ``c`` of
``gate_proj`` and ``up_proj`` and column ``c`` of ``down_proj``; under grouped-query attention a head cannot
go alone without breaking the sharing, so the unit is a **KV group**: one key/value head, the ``H/K`` query
heads that read it, and their columns of ``o_proj``. Every layer loses the same number of groups and
channels, so the result is again one :class:`~unveiled.models.DecoderConfig` (LLM-Pruner spares a few first
and last layers; uniform shapes keep the analyzer's model valid). Each structure's importance is one of:

* ``"magnitude"``: the squared L2 norm of all its weights;
* ``"activation"``: the mean squared norm of its contribution to the block's output on calibration tokens
  (``a_c²·‖down[:, c]‖²`` for a channel; ``‖o_proj[:, group]·x_group‖²`` for a group);
* ``"taylor"``: LLM-Pruner's first-order score ``Σ |w·∂L/∂w|`` over its weights, with the gradient of the
  language-model loss on calibration tokens (the estimated loss change when the structure goes).

A short LoRA fine-tune [Hu et al. 2022] can then recover part of the loss (:func:`lora_recover`), as
LLM-Pruner does. Introduced in Chapter 5.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_choice, check_int
from ..models import Decoder, DecoderConfig, model_from_state

__all__ = [
    "SCORES",
    "StructuredPlan",
    "lora_recover",
    "mask_structures",
    "merge_lora",
    "plan_for_sparsity",
    "select_structures",
    "shrink",
    "structure_scores",
    "structured_prune",
]

SCORES = ("magnitude", "activation", "taylor")


@dataclass(frozen=True)
class StructuredPlan:
    """How much each layer loses: ``kv_groups`` key/value groups (with their query heads) and ``mlp_channels``
    intermediate channels. Introduced in Chapter 5."""

    kv_groups: int = 0
    mlp_channels: int = 0

    def check(self, config: DecoderConfig) -> StructuredPlan:
        check_int("kv_groups", self.kv_groups, minimum=0, maximum=config.num_kv_heads - 1)
        check_int("mlp_channels", self.mlp_channels, minimum=0, maximum=config.intermediate_size - 1)
        return self

    def config(self, config: DecoderConfig) -> DecoderConfig:
        """The decoder config after the plan: fewer heads, KV heads and MLP channels; ``head_dim`` unchanged."""
        self.check(config)
        rep = config.num_heads // config.num_kv_heads
        k = config.num_kv_heads - self.kv_groups
        return replace(config, num_heads=k * rep, num_kv_heads=k, head_dim=config.head_dim,
                       intermediate_size=config.intermediate_size - self.mlp_channels)

    def block_sparsity(self, config: DecoderConfig) -> float:
        """Fraction of the block projections' parameters the plan removes."""
        return 1.0 - _block_params(self.config(config)) / _block_params(config)


def _block_params(c: DecoderConfig) -> int:
    return c.num_layers * (2 * c.hidden_size * c.head_dim * (c.num_heads + c.num_kv_heads)
                           + 3 * c.hidden_size * c.intermediate_size)


def plan_for_sparsity(config: DecoderConfig, sparsity: float, kv_groups: int = 0) -> StructuredPlan:
    """The plan removing ``kv_groups`` KV groups per layer and as many MLP channels as bring the removed share
    of block-projection parameters closest to ``sparsity``. Raises if the groups alone remove more.

    Introduced in Chapter 5.
    """
    from .patterns import check_sparsity

    sparsity = check_sparsity(sparsity)
    base = StructuredPlan(kv_groups=kv_groups).check(config)
    already = base.block_sparsity(config)
    if already > sparsity + 1e-12:
        raise ValueError(f"removing {kv_groups} KV group(s) per layer already removes {already:.1%} of the block "
                         f"parameters, more than the asked {sparsity:.1%}")
    per_channel = 3 * config.hidden_size * config.num_layers / _block_params(config)
    channels = round((sparsity - already) / per_channel)
    return StructuredPlan(kv_groups, min(channels, config.intermediate_size - 1)).check(config)


def _group_slices(config: DecoderConfig, g: int) -> tuple[slice, slice]:
    """Rows of q_proj (and columns of o_proj), and rows of k/v_proj, belonging to KV group ``g``."""
    d, rep = config.head_dim, config.num_heads // config.num_kv_heads
    return slice(g * rep * d, (g + 1) * rep * d), slice(g * d, (g + 1) * d)


def _per_structure(config: DecoderConfig, attn: dict[str, torch.Tensor], mlp: dict[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """Sum elementwise importances ``[out, in]`` of one block's projections per KV group and per MLP channel."""
    groups = []
    for g in range(config.num_kv_heads):
        q_rows, kv_rows = _group_slices(config, g)
        groups.append(attn["q_proj"][q_rows].sum() + attn["k_proj"][kv_rows].sum() + attn["v_proj"][kv_rows].sum()
                      + attn["o_proj"][:, q_rows].sum())
    channels = mlp["gate_proj"].sum(1) + mlp["up_proj"].sum(1) + mlp["down_proj"].sum(0)
    return {"kv_groups": torch.stack(groups).double(), "mlp": channels.double()}


def _weights(block: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    a, m = block.self_attn, block.mlp
    return ({n: getattr(a, n).weight for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
            {n: getattr(m, n).weight for n in ("gate_proj", "up_proj", "down_proj")})


def _check_calibration(calibration: torch.Tensor | None, score: str) -> torch.Tensor:
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.shape[1] < 2:
        raise ValueError(f"score {score!r} needs calibration tokens, a LongTensor [num_sequences, seq_len >= 2]")
    return calibration


@torch.inference_mode()
def _activation_scores(model: Decoder, calibration: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    cfg = model.config
    sums = [{"kv_groups": torch.zeros(cfg.num_kv_heads, dtype=torch.float64),
             "mlp": torch.zeros(cfg.intermediate_size, dtype=torch.float64)} for _ in model.layers]
    count = [0]

    def o_hook(i):
        def hook(mod, args):
            x = args[0].reshape(-1, args[0].shape[-1])
            for g in range(cfg.num_kv_heads):
                cols, _ = _group_slices(cfg, g)
                sums[i]["kv_groups"][g] += float((x[:, cols] @ mod.weight[:, cols].T).pow(2).sum())
        return hook

    def down_hook(i):
        def hook(mod, args):
            a = args[0].reshape(-1, args[0].shape[-1])
            sums[i]["mlp"] += (a.pow(2).sum(0) * mod.weight.pow(2).sum(0)).double()
            if i == 0:
                count[0] += a.shape[0]
        return hook

    handles = []
    for i, block in enumerate(model.layers):
        handles.append(block.self_attn.o_proj.register_forward_pre_hook(o_hook(i)))
        handles.append(block.mlp.down_proj.register_forward_pre_hook(down_hook(i)))
    try:
        for j in range(0, calibration.shape[0], batch_size):
            model.hidden_states(calibration[j : j + batch_size])
    finally:
        for h in handles:
            h.remove()
    return [{k: v / count[0] for k, v in s.items()} for s in sums]


def _taylor_scores(model: Decoder, calibration: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    params = [_weights(b) for b in model.layers]
    flat = [p for a, m in params for p in (*a.values(), *m.values())]
    before = [p.requires_grad for p in flat]
    grads = [torch.zeros_like(p) for p in flat]
    n = calibration.shape[0]
    try:
        for p in flat:
            p.requires_grad_(True)
        with torch.enable_grad():
            for j in range(0, n, batch_size):
                chunk = calibration[j : j + batch_size]
                logits = model(chunk[:, :-1])
                loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten()) * chunk.shape[0] / n
                for acc, g in zip(grads, torch.autograd.grad(loss, flat), strict=True):
                    acc += g
    finally:
        for p, b in zip(flat, before, strict=True):
            p.requires_grad_(b)
    out, k = [], 0
    for a, m in params:
        sal = []
        for group in (a, m):
            sal.append({name: (p.detach() * grads[k + i]).abs() for i, (name, p) in enumerate(group.items())})
            k += len(group)
        out.append(_per_structure(model.config, *sal))
    return out


def structure_scores(model: Decoder, score: str = "magnitude", calibration: torch.Tensor | None = None, *,
                     batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Importance of every KV group and MLP channel, per layer: ``[{"kv_groups": [K], "mlp": [I]}, ...]``.

    ``score`` is ``"magnitude"`` (no data), ``"activation"`` or ``"taylor"`` (calibration tokens ``[N, T]`` of
    training text needed); see the module docstring. Higher means more important. Introduced in Chapter 5.
    """
    from ..quant.layers import _check_model

    model = _check_model(model)
    check_choice("score", score, SCORES)
    if score == "magnitude":
        with torch.no_grad():
            return [_per_structure(model.config, *({k: w.float().pow(2) for k, w in d.items()} for d in _weights(b)))
                    for b in model.layers]
    calibration = _check_calibration(calibration, score)
    batch_size = check_int("batch_size", batch_size)
    if score == "activation":
        return _activation_scores(model, calibration, batch_size)
    return _taylor_scores(model, calibration, batch_size)


def select_structures(scores: list[dict[str, torch.Tensor]], plan: StructuredPlan) -> list[dict[str, torch.Tensor]]:
    """Per layer, the sorted indices of the KV groups and MLP channels that stay (the lowest-scoring
    ``plan.kv_groups`` and ``plan.mlp_channels`` go; ties go to the lower index). Introduced in Chapter 5."""
    keep = []
    for s in scores:
        kv = torch.sort(s["kv_groups"], descending=True, stable=True).indices
        ch = torch.sort(s["mlp"], descending=True, stable=True).indices
        keep.append({"kv_groups": torch.sort(kv[: len(kv) - plan.kv_groups]).values,
                     "mlp": torch.sort(ch[: len(ch) - plan.mlp_channels]).values})
    return keep


def _attention_rows(config: DecoderConfig, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.cat([torch.arange(config.num_heads * config.head_dim)[_group_slices(config, int(g))[0]] for g in groups])
    kv = torch.cat([torch.arange(config.num_kv_heads * config.head_dim)[_group_slices(config, int(g))[1]]
                    for g in groups])
    return q, kv


def _check_keep(model: Decoder, keep: list[dict[str, torch.Tensor]]) -> StructuredPlan:
    cfg = model.config
    if len(keep) != cfg.num_layers:
        raise ValueError(f"keep must list {cfg.num_layers} layers, got {len(keep)}")
    sizes = {(len(k["kv_groups"]), len(k["mlp"])) for k in keep}
    if len(sizes) != 1:
        raise ValueError(f"every layer must keep the same number of groups and channels, got {sorted(sizes)}")
    (g, c), = sizes
    return StructuredPlan(cfg.num_kv_heads - g, cfg.intermediate_size - c).check(cfg)


def shrink(model: Decoder, keep: list[dict[str, torch.Tensor]]) -> Decoder:
    """A new, smaller :class:`Decoder` holding only the kept KV groups (with their query heads) and MLP channels.

    Tensors are sliced, not masked: the result has fewer parameters and runs smaller matmuls. Its outputs
    equal :func:`mask_structures`' to fp32 rounding. Introduced in Chapter 5.
    """
    plan = _check_keep(model, keep)
    cfg = model.config
    state = {k: v.detach() for k, v in model.state_dict().items() if not (k == "lm_head.weight" and model.tied)}
    for i, k in enumerate(keep):
        p = f"layers.{i}."
        q, kv = _attention_rows(cfg, k["kv_groups"])
        ch = k["mlp"]
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            state[p + f"self_attn.{name}.weight"] = state[p + f"self_attn.{name}.weight"][rows]
        state[p + "self_attn.o_proj.weight"] = state[p + "self_attn.o_proj.weight"][:, q]
        state[p + "mlp.gate_proj.weight"] = state[p + "mlp.gate_proj.weight"][ch]
        state[p + "mlp.up_proj.weight"] = state[p + "mlp.up_proj.weight"][ch]
        state[p + "mlp.down_proj.weight"] = state[p + "mlp.down_proj.weight"][:, ch]
    return model_from_state(plan.config(cfg), {k: v.clone() for k, v in state.items()}, source="structured pruning")


def mask_structures(model: Decoder, keep: list[dict[str, torch.Tensor]]) -> Decoder:
    """A copy of ``model`` with the same shapes, where the removed groups' ``o_proj`` columns and the removed
    channels' ``down_proj`` columns are zero: what :func:`shrink` computes, done by masking. Chapter 5."""
    _check_keep(model, keep)
    cfg = model.config
    out = copy.deepcopy(model)
    with torch.no_grad():
        for block, k in zip(out.layers, keep, strict=True):
            q, _ = _attention_rows(cfg, k["kv_groups"])
            o = torch.zeros(cfg.num_heads * cfg.head_dim, dtype=torch.bool)
            o[q] = True
            block.self_attn.o_proj.weight[:, ~o] = 0
            c = torch.zeros(cfg.intermediate_size, dtype=torch.bool)
            c[k["mlp"]] = True
            block.mlp.down_proj.weight[:, ~c] = 0
    return out


def structured_prune(model: Decoder, plan: StructuredPlan | float, score: str = "magnitude",
                     calibration: torch.Tensor | None = None, *, kv_groups: int = 0, batch_size: int = 8,
                     scores: list[dict[str, torch.Tensor]] | None = None) -> tuple[Decoder, pd.DataFrame]:
    """Score the structures, keep the best, and return the smaller decoder and a per-layer table.

    ``plan`` is a :class:`StructuredPlan` or a target share of block-projection parameters to remove (then
    ``kv_groups`` groups per layer go and MLP channels make up the rest, :func:`plan_for_sparsity`). ``scores``
    reuses :func:`structure_scores` computed before (they do not depend on the plan). The table lists, per
    layer, the removed KV groups and the number of removed channels. Introduced in Chapter 5.
    """
    from ..quant.layers import _check_model

    model = _check_model(model)
    if not isinstance(plan, StructuredPlan):
        plan = plan_for_sparsity(model.config, plan, kv_groups)
    plan.check(model.config)
    if scores is None:
        scores = structure_scores(model, score, calibration, batch_size=batch_size)
    keep = select_structures(scores, plan)
    rows = []
    for i, k in enumerate(keep):
        gone = sorted(set(range(model.config.num_kv_heads)) - set(k["kv_groups"].tolist()))
        rows.append({"block": i, "removed_kv_groups": " ".join(map(str, gone)),
                     "removed_mlp_channels": plan.mlp_channels})
    return shrink(model, keep), pd.DataFrame(rows)


def merge_lora(model: Decoder) -> Decoder:
    """Fold every LoRA adapter into its base weight (``W + (α/r)·B A``), in place: plain linears again, same
    shapes and speed as before the adapters. Introduced in Chapter 5."""
    from ..quant.qpeft import LoRALinear

    with torch.no_grad():
        for name, mod in list(model.named_modules()):
            if isinstance(mod, LoRALinear):
                w = mod.weight.detach().clone()
                lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
                lin.weight = nn.Parameter(w, requires_grad=False)
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, lin)
    return model


def lora_recover(model: Decoder, tokens, *, steps: int = 100, rank: int = 8, lr: float = 2e-3, batch_size: int = 8,
                 seq_len: int = 128, seed: int = 0) -> tuple[Decoder, pd.DataFrame]:
    """Recover a pruned model with a short LoRA fine-tune on training ``tokens``, then merge the adapters.

    Returns a new model (the input is untouched) and the training log. LLM-Pruner recovers the same way
    [Ma et al. 2023]. Introduced in Chapter 5.
    """
    from ..quant.qpeft import add_lora, lora_finetune

    out = copy.deepcopy(model)
    add_lora(out, rank=rank)
    log = lora_finetune(out, tokens, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed)
    return merge_lora(out).eval(), log
