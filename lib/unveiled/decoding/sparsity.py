"""Contextual sparsity (Deja Vu-style): predict which MLP neurons matter for this token, compute only those.

For a given input only a fraction of an MLP's neurons contribute much to its output, and *which* ones
depends on the input [Liu et al. 2023; Deja Vu]. If a cheap predictor can name them before the MLP runs,
decode reads only their rows of ``gate_proj``/``up_proj`` and columns of ``down_proj``: fewer bytes for a
memory-bound step. In the book's SwiGLU MLPs a neuron's contribution is ``a_i = silu(g_i·x) · (u_i·x)``; the
*oracle* keeps the ``keep`` fraction with the largest ``|a_i|``, and :class:`SparsityPredictor` learns to guess
that set from the MLP's input with a low-rank network trained by binary cross-entropy (Deja Vu's recipe).

:class:`SparseMLP` computes only the selected neurons: with batch 1 and one token it gathers their weight
rows (the real saving), otherwise it masks a dense computation (the same numbers). The union of the neurons
a batch needs grows towards all of them as the batch grows, which is why contextual sparsity helps
small-batch decode and fades at large batch (:func:`union_sparsity`). Introduced in Chapter 7.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_int, check_number
from ..session import progress_bar

__all__ = [
    "SparseMLP",
    "SparsityPredictor",
    "mlp_contributions",
    "mlp_inputs",
    "oracle_mask",
    "sparse_model",
    "train_sparsity_predictors",
    "union_sparsity",
]


def _keep_count(keep: float, width: int) -> int:
    keep = check_number("keep", keep)
    if not 0 < keep <= 1:
        raise ValueError(f"keep (fraction of neurons computed) must be in (0, 1], got {keep}")
    return max(1, round(keep * width))


def mlp_contributions(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-neuron activations ``silu(gate(x)) * up(x)`` ``[..., I]`` of a SwiGLU MLP (before ``down_proj``)."""
    return F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)


def oracle_mask(contributions: torch.Tensor, keep: float) -> torch.Tensor:
    """Boolean mask of the ``keep`` fraction of neurons with the largest ``|contribution|`` per token."""
    m = _keep_count(keep, contributions.shape[-1])
    idx = contributions.abs().topk(m, dim=-1).indices
    return torch.zeros_like(contributions, dtype=torch.bool).scatter(-1, idx, True)


class SparsityPredictor(nn.Module):
    """Deja Vu's MLP predictor: ``x → Linear(h, r) → ReLU → Linear(r, I)`` scores, one per neuron.

    Trained to score the oracle's neurons highest; at run time the top ``keep`` fraction of scores is
    computed. Costs ``r·(h + I)`` weights, small next to the MLP's ``3·h·I``. Introduced in Chapter 7.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, rank: int = 32):
        super().__init__()
        self.down = nn.Linear(hidden_size, check_int("rank", rank))
        self.up = nn.Linear(rank, intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(x)))


class SparseMLP(nn.Module):
    """A SwiGLU MLP that computes only the neurons chosen per token, by a predictor or by the oracle.

    ``predictor=None`` uses the oracle (the true top ``keep`` neurons, an upper bound on quality). With a
    single token (decode at batch 1) it gathers the chosen rows/columns of the weights, so it reads
    ``keep`` of the MLP's weight bytes; otherwise it zeroes the unchosen neurons of a dense computation.
    ``last_mask`` keeps the most recent selection (for union statistics). Introduced in Chapter 7.
    """

    def __init__(self, mlp: nn.Module, keep: float, predictor: SparsityPredictor | None = None):
        super().__init__()
        self.mlp = mlp
        self.keep = check_number("keep", keep)
        self.m = _keep_count(keep, mlp.gate_proj.weight.shape[0])
        self.predictor = predictor
        self.last_mask: torch.Tensor | None = None

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Indices ``[..., m]`` of the neurons to compute for each token of ``x``."""
        scores = (mlp_contributions(self.mlp, x).abs() if self.predictor is None else self.predictor(x))
        return scores.topk(self.m, dim=-1).indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.select(x)
        mlp = self.mlp
        if x.shape[:-1].numel() == 1:
            i = idx.reshape(-1)
            g = F.linear(x, mlp.gate_proj.weight[i])
            u = F.linear(x, mlp.up_proj.weight[i])
            out = F.linear(F.silu(g) * u, mlp.down_proj.weight[:, i])
        else:
            a = mlp_contributions(mlp, x)
            mask = torch.zeros_like(a, dtype=torch.bool).scatter(-1, idx, True)
            out = mlp.down_proj(a * mask)
        self.last_mask = torch.zeros(*x.shape[:-1], mlp.gate_proj.weight.shape[0], dtype=torch.bool).scatter(
            -1, idx, True)
        return out


