"""Is speculative sampling exact? Analytic identities and a seeded chi-square test of an accept/reject step.

Speculative sampling claims more than speed: its output is distributed *exactly* as the target's
[Leviathan et al. 2023; Chen et al. 2023]. For one position the proof is two lines. The draft token ``x ~ q``
is kept with probability ``min(1, p(x)/q(x))``, which contributes ``min(p, q)(x)``; a rejection happens with
probability ``1 − β`` (``β = Σ min(p, q)``) and then draws from ``norm(max(0, p − q))``, whose mass is also
``1 − β``: the sum is ``min(p, q) + max(0, p − q) = p``. :func:`output_distribution` evaluates that formula.

An implementation can still be wrong, so :func:`speculative_exactness_test` samples it many times and compares
the counts with the target's probabilities by Pearson's chi-square test [Pearson 1900]. With a fixed seed the
test is reproducible; its *false-alarm rate* (the chance that a correct implementation fails) is the
significance level, split over the positions tested (Bonferroni), so a correct step fails for at most
``false_alarm`` of all seeds. Introduced in Chapter 7.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from .._validate import check_int, check_number
from .speculative import residual_distribution

__all__ = [
    "acceptance_probability",
    "chi_square_test",
    "output_distribution",
    "resample_from_target_accept",
    "speculative_exactness_test",
]


def acceptance_probability(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``β = Σ_x min(p(x), q(x)) = 1 − TV(p, q)``: how often a draft token drawn from ``q`` is accepted.

    Works on ``[..., V]`` probabilities. Introduced in Chapter 7 [Leviathan et al. 2023].
    """
    return torch.minimum(p, q).sum(-1)


