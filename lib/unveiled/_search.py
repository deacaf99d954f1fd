"""Bisection for monotone integer predicates, shared by the analyzer and the chapters' "from which batch" answers.

Questions like "the smallest batch at which an operator turns compute-bound" or "the largest batch that fits in
memory" ask where a monotone yes/no flips; bisection answers them in O(log n) analyzer calls.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["first_true"]


def first_true(pred: Callable[[int], bool], lo: int, hi: int) -> int:
    """Smallest ``n`` in ``(lo, hi]`` with ``pred(n)`` true, for ``pred`` false up to some point and true after.

    The caller guarantees ``pred(hi)`` is true and ``pred(lo)`` false (``lo`` may be a sentinel never evaluated,
    e.g. 0). For "the largest n that still fits", ask for the first n that does not and subtract one.
    """
    if hi <= lo:
        raise ValueError(f"need lo < hi, got lo={lo}, hi={hi}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi
