"""Lab checks: run deterministic cases against a reader's function and say clearly what passes and why not.

Every chapter's lab has a module here (``unveiled.labs.roofline``, ...) with ``check_*`` functions and a
``CHECKS`` dict (the reader's function name -> its check). A check calls the reader's function on fixed cases,
compares with the library's reference implementation and shows a verdict per case. It needs no repository
checkout, so it works on Colab.

Feedback a student can act on: a failing case shows its **input**, the **expected** and the **obtained**
value, what is wrong when the check recognises the mistake, and one **hint** that points at the chapter
section to re-read (never the solution). A :class:`Case` carries them (``expected``, ``hint``, ``section``);
:func:`run_cases` renders them, so a new chapter's lab gets this feedback by writing its cases.

A check returns a :class:`LabReport` and shows it once (as the last expression of a notebook cell too); when
any case fails it also raises :class:`LabCheckFailed` (so a notebook stops at the first unfinished task, and
the book build fails if a reference solution is wrong). Pass ``raise_on_fail=False`` to only show it.
A whole class is graded with ``python -m unveiled.labs grade SUBMISSIONS/`` (:mod:`unveiled.labs.grading`).
Introduced in Chapter 1.
"""

from __future__ import annotations

import html
import inspect
import numbers
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Case", "CaseResult", "LabCheckFailed", "LabReport", "close_enough", "describe", "run_cases"]


class LabCheckFailed(AssertionError):
    """Raised by a lab check when at least one case fails; the message lists the failing cases."""


class _Missing:
    def __repr__(self) -> str:
        return "<not given>"


_MISSING: Any = _Missing()


@dataclass(frozen=True)
class Case:
    """One deterministic test case: call ``fn(*args, **kwargs)`` and judge the result with ``judge``.

    ``judge(result)`` returns ``None`` when the result is right, otherwise a sentence saying what is wrong
    (naming the mistake when it recognises one). When the case fails, the report also shows:

    * the input: ``args``/``kwargs`` named after the reader's parameters, or ``input`` when given (for inputs
      that are not self-explanatory);
    * ``expected``: the right result (a value), or a sentence describing it (a ``str`` is shown as is);
    * what the function returned, rendered by ``show_result`` when given, else by :func:`describe`;
    * ``hint``: one pointer that helps without giving the solution, and ``section``, the heading (without its
      number) of the chapter section to re-read.
    """

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    judge: Callable[[Any], str | None] = lambda result: None
    hint: str = ""
    section: str = ""
    expected: Any = _MISSING
    input: str | None = None
    show_result: Callable[[Any], str] | None = None


@dataclass(frozen=True)
class CaseResult:
    """The verdict on one case; a failing one says the input, expected and obtained value and a hint."""

    name: str
    passed: bool
    message: str = ""
    input: str = ""
    expected: str = ""
    got: str = ""
    hint: str = ""
    section: str = ""

    def pointer(self) -> str:
        """The hint and the section it points at, as one sentence (empty when there is neither)."""
        where = f"Re-read “{self.section}”." if self.section else ""
        return " ".join(s for s in (self.hint.strip(), where) if s)

    def feedback(self) -> str:
        """Everything a student needs about this case, on one line (what the grader writes)."""
        if self.passed:
            return ""
        parts = [f"{self.name}: {self.message}".rstrip()]
        for label, value in (("input", self.input), ("expected", self.expected), ("got", self.got)):
            if value:
                parts.append(f"{label}: {value}")
        if self.pointer():
            parts.append(f"hint: {self.pointer()}")
        return " | ".join(parts)


