#!/usr/bin/env bash
# Run every test from a fresh machine: set up .venv (pinned environment + library) and Chromium (Debian's
# package, for the site tests; never a browser download), then pytest. Extra arguments go to pytest,
# e.g. `bash tools/test.sh -m lab_roofline`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
if ! command -v chromium >/dev/null 2>&1; then
    echo "==> installing Chromium from Debian's packages (needed by the site tests)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
python -m pytest "$@"
