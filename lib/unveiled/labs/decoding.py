"""Lab checks of Chapter 7 (decoding algorithms): implement speculative sampling's accept/reject step.

The reader writes ``speculative_accept(p, q, draft_tokens, generator)``: ``p`` ``[k + 1, V]`` are the target's
probabilities after the context and after each draft token, ``q`` ``[k, V]`` the draft's, ``draft_tokens`` the
``k`` tokens drawn from ``q``; it returns the 1 to ``k + 1`` tokens the round emits. The check runs fixed
cases (greedy rows, identical and disjoint distributions) and then the same seeded chi-square exactness test
the library's own implementation passes, so an implementation that is only *almost* right (resampling from
``p`` instead of the residual, accepting with probability ``p(x)``) fails with a hint. Introduced in
Chapter 7.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import Case, LabReport, run_cases

__all__ = ["CHECKS", "check_speculative_accept"]

_FALSE_ALARM = 1e-4  # chance that a correct implementation fails the statistical case (fixed seed: never)


def _one_hot(rows: list[int], v: int) -> torch.Tensor:
    out = torch.zeros(len(rows), v)
    out[torch.arange(len(rows)), torch.tensor(rows)] = 1.0
    return out


def _probs(seed: int, rows: int, v: int, sharp: float = 1.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, v, generator=gen, dtype=torch.float64) * sharp, -1).float()


class _Runner:
    """Calls the reader's function in the ways the cases need (one call, or many for the statistics)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, mode: str, p, q, tokens, seed: int = 0, trials: int = 1):
        if mode == "once":
            return self.fn(p, q, tokens, torch.Generator().manual_seed(seed))
        if mode == "many":
            gen = torch.Generator().manual_seed(seed)
            return [list(self.fn(p, q, tokens, gen)) for _ in range(trials)]
        from ..decoding.exactness import speculative_exactness_test

        return speculative_exactness_test(self.fn, p, q, samples=trials, seed=seed, false_alarm=_FALSE_ALARM)


def _as_ids(result) -> list[int] | None:
    try:
        return [int(x) for x in (result.tolist() if isinstance(result, torch.Tensor) else result)]
    except (TypeError, ValueError):
        return None


def _equals(expected: list[int]) -> Callable:
    def judge(result) -> str | None:
        got = _as_ids(result)
        if got is None:
            return f"return a list of token ids, got {type(result).__name__}"
        return None if got == expected else f"expected the tokens {expected}, got {got}"

    return judge


def _all_length(k: int) -> Callable:
    def judge(results) -> str | None:
        bad = [r for r in results if len(r) != k + 1]
        return None if not bad else (f"with q = p every draft token must be accepted and a bonus token added "
                                     f"({k + 1} tokens); {len(bad)} of {len(results)} rounds emitted {bad[0]}")

    return judge


def _disjoint(draft: list[int], allowed: set[int]) -> Callable:
    def judge(results) -> str | None:
        if any(len(r) != 1 for r in results):
            return "when q gives the draft token probability where p gives 0, it must be rejected: emit exactly 1 token"
        if any(r[0] not in allowed for r in results):
            return f"after a rejection the token must come from norm(max(0, p − q)); got {sorted({r[0] for r in results})}"
        return None

    return judge


def _exact(result) -> str | None:
    failed = result[~result["passed"]]
    if len(failed) == 0:
        return None
    rows = "; ".join(f"{r.test}: chi-square {r.statistic:.1f} on {r.dof} dof, p-value {r.p_value:.2g}"
                     for r in failed.itertuples())
    return f"the emitted tokens are not distributed as the target's ({rows})"


def check_speculative_accept(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``fn(p, q, draft_tokens, generator) -> list[int]``, speculative sampling's accept/reject step.

    Cases: greedy rows (accept exactly the matching prefix, then the target's arg-max); ``q = p`` (accept all
    ``k`` plus a bonus token); disjoint supports (reject at once, replacement from the residual); and a seeded
    chi-square test over 8,000 rounds (false-alarm rate 1e-4, Bonferroni over positions) that the emitted
    tokens follow the target. Introduced in Chapter 7.
    """
    if not callable(fn):
        raise TypeError(f"Lab 7.1: pass your function itself (e.g. check(my_fn)), got {type(fn).__name__}")
    v = 5
    p_greedy = _one_hot([2, 0, 4], v)
    q_greedy = _one_hot([2, 3], v)
    p_all = _one_hot([2, 0, 4], v)
    q_all = _one_hot([2, 0], v)
    p_same = _probs(1, 4, v)
    p_dis = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    q_dis = torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.5]])
    p_exact = _probs(2, 3, v)
    q_exact = _probs(3, 2, v)
    cases = [
        Case("greedy: keep the matching prefix, then the target's choice", ("once", p_greedy, q_greedy, [2, 3]),
             judge=_equals([2, 0]),
             hint="with one-hot rows, draft token 2 matches p[0]'s arg-max (accept), token 3 does not (reject and "
                  "draw from norm(max(0, p[1] − q[1])) = the one-hot of token 0)."),
        Case("greedy: all accepted, then a bonus token from the last row of p", ("once", p_all, q_all, [2, 0]),
             judge=_equals([2, 0, 4]),
             hint="when every draft token is accepted, sample one more token from p[k] (the last row)."),
        Case("q = p: every draft token is accepted", ("many", p_same, p_same[:3].clone(), [1, 3, 0], 0, 40),
             judge=_all_length(3),
             hint="accept token x with probability min(1, p(x)/q(x)); here p(x)/q(x) = 1, so always. Compare a "
                  "uniform draw u with p(x)/q(x) (u < ratio), not the other way round."),
        Case("disjoint supports: reject, then draw from the residual", ("many", p_dis, q_dis, [3], 0, 40),
             judge=_disjoint([3], {0, 1}),
             hint="p(3) = 0, so the draft token must be rejected, and the replacement comes from max(0, p − q) "
                  "normalised, which is uniform on {0, 1} here."),
        Case("exactness: the emitted tokens follow the target (chi-square, 8,000 rounds)",
             ("exact", p_exact, q_exact, None, 0, 8000), judge=_exact,
             hint="after the first rejection, sample from norm(max(0, p_i − q_i)), not from p_i (that counts the "
                  "mass min(p, q) twice); accept with probability min(1, p(x)/q(x)), not p(x); stop at the first "
                  "rejection; add a bonus token from p[k] only when all k are accepted."),
    ]
    return run_cases(_Runner(fn), cases, "Lab 7.1: speculative sampling's accept/reject step",
                     raise_on_fail=raise_on_fail, show=show)


CHECKS: dict[str, Callable] = {"speculative_accept": check_speculative_accept}
