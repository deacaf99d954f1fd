"""The Chapter 5 lab checks: the book's solutions pass, the classic mistakes fail with the right message."""

from __future__ import annotations

import pytest
import torch

from unveiled.labs import LabCheckFailed
from unveiled.labs.pruning import (
    CHECKS,
    check_nm_mask,
    check_rank_for_energy,
    check_sparse_weight_bytes,
    check_wanda_score,
)

pytestmark = pytest.mark.lab_pruning


def nm_mask(score, n, m, *, lowest=False, swap=False, wrong_axis=False, as_float=False):
    if n > m:
        raise ValueError("N <= M")
    rows, cols = score.shape
    if cols % m:
        raise ValueError("m must divide the inputs")
    if wrong_axis:
        return nm_mask(score.T.contiguous(), n, m).T
    keep_n = m - n if swap else n
    groups = score.reshape(rows, cols // m, m)
    idx = torch.topk(groups, keep_n, dim=-1, largest=not lowest).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).reshape(rows, cols)
    return keep.float() if as_float else keep


def wanda_score(weight, x, *, squared=False, signed=False, mean_abs=False):
    norms = x.abs().mean(0) if mean_abs else (x.pow(2).sum(0) if squared else x.norm(dim=0))
    w = weight if signed else weight.abs()
    return w * norms[None, :]


def rank_for_energy(sv, energy, *, sigma=False, strict=False, index=False):
    if not 0 < energy <= 1:
        raise ValueError("energy must be in (0, 1]")
    e = sv.double() if sigma else sv.double() ** 2
    share = torch.cumsum(e, 0) / e.sum()
    hits = (share > energy) if strict else (share >= energy - 1e-12)
    first = int(torch.nonzero(hits)[0]) if bool(hits.any()) else len(e) - 1
    return first if index else first + 1


def sparse_weight_bytes(rows, cols, sparsity, value_bits, storage, *, no_pointers=False, no_meta=False):
    size = rows * cols
    if storage == "2:4":
        kept = size / 2
        return kept * value_bits / 8 + (0 if no_meta else kept * 2 / 8)
    nnz = (1 - sparsity) * size
    if storage == "bitmask":
        return nnz * value_bits / 8 + (0 if no_meta else size / 8)
    return nnz * value_bits / 8 + (nnz + (0 if no_pointers else rows + 1)) * 4


def _messages(report):
    return " ".join(r.message for r in report.results if not r.passed)


def test_checks_are_registered_under_the_readers_function_names():
    assert set(CHECKS) == {"nm_mask", "wanda_score", "rank_for_energy", "sparse_weight_bytes"}


def test_the_books_solutions_pass():
    assert check_nm_mask(nm_mask, show=False).passed
    assert check_wanda_score(wanda_score, show=False).passed
    assert check_rank_for_energy(rank_for_energy, show=False).passed
    assert check_sparse_weight_bytes(sparse_weight_bytes, show=False).passed


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"lowest": True}, "LOWEST"),
    ({"swap": True}, "N is the number KEPT"),
    ({"wrong_axis": True}, "run down the columns"),
    ({"as_float": True}, "bool tensor"),
])
def test_nm_mask_mistakes_are_named(kwargs, phrase):
    report = check_nm_mask(lambda s, n, m: nm_mask(s, n, m, **kwargs), raise_on_fail=False, show=False)
    assert not report.passed and phrase in _messages(report)


def test_nm_mask_without_validation_fails_the_error_cases():
    def no_checks(score, n, m):
        if score.shape[1] % m or n > m:
            return torch.ones_like(score, dtype=torch.bool)
        return nm_mask(score, n, m)

    report = check_nm_mask(no_checks, raise_on_fail=False, show=False)
    assert [r.passed for r in report.results].count(False) == 2 and "expected a ValueError" in _messages(report)


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"squared": True}, "squared the activation norm"),
    ({"signed": True}, "must not be negative"),
    ({"mean_abs": True}, "averaged |x|"),
])
def test_wanda_mistakes_are_named(kwargs, phrase):
    report = check_wanda_score(lambda w, x: wanda_score(w, x, **kwargs), raise_on_fail=False, show=False)
    assert not report.passed and phrase in _messages(report)


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"sigma": True}, "not σ²"),
    ({"strict": True}, "≥ the budget"),
    ({"index": True}, "+ 1"),
])
def test_rank_mistakes_are_named(kwargs, phrase):
    report = check_rank_for_energy(lambda s, e: rank_for_energy(s, e, **kwargs), raise_on_fail=False, show=False)
    assert not report.passed and phrase in _messages(report)


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"no_pointers": True}, "row pointer"),
    ({"no_meta": True}, "bitmask itself costs"),
])
def test_bytes_mistakes_are_named(kwargs, phrase):
    report = check_sparse_weight_bytes(lambda *a: sparse_weight_bytes(*a, **kwargs), raise_on_fail=False, show=False)
    assert not report.passed and phrase in _messages(report)


def test_unstarted_tasks_raise_with_a_clear_message():
    def stub(*args):
        raise NotImplementedError("implement me")

    for check in CHECKS.values():
        with pytest.raises(LabCheckFailed, match="not implemented yet"):
            check(stub, show=False)


def test_failures_name_the_input_the_expected_and_the_obtained_value_and_a_section():
    report = check_rank_for_energy(lambda s, e: 1, raise_on_fail=False, show=False)
    failed = [r for r in report.results if not r.passed]
    assert failed and all(r.input and r.expected and r.got and r.hint and r.section for r in failed)
    assert all("Re-read" in r.feedback() for r in failed) and any("energy" in r.name for r in failed)
