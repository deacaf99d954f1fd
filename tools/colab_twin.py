"""A Colab twin: a virtual environment with Colab's versions of the packages that matter, set up as on Colab.

Colab's runtime pins its own packages (the published list: ``shared/colab/pip-freeze-*.txt``, vendored here as
``tools/colab/pip-freeze.txt``). A chapter's set-up cell must install the book's library next to them without
upgrading or downgrading any, and every chapter must then run there. This script rebuilds that situation on any
Linux machine:

1. create a virtual environment and install the packages that matter at Colab's versions (ipywidgets,
   IPython, ipykernel, jupyter_client, Altair, pandas, NumPy, tqdm, tokenizers, safetensors, and what executing a
   notebook needs), every dependency constrained to Colab's version where Colab has one, plus a CPU build of
   torch (Colab's own is a CPU build too);
2. run the chapters' set-up cell there, as Colab would (``google.colab`` imported), with the repository URL
   replaced by this checkout and the ref by its current commit;
3. compare ``pip freeze`` before and after: no package of Colab's list may change version;
4. execute every notebook of the book there (``tools/run_notebooks.py``), within the usual budgets.

    python tools/colab_twin.py --venv /tmp/colab-twin            # all four steps
    python tools/colab_twin.py --venv /tmp/colab-twin --no-run   # steps 1-3

Exits non-zero when a step fails. Python 3.13 runs on Colab; the twin uses this machine's Python (the packages
that matter have the same versions for both).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FREEZE = ROOT / "tools" / "colab" / "pip-freeze.txt"
#: The packages whose Colab versions the book must live with (issue: Colab twin), and what executing a notebook
#: there needs (Colab has all of them).
MATTER = ("ipywidgets", "ipython", "ipykernel", "jupyter_client", "altair", "pandas", "numpy", "tqdm", "tokenizers",
          "safetensors")
EXECUTION = ("nbclient", "nbformat", "jupyter_core", "pyyaml", "widgetsnbextension", "jupyterlab_widgets")
TORCH = "torch==2.13.0"  # a CPU build: PyTorch's CPU index, or this project's machines' local wheel


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def colab_pins(path: pathlib.Path = FREEZE) -> dict[str, str]:
    """Colab's ``name==version`` lines (normalised names); URL-installed packages (torch) are left out."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and "@" not in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def freeze(python: pathlib.Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
        elif " @ " in line:
            pins[_norm(line.split(" @ ", 1)[0])] = line.split(" @ ", 1)[1].strip()
    return pins


def pip(python: pathlib.Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", *args], check=True)


def create(venv: pathlib.Path) -> pathlib.Path:
    """Step 1: the twin environment; returns its Python."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    python = venv / "bin" / "python"
    pins = colab_pins()
    constraints = venv / "colab-constraints.txt"
    keep = {n: v for n, v in pins.items() if n not in ("pip", "setuptools", "wheel")}
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(keep.items())))
    pip(python, "install", "-q", f"pip=={pins['pip']}", f"setuptools=={pins['setuptools']}", f"wheel=={pins['wheel']}")
    wanted = [f"{n}=={pins[_norm(n)]}" for n in (*MATTER, *EXECUTION)]
    pip(python, "install", "-q", "-c", str(constraints), *wanted, TORCH)
    return python


def setup_cell_source(url: str, ref: str) -> str:
    """The chapters' first cell, with this checkout as the repository."""
    sys.path.insert(0, str(ROOT / "tools"))
    import setup_cell

    return setup_cell.source(url=url, ref=ref)


def run_setup_cell(python: pathlib.Path, url: str, ref: str) -> subprocess.CompletedProcess:
    """Step 2: execute the set-up cell in the twin, with ``google.colab`` importable as on Colab."""
    code = ("import sys, types\n"
            "sys.modules['google'] = types.ModuleType('google')\n"
            "sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
            + setup_cell_source(url, ref))
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True)


def changed_pins(before: dict[str, str], after: dict[str, str], pins: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Step 3: every package of Colab's list (present before) whose version the set-up cell changed."""
    return {n: (before[n], after.get(n, "removed")) for n in before if n in pins and after.get(n) != before[n]}


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=pathlib.Path, required=True)
    parser.add_argument("--reuse", action="store_true", help="reuse an existing twin (skip step 1)")
    parser.add_argument("--no-run", action="store_true", help="stop after checking the pins (skip step 4)")
    parser.add_argument("--times", type=pathlib.Path, help="write the notebooks' times as JSON (step 4)")
    parser.add_argument("notebooks", nargs="*", help="notebooks to execute (default: all)")
    args = parser.parse_args(argv)
    python = args.venv / "bin" / "python"
    if not (args.reuse and python.exists()):
        print("==> step 1: the twin environment (Colab's versions)", flush=True)
        python = create(args.venv)
    before = freeze(python)
    print(f"==> step 2: the set-up cell, installing this checkout ({head_commit()[:12]})", flush=True)
    done = run_setup_cell(python, f"file://{ROOT}", head_commit())
    print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    if done.returncode != 0:
        print("the set-up cell failed", file=sys.stderr)
        return 1
    after = freeze(python)
    changed = changed_pins(before, after, colab_pins())
    added = sorted(set(after) - set(before))
    report = {"changed": changed, "added": added}
    (args.venv / "pins-report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"==> step 3: packages added {added}; Colab pins changed: {changed or 'none'}", flush=True)
    if changed:
        return 1
    if args.no_run:
        return 0
    print("==> step 4: every notebook, executed in the twin", flush=True)
    cmd = [str(python), str(ROOT / "tools" / "run_notebooks.py"), "--check", *args.notebooks]
    if args.times:
        cmd += ["--times", str(args.times)]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONNOUSERSITE": "1"}).returncode


if __name__ == "__main__":
    sys.exit(main())
