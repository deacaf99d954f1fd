"""The grader's worker: runs one notebook's lab checks in its own process (``python -m unveiled.labs._worker``).

The grader (:mod:`unveiled.labs.grading`) starts one worker per notebook in an empty scratch folder and sends it
the notebook's code cells as JSON on stdin. The worker imports the chapter's lab module, counts each check's
cases *before* any of the student's code runs, then guards the process (below), executes the lab cells and
runs every check, reporting each event as a JSON line on its own channel (a copy of stdout; the student's
prints go nowhere). The grader enforces the time limits and kills the worker when they pass.

The guard is a Python audit hook [PEP 578] that refuses, from then on, to write, delete, rename or change any
file outside the scratch folder, to start processes or to signal other processes; and an address-space limit.
It stops accidents (a cell that cleans up with ``shutil.rmtree``, a stray ``os.remove``), not a determined
attacker: for untrusted code, run the grader in a container. Introduced in Chapter 1 (the instructors' page).
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable

PREFIX = "@@unveiled-grade@@ "
LAB_TAGS = ("solution", "lab-stub")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
                "os.utime": 1, "shutil.rmtree": 1, "os.rename": 2, "os.replace": 2, "os.link": 2, "os.symlink": 2,
                "os.setxattr": 1, "os.removexattr": 1, "os.chflags": 1, "os.lchflags": 1, "os.lchmod": 1}
_FORBIDDEN_EVENTS = ("os.system", "subprocess.Popen", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                     "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "os.startfile")


def defined_names(source: str) -> set[str]:
    """The top-level functions and classes a cell defines (by a regex when it does not parse)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set(re.findall(r"^(?:def|class)\s+([A-Za-z_]\w*)", source, flags=re.M))
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def lab_cells(cells: list[dict], functions) -> list[dict]:
    """The cells to run to grade ``functions``: those tagged ``solution`` or ``lab-stub`` (the book's lab cells
    and the student edition's stubs), and any other code cell that defines one of ``functions`` (a student who
    wrote a task in a new cell). In notebook order, so the last definition wins, as in a notebook."""
    wanted = set(functions)
    return [c for c in cells if set(c.get("tags", [])) & set(LAB_TAGS) or defined_names(c["source"]) & wanted]


# ---- the guard ------------------------------------------------------------------------------------------------


def _resolve(path, dir_fd=None) -> str | None:
    if isinstance(path, int):
        return None  # an already-open descriptor: its opening was checked
    try:
        p = os.fsdecode(os.fspath(path))
    except TypeError:
        return "?"
    if dir_fd is not None and not os.path.isabs(p):
        try:
            p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
        except OSError:
            return "?"
    return os.path.realpath(p)


