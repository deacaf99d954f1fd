"""Lab grading and the lab-check mechanics.

`pytest -m lab_<name>` runs one chapter's lab checks against the book's reference solutions, or against a
student's notebook with `--lab-notebook path/to/NN_slug.ipynb`. Only the notebook's `solution`-tagged cells
run (with unveiled, numpy, math and torch pre-imported), so grading takes seconds.
"""

from __future__ import annotations

import importlib
import pathlib
import re

import numpy as np
import pytest

from conftest import ROOT, cell_source, chapter_paths, load_nb
from unveiled.labs import Case, LabCheckFailed, close_enough, run_cases

LAB_RE = re.compile(r"uv\.labs\.(\w+)\.")


def lab_module_of(nb: dict) -> str | None:
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            m = LAB_RE.search(cell_source(cell))
            if m:
                return m.group(1)
    return None


def lab_params():
    params = []
    for path in chapter_paths():
        module = lab_module_of(load_nb(path))
        if module is not None:
            params.append(pytest.param(path, module, marks=getattr(pytest.mark, f"lab_{module}"),
                                       id=f"lab_{module}"))
    return params


def solution_namespace(path: pathlib.Path) -> dict:
    import math

    import torch

    import unveiled as uv

    ns = {"uv": uv, "np": np, "math": math, "torch": torch, "__name__": "__lab__"}
    nb = load_nb(path)
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"
             and {"solution", "lab-stub"} & set(c["metadata"].get("tags", []))]
    assert cells, f"{path.name} has no lab cells (tagged `solution`)"
    for cell in cells:
        exec(compile(cell_source(cell), f"{path.name}:lab-cell", "exec"), ns)
    return ns


def notebook_for(request, path: pathlib.Path) -> pathlib.Path:
    chosen = [pathlib.Path(p) for p in request.config.getoption("--lab-notebook")]
    for p in chosen:
        if p.name[:3] == path.name[:3]:
            return p
    return path


@pytest.mark.parametrize(("path", "module"), lab_params())
def test_lab(request, path, module):
    notebook = notebook_for(request, path)
    checks = importlib.import_module(f"unveiled.labs.{module}").CHECKS
    assert checks, f"unveiled.labs.{module}.CHECKS is empty"
    ns = solution_namespace(notebook)
    failures = []
    for name, check in checks.items():
        if name not in ns:
            failures.append(f"{notebook.name} does not define {name}()")
            continue
        report = check(ns[name], raise_on_fail=False, show=False)
        if not report.passed:
            failures.append(str(report))
    assert not failures, "\n\n".join(failures)


def test_every_chapter_has_a_lab_module():
    for path in chapter_paths():
        module = lab_module_of(load_nb(path))
        assert module is not None, f"{path.name} calls no check from unveiled.labs"
        mod = importlib.import_module(f"unveiled.labs.{module}")
        assert isinstance(getattr(mod, "CHECKS", None), dict) and mod.CHECKS, f"unveiled.labs.{module}.CHECKS"
        assert f"lab_{module}" in (ROOT / "pyproject.toml").read_text(), f"declare the marker lab_{module}"


# --- the mechanics themselves ---------------------------------------------------------------------------

CASES = [
    Case("doubles 2", (2,), judge=close_enough(4)),
    Case("doubles an array", (np.array([1.0, 2.0]),), judge=close_enough([2.0, 4.0]), hint="multiply by 2"),
]


def test_correct_function_passes():
    report = run_cases(lambda x: 2 * x, CASES, "double", show=False)
    assert report.passed and report.n_passed == 2
    assert "2/2 passed" in str(report) and "pass" in report._repr_html_()


def test_wrong_function_fails_with_reason_and_hint():
    with pytest.raises(LabCheckFailed) as err:
        run_cases(lambda x: 3 * x, CASES, "double", show=False)
    text = str(err.value)
    assert "0/2 passed" in text and "expected 4, got 6" in text and "Hint: multiply by 2" in text


def test_unimplemented_function_says_so_once():
    def stub(x):
        raise NotImplementedError("write the body")

    report = run_cases(stub, CASES, "double", raise_on_fail=False, show=False)
    assert not report.passed and len(report.results) == 1
    assert "not implemented yet" in report.results[0].message


def test_exceptions_in_reader_code_are_reported_not_raised():
    report = run_cases(lambda x: x / 0, CASES[:1], "double", raise_on_fail=False, show=False)
    assert "ZeroDivisionError" in report.results[0].message


def test_shape_and_type_mistakes_are_explained():
    assert "shape" in close_enough([1.0, 2.0])([1.0])
    assert "expected a number" in close_enough(1.0)("one")


def test_run_cases_rejects_non_callables():
    with pytest.raises(TypeError, match="pass your function itself"):
        run_cases(42, CASES, "double", show=False)