@dataclass
class LabReport:
    """The outcome of one lab check: a list of case results that renders as text or HTML.

    ``n_cases`` is the number of cases of the check; ``results`` may be shorter when an unfinished task stopped
    it at its first case (a stub raises ``NotImplementedError``).
    """

    title: str
    results: list[CaseResult]
    n_cases: int | None = None
    _shown_in: object = field(default=None, repr=False, compare=False)

    @property
    def total(self) -> int:
        return max(self.n_cases or 0, len(self.results))

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results) and len(self.results) == self.total

    @property
    def n_passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def first_failure(self) -> CaseResult | None:
        return next((r for r in self.results if not r.passed), None)

    def summary(self) -> str:
        n = self.total
        if self.passed:
            verdict = "all cases pass"
        elif self.results and self.results[-1].message.startswith(_NOT_IMPLEMENTED):
            verdict = "not implemented yet"
        else:
            verdict = f"{n - self.n_passed} of {n} cases FAIL"
        return f"{self.title}: {self.n_passed}/{n} passed ({verdict})"

    def __str__(self) -> str:
        lines = [self.summary()]
        for r in self.results:
            lines.append(f"  [{'PASS' if r.passed else 'FAIL'}] {r.name}")
            if not r.passed:
                for label, value in (("what is wrong", r.message), ("input", r.input), ("expected", r.expected),
                                     ("got", r.got), ("hint", r.pointer())):
                    if value:
                        lines.append(f"         {label}: {value}")
        if len(self.results) < self.total:
            lines.append(f"  ... and {self.total - len(self.results)} more case(s), run once this one is written")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<LabReport {self.summary()}>"

    def _repr_html_(self) -> str:
        rows = []
        for r in self.results:
            colour = "#1a7f37" if r.passed else "#cf222e"
            mark = "&#10004; pass" if r.passed else "&#10008; FAIL"
            details = "" if r.passed else "<br>".join(
                f"<b>{label}</b>: {html.escape(value)}" for label, value in (
                    ("what is wrong", r.message), ("input", r.input), ("expected", r.expected), ("got", r.got),
                    ("hint", r.pointer())) if value)
            rows.append(f"<tr><td style='color:{colour};white-space:nowrap'><b>{mark}</b></td>"
                        f"<td>{html.escape(r.name)}</td><td>{details}</td></tr>")
        if len(self.results) < self.total:
            rows.append(f"<tr><td></td><td colspan='2'>... and {self.total - len(self.results)} more case(s), run "
                        "once this one is written</td></tr>")
        return (f"<div class='lab-report'><p><b>{html.escape(self.summary())}</b></p>"
                f"<table><tr><th></th><th>case</th><th>details</th></tr>{''.join(rows)}</table></div>")

    def _ipython_display_(self) -> None:
        """Show the report, once per cell: a check shows its report itself, and when the check is also the last
        expression of the cell, IPython's echo of the returned report shows nothing more."""
        from IPython.display import display

        cell = _current_cell()
        if cell is not None and self._shown_in == cell:
            return
        self._shown_in = cell
        display({"text/plain": str(self), "text/html": self._repr_html_()}, raw=True)


