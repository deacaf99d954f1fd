"""Lab checks of Chapter 7 (decoding algorithms): speculative sampling's accept/reject step and its yield.

Lab 7.1: the reader writes ``speculative_accept(p, q, draft_tokens, generator)``: ``p`` ``[k + 1, V]`` are the
target's probabilities after the context and after each draft token, ``q`` ``[k, V]`` the draft's,
``draft_tokens`` the ``k`` tokens drawn from ``q``; it returns the 1 to ``k + 1`` tokens the round emits. The
check runs fixed cases (greedy rows, identical and disjoint distributions) and then the same seeded chi-square
exactness test the library's own implementation passes, so an implementation that is only *almost* right
(resampling from ``p`` instead of the residual, accepting with probability ``p(x)``) fails.

Lab 7.2: ``tokens_per_pass(p, q)``, the expected number of tokens one verification pass emits when position
``i`` accepts with its own rate ``β_i = Σ min(p_i, q_i)``: ``Σ_{j=0..k} Π_{i<j} β_i``, which is the chapter's
``(1 − α^(k+1)) / (1 − α)`` when every ``β_i = α`` [Leviathan et al. 2023]. The check compares with that
closed form, with the library, and with a seeded simulation of the library's accept/reject step, and names the
classic mistakes (the emitted correction token forgotten, acceptances not chained, one α for every position,
``Σ p·q`` for the acceptance rate). Introduced in Chapter 7.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..decoding.analytic import expected_tokens_per_pass
from ..decoding.exactness import acceptance_probability
from ..decoding.speculative import speculative_accept as _reference_accept
from . import Case, LabReport, run_cases

__all__ = ["CHECKS", "check_speculative_accept", "check_tokens_per_pass"]

# The chapter sections the hints point at (headings without their numbers).
_SPECULATIVE = "Speculative decoding"
_EXACTNESS = "Exactness first"
_HOW_MUCH = "How much faster? The analytic model and the roofline"

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


def _rounds(results) -> str:
    lengths = sorted({len(r) for r in results})
    firsts = sorted({r[0] for r in results if r})
    return f"rounds of {lengths} tokens, first tokens {firsts}, e.g. {results[0]}"


def _disjoint(draft: list[int], allowed: set[int]) -> Callable:
    def judge(results) -> str | None:
        if any(len(r) != 1 for r in results):
            return "p gives the draft token probability 0, so it must be rejected: emit exactly 1 token"
        if any(r[0] not in allowed for r in results):
            return "after a rejection, a token that p already covers as much as q does was drawn"
        return None

    return judge


def _exact(result) -> str | None:
    failed = result[~result["passed"]]
    if len(failed) == 0:
        return None
    return "the emitted tokens are not distributed as the target's"


def _show_tests(result) -> str:
    return "; ".join(f"{r.test}: chi-square {r.statistic:.1f} on {r.dof} dof, p-value {r.p_value:.2g}"
                     + ("" if r.passed else " (FAIL)") for r in result.itertuples())


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
             judge=_equals([2, 0]), expected=[2, 0], section=_SPECULATIVE,
             input="p: one-hot rows on tokens [2, 0, 4]; q: one-hot rows on tokens [2, 3]; draft tokens [2, 3]",
             hint="Every probability here is 0 or 1: decide by hand which draft tokens are kept, and what the "
                  "round emits in place of the first rejected one."),
        Case("greedy: all accepted, then a bonus token from the last row of p", ("once", p_all, q_all, [2, 0]),
             judge=_equals([2, 0, 4]), expected=[2, 0, 4], section=_SPECULATIVE,
             input="p: one-hot rows on tokens [2, 0, 4]; q: one-hot rows on tokens [2, 0]; draft tokens [2, 0]",
             hint="How many tokens does a round emit when no draft token is rejected, and which row of p is then "
                  "still unused?"),
        Case("q = p: every draft token is accepted", ("many", p_same, p_same[:3].clone(), [1, 3, 0], 0, 40),
             judge=_all_length(3), expected="4 tokens in each of the 40 rounds", show_result=_rounds,
             section=_SPECULATIVE,
             input="p: 4 random rows over 5 tokens; q = the first 3 rows of p; draft tokens [1, 3, 0]; 40 rounds",
             hint="With q = p the acceptance probability of every draft token is 1: check the comparison that "
                  "decides acceptance, including its direction."),
        Case("disjoint supports: reject, then draw from the residual", ("many", p_dis, q_dis, [3], 0, 40),
             judge=_disjoint([3], {0, 1}), expected="1 token in each of the 40 rounds, always 0 or 1",
             show_result=_rounds, section=_EXACTNESS,
             input="p[0] = [0.5, 0.5, 0, 0, 0], q[0] = [0, 0, 0, 0.5, 0.5]; draft token [3]; 40 rounds",
             hint="p gives the draft token probability 0: what must happen to it, and which part of p is left "
                  "to draw the replacement from?"),
        Case("exactness: the emitted tokens follow the target (chi-square, 8,000 rounds)",
             ("exact", p_exact, q_exact, None, 0, 8000), judge=_exact, show_result=_show_tests,
             expected="every chi-square p-value above its level (1e-4 split over the tests)", section=_EXACTNESS,
             input="p: 3 random rows over 5 tokens, q: 2 random rows; 8,000 seeded rounds with drafts drawn from q",
             hint="The section's proof adds what an accepted draft token contributes and what a rejection "
                  "contributes: compare each step of your function with that sum, term by term."),
    ]
    return run_cases(_Runner(fn), cases, "Lab 7.1: speculative sampling's accept/reject step",
                     raise_on_fail=raise_on_fail, show=show)


# ---- Lab 7.2: tokens per verification pass -------------------------------------------------------------------


def _tokens_per_pass(p: torch.Tensor, q: torch.Tensor) -> float:
    """Σ_{j=0..k} Π_{i<j} β_i with β_i = Σ min(p_i, q_i): round j+1 tokens are emitted iff the first j are kept."""
    beta = acceptance_probability(p[:-1].double(), q.double())
    reach = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), beta]), 0)
    return float(reach.sum())


def _simulated_tokens(p: torch.Tensor, q: torch.Tensor, rounds: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of the tokens the library's accept/reject step emits over seeded rounds."""
    gen_draft = torch.Generator().manual_seed(seed)
    gen_accept = torch.Generator().manual_seed(seed + 1)
    drafts = torch.stack([torch.multinomial(q[i], rounds, replacement=True, generator=gen_draft)
                          for i in range(q.shape[0])], dim=1)
    counts = torch.tensor([len(_reference_accept(p, q, drafts[r], gen_accept)) for r in range(rounds)],
                          dtype=torch.float64)
    return float(counts.mean()), float(counts.std() / math.sqrt(rounds))