def mlp_inputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every block's MLP (after its post-attention norm), teacher-forced on ``x`` ``[B, T]``.

    What a contextual-sparsity predictor sees. Introduced in Chapter 7."""
    states = model.hidden_states(x)
    inputs = []
    for i, block in enumerate(model.layers):
        mid = states[i] + block.self_attn(block.input_layernorm(states[i]), model.rope, torch.arange(x.shape[1]))
        inputs.append(block.post_attention_layernorm(mid))
    return inputs


def train_sparsity_predictors(model, tokens: Sequence[int] | torch.Tensor, keep: float = 0.5, rank: int = 32,
                              steps: int = 200, batch_size: int = 8, seq_len: int = 128, lr: float = 3e-3,
                              seed: int = 0, progress: bool = True) -> tuple[list[SparsityPredictor], pd.DataFrame]:
    """Train one predictor per block to find the oracle's top-``keep`` neurons (BCE, positives reweighted).

    Returns the predictors and a log with the loss and each step's *recall*: the fraction of the oracle's
    neurons among the predicted top ``keep``. The model is frozen. Introduced in Chapter 7 [Liu et al. 2023].
    """
    from ..text import random_batch

    steps = check_int("steps", steps)
    data = torch.as_tensor(tokens, dtype=torch.long).flatten()
    cfg = model.config
    with torch.random.fork_rng():  # seeded initialisation without disturbing the caller's global RNG
        torch.manual_seed(int(seed))
        preds = [SparsityPredictor(cfg.hidden_size, cfg.intermediate_size, rank) for _ in model.layers]
    opt = torch.optim.AdamW([q for p in preds for q in p.parameters()], lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(int(seed))
    m = _keep_count(keep, cfg.intermediate_size)
    pos_weight = torch.tensor((cfg.intermediate_size - m) / m)
    bar = None
    if progress:
        bar = progress_bar(total=steps, desc="training sparsity predictors", leave=False)
    rows = []
    for step in range(steps):
        x, _ = random_batch(data, batch_size, seq_len, gen)
        with torch.no_grad():
            inputs = mlp_inputs(model, x)
            labels = [oracle_mask(mlp_contributions(b.mlp, h), keep).float() for b, h in zip(model.layers, inputs,
                                                                                            strict=True)]
        loss, recall = 0.0, 0.0
        for p, h, y in zip(preds, inputs, labels, strict=True):
            s = p(h)
            loss = loss + F.binary_cross_entropy_with_logits(s, y, pos_weight=pos_weight)
            with torch.no_grad():
                hit = torch.zeros_like(y).scatter(-1, s.topk(m, dim=-1).indices, 1.0)
                recall += float((hit * y).sum() / y.sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rows.append({"step": step + 1, "loss": float(loss.detach()), "recall": recall / len(preds)})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for p in preds:
        p.eval()
    return preds, pd.DataFrame(rows)


def sparse_model(model, keep: float, predictors: Sequence[SparsityPredictor] | None = None):
    """A copy of ``model`` whose MLPs compute only ``keep`` of their neurons (oracle or predicted).

    The original model is untouched. Introduced in Chapter 7.
    """
    if predictors is not None and len(predictors) != len(model.layers):
        raise ValueError(f"need one predictor per block ({len(model.layers)}), got {len(predictors)}")
    out = copy.deepcopy(model)
    for i, block in enumerate(out.layers):
        block.mlp = SparseMLP(block.mlp, keep, None if predictors is None else predictors[i])
    return out.eval()


@torch.inference_mode()
def union_sparsity(model, tokens: Sequence[int] | torch.Tensor, keep: float = 0.5,
                   batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), trials: int = 20, seed: int = 0) -> pd.DataFrame:
    """Fraction of MLP neurons a batch of ``B`` random tokens needs in total (the union of the oracle sets).

    With ``keep`` of the neurons per token, a batch needs ``keep`` at ``B = 1`` and more as ``B`` grows; the
    weights a decode step must read grow with the union. One row per ``B``: mean union fraction over blocks
    and trials. Introduced in Chapter 7 [Liu et al. 2023].
    """
    data = torch.as_tensor(tokens, dtype=torch.long).flatten()
    window = 128
    n = (len(data) // window) * window
    x = data[:n].reshape(-1, window)[:8]
    inputs = mlp_inputs(model, x)
    masks = [oracle_mask(mlp_contributions(b.mlp, h), keep).reshape(-1, b.mlp.gate_proj.weight.shape[0])
             for b, h in zip(model.layers, inputs, strict=True)]
    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    for b in batches:
        b = check_int("batch", int(b))
        fr = []
        for _ in range(trials):
            pick = torch.randint(0, masks[0].shape[0], (b,), generator=gen)
            fr.append(float(torch.stack([m[pick].any(0).float().mean() for m in masks]).mean()))
        rows.append({"batch": b, "union_fraction": sum(fr) / len(fr), "keep": keep})
    return pd.DataFrame(rows)
