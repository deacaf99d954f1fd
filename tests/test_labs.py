"""Lab grading and the lab-check mechanics.

`pytest -m lab_<name>` runs one chapter's lab checks against the book's reference solutions, or against a
student's notebook with `--lab-notebook path/to/NN_slug.ipynb`. Only the notebook's lab cells run (those tagged
`solution` or `lab-stub`, or defining a lab function; with unveiled, numpy, math and torch pre-imported), so
grading takes seconds. A whole class is graded by `python -m unveiled.labs grade` (tests/test_grading.py).

Every lab module is also audited here: each failing case of each check says its input, the expected and the
obtained value, and a hint that points at a section of the chapter that calls it.
"""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import re

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

import unveiled.labs
from conftest import ROOT, cell_source, chapter_paths, load_nb
from unveiled.labs import Case, LabCheckFailed, LabReport, close_enough, describe, run_cases
from unveiled.labs._worker import lab_cells
from unveiled.labs.grading import lab_modules


def lab_module_of(nb: dict) -> str | None:
    modules = lab_modules(nb)
    return modules[0] if modules else None


def lab_params():
    params = []
    for path in chapter_paths():
        module = lab_module_of(load_nb(path))
        if module is not None:
            params.append(pytest.param(path, module, marks=getattr(pytest.mark, f"lab_{module}"),
                                       id=f"lab_{module}"))
    return params


def solution_namespace(path: pathlib.Path, functions) -> dict:
    import math

    import torch

    import unveiled as uv

    ns = {"uv": uv, "np": np, "math": math, "torch": torch, "__name__": "__lab__"}
    nb = load_nb(path)
    cells = lab_cells([{"source": cell_source(c), "tags": c["metadata"].get("tags", [])}
                       for c in nb["cells"] if c["cell_type"] == "code"], functions)
    assert cells, f"{path.name} has no lab cells (tagged `solution`)"
    for cell in cells:
        exec(compile(cell["source"], f"{path.name}:lab-cell", "exec"), ns)
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
    ns = solution_namespace(notebook, checks)
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


# --- every lab module gives actionable feedback -------------------------------------------------------------


def all_lab_modules() -> list[str]:
    """Every ``unveiled.labs.<module>`` with a CHECKS dict (new chapters' modules included)."""
    names = []
    for info in pkgutil.iter_modules(unveiled.labs.__path__):
        if not info.name.startswith("_") and hasattr(importlib.import_module(f"unveiled.labs.{info.name}"),
                                                     "CHECKS"):
            names.append(info.name)
    return sorted(names)


def chapter_of(module: str) -> pathlib.Path:
    paths = [p for p in chapter_paths() if module in lab_modules(load_nb(p))]
    assert len(paths) == 1, f"unveiled.labs.{module} is called by {len(paths)} chapters; expected exactly one"
    return paths[0]


