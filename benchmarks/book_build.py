"""Benchmark the book build: total time of a clean -W build, each notebook's execution time against its
budget, and each rendered page's size (without the shared vendored assets) against the 1 MB limit.

    python benchmarks/book_build.py            # clean build, then the report
    python benchmarks/book_build.py --no-build # report on the existing _build/html

Machines here are shared and noisy: read the figures as what this run measured, not as constants.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
sys.path.insert(0, str(ROOT / "tools"))
from budgets import BUILD_BUDGET_S, budget_of  # noqa: E402

PAGE_LIMIT_BYTES = 1_000_000


def exec_table() -> list[tuple[str, float, str]]:
    """(document, run time in s, status) for every executed notebook, read from the status page."""
    html = (SITE / "appendix" / "status.html").read_text()
    table = html[html.find("<tbody>"):html.find("</tbody>")]
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S):
        doc = re.search(r'<span class="doc">([^<]+)</span>', row)
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, flags=re.S)]
        times = [c for c in cells if re.fullmatch(r"[0-9.]+", c)]
        if doc and times:  # columns: document, [modified, method,] run time, status
            rows.append((doc.group(1), float(times[-1]), cells[-1]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    ok = True
    if not args.no_build:
        start = time.perf_counter()
        rc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py")], cwd=ROOT).returncode
        took = time.perf_counter() - start
        print(f"\nclean build: {took:.0f} s (budget {BUILD_BUDGET_S} s) -> {'OK' if took <= BUILD_BUDGET_S else 'OVER'}")
        ok &= rc == 0 and took <= BUILD_BUDGET_S
    print(f"\n{'notebook':32s} {'exec s':>8s} {'budget s':>9s}  status")
    for doc, t, status in exec_table():
        budget = budget_of(doc)
        verdict = "OK" if t <= budget and "✅" in status else "OVER" if t > budget else "FAILED"
        ok &= verdict == "OK"
        print(f"{doc:32s} {t:8.1f} {budget:9.0f}  {verdict}")
    print(f"\n{'page':40s} {'size MB':>8s}")
    for page in sorted([*SITE.glob("*.html"), *SITE.glob("chapters/*.html"), *SITE.glob("appendix/*.html")]):
        size = page.stat().st_size
        ok &= size < PAGE_LIMIT_BYTES
        print(f"{page.relative_to(SITE)!s:40s} {size / 1e6:8.3f}{'  OVER 1 MB' if size >= PAGE_LIMIT_BYTES else ''}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
