"""``python -m unveiled.labs grade SUBMISSIONS/ --out grades.csv``: grade a class's lab notebooks.

See :mod:`unveiled.labs.grading` for what is run, how, and what the table holds.
"""

from __future__ import annotations

import argparse
import sys

from .grading import grade, student_totals, summary, write_grades


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unveiled.labs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade every notebook of every student under SUBMISSIONS")
    g.add_argument("submissions", help="a folder with one folder or .zip of notebooks per student")
    g.add_argument("--out", default="grades.csv", help="the grade table, one row per student and task "
                                                       "(default: grades.csv)")
    g.add_argument("--summary", default=None, help="the per-task summary (default: <out stem>_summary.csv)")
    g.add_argument("--timeout", type=float, default=60.0,
                   help="seconds allowed for a notebook's lab cells and for each check (default: 60)")
    g.add_argument("--jobs", type=int, default=None, help="notebooks graded at once (default: up to 4)")
    g.add_argument("--memory-gb", type=float, default=4.0,
                   help="address space each worker may add after its imports, in GiB (0: no limit; default 4)")
    args = parser.parse_args(argv)
    try:
        grades = grade(args.submissions, timeout=args.timeout, jobs=args.jobs, memory_gb=args.memory_gb)
    except ValueError as exc:
        parser.error(str(exc))
    if grades.empty:
        print(f"no notebooks found under {args.submissions} (one folder or .zip per student)", file=sys.stderr)
        return 1
    out, summary_out = write_grades(grades, args.out, args.summary)
    print(f"graded {grades['student'].nunique()} students, {len(grades)} rows -> {out} (summary: {summary_out})")
    for line in grades.attrs.get("warnings", []):
        print(f"warning: {line}", file=sys.stderr)
    if grades.attrs.get("ignored"):
        print(f"ignored (neither a folder nor a .zip): {', '.join(grades.attrs['ignored'])}", file=sys.stderr)
    print()
    print(summary(grades).to_string(index=False))
    print()
    print(student_totals(grades).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
