"""Grading a class in one command: exact grades for a synthetic class, and a grader that survives its students.

The synthetic class (unveiled.labs.edition.synthetic_class) hands in Chapter 1 six ways: the book's solutions
(as a zip), partly wrong, the untouched student edition, crashing, never terminating, and deleting files. The
time limit is 3 s, so the endless loop costs 3 s; the other workers take a second or two each to start.
"""

from __future__ import annotations

import builtins
import json
import os
import pathlib
import zipfile

import pandas as pd
import pytest

from conftest import ROOT
from unveiled.labs import grading
from unveiled.labs.__main__ import main
from unveiled.labs.edition import synthetic_class

CH1 = ROOT / "chapters" / "01_roofline.ipynb"
TIMEOUT = 3.0
WRONG = {
    "attainable": "def attainable(intensity, bandwidth, peak):\n    return min(peak, bandwidth * intensity)\n",
    "op_time": "def op_time(flops, nbytes, bandwidth, peak):\n    return flops / peak + nbytes / bandwidth\n",
}
TASKS = [("Lab 1.1", "attainable", 6), ("Lab 1.2", "op_time", 4), ("Lab 1.3", "matmul_intensity", 5),
         ("Lab 1.4", "critical_tokens", 4)]
# (student, function) -> (status, passed): everything else of that student passes every case.
EXPECTED = {
    ("ben", "attainable"): ("failed", 5),
    ("ben", "op_time"): ("failed", 1),
    **{("cleo", f): ("not implemented", 0) for _, f, _ in TASKS},
    ("dan", "attainable"): ("missing", 0),
    ("dan", "op_time"): ("crashed", 0),
    ("eve", "op_time"): ("timeout", 0),
    ("fay", "attainable"): ("failed", 0),
}


def expected_table() -> pd.DataFrame:
    rows = []
    for student in ("ada", "ben", "cleo", "dan", "eve", "fay"):
        notebook = f"ada/{CH1.name}" if student == "ada" else CH1.name
        for lab, fn, total in TASKS:
            status, passed = EXPECTED.get((student, fn), ("passed", total))
            rows.append((student, notebook, lab, fn, status, passed, total))
    return pd.DataFrame(rows, columns=grading.COLUMNS[:7])


