"""A mixture-of-experts layer with top-k routing, and what a batch of tokens costs it.

A mixture-of-experts (MoE) MLP holds ``E`` expert MLPs and a router [Shazeer et al. 2017; Fedus et al. 2022].
For each token the router scores the experts (``r = x W_g``), keeps the ``k`` best, and mixes their outputs
with weights ``softmax`` over the ``k`` kept scores (Mixtral's rule [Jiang et al. 2024]): parameters grow
with ``E``, compute per token only with ``k``. On the roofline the catch is memory: a decode step must read
every expert that *any* token of the batch chose. With uniform routing a batch of ``B`` tokens touches
``E·(1 − (1 − k/E)^B)`` experts on average (:func:`~unveiled.decoding.expected_distinct_experts`), so at
``B = 1`` decode reads ``k/E`` of the expert weights and by ``B ≈ 16`` (Mixtral, ``E = 8``, ``k = 2``)
nearly all of them. :func:`measure_moe_decode` times this on the CPU. Introduced in Chapter 7.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_int

__all__ = ["MoELayer", "load_balancing_loss", "measure_moe_decode"]


class MoELayer(nn.Module):
    """``num_experts`` SwiGLU experts of width ``intermediate_size`` behind a top-``top_k`` router.

    Expert weights are stacked (``gate``/``up`` ``[E, I, h]``, ``down`` ``[E, h, I]``). :meth:`route` gives
    each token's ``k`` distinct experts and their normalised weights; :meth:`forward` runs only the experts
    some token chose, reading only their weights; :meth:`dense_reference` runs every expert and masks (the
    definition, for tests). ``seed`` makes the initialisation reproducible. Introduced in Chapter 7.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int = 8, top_k: int = 2,
                 seed: int = 0):
        super().__init__()
        h = check_int("hidden_size", hidden_size)
        i = check_int("intermediate_size", intermediate_size)
        self.num_experts = check_int("num_experts", num_experts)
        self.top_k = check_int("top_k", top_k, maximum=self.num_experts)
        gen = torch.Generator().manual_seed(int(seed))
        self.router = nn.Parameter(torch.randn(self.num_experts, h, generator=gen) * h ** -0.5)
        self.gate = nn.Parameter(torch.randn(self.num_experts, i, h, generator=gen) * h ** -0.5)
        self.up = nn.Parameter(torch.randn(self.num_experts, i, h, generator=gen) * h ** -0.5)
        self.down = nn.Parameter(torch.randn(self.num_experts, h, i, generator=gen) * i ** -0.5)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(experts [N, k], weights [N, k], router_logits [N, E])`` for tokens ``x`` ``[..., h]`` (flattened).

        The weights are a softmax over the ``k`` selected logits: non-negative, summing to 1 per token.
        """
        flat = x.reshape(-1, x.shape[-1])
        logits = flat @ self.router.T
        top, experts = logits.topk(self.top_k, dim=-1)
        return experts, top.softmax(-1), logits

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, self.gate[e])) * F.linear(x, self.up[e]), self.down[e])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        experts, weights, _ = self.route(flat)
        out = torch.zeros_like(flat)
        for e in torch.unique(experts).tolist():  # only the experts some token chose: their weights are read
            rows, slot = (experts == e).nonzero(as_tuple=True)
            out.index_add_(0, rows, weights[rows, slot, None] * self._expert(e, flat[rows]))
        return out.reshape(shape)

    def dense_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, combined with the router's weights (zero for unchosen experts)."""
        flat = x.reshape(-1, x.shape[-1])
        experts, weights, _ = self.route(flat)
        gates = torch.zeros(flat.shape[0], self.num_experts, dtype=flat.dtype).scatter(1, experts, weights)
        all_out = torch.stack([self._expert(e, flat) for e in range(self.num_experts)], dim=1)  # [N, E, h]
        return (gates[..., None] * all_out).sum(1).reshape(x.shape)

    def experts_touched(self, x: torch.Tensor) -> int:
        """How many distinct experts the tokens of ``x`` are routed to (the experts a step must read)."""
        return int(torch.unique(self.route(x)[0]).numel())

    def expert_bytes(self) -> int:
        """Bytes of one expert's weights (gate, up and down)."""
        return (self.gate[0].numel() + self.up[0].numel() + self.down[0].numel()) * self.gate.element_size()


def load_balancing_loss(router_logits: torch.Tensor, experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss ``E · Σ_i f_i · P_i`` (1 at perfectly uniform routing).

    ``f_i`` is the fraction of token-expert assignments that went to expert ``i`` and ``P_i`` the mean router
    probability of ``i``; minimising it spreads tokens evenly [Fedus et al. 2022]. Introduced in Chapter 7.
    """
    e = check_int("num_experts", num_experts)
    f = torch.bincount(experts.reshape(-1), minlength=e).float() / experts.numel()
    p = router_logits.softmax(-1).mean(0)
    return e * (f * p).sum()


@torch.inference_mode()
def measure_moe_decode(layer: MoELayer, batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), repeats: int = 5,
                       seed: int = 0) -> pd.DataFrame:
    """Time one decode step of ``layer`` for batches of ``B`` random tokens (best of ``repeats``).

    One row per ``B``: ``experts_touched`` (mean over repeats), ``expert_bytes_read``, ``time_s`` and
    ``time_per_token_s``. Decode reads each touched expert once, so the time follows the touched experts,
    not the batch, until every expert is in use. Introduced in Chapter 7.
    """
    repeats = check_int("repeats", repeats)
    gen = torch.Generator().manual_seed(int(seed))
    h = layer.gate.shape[-1]
    rows = []
    for b in batches:
        b = check_int("batch", int(b))
        best, touched = float("inf"), []
        for _ in range(repeats):
            x = torch.randn(b, h, generator=gen)
            touched.append(layer.experts_touched(x))
            t0 = time.perf_counter()
            layer(x)
            best = min(best, time.perf_counter() - t0)
        mean_touched = sum(touched) / len(touched)
        rows.append({"batch": b, "experts_touched": mean_touched,
                     "expert_bytes_read": mean_touched * layer.expert_bytes(), "time_s": best,
                     "time_per_token_s": best / b})
    return pd.DataFrame(rows)
