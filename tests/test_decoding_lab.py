"""The Chapter 7 lab check: a correct accept/reject step passes; typical wrong ones fail with the right message."""

from __future__ import annotations

import pytest
import torch

from unveiled.decoding import resample_from_target_accept, speculative_accept
from unveiled.labs import LabCheckFailed
from unveiled.labs.decoding import CHECKS, check_speculative_accept

pytestmark = [pytest.mark.lab_decoding, pytest.mark.usefixtures("one_torch_thread")]


def failing(report) -> dict[str, str]:
    return {r.name: r.message for r in report.results if not r.passed}


def test_reference_passes():
    report = check_speculative_accept(speculative_accept, show=False)
    assert report.passed and len(report.results) == 5
    assert {"speculative_accept": check_speculative_accept} == CHECKS


def test_resampling_from_the_target_fails_the_chi_square_case():
    report = check_speculative_accept(resample_from_target_accept, show=False, raise_on_fail=False)
    bad = failing(report)
    assert list(bad) == ["exactness: the emitted tokens follow the target (chi-square, 8,000 rounds)"]
    assert "not distributed as the target's" in next(iter(bad.values()))
    assert "norm(max(0, p_i − q_i))" in next(iter(bad.values()))


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