def tree(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The synthetic class graded by the command line, as an instructor runs it."""
    base = tmp_path_factory.mktemp("class")
    subs, out = base / "submissions", base / "out" / "grades.csv"
    out.parent.mkdir()
    out.write_text("an earlier grade file fay's notebook tries to delete\n")
    students = synthetic_class(CH1, subs, wrong=WRONG, protect=[out])
    (subs / "notes.txt").write_text("not a submission")
    before = tree(subs)
    code = main(["grade", str(subs), "--out", str(out), "--timeout", str(TIMEOUT), "--jobs", "2"])
    return {"code": code, "subs": subs, "out": out, "before": before, "students": students,
            "grades": pd.read_csv(out, keep_default_na=False)}


def test_the_synthetic_class_gets_exact_grades(graded):
    assert graded["code"] == 0
    grades = graded["grades"]
    assert list(grades.columns) == grading.COLUMNS
    pd.testing.assert_frame_equal(grades[grading.COLUMNS[:7]], expected_table(), check_dtype=False)
    assert (grades.runtime_s >= 0).all()
    assert set(graded["students"]) == set(grades.student)


def first_failure(graded, student: str, function: str) -> str:
    g = graded["grades"]
    return g[(g.student == student) & (g.function == function)].first_failure.item()


def test_feedback_says_input_expected_got_and_points_at_a_section(graded):
    text = first_failure(graded, "ben", "attainable")
    assert text.startswith("an array of intensities: your function raised ValueError")
    assert "np.minimum" in text and "input: intensity=array([0.5, 10.0, 200.0, 5000.0], float64)" in text
    assert "expected: array([3.84e+11, 7.68e+12, 1.536e+14, 1.54838e+14], float64)" in text
    assert "Re-read “The roofline”." in text
    text = first_failure(graded, "ben", "op_time")
    assert "You added the compute and memory times" in text and "expected: 4.3712e-05" in text
    assert "got: 4.39287e-05" in text
    assert "not implemented yet" in first_failure(graded, "cleo", "critical_tokens")
    assert all(first_failure(graded, "ada", f) == "" for _, f, _ in TASKS)


def test_crashes_and_endless_loops_cost_only_their_own_task(graded):
    assert "its cell raised RuntimeError: a leftover debugging line" in first_failure(graded, "dan", "attainable")
    assert "the notebook's process ended (exit code 3)" in first_failure(graded, "dan", "op_time")
    assert f"timed out after {TIMEOUT:g} s" in first_failure(graded, "eve", "op_time")
    g = graded["grades"]
    assert g[(g.student == "eve") & (g.function == "op_time")].runtime_s.item() == TIMEOUT


def test_a_notebook_that_deletes_files_reaches_neither_submissions_nor_outputs(graded):
    text = first_failure(graded, "fay", "attainable")
    assert "PermissionError: the grader does not let lab code change or delete" in text
    assert tree(graded["subs"]) == graded["before"]
    assert graded["out"].with_name("grades_summary.csv").exists()


def test_the_summary_condenses_per_task_and_per_student(graded):
    summary = pd.read_csv(graded["out"].with_name("grades_summary.csv"))
    assert list(summary.function) == [f for _, f, _ in TASKS]
    assert list(summary.students) == [6] * 4
    assert list(summary.all_passed) == [2, 2, 5, 5]
    assert list(summary.timeouts_or_crashes) == [0, 2, 0, 0]
    assert summary.mean_cases_passed_pct.iloc[2] == pytest.approx(100 * 5 / 6, abs=0.05)
    totals = grading.student_totals(graded["grades"]).set_index("student")
    assert totals.loc["ada", "cases_passed"] == totals.loc["ada", "cases_total"] == 19
    assert totals.loc["cleo", "tasks_passed"] == 0 and totals.loc["ben", "cases_passed"] == 15


def notebook(*cells: str, tags=("solution",)) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [{"cell_type": "code", "metadata": {"tags": list(tags)}, "source": src, "outputs": [],
                       "execution_count": None} for src in cells]}


GUARDED = '''
def attainable(intensity, bandwidth, peak):
    import os, subprocess, builtins
    refused = []
    attempts = {
        "write outside": lambda: open(OUTSIDE, "w").write("x"),
        "append outside": lambda: os.open(OUTSIDE, os.O_WRONLY | os.O_CREAT),
        "remove outside": lambda: os.remove(OUTSIDE),
        "rename outside": lambda: os.rename("inside.txt", OUTSIDE),
        "a process": lambda: subprocess.run(["true"]),
        "a shell": lambda: os.system("true"),
        "a signal to the grader": lambda: os.kill(os.getppid(), 0),  # signal 0 only asks if it exists
    }
    open("inside.txt", "w").write("scratch is writable")
    for name, attempt in attempts.items():
        try:
            attempt()
        except PermissionError:
            refused.append(name)
    builtins.GRADED_HERE = True
    import numpy as np
    return np.minimum(peak, bandwidth * np.asarray(intensity, dtype=float)) if len(refused) == len(attempts) else 0
'''


def test_the_guard_refuses_writes_processes_and_signals_outside_the_scratch_folder(tmp_path):
    outside = tmp_path / "outside.txt"
    subs = tmp_path / "subs"
    (subs / "gus").mkdir(parents=True)
    nb = notebook(f"OUTSIDE = {str(outside)!r}\n" + GUARDED, "uv.labs.roofline.check_attainable(attainable)",
                  tags=())
    (subs / "gus" / "lab.ipynb").write_text(json.dumps(nb))
    grades = grading.grade(subs, timeout=30, jobs=1)
    row = grades[grades.function == "attainable"].iloc[0]
    assert (row.status, row.passed, row.total) == ("passed", 6, 6), row.first_failure
    assert not outside.exists()
    assert not hasattr(builtins, "GRADED_HERE")  # the student's code ran in another process
    assert set(grades.function) == {"attainable", "op_time", "matmul_intensity", "critical_tokens"}
    assert (grades[grades.function != "attainable"].status == "missing").all()
    assert "the notebook does not define it" in grades[grades.function == "op_time"].first_failure.item()


def test_a_notebook_whose_lab_cells_never_finish(tmp_path):
    subs = tmp_path / "subs"
    (subs / "hal").mkdir(parents=True)
    nb = notebook("while True:\n    pass\n", "uv.labs.roofline.check_op_time(op_time)")
    (subs / "hal" / "01_roofline.ipynb").write_text(json.dumps(nb))
    grades = grading.grade(subs, timeout=TIMEOUT, jobs=1)
    assert list(grades.status) == ["timeout"] * 4 and list(grades.total) == [6, 4, 5, 4]
    assert grades.first_failure.str.contains("while running the notebook's lab cells: timed out").all()


def test_collect_reads_folders_and_zips_without_extracting(tmp_path):
    subs = tmp_path / "subs"
    (subs / "ann" / ".ipynb_checkpoints").mkdir(parents=True)
    (subs / "ann" / "work").mkdir()
    (subs / "ann" / "work" / "01_roofline.ipynb").write_text(json.dumps(notebook("x = 1")))
    (subs / "ann" / ".ipynb_checkpoints" / "01_roofline-checkpoint.ipynb").write_text("{}")
    (subs / "ann" / "broken.ipynb").write_text("{not json")
    os.symlink(subs / "ann" / "work" / "01_roofline.ipynb", subs / "ann" / "link.ipynb")
    with zipfile.ZipFile(subs / "bob.zip", "w") as zf:
        zf.writestr("bob/07_decoding.ipynb", json.dumps(notebook("y = 2")))
        zf.writestr("__MACOSX/bob/._07_decoding.ipynb", "junk")
        zf.writestr("../../escape.ipynb", json.dumps(notebook("z = 3")))
    (subs / "cid.zip").write_bytes(b"not a zip")
    (subs / "README.md").write_text("instructions")
    found, ignored = grading.collect(subs)
    got = [(s.student, s.notebook, s.error.split(":")[0]) for s in found]
    assert got == [("ann", "broken.ipynb", "not a readable notebook"), ("ann", "work/01_roofline.ipynb", ""),
                   ("bob", "bob/07_decoding.ipynb", ""), ("cid", "cid.zip", "not a readable zip")]
    assert ignored == ["README.md"]
    assert not (tmp_path / "escape.ipynb").exists()
    with pytest.raises(ValueError, match=r"one folder or \.zip per student"):
        grading.collect(tmp_path / "missing")


def test_notebooks_without_a_known_lab_get_a_row_that_says_why(tmp_path):
    subs = tmp_path / "subs"
    (subs / "dee").mkdir(parents=True)
    (subs / "dee" / "notes.ipynb").write_text(json.dumps(notebook("print('hello')")))
    (subs / "dee" / "05_new.ipynb").write_text(json.dumps(notebook("uv.labs.nosuchlab.check_it(it)")))
    (subs / "dee" / "bad.ipynb").write_text("[]")
    grades = grading.grade(subs, timeout=TIMEOUT, jobs=1)
    assert list(zip(grades.notebook, grades.status, strict=True)) == [("05_new.ipynb", "error"), ("bad.ipynb", "error"),
                                                          ("notes.ipynb", "no lab")]
    assert "no lab module 'nosuchlab'" in grades.first_failure.iloc[0]


def test_lab_modules_are_found_in_any_chapter_generically():
    nb = notebook("uv.labs.pruning.check_mask(mask)\nunveiled.labs.kernels.check_tile (tile)\n"
                  "uv.labs.pruning.check_other(x)")
    assert grading.lab_modules(nb) == ["pruning", "kernels"]


def test_the_command_line_says_when_there_is_nothing_to_grade(tmp_path, capsys):
    assert main(["grade", str(tmp_path), "--out", str(tmp_path / "g.csv")]) == 1
    assert "no notebooks found" in capsys.readouterr().err and not (tmp_path / "g.csv").exists()
    with pytest.raises(SystemExit):
        main(["grade", str(tmp_path / "nowhere")])


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="timeout"):
        grading.grade(tmp_path, timeout=0)
    with pytest.raises(TypeError):
        grading.grade(tmp_path, jobs=1.5)


@pytest.mark.slow
def test_any_mix_of_chapters(tmp_path):
    """One student hands in Chapters 1 and 4, another Chapter 7 (two labs each, torch in the workers)."""
    subs = tmp_path / "subs"
    for student, names in (("mo", ["01_roofline", "04_distillation"]), ("nia", ["07_decoding"])):
        (subs / student).mkdir(parents=True)
        for name in names:
            (subs / student / f"{name}.ipynb").write_bytes((ROOT / "chapters" / f"{name}.ipynb").read_bytes())
    grades = grading.grade(subs, timeout=300, jobs=2)
    assert (grades.status == "passed").all(), grades[grades.status != "passed"].to_dict("records")
    assert list(zip(grades.student, grades.lab, strict=True)) == [
        ("mo", "Lab 1.1"), ("mo", "Lab 1.2"), ("mo", "Lab 1.3"), ("mo", "Lab 1.4"), ("mo", "Lab 4.1"),
        ("mo", "Lab 4.2"), ("nia", "Lab 7.1"), ("nia", "Lab 7.2")]
    assert (grades.passed == grades.total).all()


@pytest.mark.slow
@pytest.mark.notebooks
def test_the_instructors_page_runs_the_grader_and_writes_nothing_into_the_repository():
    import subprocess

    from myst_nb.core.read import read_myst_markdown_notebook
    from nbclient import NotebookClient

    def status() -> list[str]:  # every file git sees, ignored ones too (bytecode caches aside)
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if "__pycache__" not in line]

    nb = read_myst_markdown_notebook((ROOT / "instructors.md").read_text())
    before = status()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    assert status() == before
    text = "\n".join(o.get("text", "") or o.get("data", {}).get("text/markdown", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Fay's attempt to delete files was refused: the submissions folder is unchanged" in text
    assert "hint: Python's min() and max() compare whole arrays" in text
