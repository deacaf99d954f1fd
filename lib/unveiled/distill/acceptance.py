"""The speculative-decoding view of a student: how much of the teacher does it match?

Used as a draft, a student's token is accepted with probability Σ min(p, q) = 1 − TV(p, q) [Leviathan et al.
2023; Chen et al. 2023]; with ``k`` draft tokens per round and i.i.d. acceptance α, a target pass emits
(1 − α^(k+1)) / (1 − α) tokens on average. This module holds both formulas; Chapter 7 builds the whole
speedup model of speculative decoding on them (:mod:`unveiled.decoding.analytic`). Introduced in Chapter 4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .._validate import check_int, check_number
from ..generation import sampling_probs
from .divergences import _check_pair, _reduce

__all__ = [
    "acceptance_rate",
    "expected_acceptance",
    "expected_tokens_per_pass",
]

# --------------------------------------------------------------------------------------------------
# Speculative-decoding view: how much of the target does the draft match?
# --------------------------------------------------------------------------------------------------


def expected_acceptance(
    target_logits: torch.Tensor,
    draft_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Σ_v min(p, q) per position: the probability that speculative sampling accepts the draft's token.

    With target p and draft q (both sampled at ``temperature``; 0 means greedy, where it is 1 if the two
    arg-maxes agree), a draft token is accepted with probability Σ min(p, q) = 1 − TV(p, q) [Leviathan et al.
    2023; Chen et al. 2023]. Its mean over positions is the α of the speedup formulas. Introduced in Chapter 4
    (the decoding chapter uses the same quantity).
    """
    _check_pair(draft_logits, target_logits)
    temperature = check_number("temperature", temperature)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    p = sampling_probs(target_logits.float(), temperature)
    q = sampling_probs(draft_logits.float(), temperature)
    return _reduce(torch.minimum(p, q).sum(-1), None, reduction)


def expected_tokens_per_pass(alpha, k):
    """Expected tokens one target pass emits: ``(1 − α^(k+1)) / (1 − α)`` (``k + 1`` when ``α = 1``).

    With ``k >= 1`` draft tokens per round, each accepted independently with probability ``α``, a round emits
    its accepted prefix plus one token (the target's correction, or a bonus token when all are accepted)
    [Leviathan et al. 2023]: between 1 (nothing accepted) and ``k + 1``. ``alpha`` and ``k`` broadcast
    (numbers or arrays). Introduced in Chapter 4; Chapter 7 builds the speedup model on it.
    """
    a = np.asarray(check_number("alpha (acceptance rate)", alpha, allow_array=True), dtype=float)
    if np.any((a < 0) | (a > 1)):
        raise ValueError(f"alpha (acceptance rate) must be in [0, 1], got {alpha}")
    if isinstance(k, bool):
        raise TypeError(f"k (draft length) must be an int, got {k!r}")
    kk = np.asarray(k)
    if kk.dtype.kind not in "iu":
        raise TypeError(f"k (draft length) must hold integers, got dtype {kk.dtype}")
    if np.any(kk < 1):
        raise ValueError(f"k (draft length) must be >= 1, got {kk.min()}")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(a < 1, (1 - a ** (kk + 1)) / np.where(a < 1, 1 - a, 1), kk + 1.0)
    return float(out) if out.ndim == 0 else out


#: Deprecated alias of :func:`expected_tokens_per_pass` (Leviathan et al.'s "tokens per call", γ draft tokens).
expected_tokens_per_call = expected_tokens_per_pass


@torch.inference_mode()
def acceptance_rate(
    target: Callable[[torch.Tensor], torch.Tensor],
    draft: Callable[[torch.Tensor], torch.Tensor],
    tokens: Sequence[int] | torch.Tensor,
    temperature: float = 1.0,
    window: int = 256,
    batch_size: int = 8,
) -> float:
    """Mean expected acceptance α of ``draft`` for ``target``, teacher-forced over ``tokens``.

    Both models read the same fixed, non-overlapping windows; at each position α = Σ min(p, q). Measured on
    the target's own samples this is the per-token acceptance rate speculative sampling would see; on real
    text it is a close proxy. Introduced in Chapter 4.
    """
    window = check_int("window", window, minimum=2)
    batch_size = check_int("batch_size", batch_size)
    data = tokens.long() if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    if data.dim() == 2:
        chunks = data
    else:
        n = (len(data) // window) * window
        if n == 0:
            raise ValueError(f"need at least window = {window} tokens, got {len(data)}")
        chunks = data[:n].reshape(-1, window)
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        x = chunks[i : i + batch_size]
        acc = expected_acceptance(target(x), draft(x), temperature, reduction="none")
        total += float(acc.double().sum())
        count += acc.numel()
    return total / count