def _number_judge(expected: float, mistakes: dict[str, float], tolerance: float = 1e-6) -> Callable:
    def judge(result) -> str | None:
        try:
            got = float(result.item() if isinstance(result, torch.Tensor) else result)
        except (TypeError, ValueError, RuntimeError):
            return f"return one number, got {type(result).__name__}"
        if not math.isfinite(got):
            return "the result is not finite"
        if abs(got - expected) <= tolerance * max(1.0, abs(expected)):
            return None
        hits = [msg for msg, wrong in mistakes.items()
                if abs(got - wrong) <= 1e-6 * max(1.0, abs(wrong)) and abs(wrong - expected) > tolerance]
        return " Or: ".join(hits) if hits else f"off by {got - expected:+.4g} tokens"

    return judge


def _closed_form(alpha: float, k: int) -> float:
    """The chapter's (1 − α^(k+1)) / (1 − α), with α clipped to [0, 1] against float32 rounding."""
    return float(expected_tokens_per_pass(min(max(alpha, 0.0), 1.0), k))


def _pass_mistakes(p: torch.Tensor, q: torch.Tensor) -> dict[str, float]:
    beta = acceptance_probability(p[:-1].double(), q.double())
    k = len(beta)
    right = _tokens_per_pass(p, q)
    alpha = float(beta.mean())
    overlap = (p[:-1].double() * q.double()).sum(-1)
    return {
        "You counted only the accepted draft tokens: every round also emits one more token (the replacement drawn "
        "at the first rejection, or the bonus token).": right - 1,
        "You added the acceptance rates as if each position were reached in every round; a position is only "
        "reached when every earlier draft token was accepted.": 1 + float(beta.sum()),
        "You used one acceptance rate (the mean) for every position; here each position has its own β_i.":
            _closed_form(alpha, k),
        "You used the first position's acceptance rate for every position.":
            _closed_form(float(beta[0]), k),
        "Σ p·q is the chance that two independent draws agree, not the acceptance rate of speculative sampling.":
            float(torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), overlap]), 0).sum()),
    }


