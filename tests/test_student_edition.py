"""The student edition: no solution text survives, and each student notebook runs up to its first stub."""

from __future__ import annotations

import ast
import json
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import student_edition
from conftest import ROOT, cell_source, chapter_paths, load_nb

EXPECTED_ERRORS = {"NotImplementedError", "LabCheckFailed"}


@pytest.fixture(scope="module")
def edition(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("student")
    written = student_edition.write_edition(out)
    assert written, "the student edition is empty"
    return out


def solution_body_lines(source: str) -> set[str]:
    """The lines of a solution cell that are solution text (not imports, signatures or docstrings)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    keep: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            keep |= set(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            keep |= set(range(min([node.lineno] + [d.lineno for d in node.decorator_list]), node.body[0].lineno))
            b0 = node.body[0]
            if isinstance(b0, ast.Expr) and isinstance(getattr(b0, "value", None), ast.Constant):
                keep |= set(range(b0.lineno, b0.end_lineno + 1))
    return {ln.strip() for i, ln in enumerate(lines, 1) if i not in keep and len(ln.strip()) >= 12
            and not ln.strip().startswith("#")}


def test_every_chapter_has_an_edition(edition):
    for path in chapter_paths():
        student = edition / path.relative_to(ROOT)
        assert student.exists(), f"no student edition of {path.name}"
        nb = json.loads(student.read_text())
        nbformat.validate(nbformat.from_dict(nb))  # valid nbformat 4.5: every cell, banner included, has an id
        assert all("id" in c for c in nb["cells"]), f"{path.name}: a student cell has no id"


@pytest.mark.parametrize("path", chapter_paths(), ids=lambda p: p.name)
def test_no_solution_text_survives(edition, path):
    nb = load_nb(path)
    other = "\n".join(cell_source(c) for c in nb["cells"]
                      if "solution" not in c.get("metadata", {}).get("tags", []))
    secret = set()
    for c in nb["cells"]:
        if c["cell_type"] == "code" and "solution" in c["metadata"].get("tags", []):
            secret |= {ln for ln in solution_body_lines(cell_source(c)) if ln not in other}
    assert secret, f"{path.name}: found no solution text to hide (is the lab written?)"
    student = json.loads((edition / path.relative_to(ROOT)).read_text())
    text = "\n".join(cell_source(c) for c in student["cells"])
    leaked = sorted(ln for ln in secret if ln in text)
    assert not leaked, f"solution text in the student edition of {path.name}: {leaked[:5]}"
    stubs = [c for c in student["cells"] if "lab-stub" in c["metadata"].get("tags", [])]
    assert stubs and all("raise NotImplementedError" in cell_source(c) for c in stubs)
    for c in stubs:
        compile(cell_source(c), "stub", "exec")  # stubs are valid Python


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("path", chapter_paths(), ids=lambda p: p.name)
def test_student_notebook_runs_up_to_its_first_stub(edition, path):
    student_path = edition / path.relative_to(ROOT)
    nb = nbformat.read(student_path, as_version=4)
    first_stub = next(i for i, c in enumerate(nb.cells) if "lab-stub" in c.metadata.get("tags", []))
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(student_path.parent)}})
    failed_at, ename = None, None
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            try:
                client.execute_cell(cell, i)
            except CellExecutionError as exc:
                failed_at, ename = i, exc.ename
                break
    assert failed_at is not None, f"{path.name}: the student notebook ran to the end; its stubs were never checked"
    assert failed_at > first_stub, (
        f"{path.name}: cell {failed_at} failed ({ename}) before the first stub (cell {first_stub})"
    )
    assert ename in EXPECTED_ERRORS, f"{path.name}: the first failure is {ename}, not the unfinished lab"
