"""The shared bisection: exact answers for every threshold, and clear errors."""

from __future__ import annotations

import pytest

from unveiled._search import first_true


@pytest.mark.parametrize("lo,hi", [(0, 1), (0, 7), (3, 64), (0, 1000)])
def test_first_true_finds_every_threshold_with_few_calls(lo, hi):
    for threshold in range(lo + 1, hi + 1):
        calls = []

        def pred(n, t=threshold, calls=calls):
            calls.append(n)
            return n >= t

        assert first_true(pred, lo, hi) == threshold
        assert lo not in calls and len(calls) <= max(1, (hi - lo).bit_length())


def test_first_true_rejects_an_empty_range():
    with pytest.raises(ValueError, match="lo < hi"):
        first_true(bool, 5, 5)
