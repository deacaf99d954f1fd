"""The Chapter 3 lab checks: a correct solution passes, the classic mistakes fail with the right hint."""

from __future__ import annotations

import pytest
import torch

from unveiled.labs import LabCheckFailed
from unveiled.labs.quant import CHECKS, check_gptq_columns, check_group_quantize

pytestmark = pytest.mark.lab_quant


def group_quantize(w, bits, group_size, *, clamp=True, widen=True, rnd=torch.round, sym=False, guard=True):
    if w.shape[-1] % group_size:
        raise ValueError("group_size must divide the number of inputs")
    rows, cols = w.shape
    g = w.reshape(rows, cols // group_size, group_size)
    if sym:
        s = g.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        return (torch.round(g / s).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s).reshape(rows, cols)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    if widen:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    s = (hi - lo) / (2**bits - 1)
    if guard:
        s = torch.where(s > 0, s, torch.ones_like(s))
    z = torch.round(-lo / s)
    q = rnd(g / s) + z
    if clamp:
        q = q.clamp(0, 2**bits - 1)
    return (s * (q - z)).reshape(rows, cols)


def gptq_columns(W, U, quantize_column, *, divide=True, propagate=True, sign=-1.0, clone=True):
    W = W.clone() if clone else W
    Q = torch.zeros_like(W)
    for j in range(W.shape[1]):
        q = quantize_column(W[:, j])
        Q[:, j] = q
        if propagate:
            err = (W[:, j] - q) / (U[j, j] if divide else 1.0)
            W[:, j:] += sign * err[:, None] * U[j, j:][None, :]
    return Q


def _failures(report):
    return [r.message for r in report.results if not r.passed]


def test_checks_are_registered_under_the_readers_function_names():
    assert set(CHECKS) == {"group_quantize", "gptq_columns"}


def test_correct_solutions_pass():
    assert check_group_quantize(group_quantize, show=False).passed
    assert check_gptq_columns(gptq_columns, show=False).passed


@pytest.mark.parametrize(("wrong", "phrase"), [
    (lambda w, b, g: group_quantize(w, b, g, clamp=False), "clamp the codes"),
    (lambda w, b, g: group_quantize(w, b, g, sym=True), "symmetric grid"),
    (lambda w, b, g: group_quantize(w, b, g, rnd=torch.floor), "round to nearest"),
    (lambda w, b, g: group_quantize(w, b, g, widen=False), "must contain 0"),
    (lambda w, b, g: group_quantize(w, b, g, guard=False), "NaN"),
])
def test_group_quantize_mistakes_are_named(wrong, phrase):
    report = check_group_quantize(wrong, raise_on_fail=False, show=False)
    assert not report.passed
    assert any(phrase in m for m in _failures(report)), _failures(report)


def test_group_quantize_must_reject_bad_group_sizes():
    def no_check(w, bits, group_size):
        if w.shape[-1] % group_size:
            return w.clone()
        return group_quantize(w, bits, group_size)

    report = check_group_quantize(no_check, raise_on_fail=False, show=False)
    assert _failures(report) == ["expected a ValueError, but it returned a result"]
    bad = report.first_failure
    assert (bad.expected, bad.got) == ("a ValueError", "returned a result")
    assert bad.input.startswith("w=tensor of shape (4, 64), float64, bits=4, group_size=24")


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"divide": False}, "Divide the rounding error"),
    ({"sign": 1.0}, "Sign error"),
    ({"propagate": False}, "No error feedback"),
    ({"clone": False}, "modified the caller's W"),
])
def test_gptq_mistakes_are_named(kwargs, phrase):
    report = check_gptq_columns(lambda W, U, q: gptq_columns(W, U, q, **kwargs), raise_on_fail=False, show=False)
    assert not report.passed
    assert any(phrase in m for m in _failures(report)), _failures(report)


def test_unstarted_tasks_fail_clearly_and_raise():
    def stub(*args):
        raise NotImplementedError("write your code here")

    with pytest.raises(LabCheckFailed, match="not implemented yet"):
        check_group_quantize(stub, show=False)
    with pytest.raises(LabCheckFailed, match="not implemented yet"):
        check_gptq_columns(stub, show=False)
