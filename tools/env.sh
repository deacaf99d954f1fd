# Shared by tools/build.sh and tools/test.sh (sourced, not run): make sure .venv exists and holds the pinned
# environment and the library. Re-installs only when the requirement files or pyproject.toml change.
set -euo pipefail

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: Python 3.10 or newer is needed (set PYTHON=/path/to/python3.x)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating the virtual environment .venv"
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate

stamp=.venv/.unveiled-installed
want=$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> installing the pinned environment (requirements.txt) and the library (a few minutes the first time)"
    python -m pip install -q --upgrade pip
    python -m pip install -q -r requirements.txt
    python -m pip install -q --no-deps -r requirements-nodeps.txt
    python -m pip install -q --no-deps -e .
    echo "$want" > "$stamp"
fi
