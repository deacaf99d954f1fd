"""The Chapter 8 lab checks: the book's online-softmax update and split-K merge pass; typical wrong ones fail
with the message that names the mistake."""

from __future__ import annotations

import math

import pytest
import torch

from unveiled.kernels.attention import merge_partials, online_softmax_update
from unveiled.labs import LabCheckFailed
from unveiled.labs.kernels import CHECKS, check_merge_partials, check_online_softmax_update

pytestmark = [pytest.mark.lab_kernels]


def failing(report) -> dict[str, str]:
    return {r.name: r.message for r in report.results if not r.passed}


def _ref(m):
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


def test_reference_solutions_pass():
    assert check_online_softmax_update(online_softmax_update, show=False).passed
    assert check_merge_partials(merge_partials, show=False).passed
    assert {"online_softmax_update": check_online_softmax_update, "merge_partials": check_merge_partials} == CHECKS


def test_forgetting_to_rescale_is_named():
    def no_rescale(m, denom, acc, s, v):
        m_new = torch.maximum(m, s.amax(-1))
        p = torch.exp(s - _ref(m_new)[..., None])
        return m_new, denom + p.sum(-1), acc + p @ v

    report = check_online_softmax_update(no_rescale, show=False, raise_on_fail=False)
    bad = failing(report)
    assert "not rescaled" in bad["a second tile that raises the maximum"]
    assert "in the tile loop: causal attention, tiles of 5 × 4" in bad
    assert report.first_failure.section == "FlashAttention, step by step"
    with pytest.raises(LabCheckFailed):
        check_online_softmax_update(no_rescale, show=False)


def test_inverted_rescale_is_named():
    def inverted(m, denom, acc, s, v):
        m_new = torch.maximum(m, s.amax(-1))
        ref = _ref(m_new)
        alpha = torch.exp(ref - torch.where(torch.isinf(m), ref, m))
        p = torch.exp(s - ref[..., None])
        return m_new, alpha * denom + p.sum(-1), alpha[..., None] * acc + p @ v

    bad = failing(check_online_softmax_update(inverted, show=False, raise_on_fail=False))
    assert "inverted" in bad["a second tile that raises the maximum"]


def test_no_maximum_subtracted_overflows():
    def plain_exp(m, denom, acc, s, v):
        p = torch.exp(s)
        return torch.maximum(m, s.amax(-1)), denom + p.sum(-1), acc + p @ v

    bad = failing(check_online_softmax_update(plain_exp, show=False, raise_on_fail=False))
    assert "huge scores do not overflow" in bad
    assert "not measured from the maximum" in bad["one tile from the empty state"]


def test_nan_on_masked_rows_fails():
    def unguarded(m, denom, acc, s, v):
        m_new = torch.maximum(m, s.amax(-1))
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new[..., None])
        return m_new, alpha * denom + p.sum(-1), alpha[..., None] * acc + p @ v

    bad = failing(check_online_softmax_update(unguarded, show=False, raise_on_fail=False))
    assert "NaN" in bad["a fully masked row stays empty, without NaN"]


def test_merge_mistakes_are_named():
    def average(outs, lses):
        return outs.mean(0), torch.logsumexp(lses, 0)

    def unnormalised(outs, lses):
        return (torch.exp(lses)[..., None] * outs).sum(0), torch.logsumexp(lses, 0)

    def summed_lse(outs, lses):
        return merge_partials(outs, lses)[0], lses.sum(0)

    assert "averaged" in failing(check_merge_partials(average, show=False, raise_on_fail=False))["two chunks"]
    bad = failing(check_merge_partials(unnormalised, show=False, raise_on_fail=False))
    assert "not normalised" in bad["two chunks"] and "huge log-sum-exps do not overflow" in bad
    assert "sum of the chunks" in failing(check_merge_partials(summed_lse, show=False, raise_on_fail=False))["two chunks"]


def test_merge_without_the_empty_chunk_guard_fails():
    def unguarded(outs, lses):
        lse = torch.logsumexp(lses, 0)
        return (torch.exp(lses - lse)[..., None] * outs).sum(0), lse

    bad = failing(check_merge_partials(unguarded, show=False, raise_on_fail=False))
    assert list(bad) == ["empty chunks count for nothing"] and "NaN" in bad["empty chunks count for nothing"]


def test_stub_stops_at_the_first_case():
    def stub(*args):
        raise NotImplementedError("write me")

    report = check_merge_partials(stub, show=False, raise_on_fail=False)
    assert len(report.results) == 1 and not report.passed and math.isclose(report.total, 4)
