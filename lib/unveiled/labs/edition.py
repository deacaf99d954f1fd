"""The student edition of a chapter: each `solution` cell replaced by a stub that raises NotImplementedError.

A stub keeps the solution cell's imports, the signatures and docstrings of the functions (and classes) it
defines, and replaces each body by ``raise NotImplementedError(...)`` with a pointer to the check that follows.
Everything else in the notebook is unchanged, so a student's notebook runs as in the book up to the first lab
task, where the check reports "not implemented yet". ``python tools/student_edition.py --out student/`` writes
the edition of every chapter; the grader (:mod:`unveiled.labs.grading`) grades what students hand back.
Introduced on the instructors' page.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import zipfile
from collections.abc import Mapping, Sequence

__all__ = ["BANNER", "SOLUTION_TAG", "STUB_TAG", "labs_of", "stub_source", "student_notebook", "synthetic_class"]

SOLUTION_TAG = "solution"
STUB_TAG = "lab-stub"
CHECK_RE = re.compile(r"uv\.labs\.[\w.]+\([^)]*\)")

BANNER = (
    "> **Student edition.** The reference solutions of this chapter's lab are removed: each lab cell keeps the\n"
    "> function's signature and docstring and raises `NotImplementedError` until you write its body. Run the\n"
    "> check cell after each task; it tells you what passes and what fails."
)


def _lines(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def stub_source(source: str, check_hint: str = "") -> str:
    """The stub for one solution cell's source (see the module docstring)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    out: list[str] = []
    pointer = f" and run the check below ({check_hint})" if check_hint else " and run the check cell below"

    def stub_def(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, indent: str) -> None:
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        body0 = node.body[0]
        has_doc = (isinstance(body0, ast.Expr) and isinstance(getattr(body0, "value", None), ast.Constant)
                   and isinstance(body0.value.value, str))
        header_end = body0.lineno - 1
        if header_end < node.lineno:  # a one-line `def f(): ...`: keep only up to the colon
            raise ValueError(f"solution function {node.name!r} must not be written on one line")
        out.extend(lines[first - 1:header_end])
        inner = " " * (body0.col_offset)
        if has_doc:
            out.extend(lines[body0.lineno - 1:body0.end_lineno])
        if isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for m in methods:
                out.append("")
                stub_def(m, inner)
            if not methods:
                out.append(f"{inner}pass  # TODO: write this class")
            return
        out.append(f"{inner}# TODO: your code here.")
        out.append(f'{inner}raise NotImplementedError("write the body of {node.name}(){pointer}")')

    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.extend(lines[node.lineno - 1:node.end_lineno])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if out:
                out.append("")
                out.append("")
            stub_def(node, "")
        # any other top-level statement is part of the solution and is dropped
    return "\n".join(out) + "\n"


def student_notebook(nb: dict) -> tuple[dict, int]:
    """Return the student version of a notebook and the number of stubs it contains."""
    nb = json.loads(json.dumps(nb))  # deep copy
    cells = nb["cells"]
    n = 0
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code" or SOLUTION_TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        hint = ""
        for later in cells[i + 1:]:
            if later["cell_type"] == "code":
                m = CHECK_RE.search(_lines(later["source"]))
                hint = m.group(0) if m else ""
                break
        cell["source"] = stub_source(_lines(cell["source"]), hint).splitlines(keepends=True)
        cell["metadata"]["tags"] = [t for t in cell["metadata"]["tags"] if t != SOLUTION_TAG] + [STUB_TAG]
        cell["outputs"] = []
        cell["execution_count"] = None
        n += 1
    if n:
        # After the set-up cell and the title, say what this edition is.
        pos = next((j + 1 for j, c in enumerate(cells) if c["cell_type"] == "markdown"), 0)
        cells.insert(pos, {"cell_type": "markdown", "id": "student-edition-banner", "metadata": {},
                          "source": BANNER.splitlines(keepends=True)})
    return nb, n


# ---- a synthetic class, to show and test the grader ----------------------------------------------------------


