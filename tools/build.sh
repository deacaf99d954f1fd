#!/usr/bin/env bash
# Build the book from a fresh machine: set up .venv (pinned environment + library), then run the full
# Jupyter Book build, which executes every notebook and fails on any error, warning or broken reference.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
python tools/build_book.py "$@"
cat <<MSG

The book is in _build/html. Serve it with
    python -m http.server --directory _build/html 8000
and open http://localhost:8000 (or open _build/html/index.html directly).
MSG
