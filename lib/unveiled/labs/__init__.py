"""Lab checks: run deterministic cases against a reader's function and say clearly what passes and why not.

Every chapter's lab has a module here (``unveiled.labs.roofline``, ...) with ``check_*`` functions. A check
calls the reader's function on fixed cases, compares with the library's reference implementation and prints
a verdict per case. It needs no repository checkout, so it works on Colab.

A check returns a :class:`LabReport`; when any case fails it also raises :class:`LabCheckFailed` (so a
notebook stops at the first unfinished task, and the book build fails if a reference solution is wrong).
Pass ``raise_on_fail=False`` to only print. Introduced in Chapter 1.
"""

from __future__ import annotations

import html
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Case", "CaseResult", "LabCheckFailed", "LabReport", "close_enough", "run_cases"]


class LabCheckFailed(AssertionError):
    """Raised by a lab check when at least one case fails; the message lists the failing cases."""


@dataclass(frozen=True)
class Case:
    """One deterministic test case: call ``fn(*args, **kwargs)`` and judge the result with ``judge``.

    ``judge(result)`` returns ``None`` when the result is right, otherwise a sentence saying what is wrong.
    ``hint`` is shown when the case fails.
    """

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    judge: Callable[[Any], str | None] = lambda result: None
    hint: str = ""


@dataclass(frozen=True)
class CaseResult:
    name: str
    passed: bool
    message: str = ""


@dataclass
class LabReport:
    """The outcome of one lab check: a list of case results that renders as text or HTML."""

    title: str
    results: list[CaseResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def n_passed(self) -> int:
        return sum(r.passed for r in self.results)

    def summary(self) -> str:
        n = len(self.results)
        verdict = "all cases pass" if self.passed else f"{n - self.n_passed} of {n} cases FAIL"
        return f"{self.title}: {self.n_passed}/{n} passed ({verdict})"

    def __str__(self) -> str:
        lines = [self.summary()]
        for r in self.results:
            mark = "PASS" if r.passed else "FAIL"
            lines.append(f"  [{mark}] {r.name}" + (f"\n         {r.message}" if r.message else ""))
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = []
        for r in self.results:
            colour = "#1a7f37" if r.passed else "#cf222e"
            mark = "&#10004; pass" if r.passed else "&#10008; FAIL"
            rows.append(
                f"<tr><td style='color:{colour};white-space:nowrap'><b>{mark}</b></td>"
                f"<td>{html.escape(r.name)}</td><td>{html.escape(r.message)}</td></tr>"
            )
        return (
            f"<div class='lab-report'><p><b>{html.escape(self.summary())}</b></p>"
            f"<table><tr><th></th><th>case</th><th>details</th></tr>{''.join(rows)}</table></div>"
        )


def close_enough(expected, rtol: float = 1e-6, atol: float = 0.0) -> Callable[[Any], str | None]:
    """A judge that accepts numbers or arrays within ``rtol``/``atol`` of ``expected`` (same shape)."""

    def judge(result) -> str | None:
        try:
            got = np.asarray(result, dtype=float)
        except (TypeError, ValueError):
            return f"expected a number or array, got {type(result).__name__}: {result!r}"
        want = np.asarray(expected, dtype=float)
        if got.shape != want.shape:
            return f"expected shape {want.shape}, got shape {got.shape}"
        if not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
            if want.ndim == 0:
                return f"expected {float(want):.6g}, got {float(got):.6g}"
            idx = np.unravel_index(np.argmax(np.abs(got - want)), want.shape)
            return f"largest difference at index {idx}: expected {want[idx]:.6g}, got {got[idx]:.6g}"
        return None

    return judge


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return "not implemented yet: replace the `raise NotImplementedError(...)` line with your code"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (line {tb[-1].lineno} of your code)" if tb else ""
    return f"your function raised {type(exc).__name__}: {exc}{where}"


def run_cases(fn: Callable, cases: Sequence[Case] | Iterable[Case], title: str, *,
              raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Run ``cases`` against ``fn`` and report. Raises :class:`LabCheckFailed` on failure unless told not to."""
    if not callable(fn):
        raise TypeError(f"{title}: pass your function itself (e.g. check(my_fn)), got {type(fn).__name__}")
    results = []
    for case in cases:
        try:
            result = fn(*case.args, **case.kwargs)
        except Exception as exc:  # the reader's code may raise anything; report it, don't crash the check
            results.append(CaseResult(case.name, False, _describe_exception(exc)))
            if isinstance(exc, NotImplementedError):
                break  # one message is enough for an unstarted task
            continue
        try:
            problem = case.judge(result)
        except Exception as exc:
            problem = f"the result could not be checked ({type(exc).__name__}: {exc})"
        if problem is None:
            results.append(CaseResult(case.name, True))
        else:
            results.append(CaseResult(case.name, False, problem + (f" Hint: {case.hint}" if case.hint else "")))
    report = LabReport(title, results)
    if show:
        try:
            from IPython.display import display

            display(report)
        except ImportError:  # plain Python
            print(report)
    if raise_on_fail and not report.passed:
        raise LabCheckFailed(str(report))
    return report


# Each chapter's checks live in a sub-module; make them reachable as ``uv.labs.<name>`` without an import.
_LAB_MODULES = ("roofline", "analyzer", "quant", "distill", "kvcache", "decoding", "serving")


def __getattr__(name: str):
    if name in _LAB_MODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