def check_tokens_per_pass(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``fn(p, q) -> float``: the expected tokens one verification pass emits (Lab 7.2, Chapter 7).

    ``p`` ``[k + 1, V]`` and ``q`` ``[k, V]`` as in Lab 7.1; position ``i`` accepts with ``β_i = Σ min(p_i, q_i)``.
    Cases: ``q = p`` (``k + 1``), disjoint supports (1), one draft token by hand, equal rows (the chapter's
    closed form), different agreement per position, and a seeded simulation of the library's accept/reject
    step (4,000 rounds; the answer must lie within 4 standard errors of the simulated mean).
    """
    v = 6
    same = _probs(20, 4, v)
    p_dis = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]]).double()
    q_dis = torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.5, 0.0]]).double()
    p_one = torch.tensor([[0.6, 0.4, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    q_one = torch.tensor([[0.2, 0.8, 0.0]], dtype=torch.float64)
    row_p, row_q = _probs(21, 1, v).double(), _probs(22, 1, v).double()
    p_eq, q_eq = row_p.repeat(5, 1), row_q.repeat(4, 1)
    alpha_eq = float(acceptance_probability(row_p, row_q)[0])
    p_mix = torch.cat([_probs(23, 3, v).double(), _probs(24, 1, v, sharp=0.3).double()])
    q_mix = torch.cat([p_mix[0:1] * 0.9 + _probs(25, 1, v).double() * 0.1, _probs(26, 2, v, sharp=3.0).double()])
    p_sim, q_sim = _probs(27, 4, v).double(), _probs(28, 3, v).double()
    sim_mean, sim_se = _simulated_tokens(p_sim, q_sim, rounds=4000, seed=0)
    hint = ("List the lengths a round can have and the probability of each; the chapter's derivation assumes one "
            "acceptance rate α, here each position has its own β_i.")
    cases = [
        Case("q = p at every position (k = 3): every draft token is accepted", (same, same[:3].clone()),
             judge=_number_judge(4.0, _pass_mistakes(same, same[:3])), expected=4.0, hint=hint, section=_HOW_MUCH,
             input="p: 4 random rows over 6 tokens; q = the first 3 rows of p (k = 3)"),
        Case("disjoint supports: the first draft token is always rejected", (p_dis, q_dis),
             judge=_number_judge(1.0, _pass_mistakes(p_dis, q_dis)), expected=1.0, hint=hint, section=_HOW_MUCH,
             input="p[0] = [0.5, 0.5, 0, 0, 0, 0], q[0] = [0, 0, 0, 0.5, 0.5, 0] (k = 1)"),
        Case("one draft token by hand: β = 0.2 + 0.4 = 0.6", (p_one, q_one),
             judge=_number_judge(1.6, _pass_mistakes(p_one, q_one)), expected=1.6, hint=hint, section=_HOW_MUCH,
             input="p = [[0.6, 0.4, 0], [0.2, 0.3, 0.5]], q = [[0.2, 0.8, 0]] (k = 1)"),
        Case("the same p and q at every position (k = 4): the chapter's closed form", (p_eq, q_eq),
             judge=_number_judge(_tokens_per_pass(p_eq, q_eq), _pass_mistakes(p_eq, q_eq)),
             expected=_closed_form(alpha_eq, 4), hint=hint, section=_HOW_MUCH,
             input=f"p: one random row over 6 tokens repeated 5 times, q: another repeated 4 times (α = {alpha_eq:.4f})"),
        Case("a different agreement at each position (k = 3)", (p_mix, q_mix),
             judge=_number_judge(_tokens_per_pass(p_mix, q_mix), _pass_mistakes(p_mix, q_mix)),
             expected=_tokens_per_pass(p_mix, q_mix), hint=hint, section=_HOW_MUCH,
             input="p: 4 random rows over 6 tokens; q: 3 rows, the first close to p[0] (β_i = "
                   + ", ".join(f"{b:.2f}" for b in acceptance_probability(p_mix[:-1], q_mix).tolist()) + ")"),
        Case("your prediction matches 4,000 simulated rounds of the library's accept/reject step", (p_sim, q_sim),
             judge=_number_judge(sim_mean, _pass_mistakes(p_sim, q_sim), tolerance=4 * sim_se / max(1.0, sim_mean)),
             expected=f"{sim_mean:.4f} ± {4 * sim_se:.3f} (simulated mean ± 4 standard errors)", hint=hint,
             section=_HOW_MUCH, input="p: 4 random rows over 6 tokens, q: 3 random rows (k = 3); seed 0"),
    ]
    return run_cases(fn, cases, "Lab 7.2: tokens per verification pass", raise_on_fail=raise_on_fail, show=show)


CHECKS: dict[str, Callable] = {"speculative_accept": check_speculative_accept,
                               "tokens_per_pass": check_tokens_per_pass}