def output_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution of the token one accept/reject step emits, computed in closed form.

    ``min(p, q) + (1 − β)·norm(max(0, p − q))``; it equals ``p`` for every ``q`` (the identity the tests check
    to rounding error). Introduced in Chapter 7.
    """
    beta = acceptance_probability(p, q)[..., None]
    return torch.minimum(p, q) + (1 - beta) * residual_distribution(p, q)


def chi_square_test(observed: Sequence[float] | torch.Tensor, probs: Sequence[float] | torch.Tensor) -> dict:
    """Pearson's chi-square goodness-of-fit test of ``observed`` counts against probabilities ``probs``.

    Returns ``statistic``, ``dof`` (bins with positive probability minus one) and ``p_value`` (the upper tail
    of the chi-square distribution, ``Q(dof/2, statistic/2)``). A count in a bin of probability 0 gives
    ``p_value = 0``. Introduced in Chapter 7 [Pearson 1900].
    """
    obs = torch.as_tensor(observed, dtype=torch.float64).flatten()
    pr = torch.as_tensor(probs, dtype=torch.float64).flatten()
    if obs.shape != pr.shape:
        raise ValueError(f"observed has {obs.numel()} bins, probs {pr.numel()}")
    if torch.any(pr < 0) or abs(float(pr.sum()) - 1) > 1e-6:
        raise ValueError("probs must be non-negative and sum to 1")
    n = float(obs.sum())
    if n <= 0:
        raise ValueError("no observations")
    support = pr > 0
    if torch.any(obs[~support] > 0):
        return {"statistic": math.inf, "dof": int(support.sum()) - 1, "p_value": 0.0, "samples": int(n)}
    expected = n * pr[support]
    stat = float(((obs[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    if dof == 0:
        return {"statistic": 0.0, "dof": 0, "p_value": 1.0, "samples": int(n)}
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                            torch.tensor(stat / 2, dtype=torch.float64)))
    return {"statistic": stat, "dof": dof, "p_value": p_value, "samples": int(n)}


def resample_from_target_accept(p: torch.Tensor, q: torch.Tensor, draft_tokens: Sequence[int] | torch.Tensor,
                                generator: torch.Generator | None = None) -> list[int]:
    """A classic mistake, kept as a negative control: after a rejection, sample from ``p`` not the residual.

    It over-produces the tokens the draft already covers (``min(p, q)`` gets counted twice), so the chi-square
    test must reject it. Same signature as :func:`~unveiled.decoding.speculative_accept`. Introduced in
    Chapter 7.
    """
    tokens = [int(t) for t in (draft_tokens.tolist() if isinstance(draft_tokens, torch.Tensor) else draft_tokens)]
    out = []
    for i, x in enumerate(tokens):
        if float(torch.rand((), generator=generator)) * float(q[i, x]) < float(p[i, x]):
            out.append(x)
            continue
        out.append(int(torch.multinomial(p[i], 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(p[len(tokens)], 1, generator=generator)))
    return out


def _expected_lengths(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """P(a round emits j tokens), j = 1..k+1, when acceptances are independent with rates β_i."""
    beta = acceptance_probability(p[:-1].double(), q.double())
    k = len(beta)
    out = torch.zeros(k + 1, dtype=torch.float64)
    reach = 1.0
    for j in range(k):
        out[j] = reach * (1 - beta[j])
        reach = reach * beta[j]
    out[k] = reach
    return out


def speculative_exactness_test(
    accept_fn: Callable[..., Sequence[int]],
    p: torch.Tensor,
    q: torch.Tensor,
    samples: int = 20_000,
    seed: int = 0,
    false_alarm: float = 1e-3,
) -> pd.DataFrame:
    """Sample an accept/reject step many times and chi-square test what it emits against the target.

    Each trial draws ``k`` draft tokens from the rows of ``q`` (``[k, V]``) and calls
    ``accept_fn(p, q, draft_tokens, generator)``. The test compares (a) the first emitted token with
    ``p[0]``, (b) the ``i``-th emitted token, among rounds that reached it, with ``p[i]``, and (c) the number
    of emitted tokens with its law under independent acceptances ``β_i = Σ min(p_i, q_i)``. Each of the
    ``k + 2`` tests uses level ``false_alarm / (k + 2)``, so a correct function fails with probability at most
    ``false_alarm`` (chosen once by ``seed``). Returns one row per test with ``passed``. Introduced in Chapter 7.
    """
    samples = check_int("samples", samples, minimum=100)
    false_alarm = check_number("false_alarm", false_alarm)
    if not 0 < false_alarm < 1:
        raise ValueError(f"false_alarm must be in (0, 1), got {false_alarm}")
    if p.dim() != 2 or q.dim() != 2 or p.shape[0] != q.shape[0] + 1 or p.shape[1] != q.shape[1]:
        raise ValueError("p must be [k + 1, V] and q [k, V] with the same V")
    k, v = q.shape
    gen_draft = torch.Generator().manual_seed(int(seed))
    gen_accept = torch.Generator().manual_seed(int(seed) + 1)
    drafts = torch.stack([torch.multinomial(q[i], samples, replacement=True, generator=gen_draft)
                          for i in range(k)], dim=1) if k else torch.zeros(samples, 0, dtype=torch.long)
    counts = torch.zeros(k + 1, v, dtype=torch.float64)
    lengths = torch.zeros(k + 1, dtype=torch.float64)
    for s in range(samples):
        out = list(accept_fn(p, q, drafts[s], gen_accept))
        if not 1 <= len(out) <= k + 1:
            raise ValueError(f"the accept step must emit between 1 and k + 1 = {k + 1} tokens, got {len(out)}")
        for i, x in enumerate(out):
            counts[i, int(x)] += 1
        lengths[len(out) - 1] += 1
    level = false_alarm / (k + 2)
    rows = []
    for i in range(k + 1):
        if counts[i].sum() == 0:
            continue
        r = chi_square_test(counts[i], p[i].double() / p[i].double().sum())
        rows.append({"test": f"token {i + 1} ~ p[{i}]", **r, "level": level, "passed": r["p_value"] >= level})
    r = chi_square_test(lengths, _expected_lengths(p, q))
    rows.append({"test": "tokens emitted per round", **r, "level": level, "passed": r["p_value"] >= level})
    return pd.DataFrame(rows)