def _lab_functions(nb: dict) -> list[tuple[int, str]]:
    """(cell index, function name) of every function defined by a `solution` cell, in notebook order."""
    out = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse(_lines(cell["source"]))
            out += [(i, n.name) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return out


def _prepend_to_body(source: str, name: str, statements: list[str]) -> str:
    """``source`` with ``statements`` run first in function ``name`` (after its docstring)."""
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
    body0 = node.body[0]
    has_doc = isinstance(body0, ast.Expr) and isinstance(getattr(body0, "value", None), ast.Constant)
    at = body0.end_lineno if has_doc and len(node.body) > 1 else body0.lineno - 1
    lines = source.splitlines()
    indent = " " * node.body[-1].col_offset
    return "\n".join(lines[:at] + [indent + s for s in statements] + lines[at:]) + "\n"


def _replace_function(nb: dict, cell_index: int, name: str, new_source: str) -> None:
    """Replace function ``name`` in its cell by ``new_source`` (a complete ``def``), keeping the other code."""
    source = _lines(nb["cells"][cell_index]["source"])
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
    lines = source.splitlines()
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    merged = lines[: start - 1] + new_source.rstrip("\n").splitlines() + lines[node.end_lineno:]
    nb["cells"][cell_index]["source"] = ("\n".join(merged) + "\n").splitlines(keepends=True)


def _edit(nb: dict, cell_index: int, name: str, statements: list[str]) -> None:
    cell = nb["cells"][cell_index]
    cell["source"] = _prepend_to_body(_lines(cell["source"]), name, statements).splitlines(keepends=True)


def synthetic_class(notebook: str | os.PathLike, dest: str | os.PathLike, *, wrong: Mapping[str, str],
                    protect: Sequence[str | os.PathLike] = ()) -> dict[str, str]:
    """Write six students' submissions of one chapter (the book's notebook, with its solutions) into ``dest``.

    ``wrong`` maps lab functions to wrong implementations (complete ``def`` sources) for the partly wrong
    student; ``protect`` lists paths the student who deletes files tries to remove, besides ``dest`` itself.
    With the chapter's first two lab functions f1 and f2 (in notebook order; f2 = f1 if there is one):

    * ada: the book's solutions, handed in as ``ada.zip``;
    * ben: the solutions with ``wrong``'s functions swapped in;
    * cleo: the student edition, untouched (every task a stub);
    * dan: crashes: f1's cell raises before defining anything, f2 ends the process (``os._exit``);
    * eve: f2 never returns (an endless loop);
    * fay: f1 first tries to delete ``dest`` and ``protect`` (the grader must refuse).

    Returns ``{student: what they did}``. Used by the instructors' page and the grader's tests.
    """
    src = pathlib.Path(notebook)
    book = json.loads(src.read_text())
    functions = _lab_functions(book)
    if not functions:
        raise ValueError(f"{src.name} has no `solution` cells: pass a chapter notebook of the book")
    unknown = set(wrong) - {n for _, n in functions}
    if unknown:
        raise ValueError(f"wrong names functions that {src.name}'s lab does not define: {sorted(unknown)}")
    f1, f2 = functions[0], functions[1 % len(functions)]
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    def write(student: str, nb: dict) -> None:
        folder = dest / student
        folder.mkdir(exist_ok=True)
        (folder / src.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")

    def copy() -> dict:
        return json.loads(json.dumps(book))

    with zipfile.ZipFile(dest / "ada.zip", "w") as zf:
        zf.writestr(f"ada/{src.name}", json.dumps(book, indent=1, ensure_ascii=False) + "\n")
    ben = copy()
    for cell, name in functions:
        if name in wrong:
            _replace_function(ben, cell, name, wrong[name])
    write("ben", ben)
    write("cleo", student_notebook(book)[0])
    dan = copy()
    dan["cells"][f1[0]]["source"] = 'raise RuntimeError("a leftover debugging line")\n' + _lines(
        dan["cells"][f1[0]]["source"])
    _edit(dan, f2[0], f2[1], ["import os", "os._exit(3)  # the process ends here"])
    write("dan", dan)
    eve = copy()
    _edit(eve, f2[0], f2[1], ["while True:  # never returns", "    pass"])
    write("eve", eve)
    fay = copy()
    targets = [str(dest.resolve())] + [str(pathlib.Path(p).resolve()) for p in protect]
    _edit(fay, f1[0], f1[1], ["import os, shutil  # tidying up, too eagerly",
                              f"for target in {targets!r}:",
                              "    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)"])
    write("fay", fay)
    return {
        "ada": "the book's solutions (a zip)",
        "ben": f"wrong {', '.join(f'{n}()' for n in wrong)}" if wrong else "the book's solutions",
        "cleo": "the student edition, untouched",
        "dan": f"{f1[1]}()'s cell raises; {f2[1]}() ends the process",
        "eve": f"{f2[1]}() loops forever",
        "fay": f"{f1[1]}() deletes the submissions folder first",
    }


_LAB_HEADING = re.compile(r"^### +Lab (?P<number>\d+\.\d+) — (?P<title>.+?)(?: \[(?P<points>\d+) pts?\])?\s*$",
                          flags=re.M)
_LAB_GOAL = re.compile(r"^\*\*Goal:\*\* (?P<goal>\S[^\n]*?) \*\*Time:\*\* about (?P<minutes>\d+) minutes\.$",
                       flags=re.M)


def labs_of(nb: dict) -> list[dict]:
    """The labs of a chapter notebook as written in it: number, title, points, goal and minutes (see
    CONTRIBUTING.md, "Labs"); for the instructors' page."""
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = _lines(cell["source"])
        for m in _LAB_HEADING.finditer(text):
            goal = _LAB_GOAL.search(text)
            out.append({"lab": f"Lab {m['number']}", "title": m["title"],
                        "points": int(m["points"]) if m["points"] else None,
                        "goal": goal["goal"] if goal else "", "minutes": int(goal["minutes"]) if goal else None})
    return out