def install_guard(root: str) -> None:
    """From now on, refuse writes and deletions outside ``root``, new processes and signals to others."""
    root = os.path.realpath(root)
    allowed = (root, os.path.realpath(os.devnull))
    me = os.getpid()

    def inside(path: str | None) -> bool:
        return path is None or path in allowed or path.startswith(root + os.sep)

    def refuse(what: str) -> None:
        raise PermissionError(f"the grader does not let lab code {what} (only files in its scratch folder)")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (*tuple(args), None, None, None)[:3]
            writing = (isinstance(mode, str) and any(ch in mode for ch in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and not inside(_resolve(path)):
                refuse(f"write {path!r}")
        elif event in _PATH_EVENTS:
            dir_fd = args[-1] if event in ("os.remove", "os.rmdir", "shutil.rmtree") and len(args) > 1 else None
            for path in args[: _PATH_EVENTS[event]]:
                if not inside(_resolve(path, dir_fd if isinstance(dir_fd, int) else None)):
                    refuse(f"change or delete {path!r}")
        elif event.startswith(_FORBIDDEN_EVENTS):
            refuse(f"start processes or load native code ({event})")
        elif event in ("os.kill", "os.killpg") and args and args[0] not in (me, 0):
            refuse("signal other processes")

    sys.addaudithook(hook)


def _limit_memory(extra_gb: float) -> None:
    if extra_gb <= 0:
        return
    try:
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = used + int(extra_gb * 2**30)
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, OSError, ValueError):
        pass  # not Linux: no limit


class _Sink:
    """Where the student's prints go: kept up to a few kilobytes, then dropped."""

    def __init__(self, keep: int = 4096):
        self.text, self.keep = "", keep

    def write(self, s: str) -> int:
        if len(self.text) < self.keep:
            self.text += s[: self.keep - len(self.text)]
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# ---- the run --------------------------------------------------------------------------------------------------


def _python_only(source: str) -> str:
    """IPython magics and shell escapes (``%timeit``, ``!pip``) do not run here: each becomes ``pass``."""
    return re.sub(r"^(\s*)[%!].*$", r"\1pass  # IPython-only line skipped by the grader", source, flags=re.M)


def _placeholder(name: str) -> Callable:
    def missing(*args, **kwargs):
        raise NotImplementedError(f"{name} is not defined")

    return missing


def _short_error(exc: BaseException) -> str:
    tb = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<lab cell")]
    where = f" ({tb[-1].filename.strip('<>')}, line {tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}"[:300] + where


def main() -> None:
    scratch = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", scratch)]
    out = os.fdopen(os.dup(1), "w", buffering=1)

    def emit(**event) -> None:
        out.write(PREFIX + json.dumps(event) + "\n")
        out.flush()

    job = json.loads(sys.stdin.read())
    module = importlib.import_module(f"unveiled.labs.{job['module']}")
    checks = getattr(module, "CHECKS", None)
    if not isinstance(checks, dict) or not checks:
        raise SystemExit(f"unveiled.labs.{job['module']} has no CHECKS")
    names = [n for n in checks if job.get("only") is None or n in job["only"]]
    import numpy as np

    import unveiled as uv

    namespace = {"uv": uv, "np": np, "math": math, "__name__": "__lab__"}
    cells = lab_cells(job["cells"], checks)  # every lab function: a remaining task may call a finished one's
    if any(re.search(r"\btorch\b", c["source"]) for c in cells) or "torch" in sys.modules:
        import torch

        namespace["torch"] = torch
    tasks = []
    for name in names:  # count the cases before any student code runs (a stub stops at the first one)
        report = checks[name](_placeholder(name), raise_on_fail=False, show=False)
        tasks.append({"function": name, "title": report.title, "total": report.total})
    emit(event="tasks", tasks=tasks)

    install_guard(scratch)
    _limit_memory(float(job.get("memory_gb", 0)))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = _Sink()
    sys.stdin = open(os.devnull)  # noqa: SIM115 (kept open for the student's code)

    errors = {}
    for i, cell in enumerate(cells):
        try:
            exec(compile(_python_only(cell["source"]), f"<lab cell {cell.get('index', i)}>", "exec"), namespace)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: a cell must not end the grading
            for name in defined_names(cell["source"]) or {"?"}:
                errors[name] = f"its cell raised {_short_error(exc)}"
    emit(event="cells", errors=errors)

    from . import _LISTENERS

    current = {}

    def listener(kind: str, case: str, result) -> None:
        if kind == "start":
            emit(event="case_start", function=current["name"], case=case)
        elif kind == "done":
            emit(event="case", function=current["name"], case=case, passed=result.passed,
                 feedback=result.feedback())

    _LISTENERS.append(listener)
    for name in names:
        current["name"] = name
        emit(event="start", function=name)
        fn = namespace.get(name)
        start = time.perf_counter()
        if not callable(fn):
            why = errors.get(name, "the notebook does not define it")
            emit(event="result", function=name, status="missing", passed=0, first_failure=f"{name}(): {why}",
                 runtime_s=0.0)
            continue
        try:
            report = checks[name](fn, raise_on_fail=False, show=False)
        except BaseException as exc:
            emit(event="result", function=name, status="error", passed=0, runtime_s=time.perf_counter() - start,
                 first_failure=f"the check could not run: {_short_error(exc)}")
            continue
        first = report.first_failure
        status = ("passed" if report.passed else "not implemented"
                  if first is not None and first.message.startswith("not implemented") else "failed")
        emit(event="result", function=name, status=status, passed=report.n_passed,
             first_failure=first.feedback() if first else "", runtime_s=time.perf_counter() - start)
    emit(event="done")
    out.flush()
    os._exit(0)  # threads the student started must not keep the process alive


if __name__ == "__main__":
    main()