def headings(nb: dict, level: str) -> list[str]:
    text = "\n".join(cell_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    return [h.strip() for h in re.findall(rf"^{level} +(.+?)\s*$", text, flags=re.M)]


class Wrong:
    """What a confused student returns: nothing any check accepts."""

    def __repr__(self) -> str:
        return "Wrong()"


def wrong(*args, **kwargs):
    return Wrong()


@pytest.mark.parametrize("module", all_lab_modules())
def test_every_failing_case_says_input_expected_got_and_points_at_a_section(module):
    mod = importlib.import_module(f"unveiled.labs.{module}")
    nb = load_nb(chapter_of(module))
    sections = {re.sub(r"^\d+(\.\d+)*\s+", "", h) for h in headings(nb, "##")}
    labs_in_text = {m for h in headings(nb, "###") for m in re.findall(r"^Lab (\d+\.\d+)\b", h)}
    labs_in_checks = set()
    for name, check in mod.CHECKS.items():
        report = check(wrong, raise_on_fail=False, show=False)
        assert isinstance(report, LabReport) and report.total == len(report.results) >= 2, name
        labs_in_checks |= set(re.findall(r"Lab (\d+\.\d+)", report.title))
        for r in report.results:
            assert not r.passed, f"{name}: case {r.name!r} accepts a Wrong() object: it cannot fail"
            for field in ("message", "input", "expected", "got", "hint", "section"):
                assert getattr(r, field).strip(), f"{name}: case {r.name!r} has no {field}"
            assert r.section in sections, (f"{name}: case {r.name!r} points at section {r.section!r}, not a "
                                           f"heading of {chapter_of(module).name}: {sorted(sections)}")
            assert "Re-read" in r.feedback() and r.expected in r.feedback()
    assert labs_in_checks == labs_in_text, (
        f"the check titles name labs {sorted(labs_in_checks)}, the chapter's headings {sorted(labs_in_text)}")


# --- the mechanics themselves ---------------------------------------------------------------------------

CASES = [
    Case("doubles 2", (2,), judge=close_enough(4), expected=4, hint="look again", section="Doubling"),
    Case("doubles an array", (np.array([1.0, 2.0]),), judge=close_enough([2.0, 4.0]), hint="multiply by 2"),
]


def test_correct_function_passes():
    report = run_cases(lambda x: 2 * x, CASES, "double", show=False)
    assert report.passed and report.n_passed == report.total == 2
    assert "2/2 passed" in str(report) and "pass" in report._repr_html_()
    assert report.first_failure is None and repr(report) == "<LabReport double: 2/2 passed (all cases pass)>"


def test_wrong_function_fails_with_input_expected_got_and_hint():
    with pytest.raises(LabCheckFailed) as err:
        run_cases(lambda x: 3 * x, CASES, "double", show=False)
    text = str(err.value)
    assert "0/2 passed" in text and "expected 4, got 6" in text
    assert "input: x=2" in text and "expected: 4" in text and "got: 6" in text
    assert "hint: look again Re-read “Doubling”." in text and "hint: multiply by 2" in text
    report = run_cases(lambda x: 3 * x, CASES, "double", show=False, raise_on_fail=False)
    first = report.first_failure
    assert first.feedback() == ("doubles 2: expected 4, got 6 | input: x=2 | expected: 4 | got: 6 | hint: look "
                                "again Re-read “Doubling”.")
    html = report._repr_html_()
    assert "<b>expected</b>: 4" in html and "<b>got</b>: 6" in html and "Re-read" in html


def test_unimplemented_function_says_so_once_but_counts_every_case():
    def stub(x):
        raise NotImplementedError("write the body")

    report = run_cases(stub, CASES, "double", raise_on_fail=False, show=False)
    assert not report.passed and len(report.results) == 1 and report.total == 2
    assert "not implemented yet" in report.results[0].message
    assert "0/2 passed (not implemented yet)" in str(report) and "1 more case(s)" in str(report)


def test_exceptions_in_reader_code_are_reported_with_the_readers_line():
    def reader(x):
        y = x + 1
        return y / 0

    report = run_cases(reader, CASES[:1], "double", raise_on_fail=False, show=False)
    r = report.results[0]
    assert "ZeroDivisionError" in r.message and f"(line {reader.__code__.co_firstlineno + 2} of your code)" in r.message
    assert r.got == "raised ZeroDivisionError" and r.input == "x=2"


def test_shape_and_type_mistakes_are_explained():
    assert "shape" in close_enough([1.0, 2.0])([1.0])
    assert "expected a number" in close_enough(1.0)("one")


def test_run_cases_rejects_non_callables():
    with pytest.raises(TypeError, match="pass your function itself"):
        run_cases(42, CASES, "double", show=False)


def test_describe_is_short_and_exact_enough():
    import torch

    assert describe(300) == "300" and describe(300.0) == "300.0" and describe(1 / 3) == "0.333333"
    assert describe(np.array([1, 2])) == "array([1, 2], int64)"
    assert describe(torch.zeros(8, 64)) == "tensor of shape (8, 64), float32"
    assert describe(torch.tensor(2.5)) == "2.5"
    assert describe({"qk": (1.0, 2)}) == "{'qk': (1.0, 2)}"
    assert describe(list(range(100))).endswith(", ...]") and len(describe("x" * 1000)) <= 200
    assert describe(None) == "None" and describe(describe) == "describe()"


def test_a_check_shows_its_report_once_in_a_notebook(tmp_path):
    """Issue: a check's return value was echoed next to the report it displays (every chapter's labs)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import numpy as np\nimport unveiled as uv\n"
                                  "from unveiled.labs import Case, close_enough, run_cases"),
        nbformat.v4.new_code_cell("uv.labs.roofline.check_attainable(lambda i, bw, p: np.minimum(p, bw * "
                                  "np.asarray(i, dtype=float)))"),
        nbformat.v4.new_code_cell("report = run_cases(lambda x: 2 * x, [Case('doubles', (2,), judge="
                                  "close_enough(4))], 'double')\nreport"),
        nbformat.v4.new_code_cell("report"),
        nbformat.v4.new_code_cell("uv.labs.roofline.check_op_time(lambda f, q, bw, p: f / p + q / bw)"),
    ]
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    def shown(cell) -> list[str]:
        return [o["data"]["text/plain"] for o in cell.outputs if o.output_type in ("display_data", "execute_result")]

    assert [len(shown(c)) for c in nb.cells[1:]] == [1, 1, 1, 1]
    assert "Lab 1.1 attainable(): 6/6 passed" in shown(nb.cells[1])[0]
    assert "double: 1/1 passed" in shown(nb.cells[3])[0]  # a later cell still shows a stored report
    errors = [o for o in nb.cells[4].outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "LabCheckFailed"
    assert "[FAIL]" not in errors[0]["evalue"] and "see the report above" in errors[0]["evalue"]
    assert "what is wrong: You added the compute and memory times" in shown(nb.cells[4])[0]


def test_a_check_prints_its_report_once_in_plain_python(capsys):
    report = run_cases(lambda x: 2 * x, CASES[:1], "double")
    assert capsys.readouterr().out.count("double: 1/1 passed") == 1
    assert repr(report).startswith("<LabReport")  # a REPL echo adds one short line, not the report again
