"""Build the book the way CI does: a clean `jupyter-book build . -W -n --keep-going`.

A clean build re-executes every notebook (Jupyter Book only re-runs notebooks it re-reads, and a change under
lib/ does not make it re-read them). On success it writes ``_build/.source-hash``, a hash of every source file,
so the test suite can reuse this build instead of building again when nothing has changed since.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
STAMP = BUILD / ".source-hash"


def source_files() -> list[pathlib.Path]:
    """Every file git tracks or would track (ignored files such as _build/ and .venv/ are left out)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode()
    return sorted(p for p in (ROOT / f for f in out.split("\0") if f) if p.is_file())


def source_hash() -> str:
    h = hashlib.sha256()
    for path in source_files():
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def is_fresh() -> bool:
    """True when _build/html was built successfully from exactly the current sources."""
    return STAMP.exists() and (BUILD / "html" / "index.html").exists() and STAMP.read_text().strip() == source_hash()


#: Results measured before the build that the status page shows (CI's CPU-limited run in the Colab twin):
#: kept across a clean build.
KEEP = ("exec-times-*.json",)


def build(clean: bool = True) -> int:
    if clean and BUILD.exists():
        kept = {f.name: f.read_bytes() for pattern in KEEP for f in BUILD.glob(pattern)}
        shutil.rmtree(BUILD)
        BUILD.mkdir()
        for name, data in kept.items():
            (BUILD / name).write_bytes(data)
    STAMP.unlink(missing_ok=True)
    digest = source_hash()
    start = time.perf_counter()
    cmd = ["jupyter-book", "build", str(ROOT), "-W", "-n", "--keep-going"]
    print("==> jupyter-book build . -W -n --keep-going", flush=True)
    # The kernels that execute the notebooks know they run for the book (no progress bars, explorer stills);
    # tools/book_assets.py sets the same flag for a bare `jupyter-book build`.
    env = {**os.environ, "UNVEILED_BOOK_BUILD": "1"}
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    took = time.perf_counter() - start
    (BUILD / "build-time.json").write_text(json.dumps({"seconds": round(took, 1), "returncode": rc}) + "\n")
    if rc == 0:
        STAMP.write_text(digest + "\n")
        print(f"==> build succeeded in {took:.0f} s", flush=True)
    else:
        reports = BUILD / "html" / "reports"
        print(f"==> build FAILED (exit {rc}) after {took:.0f} s", file=sys.stderr)
        if reports.exists():
            for log in sorted(reports.rglob("*.err.log")):
                print(f"--- {log.relative_to(ROOT)} ---\n{log.read_text()[-4000:]}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-clean", action="store_true", help="keep _build (faster, but may skip notebooks)")
    parser.add_argument("--if-stale", action="store_true", help="do nothing if _build/html matches the sources")
    args = parser.parse_args()
    if args.if_stale and is_fresh():
        print("==> _build/html is up to date with the sources; nothing to do")
        sys.exit(0)
    sys.exit(build(clean=not args.no_clean))