def _current_cell() -> object:
    """An id of the cell being executed (IPython's execution count), or None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else (id(shell), shell.execution_count)


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


# ---- describing values for a report ------------------------------------------------------------------------


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "tolist")


def _describe(x, depth: int) -> str:
    if x is None or isinstance(x, bool):
        return repr(x)
    if isinstance(x, numbers.Integral):
        return str(int(x))
    if isinstance(x, numbers.Real):
        text = f"{float(x):.6g}"
        return text + ".0" if text.lstrip("-").isdigit() else text  # 300.0 is not the int 300
    if isinstance(x, str):
        return repr(x if len(x) <= 60 else x[:57] + "...")
    if _is_array(x):
        kind = "tensor" if type(x).__module__.startswith("torch") else "array"
        dtype = str(x.dtype).replace("torch.", "")
        shape = tuple(int(s) for s in x.shape)
        if len(shape) == 0:
            return _describe(x.tolist(), depth)
        if int(np.prod(shape)) <= 8:
            return f"{kind}({_describe(x.tolist(), depth)}, {dtype})"
        return f"{kind} of shape {shape}, {dtype}"
    if isinstance(x, dict):
        items = list(x.items())
        inner = ", ".join(f"{k!r}: {_describe(v, depth + 1)}" for k, v in items[:6])
        return "{" + inner + (", ..." if len(items) > 6 else "") + "}"
    if isinstance(x, (list, tuple)):
        if depth >= 3:
            return f"a {type(x).__name__} of {len(x)} items"
        inner = ", ".join(_describe(v, depth + 1) for v in x[:10]) + (", ..." if len(x) > 10 else "")
        return f"[{inner}]" if isinstance(x, list) else f"({inner}{',' if len(x) == 1 else ''})"
    if type(x).__name__ == "DataFrame":
        return f"a table of {len(x)} rows"
    if callable(x):
        return f"{getattr(x, '__name__', type(x).__name__)}()"
    return f"a {type(x).__name__}"


def describe(x, limit: int = 200) -> str:
    """A short, readable rendering of a value for a lab report: numbers to 6 significant digits, small arrays
    and tensors in full, large ones by shape and dtype, containers item by item (truncated to ``limit``)."""
    try:
        text = _describe(x, 0)
    except Exception:  # a value that cannot be described must not break a report
        text = f"a {type(x).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_input(fn: Callable, args: tuple, kwargs: dict) -> str:
    """The case's arguments, named after the reader's parameters when the signature allows."""
    try:
        sig = inspect.signature(fn)
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
            bound = sig.bind(*args, **kwargs).arguments
            return ", ".join(f"{k}={describe(v, 80)}" for k, v in bound.items() if not k.startswith("_"))
    except (TypeError, ValueError):
        pass
    return ", ".join([describe(a, 80) for a in args]
                     + [f"{k}={describe(v, 80)}" for k, v in kwargs.items() if not k.startswith("_")])


# ---- running cases -----------------------------------------------------------------------------------------

_NOT_IMPLEMENTED = "not implemented yet"

#: Callables told about each case as it starts and ends (the grader's worker uses this to report progress).
_LISTENERS: list[Callable[[str, str, CaseResult | None], None]] = []


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return f"{_NOT_IMPLEMENTED}: replace the `raise NotImplementedError(...)` line with your code"
    frame = _reader_frame(traceback.extract_tb(exc.__traceback__))
    if frame is None:
        where = ""
    elif frame.filename.startswith("<lab cell"):  # the grader names the notebook's cell
        where = f" ({frame.filename.strip('<>')}, line {frame.lineno})"
    else:
        where = f" (line {frame.lineno} of your code)"
    return f"your function raised {type(exc).__name__}: {exc}{where}"


def _reader_frame(frames: traceback.StackSummary) -> traceback.FrameSummary | None:
    """The innermost frame of the reader's own code: not this library, not Python's or an installed package's."""
    import os
    import sysconfig

    library = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = tuple(os.path.abspath(p) for p in {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")})
    for frame in reversed(frames):
        path = frame.filename if frame.filename.startswith("<") else os.path.abspath(frame.filename)
        if not path.startswith((library, *installed)):
            return frame
    return None


def _run_case(fn: Callable, case: Case) -> CaseResult:
    shown_input = case.input if case.input is not None else _format_input(fn, case.args, case.kwargs)
    expected = "" if case.expected is _MISSING else (
        case.expected if isinstance(case.expected, str) else describe(case.expected))
    fail = dict(input=shown_input, expected=expected, hint=case.hint, section=case.section)
    try:
        result = fn(*case.args, **case.kwargs)
    except NotImplementedError as exc:  # an unstarted task: no input or expected value to show yet
        return CaseResult(case.name, False, _describe_exception(exc), hint=case.hint, section=case.section)
    except Exception as exc:  # the reader's code may raise anything; report it, don't crash the check
        return CaseResult(case.name, False, _describe_exception(exc), got=f"raised {type(exc).__name__}", **fail)
    try:
        problem = case.judge(result)
    except Exception as exc:
        problem = f"the result could not be checked ({type(exc).__name__}: {exc})"
    if problem is None:
        return CaseResult(case.name, True)
    try:
        got = case.show_result(result) if case.show_result is not None else describe(result)
    except Exception:
        got = describe(result)
    return CaseResult(case.name, False, problem, got=got, **fail)


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def run_cases(fn: Callable, cases: Sequence[Case] | Iterable[Case], title: str, *,
              raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Run ``cases`` against ``fn`` and report. Raises :class:`LabCheckFailed` on failure unless told not to.

    With ``show``, the report is displayed once (in IPython as a table; elsewhere printed), and the exception
    then only names the check; without it, the exception carries the whole report.
    """
    if not callable(fn):
        raise TypeError(f"{title}: pass your function itself (e.g. check(my_fn)), got {type(fn).__name__}")
    cases = list(cases)
    results = []
    for case in cases:
        for listener in _LISTENERS:
            listener("start", case.name, None)
        result = _run_case(fn, case)
        results.append(result)
        for listener in _LISTENERS:
            listener("done", case.name, result)
        if result.message.startswith(_NOT_IMPLEMENTED):
            break  # one message is enough for an unstarted task
    report = LabReport(title, results, n_cases=len(cases))
    if show:
        if _in_ipython():
            from IPython.display import display

            display(report)
        else:
            print(report)
    if raise_on_fail and not report.passed:
        raise LabCheckFailed(f"{report.summary()}; see the report above" if show else str(report))
    return report


# Each chapter's checks live in a sub-module; make them reachable as ``uv.labs.<name>`` without an import.
_LAB_MODULES = ("roofline", "analyzer", "quant", "distill", "kvcache", "decoding", "kernels", "formats", "serving", "pruning")


def __getattr__(name: str):
    if name in _LAB_MODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
