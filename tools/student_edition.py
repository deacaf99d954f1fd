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
import json
import pathlib
import textwrap

from unveiled.labs.edition import BANNER, SOLUTION_TAG, stub_source, student_notebook

__all__ = ["BANNER", "SOLUTION_TAG", "notebooks", "stub_source", "student_notebook", "write_edition"]

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
