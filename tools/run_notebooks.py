"""Execute the book's notebooks outside the book build, time each one, and check it against its budget.

    python tools/run_notebooks.py chapters/03_quantization.ipynb      # one notebook, outputs discarded
    python tools/run_notebooks.py --isa avx2 --check                  # all, as on a CPU without AVX-512
    python tools/run_notebooks.py --out /tmp/ch3.ipynb chapters/03_quantization.ipynb   # keep the outputs

A chapter must run in its budget on any CPU a reader may have. ``--isa avx2`` runs the kernels with PyTorch and
oneDNN capped at AVX2 (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``): no AVX-512, no native bf16
or fp16 matmuls, as on many laptops, cloud VMs and Colab's older hosts. ``--check`` fails when a notebook
exceeds ``--factor`` (default 2) times its budget: a ceiling that catches a 10× regression without flaking on
a busy machine. ``--times FILE`` writes the measured times as JSON (the status page shows them).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from budgets import budget_of, toc_notebooks  # noqa: E402

ISA_LIMITS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def execute(path: pathlib.Path, out: pathlib.Path | None = None, timeout: int = 300) -> tuple[float, str]:
    """Run every cell of ``path`` in a fresh kernel (cwd = its folder); return (seconds, error or "")."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    error = ""
    try:
        client.execute()
    except Exception as exc:  # report and go on: one failing notebook must not hide the others' times
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    took = time.perf_counter() - start
    if out is not None:
        nbformat.write(nb, out)
    return took, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path, help="default: every notebook in _toc.yml")
    parser.add_argument("--isa", choices=sorted(ISA_LIMITS), help="cap the instruction sets PyTorch may use")
    parser.add_argument("--check", action="store_true", help="fail when a notebook exceeds factor x its budget")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--times", type=pathlib.Path, help="write the measured times as JSON here")
    parser.add_argument("--out", type=pathlib.Path, help="write the executed notebook here (one notebook only)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell (as the book build)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or toc_notebooks()
    if args.out and len(paths) != 1:
        parser.error("--out needs exactly one notebook")
    os.environ.update(ISA_LIMITS.get(args.isa, {}))  # the kernels inherit the environment
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    print(f"==> executing {len(paths)} notebook(s); PyTorch CPU capability in kernels: "
          f"{'capped at ' + args.isa.upper() if args.isa else capability}", flush=True)
    rows, ok = [], True
    for path in paths:
        name = str(path.relative_to(ROOT).with_suffix("")) if path.is_relative_to(ROOT) else path.stem
        took, error = execute(path, args.out, args.timeout)
        budget = budget_of(name)
        over = took > args.factor * budget
        verdict = "FAILED" if error else f"OVER {args.factor:g}x budget" if over else "ok"
        ok &= not error and not (args.check and over)
        print(f"{name:32s} {took:7.1f} s  budget {budget:4.0f} s  {verdict}{'  ' + error if error else ''}", flush=True)
        rows.append({"notebook": name, "seconds": round(took, 1), "budget_s": budget, "error": error})
    if args.times:
        args.times.parent.mkdir(parents=True, exist_ok=True)
        args.times.write_text(json.dumps({
            "isa": args.isa or "native", "torch_cpu_capability": capability if not args.isa else args.isa.upper(),
            "limits": ISA_LIMITS.get(args.isa, {}), "factor": args.factor, "date": _dt.date.today().isoformat(),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "notebooks": rows}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
