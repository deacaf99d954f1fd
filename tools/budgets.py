"""Execution budgets of the book's notebooks on a 2-core CPU, in one place.

Read by the book-build benchmark, by ``tools/run_notebooks.py`` (which CI runs with the CPU features limited)
and by ``tools/check_budgets.py``. A chapter runs in about a minute on a reader's machine; long computations are
cached by ``python -m unveiled.results run ...``.
"""

from __future__ import annotations

import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]

BUILD_BUDGET_S = 300  # the whole clean build, on 2 cores
BUDGETS_S = {  # notebook (path without suffix) -> seconds of execution
    "chapters/01_roofline": 30,
    "chapters/02_llm_inference": 60,
    "appendix/models": 90,
}
DEFAULT_BUDGET_S = 120  # every other chapter


def budget_of(notebook: str) -> float:
    """The execution budget of ``notebook`` ("chapters/01_roofline"), in seconds."""
    return float(BUDGETS_S.get(notebook, DEFAULT_BUDGET_S))


def toc_notebooks() -> list[pathlib.Path]:
    """Every notebook the table of contents lists, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files: list[str] = []

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]
