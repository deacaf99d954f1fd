"""The Chapter 9 lab checks: correct solutions pass, the classic mistakes fail with the right message."""

from __future__ import annotations

import numpy as np
import pytest

from unveiled.labs import LabCheckFailed
from unveiled.labs import serving as lab

pytestmark = pytest.mark.lab_serving


def admit_ok(v):
    if v.running >= v.max_batch:
        return False
    if v.free_blocks - v.blocks_needed < v.reserve_blocks:
        return False
    if v.chunked:
        return v.tokens_left > 0
    return v.admitted_this_step == 0 or v.prompt_tokens <= v.tokens_left


def metrics_ok(r, ttft_slo, tpot_slo):
    ttft = r.first_token_s - r.arrival_s
    gaps = r.output_len - 1
    tpot = ((r.finish_s - r.first_token_s) / gaps.where(gaps > 0)).astype(float)
    ok = (ttft <= ttft_slo) & (tpot.fillna(0.0) <= tpot_slo)
    span = r.finish_s.max() - r.arrival_s.min()
    return {"ttft_p50_s": float(ttft.median()), "tpot_p50_s": float(tpot.median()), "goodput_rps": ok.sum() / span}


def test_correct_solutions_pass():
    assert lab.check_can_admit(admit_ok, show=False).passed
    assert lab.check_request_metrics(metrics_ok, show=False).passed
    assert set(lab.CHECKS) == {"can_admit", "request_metrics"}


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda v: v.free_blocks >= v.blocks_needed and v.running < v.max_batch
     and (v.tokens_left > 0 if v.chunked else v.admitted_this_step == 0 or v.prompt_tokens <= v.tokens_left),
     "the prompt fits only by using the reserve"),
    (lambda v: v.free_blocks - v.blocks_needed >= v.reserve_blocks
     and (v.tokens_left > 0 if v.chunked else v.admitted_this_step == 0 or v.prompt_tokens <= v.tokens_left),
     "the batch is full"),
    (lambda v: admit_ok(v) and (v.chunked or v.prompt_tokens <= v.tokens_left),
     "a lone prompt longer than the budget"),
    (lambda v: v.running < v.max_batch and v.free_blocks - v.blocks_needed >= v.reserve_blocks,
     "whole prompt overflows the budget"),
    (lambda v: admit_ok(v) and not v.chunked, "chunked: some budget left"),
])
def test_admission_mistakes_fail_with_a_hint(wrong, message):
    report = lab.check_can_admit(wrong, raise_on_fail=False, show=False)
    assert not report.passed
    failing = {r.name for r in report.results if not r.passed}
    assert any(name.startswith(message) for name in failing), failing
    if message in ("the prompt fits only by using the reserve", "the batch is full", "whole prompt overflows the budget"):
        assert any(name.startswith("scheduler with your rule") for name in failing), failing  # it shows at scale
    # the failing cases say the input, what was expected, what was obtained and where to look
    for r in report.results:
        if not r.passed:
            assert r.expected and r.got and r.input and "Re-read" in r.pointer()


def test_admission_that_overfills_the_pool_is_reported():
    report = lab.check_can_admit(lambda v: True, raise_on_fail=False, show=False)
    assert not report.passed
    assert "admitted request" in str(report) or "no token budget left" in str(report)


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda r, a, b: metrics_ok(r, a, b) | {"tpot_p50_s": float(((r.finish_s - r.first_token_s) / r.output_len).median())},
     "divides by output_len instead of output_len - 1"),
    (lambda r, a, b: metrics_ok(r, a, b) | {"ttft_p50_s": float((r.first_token_s - r.admitted_s).median())},
     "TTFT from admission instead of arrival"),
    (lambda r, a, b: metrics_ok(r, a, b) | {"goodput_rps": len(r) / (r.finish_s.max() - r.arrival_s.min())},
     "counts every request in goodput"),
    (lambda r, a, b: metrics_ok(r, a, b) | {"goodput_rps": (
        ((r.first_token_s - r.arrival_s) <= a) & (((r.finish_s - r.first_token_s)
                                                   / (r.output_len - 1).replace(0, np.nan)) <= b)).sum()
        / (r.finish_s.max() - r.arrival_s.min())},
     "one-token answers"),
    (lambda r, a, b: {k: v for k, v in metrics_ok(r, a, b).items() if k != "tpot_p50_s"}, "has no 'tpot_p50_s'"),
])
def test_metric_mistakes_are_named(wrong, message):
    report = lab.check_request_metrics(wrong, raise_on_fail=False, show=False)
    assert not report.passed
    assert message in str(report)


def test_unfinished_task_raises_by_default():
    def stub(view):
        raise NotImplementedError("write it")

    with pytest.raises(LabCheckFailed, match="not implemented"):
        lab.check_can_admit(stub, show=False)
