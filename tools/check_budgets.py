"""After a book build: did every notebook, and the whole build, stay within a factor of its budget?

    python tools/check_budgets.py              # fail above 2x a budget (CI's ceiling)
    python tools/check_budgets.py --factor 1   # report against the budgets themselves

Reads each notebook's execution time from the build's Sphinx environment (what the status page's table shows)
and the build's duration from ``_build/build-time.json`` (written by tools/build_book.py). The factor 2 catches a
10x regression without failing on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import pickle
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from budgets import BUILD_BUDGET_S, budget_of  # noqa: E402


def execution_times(build: pathlib.Path = ROOT / "_build") -> dict[str, tuple[float, bool]]:
    """{notebook: (seconds, succeeded)} of the last build's executed notebooks."""
    with open(build / ".doctrees" / "environment.pickle", "rb") as f:
        env = pickle.load(f)
    out = {}
    for doc, meta in env.nb_metadata.items():
        data = meta.get("exec_data") if isinstance(meta, dict) else None
        if data and data.get("runtime") is not None:
            out[doc] = (float(data["runtime"]), bool(data.get("succeeded")))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=2.0)
    args = parser.parse_args(argv)
    ok = True
    print(f"{'notebook':32s} {'exec s':>8s} {'budget s':>9s}")
    for doc, (seconds, succeeded) in sorted(execution_times().items()):
        budget = budget_of(doc)
        verdict = "FAILED" if not succeeded else f"OVER {args.factor:g}x" if seconds > args.factor * budget else "ok"
        ok &= verdict == "ok"
        print(f"{doc:32s} {seconds:8.1f} {budget:9.0f}  {verdict}")
    took = json.loads((ROOT / "_build" / "build-time.json").read_text())["seconds"]
    over = took > args.factor * BUILD_BUDGET_S
    ok &= not over
    verdict = f"OVER {args.factor:g}x" if over else "ok"
    print(f"{'whole build':32s} {took:8.1f} {BUILD_BUDGET_S:9d}  {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
