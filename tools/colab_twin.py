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
    # Colab has many more packages than these: whatever the library's install would add that Colab already
    # has (requests, say), the twin gets at Colab's version first, so the check in step 3 covers it too.
    report = venv / "dry-run.json"
    pip(python, "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report), requirement(f"file://{ROOT}", head_commit()))
    names = {_norm(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    also = sorted(n for n in names if n in keep and n not in {_norm(w.split("==")[0]) for w in wanted})
    if also:
        pip(python, "install", "-q", "-c", str(constraints), *[f"{n}=={keep[n]}" for n in also])
    base = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    (venv / "base-freeze.txt").write_text(base)
    return python


def reset(venv: pathlib.Path) -> pathlib.Path:
    """Put a twin made earlier back into its state after step 1 (what a set-up cell run added or changed goes)."""
    python = venv / "bin" / "python"
    base = freeze_lines((venv / "base-freeze.txt").read_text())
    extra = sorted(set(freeze(python)) - set(base) - {"pip", "setuptools", "wheel"})
    if extra:
        pip(python, "uninstall", "-q", "-y", *extra)
    pip(python, "install", "-q", "--no-deps", "-r", str(venv / "base-freeze.txt"))
    return python


def freeze_lines(text: str) -> dict[str, str]:
    return {_norm(line.split("==", 1)[0]): line.split("==", 1)[1] for line in text.splitlines() if "==" in line}


def requirement(url: str, ref: str) -> str:
    """The library requirement the set-up cell installs (read from the cell itself)."""
    line = next(ln for ln in setup_cell_source(url, ref).splitlines() if ln.strip().startswith("lib = "))
    return line.split('"')[1]


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


def source_hash() -> str:
    """The hash of every source file (as the book build's stamp): which sources a twin run checked."""
    sys.path.insert(0, str(ROOT / "tools"))
    import build_book

    return build_book.source_hash()


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=pathlib.Path, required=True)
    parser.add_argument("--reuse", action="store_true", help="reuse an existing twin (skip step 1)")
    parser.add_argument("--no-run", action="store_true", help="stop after checking the pins (skip step 4)")
    parser.add_argument("--times", type=pathlib.Path, help="write the notebooks' times as JSON (step 4)")
    parser.add_argument("--isa", choices=["avx2"], help="run the notebooks with the CPU features limited (step 4)")
    parser.add_argument("notebooks", nargs="*", help="notebooks to execute (default: all)")
    args = parser.parse_args(argv)
    python = args.venv / "bin" / "python"
    if args.reuse and (args.venv / "base-freeze.txt").exists():
        print("==> step 1: resetting the twin made earlier to Colab's versions", flush=True)
        python = reset(args.venv)
    else:
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
    report = {"source_hash": source_hash(), "commit": head_commit(), "changed": changed, "added": added,
              "versions": {n: after.get(n) for n in sorted({_norm(m) for m in MATTER} | {"torch", "unveiled"})}}
    print(f"==> step 3: packages added {added}; Colab pins changed: {changed or 'none'}", flush=True)
    rc = 1 if changed else 0
    if not changed and not args.no_run:
        print("==> step 4: every notebook, executed in the twin", flush=True)
        times = args.times or args.venv / "times.json"
        cmd = [str(python), str(ROOT / "tools" / "run_notebooks.py"), "--check", "--times", str(times), *args.notebooks]
        if args.isa:
            cmd += ["--isa", args.isa]
        rc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONNOUSERSITE": "1"}).returncode
        report["times"] = json.loads(times.read_text()) if times.exists() else None
        report["notebooks_rc"] = rc
    (args.venv / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
