"""Write the student edition: every notebook with each `solution` cell replaced by a stub.

A stub keeps the solution cell's imports, the signatures and docstrings of the functions (and classes) it
defines, and replaces each body by ``raise NotImplementedError(...)`` with a pointer to the check that follows.
Everything else in the notebook is unchanged, so a student's notebook runs as in the book up to the first lab
task, where the check reports "not implemented yet".

    python tools/student_edition.py --out student/

writes student/chapters/*.ipynb (and student/appendix/*.ipynb where they have labs), plus a README.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import re
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOLUTION_TAG = "solution"
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
        cell["metadata"]["tags"] = [t for t in cell["metadata"]["tags"] if t != SOLUTION_TAG] + ["lab-stub"]
        cell["outputs"] = []
        cell["execution_count"] = None
        n += 1
    if n:
        # After the set-up cell and the title, say what this edition is.
        pos = next((j + 1 for j, c in enumerate(cells) if c["cell_type"] == "markdown"), 0)
        cells.insert(pos, {"cell_type": "markdown", "id": "student-edition-banner", "metadata": {},
                          "source": BANNER.splitlines(keepends=True)})
    return nb, n


def notebooks() -> list[pathlib.Path]:
    return sorted([*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("appendix/*.ipynb")])


def write_edition(out: pathlib.Path) -> dict[str, int]:
    """Write the student edition under ``out``; return the number of stubs per notebook written."""
    written = {}
    for path in notebooks():
        nb, n = student_notebook(json.loads(path.read_text()))
        if not n:
            continue
        dest = out / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written[str(path.relative_to(ROOT))] = n
    (out / "README.md").write_text(textwrap.dedent("""\
        # Inference Unveiled: student edition

        Each notebook here is a chapter of the book with its lab solutions removed. Open it in Jupyter or
        Colab, run it from the top, and write the body of every function whose cell raises
        `NotImplementedError`; the check cell after it says what passes and what fails.
        """))
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "student", help="output folder (default: student/)")
    args = parser.parse_args()
    for name, n in write_edition(args.out).items():
        print(f"{name}: {n} stub(s)")
    print(f"student edition written to {args.out}")
