"""Timing code on any machine: clocks, repeats, and a time budget that a slow CPU cannot overrun.

Every measurement in the book (the machine's roofline, kernels, decode steps) follows the same rules. A
warm-up run comes first (page faults, thread-pool start-up and kernel selection are not what we measure).
The **best** of several repeats estimates what the hardware can do, because noise on a shared machine only
ever slows a run down; the median says how noisy the machine was. And a measurement never runs for minutes
because of the CPU it lands on: the caller gives a **budget** in seconds, the warm-up run tells how long one
run takes on this machine, and only as many repeats as fit are timed (at least one). A CPU that lacks a fast
kernel for a data type (bf16 matrix products without native bf16 instructions run ~40× slower than fp32)
then costs a few repeats fewer, not a multi-minute cell. Introduced in Chapter 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ._validate import check_choice, check_int, check_positive

__all__ = ["CLOCKS", "Budget", "clock", "time_repeats"]

#: ``"wall"``: elapsed time (:func:`time.perf_counter`). ``"thread"``: CPU time of the calling thread
#: (:func:`time.thread_time`), which leaves out the time spent waiting while other jobs run on a busy shared
#: machine; it sees only the calling thread's work, so it is meaningful with one compute thread.
CLOCKS = ("wall", "thread")


def clock(name: str = "wall", *, single_thread: bool = False) -> Callable[[], float]:
    """The clock function named ``name`` (see :data:`CLOCKS`).

    With ``single_thread=True`` the thread clock refuses to run while PyTorch uses several threads (their
    work would be invisible to it). Introduced in Chapter 1.
    """
    check_choice("clock", name, CLOCKS)
    if name == "wall":
        return time.perf_counter
    if single_thread:
        import torch

        if torch.get_num_threads() != 1:
            raise ValueError(f"clock='thread' measures one thread's CPU time; run with one PyTorch thread "
                             f"(unveiled.threads.torch_threads(1) or torch.set_num_threads(1)); now "
                             f"{torch.get_num_threads()}")
    return time.thread_time


class Budget:
    """A time budget in seconds, shared by the steps of one measurement.

    ``Budget(10)`` starts counting at creation; :meth:`remaining` is what is left (never negative) and
    :meth:`share` divides what is left evenly among the steps still to run, so a step that finishes early
    leaves more for the next. ``Budget(None)`` is unlimited. Introduced in Chapter 1.
    """

    def __init__(self, seconds: float | None):
        self.seconds = None if seconds is None else check_positive("budget_s", seconds)
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return math.inf if self.seconds is None else max(0.0, self.seconds - self.elapsed)

    def share(self, steps_left: int) -> float:
        """The seconds the next of ``steps_left`` remaining steps may use."""
        return self.remaining() / max(1, steps_left)

    def __repr__(self) -> str:
        return "Budget(unlimited)" if self.seconds is None else f"Budget({self.seconds:g} s, {self.remaining():.1f} s left)"


def repeats_that_fit(run_s: float, repeats: int, budget_s: float, min_repeats: int = 1) -> int:
    """How many repeats of a run taking ``run_s`` seconds fit in ``budget_s``: between ``min_repeats`` and
    ``repeats``. A pure function of its arguments (the policy that :func:`time_repeats` applies)."""
    if run_s <= 0 or math.isinf(budget_s):
        return repeats
    return int(min(repeats, max(min_repeats, math.floor(budget_s / run_s))))


def time_repeats(fn: Callable[[], object], repeats: int, *, budget_s: float | None = None, clock_name: str = "wall",
                 min_repeats: int = 1) -> list[float]:
    """Call ``fn`` once to warm up, then time up to ``repeats`` calls that fit in ``budget_s`` (all without one).

    The warm-up's duration estimates one call's; the budget counts the warm-up too. At least ``min_repeats``
    calls are timed even when one call alone exceeds the budget (a measurement needs a number), so the budget
    is overrun by at most ``min_repeats`` calls. Returns the times in seconds. Introduced in Chapter 1.
    """
    repeats = check_int("repeats", repeats)
    min_repeats = check_int("min_repeats", min_repeats, maximum=repeats)
    now = clock(clock_name)
    t0 = now()
    fn()
    warm = now() - t0
    if budget_s is not None:
        repeats = repeats_that_fit(warm, repeats, max(0.0, check_positive("budget_s", budget_s) - warm), min_repeats)
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        times.append(now() - t0)
    return times
