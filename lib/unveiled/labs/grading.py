"""Grade a whole class's lab notebooks in one command: ``python -m unveiled.labs grade SUBMISSIONS/``.

``SUBMISSIONS/`` holds one folder or ``.zip`` per student (its name is the student's), with any of the book's
chapter notebooks inside, in any mix. For each notebook the grader finds the chapter's lab from the checks the
notebook calls (``uv.labs.<module>.check_...``), so a new chapter is graded as soon as its module has a
``CHECKS`` dict, and runs every check of that module against the student's functions.

Nothing of the student's code runs in the grader's process. The grader reads every notebook into memory first,
then starts one worker process per notebook (:mod:`unveiled.labs._worker`) in an empty scratch folder of its
own, sends it the notebook's code cells and enforces a time limit on running the lab cells and on each check;
a worker that exceeds it is killed, and one that dies (``os._exit``, a segfault) loses only the task it was
running: the grader starts a fresh worker for the remaining tasks. Inside, an audit hook refuses writes and
deletions outside the scratch folder, so a notebook that deletes files reaches neither the submissions nor
the grader's outputs, which are written only at the end. A notebook that raises, loops forever or crashes
therefore costs only its own tasks.

The result is one row per student, notebook and task: ``passed`` cases out of ``total``, a ``status``
(passed, failed, not implemented, missing, timeout, crashed, error), the first failing case's feedback (input,
expected, got, hint) and the check's ``runtime_s``. :func:`summary` condenses it per task, :func:`student_totals`
per student. Introduced on the instructors' page (Chapter 1's labs are its running example).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass

import pandas as pd

from .._validate import check_int, check_number
from ._worker import PREFIX

__all__ = ["COLUMNS", "Submission", "collect", "grade", "lab_modules", "student_totals", "summary", "write_grades"]

#: The columns of the grade table, in order.
COLUMNS = ["student", "notebook", "lab", "function", "status", "passed", "total", "first_failure", "runtime_s"]
MAX_NOTEBOOK_BYTES = 50 * 2**20
_CHECK_CALL = re.compile(r"\b(?:uv|unveiled)\.labs\.([A-Za-z_]\w*)\.check_\w+\s*\(")
_SKIP_PARTS = {"__MACOSX", ".ipynb_checkpoints"}


@dataclass(frozen=True)
class Submission:
    """One notebook of one student, read into memory (``content``), or why it could not be read (``error``)."""

    student: str
    notebook: str
    content: dict | None
    error: str = ""


def _parse(student: str, name: str, data: bytes) -> Submission:
    try:
        nb = json.loads(data.decode("utf-8"))
        if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
            raise ValueError("no list of cells (the grader reads nbformat 4 notebooks)")
    except (UnicodeDecodeError, ValueError) as exc:
        return Submission(student, name, None, f"not a readable notebook: {exc}"[:300])
    return Submission(student, name, nb)


def _wanted(parts: tuple[str, ...]) -> bool:
    return parts[-1].endswith(".ipynb") and not any(p in _SKIP_PARTS or p.startswith(".") for p in parts)


def collect(submissions: str | os.PathLike) -> tuple[list[Submission], list[str]]:
    """Read every student's notebooks into memory: ``(submissions, ignored entries)``.

    Each folder or ``.zip`` directly under ``submissions`` is one student; their notebooks are the ``.ipynb``
    files at any depth (checkpoints, hidden folders, ``__MACOSX`` and symbolic links are skipped). Zips are read
    without extracting them.
    """
    root = pathlib.Path(submissions)
    if not root.is_dir():
        raise ValueError(f"submissions must be a folder with one folder or .zip per student, got {str(root)!r}")
    found: list[Submission] = []
    ignored: list[str] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.is_symlink():
            continue
        if entry.is_dir():
            student = entry.name
            files = sorted(p for p in entry.rglob("*.ipynb") if p.is_file() and not p.is_symlink()
                           and _wanted(p.relative_to(entry).parts))
            for p in files:
                rel = p.relative_to(entry).as_posix()
                if p.stat().st_size > MAX_NOTEBOOK_BYTES:
                    found.append(Submission(student, rel, None, "larger than 50 MB"))
                else:
                    found.append(_parse(student, rel, p.read_bytes()))
        elif entry.suffix.lower() == ".zip":
            student = entry.stem
            try:
                with zipfile.ZipFile(entry) as zf:
                    for info in sorted(zf.infolist(), key=lambda i: i.filename):
                        parts = tuple(pathlib.PurePosixPath(info.filename).parts)
                        if info.is_dir() or not parts or not _wanted(parts):
                            continue
                        if info.file_size > MAX_NOTEBOOK_BYTES:
                            found.append(Submission(student, info.filename, None, "larger than 50 MB"))
                        else:
                            found.append(_parse(student, info.filename, zf.read(info)))
            except (zipfile.BadZipFile, OSError) as exc:
                found.append(Submission(student, entry.name, None, f"not a readable zip: {exc}"))
        else:
            ignored.append(entry.name)
    return found, ignored


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def lab_modules(nb: dict) -> list[str]:
    """The ``unveiled.labs`` modules whose checks a notebook calls, in order of first call."""
    out: list[str] = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            for m in _CHECK_CALL.findall(_source(cell)):
                if m not in out:
                    out.append(m)
    return out


def _module_exists(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(f"unveiled.labs.{name}") is not None and not name.startswith("_")
    except (ImportError, ValueError):
        return False


# ---- running one notebook in workers -----------------------------------------------------------------------


@dataclass
class _Settings:
    timeout: float
    startup_timeout: float
    memory_gb: float
    scratch_root: str


def _worker_env(scratch: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "PYTHONINSPECT")}
    tmp = os.path.join(scratch, "tmp")
    os.makedirs(tmp, exist_ok=True)
    env.update(HOME=scratch, TMPDIR=tmp, TEMP=tmp, TMP=tmp, MPLCONFIGDIR=scratch, PYTHONDONTWRITEBYTECODE="1",
               PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            proc.kill()
    proc.wait()


def _how_it_died(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _attempt(job: dict, s: _Settings) -> dict:
    """Run one worker to the end, a crash or a time limit; return what it reported and how it ended."""
    scratch = tempfile.mkdtemp(prefix="notebook-", dir=s.scratch_root)
    try:
        # the worker's own errors before the student's code runs go to a file outside its scratch folder
        with tempfile.TemporaryFile() as log:
            return _supervise(job, s, scratch, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _supervise(job: dict, s: _Settings, scratch: str, log) -> dict:
    state: dict = {"tasks": None, "errors": {}, "results": {}, "cases": {}, "current": None, "case": None,
                   "phase": "startup", "ended": None}
    proc = subprocess.Popen([sys.executable, "-m", "unveiled.labs._worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=log, cwd=scratch, env=_worker_env(scratch),
                            start_new_session=True)
    events: queue.Queue = queue.Queue()

    def read() -> None:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            if line.startswith(PREFIX):
                with contextlib.suppress(ValueError):
                    events.put(json.loads(line[len(PREFIX):]))
        events.put(None)

    threading.Thread(target=read, daemon=True).start()
    with contextlib.suppress(OSError):
        proc.stdin.write(json.dumps(job).encode())
        proc.stdin.close()
    deadline = time.monotonic() + s.startup_timeout
    try:
        while True:
            try:
                ev = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                state["ended"] = "timeout"
                break
            if ev is None:
                proc.wait()
                log.seek(0)
                tail = log.read().decode("utf-8", "replace").strip().splitlines()[-1:]
                state["ended"] = "crashed"
                state["how"] = _how_it_died(proc.returncode) + (
                    f" ({tail[0][:200]})" if tail and state["phase"] == "startup" else "")
                break
            kind = ev.get("event")
            if kind == "tasks":
                state["tasks"], state["phase"] = ev["tasks"], "cells"
            elif kind == "cells":
                state["errors"], state["phase"] = ev.get("errors", {}), "between"
            elif kind == "start":
                state["current"], state["phase"], state["case"] = ev["function"], "task", None
                state["cases"][ev["function"]] = []
                state["task_started"] = time.monotonic()
            elif kind == "case_start":
                state["case"] = ev["case"]
            elif kind == "case":
                state["cases"][ev["function"]].append(ev)
            elif kind == "result":
                state["results"][ev["function"]] = ev
                state["phase"], state["current"] = "between", None
            elif kind == "done":
                break
            if kind not in ("case_start", "case"):  # the time limit is per check, not per case
                deadline = time.monotonic() + s.timeout
    finally:
        _kill(proc)
    return state


def _lab_of(title: str) -> str:
    m = re.search(r"Lab \d+\.\d+", title)
    return m.group(0) if m else title


def _grade_module(base: dict, module: str, cells: list[dict], s: _Settings) -> list[dict]:
    """Every check of ``unveiled.labs.<module>`` against one notebook, restarting after a lost task."""
    tasks: list[dict] | None = None
    results: dict[str, dict] = {}
    only = None
    while True:
        state = _attempt({"module": module, "cells": cells, "only": only, "memory_gb": s.memory_gb}, s)
        if tasks is None:
            tasks = state["tasks"]
            if tasks is None:
                why = "timed out" if state["ended"] == "timeout" else f"its process {state.get('how')}"
                return [dict(base, lab="", function="", status="error", passed=0, total=0, runtime_s=0.0,
                             first_failure=f"the grader could not load unveiled.labs.{module}: {why}")]
        results.update(state["results"])
        if state["ended"] is None:
            break
        lost = state["ended"]
        how = (f"timed out after {s.timeout:g} s (an endless loop, or far too slow?)" if lost == "timeout"
               else f"the notebook's process ended ({state['how']})")
        pending = [t["function"] for t in tasks if t["function"] not in results]
        if not pending:
            break
        if state["phase"] in ("cells", "startup"):  # running the lab cells themselves never finished
            for t in tasks:
                results.setdefault(t["function"], {"status": lost, "passed": 0, "runtime_s": s.timeout,
                                                   "first_failure": f"while running the notebook's lab cells: {how}"})
            break
        current = state["current"] or pending[0]
        done = state["cases"].get(current, [])
        failed = next((c["feedback"] for c in done if not c["passed"]), None)
        where = state["case"] or "before its first case"
        results[current] = {"status": lost, "passed": sum(c["passed"] for c in done),
                            "first_failure": failed or f"{where}: {how}",
                            "runtime_s": s.timeout if lost == "timeout" else
                            time.monotonic() - state.get("task_started", time.monotonic())}
        only = [f for f in pending if f != current]
        if not only:
            break
    rows = []
    for t in tasks:
        r = results[t["function"]]
        rows.append(dict(base, lab=_lab_of(t["title"]), function=t["function"], status=r["status"],
                         passed=int(r["passed"]), total=int(t["total"]), first_failure=r.get("first_failure", ""),
                         runtime_s=round(float(r.get("runtime_s", 0.0)), 3)))
    return rows


def _grade_submission(sub: Submission, s: _Settings) -> list[dict]:
    base = {"student": sub.student, "notebook": sub.notebook}
    empty = dict(base, lab="", function="", passed=0, total=0, runtime_s=0.0)
    if sub.content is None:
        return [dict(empty, status="error", first_failure=sub.error)]
    modules = lab_modules(sub.content)
    if not modules:
        return [dict(empty, status="no lab", first_failure="the notebook calls no check from unveiled.labs")]
    cells = [{"source": _source(c), "tags": list(c.get("metadata", {}).get("tags", []) or []), "index": i}
             for i, c in enumerate(sub.content["cells"]) if c.get("cell_type") == "code"]
    rows = []
    for module in modules:
        if not _module_exists(module):
            rows.append(dict(empty, status="error", first_failure=f"unveiled.labs has no lab module {module!r}"))
        else:
            rows.extend(_grade_module(base, module, cells, s))
    return rows


def _fingerprint(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in root.rglob("*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def grade(submissions: str | os.PathLike, *, timeout: float = 60.0, jobs: int | None = None,
          memory_gb: float = 4.0, startup_timeout: float = 300.0) -> pd.DataFrame:
    """Grade every notebook under ``submissions`` (see the module docstring); one row per student and task.

    ``timeout`` (seconds) limits running a notebook's lab cells and each check; ``jobs`` notebooks are graded
    at once (default: up to 4, at most the CPUs); ``memory_gb`` is each worker's address space beyond what it
    uses after its imports (0 for no limit); ``startup_timeout`` limits a worker's imports (no student code runs
    then). ``attrs["ignored"]`` lists entries that are neither a folder nor a zip, ``attrs["warnings"]`` any
    change to the submissions folder during grading.
    """
    timeout = check_number("timeout", timeout)
    startup_timeout = check_number("startup_timeout", startup_timeout)
    memory_gb = check_number("memory_gb", memory_gb)
    if timeout <= 0 or startup_timeout <= 0 or memory_gb < 0:
        raise ValueError("timeout and startup_timeout must be > 0 seconds, memory_gb >= 0")
    jobs = check_int("jobs", jobs if jobs is not None else max(1, min(4, os.cpu_count() or 1)))
    root = pathlib.Path(submissions)
    subs, ignored = collect(root)
    before = _fingerprint(root)
    scratch_root = tempfile.mkdtemp(prefix="unveiled-grade-")
    settings = _Settings(timeout, startup_timeout, memory_gb, scratch_root)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            per_sub = list(pool.map(lambda sub: _grade_submission(sub, settings), subs))
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    grades = pd.DataFrame([row for rows in per_sub for row in rows], columns=COLUMNS)
    grades.attrs["ignored"] = ignored
    after = _fingerprint(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    grades.attrs["warnings"] = [f"the submissions folder changed during grading: {', '.join(changed[:10])}"] \
        if changed else []
    return grades


def summary(grades: pd.DataFrame) -> pd.DataFrame:
    """Per task: how many students submitted it, how many passed every case, the mean share of cases passed,
    and how many timed out or crashed."""
    g = grades[grades["function"] != ""].copy()
    g["share"] = g["passed"] / g["total"].where(g["total"] > 0)
    out = g.groupby(["lab", "function"], sort=False).agg(
        students=("student", "nunique"),
        all_passed=("status", lambda s: int((s == "passed").sum())),
        mean_cases_passed_pct=("share", lambda x: round(100 * float(x.mean()), 1) if x.notna().any() else 0.0),
        timeouts_or_crashes=("status", lambda s: int(s.isin(["timeout", "crashed"]).sum())),
    )
    return out.reset_index()


def student_totals(grades: pd.DataFrame) -> pd.DataFrame:
    """Per student: notebooks, tasks graded, tasks with every case passed, and cases passed out of the total."""
    g = grades.copy()
    g["task"] = g["function"] != ""
    out = g.groupby("student", sort=True).agg(
        notebooks=("notebook", "nunique"), tasks=("task", "sum"),
        tasks_passed=("status", lambda s: int((s == "passed").sum())),
        cases_passed=("passed", "sum"), cases_total=("total", "sum"))
    return out.reset_index()


def write_grades(grades: pd.DataFrame, out: str | os.PathLike, summary_out: str | os.PathLike | None = None
                 ) -> tuple[pathlib.Path, pathlib.Path]:
    """Write the grade table to ``out`` and the per-task summary next to it (``<stem>_summary.csv``)."""
    out = pathlib.Path(out)
    summary_out = pathlib.Path(summary_out) if summary_out else out.with_name(f"{out.stem}_summary.csv")
    for path, table in ((out, grades), (summary_out, summary(grades))):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, path)
    return out, summary_out
