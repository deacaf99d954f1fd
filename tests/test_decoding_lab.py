"""The Chapter 7 lab check: a correct accept/reject step passes; typical wrong ones fail with the right message."""

from __future__ import annotations

import pytest
import torch

from unveiled.decoding import (
    expected_tokens_per_pass,
    resample_from_target_accept,
    simulate_tokens_per_pass,
    speculative_accept,
)
from unveiled.decoding.exactness import acceptance_probability
from unveiled.labs import LabCheckFailed
from unveiled.labs.decoding import (
    CHECKS,
    _simulated_tokens,
    _tokens_per_pass,
    check_speculative_accept,
    check_tokens_per_pass,
)

pytestmark = [pytest.mark.lab_decoding, pytest.mark.usefixtures("one_torch_thread")]


def failing(report) -> dict[str, str]:
    return {r.name: r.message for r in report.results if not r.passed}


def test_reference_passes():
    report = check_speculative_accept(speculative_accept, show=False)
    assert report.passed and len(report.results) == 5
    assert {"speculative_accept": check_speculative_accept, "tokens_per_pass": check_tokens_per_pass} == CHECKS


def test_resampling_from_the_target_fails_the_chi_square_case():
    report = check_speculative_accept(resample_from_target_accept, show=False, raise_on_fail=False)
    bad = failing(report)
    assert list(bad) == ["exactness: the emitted tokens follow the target (chi-square, 8,000 rounds)"]
    assert "not distributed as the target's" in next(iter(bad.values()))
    failed = report.first_failure
    assert "(FAIL)" in failed.got and "p-value" in failed.got and failed.section == "Exactness first"


def test_accepting_with_probability_p_fails():
    def accept_with_p(p, q, draft, generator=None):
        out = []
        for i, x in enumerate(draft):
            if float(torch.rand((), generator=generator)) < float(p[i, x]):
                out.append(int(x))
                continue
            r = torch.clamp(p[i] - q[i], min=0)
            r = r / r.sum() if r.sum() > 0 else p[i]
            out.append(int(torch.multinomial(r, 1, generator=generator)))
            return out
        out.append(int(torch.multinomial(p[len(draft)], 1, generator=generator)))
        return out

    bad = failing(check_speculative_accept(accept_with_p, show=False, raise_on_fail=False))
    assert "q = p: every draft token is accepted" in bad
    assert any("not distributed" in m for m in bad.values())


def test_forgetting_the_bonus_token_fails():
    def no_bonus(p, q, draft, generator=None):
        out = speculative_accept(p, q, draft, generator)
        return out[: len(draft)] if len(out) == len(draft) + 1 else out

    bad = failing(check_speculative_accept(no_bonus, show=False, raise_on_fail=False))
    assert "expected the tokens [2, 0, 4], got [2, 0]" in bad[
        "greedy: all accepted, then a bonus token from the last row of p"]


def test_not_continuing_after_acceptance_fails():
    def one_token_only(p, q, draft, generator=None):
        return speculative_accept(p, q, draft, generator)[:1]

    bad = failing(check_speculative_accept(one_token_only, show=False, raise_on_fail=False))
    assert "greedy: keep the matching prefix, then the target's choice" in bad


def test_unfinished_stub_and_raising():
    def stub(p, q, draft, generator=None):
        raise NotImplementedError("write me")

    report = check_speculative_accept(stub, show=False, raise_on_fail=False)
    assert len(report.results) == 1 and "not implemented yet" in report.results[0].message
    with pytest.raises(LabCheckFailed):
        check_speculative_accept(stub, show=False)
    with pytest.raises(TypeError, match="pass your function itself"):
        check_speculative_accept(None, show=False)


# ---- Lab 7.2: tokens per verification pass ----------------------------------------------------------------------


def reader_tokens_per_pass(p, q):
    beta = torch.minimum(p[:-1], q).sum(-1).double()
    reach, total = 1.0, 1.0
    for b in beta.tolist():
        reach *= b
        total += reach
    return total


def test_tokens_per_pass_reference_agrees_with_the_closed_form_and_simulations():
    gen = torch.Generator().manual_seed(5)
    row_p = torch.softmax(torch.randn(1, 7, generator=gen, dtype=torch.float64), -1)
    row_q = torch.softmax(torch.randn(1, 7, generator=gen, dtype=torch.float64), -1)
    alpha = float(acceptance_probability(row_p, row_q)[0])
    for k in (1, 3, 6):
        value = _tokens_per_pass(row_p.repeat(k + 1, 1), row_q.repeat(k, 1))
        assert value == pytest.approx(expected_tokens_per_pass(alpha, k), rel=1e-12)
        # independent truth: i.i.d. acceptances (the library's Monte-Carlo, 200,000 rounds: s.e. < 0.003)
        assert value == pytest.approx(simulate_tokens_per_pass(alpha, k, rounds=200_000, seed=k), abs=0.015)
    # position-dependent rates: the library's own accept/reject step, run for real
    p = torch.softmax(torch.randn(4, 6, generator=gen, dtype=torch.float64) * 1.5, -1)
    q = torch.softmax(torch.randn(3, 6, generator=gen, dtype=torch.float64) * 1.5, -1)
    mean, se = _simulated_tokens(p, q, rounds=6000, seed=3)
    assert abs(_tokens_per_pass(p, q) - mean) < 4 * se


def test_tokens_per_pass_passes_for_a_reader_solution_and_a_tensor_result():
    assert check_tokens_per_pass(reader_tokens_per_pass, show=False).passed
    assert check_tokens_per_pass(lambda p, q: torch.tensor(reader_tokens_per_pass(p, q)), show=False).passed


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda p, q: reader_tokens_per_pass(p, q) - 1, "You counted only the accepted draft tokens"),
    (lambda p, q: 1 + float(torch.minimum(p[:-1], q).sum(-1).sum()), "a position is only reached"),
    (lambda p, q: expected_tokens_per_pass(min(1.0, float(torch.minimum(p[:-1], q).sum(-1).mean())), len(q)),
     "one acceptance rate (the mean)"),
    (lambda p, q: 1 + sum(float(torch.prod((p[:-1] * q).sum(-1)[:j])) for j in range(1, len(q) + 1)), "Σ p·q"),
])
def test_tokens_per_pass_mistakes_are_named(wrong, message):
    report = check_tokens_per_pass(wrong, show=False, raise_on_fail=False)
    assert not report.passed
    assert any(message in r.message for r in report.results if not r.passed), str(report)


def test_tokens_per_pass_failures_show_input_expected_got():
    report = check_tokens_per_pass(lambda p, q: 2.0, show=False, raise_on_fail=False)
    bad = {r.name: r for r in report.results if not r.passed}
    by_hand = bad["one draft token by hand: β = 0.2 + 0.4 = 0.6"]
    assert (by_hand.expected, by_hand.got) == ("1.6", "2.0") and "q = [[0.2, 0.8, 0]]" in by_hand.input
    assert by_hand.section == "How much faster? The analytic model and the roofline"
    with pytest.raises(LabCheckFailed):
        check_tokens_per_pass(lambda p, q: 2.0, show=False)
